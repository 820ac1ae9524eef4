"""Fault tests: real worker processes, real signals, a real daemon and Redis.

Every test here breaks something on purpose (SIGKILL a worker mid-job, SIGSTOP
one, blow a timeout or a memory cap, SIGKILL the master) and checks that the
job ends where DESIGN.md section 3 says it must, with the reason in its
history, and that the pool heals itself.  Nothing is mocked.

Processes a test starts or stops itself are cleaned up by pid in ``finally``
blocks; the ``daemon_factory`` fixture kills the daemons and their trees.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import psutil
import pytest

from tests.conftest import Daemon, wait_for

# The box has two cores and other suites may run beside this one: waits are
# generous, and bounds on timing are asserted only where the contract gives one.
JOB_WAIT = 40.0


# -- helpers ----------------------------------------------------------------------------------
def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def worker_pids(d: Daemon, pool: str | None = None) -> set[int]:
    return {w["pid"] for w in d.workers() if pool is None or w["pool"] == pool}


def wait_idle(d: Daemon, n: int, pool: str | None = None, timeout: float = 30.0
              ) -> list[dict]:
    """Wait until ``n`` workers (of ``pool``) are up and idle; returns them."""
    def idle() -> list[dict]:
        ws = [w for w in d.workers() if pool is None or w["pool"] == pool]
        ready = [w for w in ws if w["state"] == "idle"]
        return ready if len(ready) == n and len(ws) == n else []
    return wait_for(idle, timeout, 0.05, f"{n} idle worker(s) in pool {pool or '*'}")


def wait_replaced(d: Daemon, old_pid: int, n: int, pool: str | None = None) -> set[int]:
    """Wait until ``old_pid`` has left the pool and the pool is back to ``n`` live workers."""
    def healed() -> set[int]:
        ws = [w for w in d.workers() if pool is None or w["pool"] == pool]
        pids = {w["pid"] for w in ws if w["state"] in ("idle", "busy")}
        return pids if len(ws) == n and len(pids) == n and old_pid not in pids else set()
    return wait_for(healed, 30.0, 0.05, f"worker {old_pid} to be replaced")


def running_pid(c, jid: str) -> int | None:
    """The pid of the worker running ``jid``, once the job is ``running``."""
    job = c.get(jid)
    if job.status == "running" and job.worker:
        return job.worker["pid"]
    return None


def rlimit(pid: int, name: str) -> tuple[str, str]:
    """(soft, hard) of one row of /proc/PID/limits, e.g. ``Max data size``."""
    text = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(rf"^{re.escape(name)}\s+(\S+)\s+(\S+)", text, re.MULTILINE)
    assert match, f"no {name!r} row in /proc/{pid}/limits:\n{text}"
    return match.group(1), match.group(2)


def cleanup(procs: list[psutil.Process]) -> None:
    """SIGCONT then SIGKILL processes this test touched; psutil refuses reused pids."""
    for proc in procs:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                proc.send_signal(sig)
            except psutil.Error:
                break


def history_of(job, **match) -> list[dict]:
    return [h for h in job.history if all(h.get(k) == v for k, v in match.items())]


# -- 1. a worker dies mid-job -----------------------------------------------------------------
@pytest.mark.timeout(60)
def test_sigkill_worker_mid_job_requeues_and_succeeds(daemon):
    wait_idle(daemon, 2)
    with daemon.client() as c:
        jid = c.submit("sleep", {"seconds": 5})
        pid = wait_for(lambda: running_pid(c, jid), 15, what="the sleep job to run")
        victim = psutil.Process(pid)
        try:
            os.kill(pid, signal.SIGKILL)
            job = c.wait(jid, timeout=JOB_WAIT)
        finally:
            cleanup([victim])
    assert job.status == "succeeded", job
    assert job.attempt == 2
    crashes = history_of(job, kind="crash")
    assert len(crashes) == 1, job.history
    assert crashes[0]["status"] == "queued"  # back to the queue, not failed
    assert crashes[0]["attempt"] == 1
    assert "SIGKILL" in crashes[0]["message"], crashes[0]
    assert str(pid) in crashes[0]["message"]
    second = history_of(job, status="running", attempt=2)
    assert len(second) == 1 and second[0]["pid"] != pid, job.history
    assert job.worker["pid"] != pid
    assert job.result["slept"] == 5
    pids = wait_replaced(daemon, pid, 2)
    assert pid not in pids


# -- 2. a poison pill -------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_poison_pill_fails_after_max_crashes_others_succeed(daemon):
    wait_idle(daemon, 2)
    with daemon.client() as c:
        bad = c.submit("crash", None)
        ids = c.submit_many("echo", [{"n": n} for n in range(20)])
        job = c.wait(bad, timeout=JOB_WAIT)
        others = c.wait_many(ids, timeout=JOB_WAIT)
    assert job.status == "failed", job
    assert job.error["kind"] == "crash"
    crashes = history_of(job, kind="crash")
    assert len(crashes) == 2, job.history  # max_crashes = 2 (the default), not max_attempts
    assert [h["status"] for h in crashes] == ["queued", "failed"]
    assert "poison" in crashes[-1]["reason"]
    assert all("exit" in h["message"] and "13" in h["message"] for h in crashes), crashes
    assert [o.status for o in others] == ["succeeded"] * 20
    assert [o.result for o in others] == [{"n": n} for n in range(20)]
    wait_idle(daemon, 2)


# -- 3. hard timeouts -------------------------------------------------------------------------
SPAWN_TIMEOUT = {"spawn": {"handler": "examples.demo:spawn", "timeout": 1.0,
                           "max_attempts": 1}}


@pytest.mark.timeout(60)
def test_hard_timeout_kills_worker_and_grandchild(daemon_factory, tmp_path):
    d = daemon_factory(jobs=SPAWN_TIMEOUT)
    wait_idle(d, 2)
    pidfile = tmp_path / "grandchild.pid"
    touched: list[psutil.Process] = []
    try:
        with d.client() as c:
            jid = c.submit("spawn", {"seconds": 60, "pidfile": str(pidfile)})
            wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 15,
                     what="the handler to start its grandchild")
            grandchild = int(pidfile.read_text())
            touched.append(psutil.Process(grandchild))  # alive now: the handler waits on it
            job = c.wait(jid, timeout=JOB_WAIT)
        assert job.status == "failed", job
        assert job.error["kind"] == "timeout"
        assert job.attempt == 1
        assert len(history_of(job, kind="timeout")) == 1, job.history
        worker_pid = job.worker["pid"]
        wait_for(lambda: gone(grandchild), 5, what=f"grandchild {grandchild} to be gone")
        wait_replaced(d, worker_pid, 2)
        assert gone(worker_pid)
    finally:
        cleanup(touched)


@pytest.mark.timeout(60)
def test_hard_timeout_retried_then_failed(daemon_factory, tmp_path):
    jobs = {"spawn": {"handler": "examples.demo:spawn", "timeout": 1.0, "max_attempts": 2,
                      "backoff": {"base": 0.05, "max": 0.1}}}
    d = daemon_factory(jobs=jobs)
    wait_idle(d, 2)
    with d.client() as c:
        jid = c.submit("spawn", {"seconds": 60})
        job = c.wait(jid, timeout=JOB_WAIT)
    assert job.status == "failed", job
    assert job.error["kind"] == "timeout"
    assert job.attempt == 2
    timeouts = history_of(job, kind="timeout")
    assert [h["attempt"] for h in timeouts] == [1, 2], job.history
    assert timeouts[0]["status"] in ("queued", "scheduled")  # retried with backoff
    assert timeouts[1]["status"] == "failed"
    assert len(history_of(job, status="running")) == 2
    wait_idle(d, 2)


@pytest.mark.timeout(60)
def test_per_submit_timeout_override(daemon):
    wait_idle(daemon, 2)
    with daemon.client() as c:
        jid = c.submit("sleep", {"seconds": 10}, timeout=0.5, max_attempts=1)
        job = c.wait(jid, timeout=JOB_WAIT)
    assert job.status == "failed", job
    assert job.error["kind"] == "timeout"
    assert job.timeout == 0.5
    assert "0.5s" in job.error["message"], job.error
    wait_replaced(daemon, job.worker["pid"], 2)


# -- 4. a hung worker -------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_sigstopped_worker_killed_by_heartbeat_and_job_requeued(daemon):
    hb_timeout = daemon.sections["daemon"]["heartbeat_timeout"]
    wait_idle(daemon, 2)
    with daemon.client() as c:
        jid = c.submit("sleep", {"seconds": 3})
        pid = wait_for(lambda: running_pid(c, jid), 15, what="the sleep job to run")
        victim = psutil.Process(pid)
        try:
            os.kill(pid, signal.SIGSTOP)
            wait_for(lambda: gone(pid), hb_timeout + 7.0,
                     what=f"the master to kill stopped worker {pid}")
            job = c.wait(jid, timeout=JOB_WAIT)
        finally:
            cleanup([victim])
    assert job.status == "succeeded", job
    assert job.attempt == 2
    hung = [h for h in job.history if h.get("attempt") == 1 and h.get("kind")]
    assert len(hung) == 1, job.history
    assert hung[0]["status"] in ("queued", "scheduled")
    assert "heartbeat" in hung[0]["message"], hung[0]
    assert job.worker["pid"] != pid
    wait_replaced(daemon, pid, 2)


# -- 5. memory caps ---------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_memory_rlimit_applied_and_enforced(daemon_factory):
    limit = 300 * 1024 * 1024
    d = daemon_factory(pools=[
        {"name": "default", "workers": 2, "memory_limit": "300MiB"},
        {"name": "as", "workers": 1, "memory_limit": "300MiB", "memory_limit_kind": "as"},
    ])
    workers = wait_idle(d, 2, "default")
    as_workers = wait_idle(d, 1, "as")
    for w in workers:
        assert rlimit(w["pid"], "Max data size") == (str(limit), str(limit))
        assert rlimit(w["pid"], "Max address space")[0] == "unlimited"
    assert rlimit(as_workers[0]["pid"], "Max address space") == (str(limit), str(limit))

    with d.client() as c:
        hog = c.submit("hog", {"mib": 600})
        ids = c.submit_many("echo", [{"n": n} for n in range(10)])
        job = c.wait(hog, timeout=JOB_WAIT)
        others = c.wait_many(ids, timeout=JOB_WAIT)
    assert job.status == "failed", job
    assert job.error["kind"] == "memory", job.error
    assert "MemoryError" in job.error["message"]
    assert [o.status for o in others] == ["succeeded"] * 10
    hog_pid = job.worker["pid"]
    new = wait_replaced(d, hog_pid, 2, "default")
    for pid in new:
        assert rlimit(pid, "Max data size") == (str(limit), str(limit))


@pytest.mark.timeout(60)
def test_max_rss_watchdog_kills_worker(daemon_factory):
    d = daemon_factory(pools=[{"name": "default", "workers": 2, "max_rss": "150MiB"}])
    wait_idle(d, 2)
    with d.client() as c:
        hog = c.submit("hog", {"mib": 400, "step": 16, "hold": 20})
        echo = c.submit("echo", {"still": "fine"})
        job = c.wait(hog, timeout=JOB_WAIT)
        other = c.wait(echo, timeout=JOB_WAIT)
    assert job.status == "failed", job
    assert job.error["kind"] == "memory", job.error
    assert "max_rss" in job.error["message"]
    assert other.status == "succeeded" and other.result == {"still": "fine"}
    hog_pid = job.worker["pid"]
    assert gone(hog_pid)
    wait_replaced(d, hog_pid, 2)


# -- 6. the master dies -----------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_workers_exit_when_master_is_sigkilled(daemon):
    wait_idle(daemon, 2)
    with daemon.client() as c:
        c.submit("sleep", {"seconds": 30})  # one worker busy, one idle: both must go
        wait_for(lambda: any(w["state"] == "busy" for w in daemon.workers()), 15,
                 what="a worker to be busy")
    pids = worker_pids(daemon)
    assert len(pids) == 2
    procs = [psutil.Process(p) for p in pids]
    try:
        daemon.signal(signal.SIGKILL)
        daemon.wait_exit(10)
        wait_for(lambda: all(gone(p) for p in pids), 2.0, 0.02,
                 what=f"workers {sorted(pids)} to exit after the master was SIGKILLed")
    finally:
        cleanup(procs)


# -- 7. GPU pinning ---------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_gpu_pinning_one_device_per_worker(daemon_factory):
    d = daemon_factory(pools=[{"name": "default", "workers": 2, "gpus": [0, 1]}])
    workers = wait_idle(d, 2)
    assert sorted(tuple(w["gpu"]) for w in workers) == [(0,), (1,)]
    with d.client() as c:
        ids = c.submit_many("sleep", [{"seconds": 0.5}, {"seconds": 0.5}])
        jobs = c.wait_many(ids, timeout=JOB_WAIT)
    assert [j.status for j in jobs] == ["succeeded", "succeeded"], jobs
    results = [j.result for j in jobs]
    assert len({r["pid"] for r in results}) == 2, results
    assert sorted(r["cuda_visible_devices"] for r in results) == ["0", "1"]
    assert sorted(tuple(r["gpu"]) for r in results) == [(0,), (1,)]
    for r in results:
        assert r["cuda_visible_devices"] == str(r["gpu"][0])


# -- 8. the pool's init hook ------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_init_hook_state_reaches_handlers(daemon_factory):
    d = daemon_factory(
        pools=[{"name": "default", "workers": 2, "init": "tests.handlers:init_state"}],
        jobs={"read_state": {"handler": "tests.handlers:read_state", "timeout": 30}})
    wait_idle(d, 2)
    with d.client() as c:
        ids = c.submit_many("read_state", [None] * 6)
        jobs = c.wait_many(ids, timeout=JOB_WAIT)
    assert [j.status for j in jobs] == ["succeeded"] * 6, jobs
    for j in jobs:
        r = j.result
        assert r["state"]["model"] == "loaded"
        assert r["state"]["weights"] == [1, 2, 3]
        assert r["state"]["init_pid"] == r["pid"] == j.worker["pid"]  # ran in that worker
        assert r["init_calls"] == 1  # once per worker, not per job


# -- 9. recycling -----------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_max_jobs_per_worker_recycles_workers(daemon_factory):
    d = daemon_factory(pools=[{"name": "default", "workers": 2, "max_jobs_per_worker": 3}])
    first = {w["pid"] for w in wait_idle(d, 2)}
    with d.client() as c:
        ids = c.submit_many("add", [{"a": n, "b": 1} for n in range(7)])
        jobs = c.wait_many(ids, timeout=JOB_WAIT)
    assert [j.status for j in jobs] == ["succeeded"] * 7, jobs
    assert [j.result for j in jobs] == [n + 1 for n in range(7)]
    ran_on: dict[int, int] = {}
    for j in jobs:
        ran_on[j.worker["pid"]] = ran_on.get(j.worker["pid"], 0) + 1
    assert max(ran_on.values()) <= 3, ran_on
    assert len(ran_on) >= 3, ran_on  # 7 jobs at 3 per worker take at least 3 workers
    now = {w["pid"] for w in wait_idle(d, 2)}
    assert now != first
    assert first - now, (first, now)  # at least one of the first workers was recycled
    assert all(gone(p) for p in first - now)
