"""jobsup benchmarks: throughput, round trip, crash recovery, restart with a backlog.

Run through ``scripts/bench`` (which sets up the virtualenv).  Every figure is
measured against a real daemon with its embedded Redis (AOF, appendfsync
everysec) and 2 workers, on whatever machine runs it; ``--compare`` runs the
same workloads on Celery, RQ and Dramatiq in the same run and prints them
side by side.  ``--tcp`` puts the daemon's API on TCP loopback (the default
config's transport) instead of a unix socket; ``--polls`` also counts the
master's poll system calls per job under strace (slow: extra runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
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

SLOW_MS = 20.0  # a round trip longer than this is an outlier, listed by index
_POLLS = ("poll", "ppoll", "epoll_wait", "epoll_pwait")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, workdir: Path, workers: int = 2, tcp: bool = False,
                 listen: str = "", redis: str = 'url = "embedded"') -> None:
        self.dir = workdir
        self.redis = redis  # the [redis] section's lines
        self.listen = listen  # metrics.listen: "" = no HTTP side
        if tcp:
            self.endpoint = f"tcp://127.0.0.1:{_free_port()}"
            self.events = f"tcp://127.0.0.1:{_free_port()}"
        else:
            self.endpoint = f"ipc://{workdir}/api.sock"
            self.events = f"ipc://{workdir}/events.sock"
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
{self.redis}
[api]
endpoint = "{self.endpoint}"
events = "{self.events}"
[metrics]
listen = "{self.listen}"
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


def latency(c: Client, n: int, job_type: str = "noop") -> dict:
    """Sequential round trips: p50, p99 and max (ms), and those over SLOW_MS by index."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.run(job_type, wait_timeout=30)  # submit and wait in one request
        samples.append(time.perf_counter() - t0)
    slow = [[i, round(s * 1000, 2)] for i, s in enumerate(samples) if s * 1000 > SLOW_MS]
    samples.sort()
    return {"latency_p50_ms": samples[len(samples) // 2] * 1000,
            "latency_p99_ms": samples[int(len(samples) * 0.99) - 1] * 1000,
            "latency_max_ms": samples[-1] * 1000,
            "latency_over_20ms": len(slow), "latency_slow": slow}


class Meter:
    """The master's CPU time (utime+stime, all threads) and voluntary context switches
    (all threads: each is a poll, or another wait, that blocked) across a workload."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.ok = Path(f"/proc/{pid}/stat").exists()  # Linux

    def sample(self) -> tuple[float, int]:
        stat = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        cpu = (int(stat[11]) + int(stat[12])) / self.tick  # fields 14 and 15
        switches = 0
        for status in Path(f"/proc/{self.pid}/task").glob("*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue  # a thread that just ended
            for line in text.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    switches += int(line.split()[1])
        return cpu, switches

    def around(self, out: dict, name: str, n: int, work, *args):
        """Run work(*args); put the master's CPU µs and context switches per job in out."""
        if not self.ok:
            return work(*args)
        cpu0, sw0 = self.sample()
        result = work(*args)
        cpu1, sw1 = self.sample()
        out[f"master_cpu_us_per_job_{name}"] = (cpu1 - cpu0) / n * 1e6
        out[f"master_vcsw_per_job_{name}"] = (sw1 - sw0) / n
        return result


def strace_polls(pid: int, n: int, log: Path, work, *args) -> dict | None:
    """The master's poll system calls per job (all threads) while work(*args) runs
    under ``strace -f -c``, by call; None without strace or where it cannot attach.
    strace stops the master at every system call, so the run itself is slower."""
    strace = shutil.which("strace") or ("/usr/bin/strace" if os.path.exists("/usr/bin/strace")
                                        else None)
    if strace is None:
        return None
    summary = log.with_suffix(".summary")
    with open(log, "wb") as err:
        tracer = subprocess.Popen([strace, "-f", "-c", "-e", "trace=" + ",".join(_POLLS),
                                   "-o", str(summary), "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and tracer.poll() is None:
        tasks = list(Path(f"/proc/{pid}/task").glob("*/status"))
        if tasks and all(_tracer_of(t) == tracer.pid for t in tasks):
            break
        time.sleep(0.02)
    else:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        print(f"# strace could not attach to the master (see {log})", file=sys.stderr)
        return None
    try:
        work(*args)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    if not summary.exists():
        return None
    calls = {}
    for line in summary.read_text().splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[-1] in _POLLS and cells[3].isdigit():
            calls[cells[-1]] = int(cells[3]) / n
    return calls


def _tracer_of(status: Path) -> int:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


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


def restart_backlog(workdir: Path, n: int, tcp: bool = False) -> float:
    """Start a master over n queued jobs; seconds until the first result."""
    d = Daemon(workdir / "restart", tcp=tcp)
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
    d = Daemon(work / job_type, tcp=args.tcp)
    d.dir.mkdir(parents=True)
    d.start()
    try:
        with Client(d.endpoint, timeout=60) as c:
            c.wait_many(c.submit_many(job_type, [None] * 200), timeout=60)  # warm up
            out = {"system": system, "version": "0.1.0"}
            meter = Meter(c.ping()["pid"])
            out["throughput_bulk_jobs_s"] = meter.around(out, "bulk", args.jobs,
                                                         throughput_bulk, c, args.jobs, job_type)
            out["throughput_jobs_s"] = meter.around(out, "single", args.jobs,
                                                    throughput_single, c, args.jobs, job_type)
            out.update(meter.around(out, "roundtrip", args.latency_jobs,
                                    latency, c, args.latency_jobs, job_type))
            if args.polls:  # after the timed runs, which strace would slow
                for name, n, work in (("bulk", args.jobs, throughput_bulk),
                                      ("single", args.jobs, throughput_single),
                                      ("roundtrip", args.latency_jobs, latency)):
                    out[f"master_polls_per_job_{name}"] = strace_polls(
                        meter.pid, n, d.dir / f"strace-{name}.log", work, c, n, job_type)
            if recovery:
                out["kill_rerun_ms"], out["replacement_ready_ms"] = kill_rerun(c, args.kills)
                out["delay_lag_p50_ms"], out["delay_lag_max_ms"] = delay_lag(c)
    finally:
        d.stop()
    return out


def latency_only(args: argparse.Namespace) -> dict:
    """Round trips alone, in a fresh daemon: p50/p99/max, outliers, the master's cost."""
    with tempfile.TemporaryDirectory(prefix="jobsup-bench-", dir="/tmp") as tmp:
        d = Daemon(Path(tmp) / "noop", tcp=args.tcp)
        d.dir.mkdir(parents=True)
        d.start()
        try:
            with Client(d.endpoint, timeout=60) as c:
                c.wait_many(c.submit_many("noop", [None] * 200), timeout=60)  # warm up
                out = {"system": "jobsup", "version": "0.1.0", "endpoint": d.endpoint}
                meter = Meter(c.ping()["pid"])
                out.update(meter.around(out, "roundtrip", args.latency_jobs,
                                        latency, c, args.latency_jobs))
                if args.polls:
                    out["master_polls_per_job_roundtrip"] = strace_polls(
                        meter.pid, args.latency_jobs, d.dir / "strace-roundtrip.log",
                        latency, c, args.latency_jobs)
        finally:
            d.stop()
    return out


def run_jobsup(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="jobsup-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        out = measure(work, "noop", "jobsup", args, recovery=True)
        guarded = measure(work, "guarded", "jobsup (policies on)", args, recovery=False)
        out["restart_first_result_s"] = restart_backlog(work, args.jobs, args.tcp)
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


def print_master(r: dict, latency_jobs: int) -> None:
    """The '#' lines of one jobsup row: outliers, and what the master spent per job."""
    if "latency_max_ms" in r:
        slow = r.get("latency_slow", [])
        listed = ", ".join(f"#{i} {ms:.1f}" for i, ms in slow[:20]) + (
            f", ... ({len(slow) - 20} more)" if len(slow) > 20 else "")
        print(f"# {r['system']}: round trips max {r['latency_max_ms']:.2f} ms; "
              f"{len(slow)} of {latency_jobs} over {SLOW_MS:.0f} ms" +
              (f" (index ms: {listed})" if slow else ""))
    runs = [(name, label) for name, label in (("bulk", "bulk"), ("single", "1-by-1"),
                                              ("roundtrip", "round trips"))
            if f"master_cpu_us_per_job_{name}" in r]
    if runs:
        print(f"# {r['system']}: master per job: CPU " + ", ".join(
            f"{r[f'master_cpu_us_per_job_{n}']:.0f} µs {label}" for n, label in runs) +
            "; voluntary context switches " + ", ".join(
            f"{r[f'master_vcsw_per_job_{n}']:.2f} {label}" for n, label in runs))
    polls = [(label, r[f"master_polls_per_job_{n}"]) for n, label in runs
             if f"master_polls_per_job_{n}" in r]
    if polls:
        print(f"# {r['system']}: master poll calls per job (strace -f, all threads): " +
              ", ".join(f"{label} " + ("-" if calls is None else f"{sum(calls.values()):.2f}"
                                       + " (" + ", ".join(f"{k} {v:.2f}" for k, v in
                                                          sorted(calls.items())) + ")")
                        for label, calls in polls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-jobs", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--compare", action="store_true",
                        help="also run Celery, RQ and Dramatiq (installs them in .venv-bench)")
    parser.add_argument("--tcp", action="store_true",
                        help="jobsup's API on tcp://127.0.0.1 (the default config's) instead "
                             "of a unix socket")
    parser.add_argument("--polls", action="store_true",
                        help="also count the master's poll calls per job with strace (extra, "
                             "slower runs)")
    parser.add_argument("--latency-only", action="store_true",
                        help="only jobsup's round trips (--latency-jobs of them), for chasing "
                             "outliers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"# machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"{cpu}, Python {platform.python_version()}, {platform.system()} "
          f"{platform.release()}", file=sys.stderr)
    noise = [machine_noise()]
    if args.latency_only:
        row = latency_only(args)
        noise.append(machine_noise())
        row["control_pingpong_us"] = noise
        if args.json:
            print(json.dumps([row], indent=2))
            return
        print(f"# jobsup round trips over {row['endpoint']}: p50 {row['latency_p50_ms']:.2f} ms, "
              f"p99 {row['latency_p99_ms']:.2f} ms")
        print_master(row, args.latency_jobs)
        print(f"# control: socketpair ping-pong p50 {noise[0]:.0f} µs before, "
              f"{noise[1]:.0f} µs after")
        return
    rows = run_jobsup(args)
    if args.compare:
        rows += run_others(args)
    noise.append(machine_noise())
    rows[0]["control_pingpong_us"] = noise
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    header = ["system", "bulk jobs/s", "1-by-1 jobs/s", "p50 ms", "p99 ms", "max ms",
              f">{SLOW_MS:.0f} ms", "kill->rerun ms", "new worker ms", "restart->1st result s"]
    table = [header]
    for r in rows:
        table.append([
            f"{r['system']} {r.get('version', '')}",
            fmt(r.get("throughput_bulk_jobs_s"), ".0f"), fmt(r.get("throughput_jobs_s"), ".0f"),
            fmt(r.get("latency_p50_ms"), ".2f"), fmt(r.get("latency_p99_ms"), ".2f"),
            fmt(r.get("latency_max_ms"), ".2f"), fmt(r.get("latency_over_20ms"), "d"),
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
    for r in rows[:2]:  # jobsup's
        print_master(r, args.latency_jobs)
    lag = rows[0]
    print(f"# jobsup delayed jobs start {lag['delay_lag_p50_ms']:.1f} ms after run_at "
          f"(p50; max {lag['delay_lag_max_ms']:.1f} ms) with idle workers")
    print("# policies on: circuit breaker, retry budget, fallback and tags on the job type")
    print(f"# control: socketpair ping-pong p50 {noise[0]:.0f} µs before, {noise[1]:.0f} µs "
          "after (about 50 on a quiet 2-vCPU VM; higher means a noisy machine)")


if __name__ == "__main__":
    main()
