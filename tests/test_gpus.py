"""GPUs: ``gpus = "auto"`` and ``max_gpu_memory`` on a box without one (real daemons),
the watchdog's NVML path with a fake NVML sample over a real process tree, and
``scripts/gpu-check`` wherever an NVIDIA GPU is present.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from supervisord.config import validate
from supervisord.pool.gpus import DeviceReading, Gpus, GpuSample
from supervisord.pool.watchdog import Watchdog
from supervisord.pool.workers import WorkerHandle, Workers
from supervisord.settings import Settings
from supervisord.states import KillReason
from supervisord.web.metrics import Metrics
from tests.conftest import ROOT, all_gone, wait_for, write_config

GiB = 1024**3


def _gpus_here() -> tuple[list[int], str]:
    gpus = Gpus.open()
    try:
        return gpus.devices, gpus.why
    finally:
        gpus.close()


DEVICES, NO_GPU_WHY = _gpus_here()
NVML = Gpus.open()
HAS_NVML = NVML.available
NVML.close()


def jobsup(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "supervisord", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.mark.timeout(60)
@pytest.mark.skipif(bool(DEVICES), reason="this box has GPUs: scripts/gpu-check covers it")
def test_auto_without_a_gpu_means_no_gpus_said_in_the_log(daemon_factory):
    d = daemon_factory(
        pools=[{"name": "default", "workers": 1, "gpus": "auto"}],
        jobs={"env": {"handler": "tests.box_handlers:environment", "timeout": 30}})
    with d.client() as c:
        job = c.wait(c.submit("env", {}), timeout=30)
        st = c.status()
    assert job.status == "succeeded", job.error
    # No pinning: the worker sees whatever the daemon itself was started with.
    assert job.result["cuda_visible_devices"] == os.environ.get("CUDA_VISIBLE_DEVICES")
    assert job.result["gpu"] is None
    log = d.log.read_text()
    assert f"gpus: no GPUs: {NO_GPU_WHY}" in log, log[-2000:]
    [w] = st["workers"]
    assert w["gpu"] is None and w["gpu_memory"] is None
    table = d.cli("status")
    assert table.returncode == 0, table.stderr
    assert "GPU MEM" in table.stdout


@pytest.mark.timeout(60)
@pytest.mark.skipif(HAS_NVML, reason="NVML answers on this box: max_gpu_memory can be enforced")
def test_max_gpu_memory_without_nvml_is_refused_by_config_check_and_run(tmp_path):
    path = write_config(tmp_path / "gpu.toml", {
        "daemon": {"state_dir": str(tmp_path / "state")},
        "redis": {"url": f"unix://{tmp_path}/none.sock"},
        "api": {"endpoint": f"ipc://{tmp_path}/api.sock", "events": f"ipc://{tmp_path}/ev.sock"},
        "metrics": {"listen": ""},
        "pools": [{"name": "gpu", "workers": 1, "gpus": "auto", "max_gpu_memory": "8GiB"},
                  {"name": "cpu", "workers": 1}],
        "jobs": {"noop": {"handler": "examples.demo:noop", "pool": "cpu"}},
    })
    for args in (("config", "check", str(path)), ("-c", str(path), "run")):
        res = jobsup(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "pools.gpu.max_gpu_memory" in res.stderr, res.stderr
        assert "without NVML" in res.stderr and "pools.cpu" not in res.stderr, res.stderr
    assert not (tmp_path / "api.sock").exists()  # refused before anything was started


class NoPoller:
    def add(self, fd: int) -> None: ...

    def want_write(self, fd: int, on: bool) -> None: ...

    def remove(self, fd: int) -> None: ...


class FakeNvml(Gpus):
    """NVML as the watchdog sees it, with readings the test chooses."""

    def __init__(self, sample: GpuSample) -> None:
        super().__init__()
        self._sample = sample

    @property
    def devices(self) -> list[int]:
        return [d.index for d in self._sample.devices]

    def sample(self) -> GpuSample:
        return self._sample


_TREE = ("import subprocess, sys, time\n"
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
         "time.sleep(60)\n")


@pytest.mark.timeout(30)
def test_watchdog_sums_gpu_memory_per_worker_tree_sets_gauges_and_kills_over_the_limit():
    """A real two-process tree stands for a worker whose child holds 3 GiB of GPU memory."""
    trees = [subprocess.Popen([sys.executable, "-c", _TREE], start_new_session=True)
             for _ in range(2)]
    pids = [t.pid for t in trees]
    try:
        import psutil

        kids = wait_for(lambda: [psutil.Process(p).children() for p in pids] if all(
            psutil.Process(p).children() for p in pids) else None, 10, what="the trees")
        capped, free = kids[0][0].pid, kids[1][0].pid
        sample = GpuSample(
            devices=(DeviceReading(0, 7 * GiB, 80 * GiB, 0.5),),
            processes={capped: 3 * GiB, pids[0]: 512, free: 5 * GiB, 999_999: 9 * GiB})
        settings = Settings.build(validate({
            "daemon": {"node_id": "n1"},
            "pools": [{"name": "gpu", "workers": 1, "max_gpu_memory": "2GiB"},
                      {"name": "big", "workers": 1}],
            "jobs": {"a": {"handler": "examples.demo:noop", "pool": "gpu"}}}))
        workers = Workers(settings, NoPoller())
        handles = []
        for wid, (pool, pid) in enumerate(zip(("gpu", "big"), pids, strict=True), start=1):
            w = WorkerHandle(wid=wid, pool=pool, slot=0, child=SimpleNamespace(pid=pid),
                             gpu=[0], generation=0, chan=None, control=None)
            workers.pools[pool].workers[wid] = workers.by_wid[wid] = w
            handles.append(w)
        m = Metrics()
        Watchdog(settings, workers, m.rss, FakeNvml(sample), m.gpu).sample_memory()

        over, under = handles
        assert over.gpu_memory == 3 * GiB + 512  # the worker and its child, nothing else
        assert under.gpu_memory == 5 * GiB
        assert over.kill_reason is KillReason.MEMORY and under.kill_reason is None
        assert "GPU memory" in over.kill_why and "max_gpu_memory" in over.kill_why
        value = m.registry.get_sample_value
        assert value("jobsup_worker_gpu_memory_bytes", {"pool": "gpu", "worker": "1"}) == (
            3 * GiB + 512)
        assert value("jobsup_worker_gpu_memory_bytes", {"pool": "big", "worker": "2"}) == 5 * GiB
        assert value("jobsup_gpu_memory_used_bytes", {"gpu": "0"}) == 7 * GiB
        assert value("jobsup_gpu_utilization_ratio", {"gpu": "0"}) == 0.5
        # The kill was real: the whole capped tree is gone, the other one runs on.
        trees[0].wait(10)
        wait_for(lambda: all_gone([capped]), 10, what="the capped tree's child to die")
        assert trees[1].poll() is None
    finally:
        for t in trees:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(t.pid, signal.SIGKILL)
            t.wait(10)


def _no_nvidia_gpu() -> str:
    if not DEVICES:
        return f"no NVIDIA GPU on this box ({NO_GPU_WHY}); scripts/gpu-check needs one"
    return ""


@pytest.mark.timeout(900)
@pytest.mark.skipif(bool(_no_nvidia_gpu()), reason=_no_nvidia_gpu() or "-")
def test_gpu_check_passes_on_a_real_gpu():
    res = subprocess.run([str(Path(ROOT) / "scripts" / "gpu-check")], capture_output=True,
                         text=True, timeout=850, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAIL" not in res.stdout, res.stdout
