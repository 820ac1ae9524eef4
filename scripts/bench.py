"""jobsup benchmarks: throughput, round trip, crash recovery, restart with a backlog.

Run through ``scripts/bench`` (which sets up the virtualenv).  Every figure is
measured against a real daemon with its embedded Redis (AOF, appendfsync
everysec) and 2 workers, on whatever machine runs it; ``--compare`` runs the
same workloads on Celery, RQ and Dramatiq in the same run and prints them
side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisord.client import Client  # noqa: E402


class Daemon:
    def __init__(self, workdir: Path, workers: int = 2) -> None:
        self.dir = workdir
        self.endpoint = f"ipc://{workdir}/api.sock"
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    def write_config(self, workers: int) -> Path:
        path = self.dir / "bench.toml"
        path.write_text(f"""
[daemon]
node_id = "bench"
state_dir = "{self.dir}/state"
shutdown_grace = 10
[redis]
url = "embedded"
appendfsync = "everysec"
[api]
endpoint = "{self.endpoint}"
events = "ipc://{self.dir}/events.sock"
[metrics]
listen = ""
[[pools]]
name = "default"
workers = {workers}
[jobs.noop]
handler = "examples.demo:noop"
timeout = 60
[jobs.sleep]
handler = "examples.demo:sleep"
timeout = 120
max_attempts = 5
[jobs.guarded]
handler = "examples.demo:noop"
timeout = 60
circuit_breaker = {{ failures = 5, open_for = 30 }}
retry_budget = 1000
fallback = "noop"
""")
        return path

    def start(self, workers: int | None = None, wait_workers: bool = True) -> float:
        config = self.write_config(self.workers if workers is None else workers)
        t0 = time.time()
        with open(self.dir / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisord", "-c", str(config), "run"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with Client(self.endpoint, connect_timeout=0.2, timeout=1) as c:
                    st = c.status()
                if not wait_workers or sum(p["idle"] for p in st["pools"]) >= (
                        self.workers if workers is None else workers):
                    return t0
            except Exception:
                time.sleep(0.02)
        raise RuntimeError("daemon did not start; see " + str(self.dir / "daemon.log"))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def throughput_bulk(c: Client, n: int, job_type: str = "noop") -> float:
    t0 = time.perf_counter()
    ids = []
    for start in range(0, n, 5000):
        ids += c.submit_many(job_type, [None] * min(5000, n - start), tags={"bench": "1"})
    jobs = c.outcomes(ids, timeout=600)  # results, as the others collect them
    elapsed = time.perf_counter() - t0
    assert all(j.status == "succeeded" for j in jobs)
    return n / elapsed


def throughput_single(c: Client, n: int, job_type: str = "noop") -> float:
    t0 = time.perf_counter()
    ids = [c.submit(job_type) for _ in range(n)]
    jobs = c.outcomes(ids, timeout=600)
    elapsed = time.perf_counter() - t0
    assert all(j.status == "succeeded" for j in jobs)
    return n / elapsed


def latency(c: Client, n: int, job_type: str = "noop") -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.run(job_type, wait_timeout=30)  # submit and wait in one request
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99) - 1] * 1000


def delay_lag(c: Client, n: int = 20) -> tuple[float, float]:
    """How late delayed jobs start after their run_at, with idle workers (ms)."""
    lags = []
    for _ in range(n):
        job = c.wait(c.submit("noop", delay=0.1), timeout=30)
        lags.append((job.started_at - job.run_at) * 1000)
    lags.sort()
    return lags[len(lags) // 2], lags[-1]


def kill_rerun(c: Client, repeats: int) -> tuple[float, float]:
    """SIGKILL the worker running a job while another worker is idle."""
    reruns, ready = [], []
    for _ in range(repeats):
        jid = c.submit("sleep", {"seconds": 2.0})
        deadline = time.monotonic() + 20
        while (job := c.get(jid)).status != "running" and time.monotonic() < deadline:
            time.sleep(0.005)
        pid = job.worker["pid"]
        before = {w["pid"] for w in c.status()["workers"]}
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        new_ready = None
        while time.monotonic() < deadline:
            st = c.status()
            fresh = [w for w in st["workers"] if w["pid"] not in before]
            if fresh and fresh[0]["state"] in ("idle", "busy"):
                new_ready = time.time()
                break
            time.sleep(0.005)
        job = c.wait(jid, timeout=30)
        second = [h for h in job.history if h["status"] == "running" and h["attempt"] == 2]
        reruns.append((second[0]["t"] - killed) * 1000)
        if new_ready:
            ready.append((new_ready - killed) * 1000)
        time.sleep(0.3)
    return statistics.median(reruns), statistics.median(ready) if ready else float("nan")


def restart_backlog(workdir: Path, n: int) -> float:
    """Start a master over n queued jobs; seconds until the first result."""
    d = Daemon(workdir / "restart")
    d.dir.mkdir(parents=True, exist_ok=True)
    d.start(workers=0, wait_workers=False)
    with Client(d.endpoint) as c:
        ids = []
        for start in range(0, n, 5000):
            ids += c.submit_many("noop", [None] * min(5000, n - start))
    d.stop()
    t0 = d.start(wait_workers=False)
    with Client(d.endpoint) as c:
        jobs = c.outcomes(ids, timeout=600)
    d.stop()
    return min(j.finished_at for j in jobs) - t0


def measure(work: Path, job_type: str, system: str, args: argparse.Namespace,
            recovery: bool) -> dict:
    """The throughput and latency workloads on one job type, in a fresh daemon, so that
    no run pays for another's data (index sizes, AOF rewrites)."""
    d = Daemon(work / job_type)
    d.dir.mkdir(parents=True)
    d.start()
    try:
        with Client(d.endpoint, timeout=60) as c:
            c.wait_many(c.submit_many(job_type, [None] * 200), timeout=60)  # warm up
            out = {"system": system, "version": "0.1.0"}
            out["throughput_bulk_jobs_s"] = throughput_bulk(c, args.jobs, job_type)
            out["throughput_jobs_s"] = throughput_single(c, args.jobs, job_type)
            out["latency_p50_ms"], out["latency_p99_ms"] = latency(c, args.latency_jobs,
                                                                   job_type)
            if recovery:
                out["kill_rerun_ms"], out["replacement_ready_ms"] = kill_rerun(c, args.kills)
                out["delay_lag_p50_ms"], out["delay_lag_max_ms"] = delay_lag(c)
    finally:
        d.stop()
    return out


