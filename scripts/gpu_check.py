"""The checks of ``scripts/gpu-check``: a real daemon on a real NVIDIA GPU.

Each check prints one line, ``gpu-check: PASS|FAIL|SKIP name: detail``; the exit
status is 1 if any check failed.  Everything it starts is killed by pid at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from supervisord.client import Client  # noqa: E402
from supervisord.pool.gpus import Gpus  # noqa: E402

MiB = 1024**2
results: list[bool] = []


def report(ok: bool | None, name: str, detail: str) -> None:
    word = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    print(f"gpu-check: {word} {name}: {detail}", flush=True)
    if ok is not None:
        results.append(ok)


def wait_for(probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = probe()
            if value:
                return value
        time.sleep(0.1)
    return None


def config(work: Path, devices: int) -> Path:
    path = work / "jobsup.toml"
    path.write_text(f"""
[daemon]
state_dir = "{work}/state"
rss_check_interval = 0.1
[redis]
url = "embedded"
[api]
endpoint = "ipc://{work}/api.sock"
events = "ipc://{work}/events.sock"
[metrics]
listen = "127.0.0.1:0"

[[pools]]
name = "gpu"
workers = {min(devices, 2)}
gpus = "auto"
memory_limit = "8GiB"      # RLIMIT_DATA, the default kind: CUDA must initialise under it

[[pools]]
name = "capped"
workers = 1
gpus = "auto"
memory_limit = "8GiB"
max_gpu_memory = "256MiB"

[jobs.alloc]
handler = "examples.cuda:allocate"
pool = "gpu"
timeout = 120
max_attempts = 1

[jobs.leak]
handler = "examples.cuda:allocate"
pool = "capped"
timeout = 120
max_attempts = 1
""")
    return path


def metric(port: int, name: str) -> list[tuple[str, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            out.append((labels, float(value)))
    return out


def check_discovery(devices: list[int], log: Path) -> None:
    text = log.read_text()
    found = f"{len(devices)} GPU(s) through NVML" in text
    line = next((x for x in text.splitlines() if "gpus:" in x), "no 'gpus:' log line")
    report(found, "nvml discovery", line.split("gpus:", 1)[-1].strip())


def check_pinning_and_cuda(c: Client, devices: list[int]) -> None:
    ids = [c.submit("alloc", {"mib": 64, "hold": 1.5}) for _ in range(min(len(devices), 2))]
    jobs = [c.wait(i, timeout=120) for i in ids]
    failed = [j for j in jobs if j.status != "succeeded"]
    report(not failed, "cuda under the memory rlimit",
           "cuInit, a context and a 64 MiB allocation succeeded under RLIMIT_DATA 8GiB"
           if not failed else f"{failed[0].error}")
    if failed:
        return
    pins = [(j.result["pid"], j.result["visible"], j.result["gpu"], j.result["devices_seen"])
            for j in jobs]
    ok = all(v == str(g[0]) and seen == 1 for _, v, g, seen in pins)
    by_worker = {pid: v for pid, v, _, _ in pins}
    ok = ok and len(set(by_worker.values())) == len(by_worker)  # two workers, two devices
    report(ok, "CUDA_VISIBLE_DEVICES pinning",
           "; ".join(f"worker pid {pid}: CUDA_VISIBLE_DEVICES={v}, ctx.gpu={g}, CUDA sees {s} "
                     "device(s)" for pid, v, g, s in pins))


def check_nvml_reading(c: Client) -> None:
    jid = c.submit("alloc", {"mib": 512, "hold": 8})

    def seen() -> int | None:
        job = c.get(jid)
        if job.status != "running" or not job.progress:
            return None
        pid = int((job.worker or {}).get("pid") or 0)
        for w in c.status()["workers"]:
            if w["pid"] == pid and (w.get("gpu_memory") or 0) >= 512 * MiB:
                return w["gpu_memory"]
        return None

    got = wait_for(seen, 30)
    port = c.status()["metrics_port"]
    gauge = max((v for _, v in metric(port, "jobsup_worker_gpu_memory_bytes")), default=0)
    used = metric(port, "jobsup_gpu_memory_used_bytes")
    util = metric(port, "jobsup_gpu_utilization_ratio")
    c.wait(jid, timeout=60)
    report(bool(got) and gauge >= 512 * MiB and bool(used),
           "nvml reading of the worker's GPU memory",
           f"status gpu_memory {got} bytes for a 512 MiB allocation; worker gauge max "
           f"{gauge:.0f}; gpu_memory_used_bytes {used}; gpu_utilization_ratio {util}")


def check_kill(c: Client) -> None:
    job = c.wait(c.submit("leak", {"mib": 1024, "hold": 60}), timeout=90)
    err = job.error or {}
    ok = job.status == "failed" and err.get("kind") == "memory" and \
        "GPU memory" in err.get("message", "")
    report(ok, "max_gpu_memory kill", f"{job.status}, {err.get('kind')}: {err.get('message')}")


def check_cgroup_v2() -> None:
    controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    if not controllers.exists() or "memory" not in controllers.read_text().split():
        report(None, "cgroup v2 caps", "/sys/fs/cgroup/cgroup.controllers does not list memory")
        return
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_cgroups.py", "-k", "workers_run_capped"],
        capture_output=True, text=True, cwd=ROOT, timeout=200)
    tail = (res.stdout.strip().splitlines() or ["no output"])[-1]
    if "skipped" in tail and "passed" not in tail:
        reason = next((x for x in res.stdout.splitlines() if x.startswith("SKIPPED")), tail)
        report(None, "cgroup v2 caps", reason)
    else:
        report(res.returncode == 0, "cgroup v2 caps",
               tail if res.returncode == 0 else res.stdout[-1500:] + res.stderr[-500:])


def main() -> int:
    gpus = Gpus.open()
    devices, why = gpus.devices, gpus.why
    gpus.close()
    if not devices:
        report(False, "nvml discovery", f"no GPU: {why}")
        return 1
    with tempfile.TemporaryDirectory(prefix="jobsup-gpu-check-") as tmp:
        work = Path(tmp)
        log = work / "daemon.log"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
        env.pop("CUDA_VISIBLE_DEVICES", None)
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "supervisord", "-c",
                                     str(config(work, len(devices))), "run"],
                                    stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            with Client(f"ipc://{work}/api.sock", timeout=30) as c:
                ready = wait_for(lambda: all(p["idle"] >= p["target"]
                                             for p in c.status()["pools"]), 60)
                if not ready:
                    report(False, "daemon start", log.read_text()[-2000:])
                    return 1
                check_discovery(devices, log)
                check_pinning_and_cuda(c, devices)
                check_nvml_reading(c)
                check_kill(c)
        finally:
            pids = [p.pid for p in _tree(proc.pid)]
            for pid in [proc.pid, *pids]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(10)
    check_cgroup_v2()
    print(f"gpu-check: {sum(results)} passed, {len(results) - sum(results)} failed", flush=True)
    return 0 if all(results) else 1


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


if __name__ == "__main__":
    raise SystemExit(main())