def run_jobsup(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="jobsup-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        out = measure(work, "noop", "jobsup", args, recovery=True)
        guarded = measure(work, "guarded", "jobsup (policies on)", args, recovery=False)
        out["restart_first_result_s"] = restart_backlog(work, args.jobs)
    return [out, guarded]


def run_others(args: argparse.Namespace) -> list[dict]:
    venv_python = ROOT / ".venv-bench" / "bin" / "python"
    if not venv_python.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "bench_others" / "setup.sh")], check=True)
    proc = subprocess.run([str(venv_python), str(ROOT / "scripts" / "bench_others" /
                                                   "run_all.py"),
                           "--jobs", str(args.jobs), "--latency-jobs", str(args.latency_jobs)],
                          capture_output=True, text=True, timeout=3600)
    sys.stderr.write(proc.stderr[-4000:])
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


_PING = """
import os, socket, time
a, b = socket.socketpair()
if os.fork() == 0:
    a.close()
    while (d := b.recv(64)):
        b.send(d)
    os._exit(0)
b.close()
lat = []
for _ in range(3000):
    t = time.perf_counter(); a.send(b"x"); a.recv(64); lat.append(time.perf_counter() - t)
lat.sort()
print(lat[len(lat) // 2] * 1e6)
"""


def machine_noise() -> float:
    """A bare process-to-process ping-pong over a socketpair, p50 in µs: a control
    figure, since on a shared VM every system's latency moves with it."""
    out = subprocess.run([sys.executable, "-c", _PING], capture_output=True, text=True,
                         timeout=60, check=True)
    return float(out.stdout)


def fmt(value: object, spec: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--compare", action="store_true",
                        help="also run Celery, RQ and Dramatiq (installs them in .venv-bench)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"# machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"{cpu}, Python {platform.python_version()}, {platform.system()} "
          f"{platform.release()}", file=sys.stderr)
    noise = [machine_noise()]
    rows = run_jobsup(args)
    if args.compare:
        rows += run_others(args)
    noise.append(machine_noise())
    rows[0]["control_pingpong_us"] = noise
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    header = ["system", "bulk jobs/s", "1-by-1 jobs/s", "p50 ms", "p99 ms", "kill->rerun ms",
              "new worker ms", "restart->1st result s"]
    table = [header]
    for r in rows:
        table.append([
            f"{r['system']} {r.get('version', '')}",
            fmt(r.get("throughput_bulk_jobs_s"), ".0f"), fmt(r.get("throughput_jobs_s"), ".0f"),
            fmt(r.get("latency_p50_ms"), ".2f"), fmt(r.get("latency_p99_ms"), ".2f"),
            fmt(r.get("kill_rerun_ms"), ".1f"), fmt(r.get("replacement_ready_ms"), ".0f"),
            fmt(r.get("restart_first_result_s"), ".2f"),
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
    for r in rows:
        if r.get("notes"):
            print(f"# {r['system']}: {r['notes']}")
    lag = rows[0]
    print(f"# jobsup delayed jobs start {lag['delay_lag_p50_ms']:.1f} ms after run_at "
          f"(p50; max {lag['delay_lag_max_ms']:.1f} ms) with idle workers")
    print("# policies on: circuit breaker, retry budget, fallback and tags on the job type")
    print(f"# control: socketpair ping-pong p50 {noise[0]:.0f} µs before, {noise[1]:.0f} µs "
          "after (about 50 on a quiet 2-vCPU VM; higher means a noisy machine)")


if __name__ == "__main__":
    main()
