"""What an earlier master's workers left is killed before their jobs rerun.

The parent-death signal ends a worker with its SIGKILLed master, but a handler's
own child is re-parented and runs on; the next master must end it (from the
ledger of worker process groups in the state directory) before it requeues the
job, so that no old copy runs beside the new attempt.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from supervisord.pool import orphans
from tests.conftest import all_gone, gone, wait_for


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(90)
def test_a_grandchild_of_a_sigkilled_master_is_killed_before_its_job_reruns(daemon_factory,
                                                                           tmp_path):
    beat = tmp_path / "beat"
    d = daemon_factory(pools=[{"name": "default", "workers": 1}],
                       jobs={"leave": {"handler": "tests.box_handlers:leave_grandchild",
                                       "timeout": 60, "max_attempts": 3}})
    grandchild = None
    try:
        with d.client() as c:
            jid = c.submit("leave", {"beat": str(beat)})
        pidfile = Path(f"{beat}.pid")
        wait_for(lambda: pidfile.exists() and pidfile.read_text(), 20,
                 what="the grandchild to start")
        grandchild = int(pidfile.read_text())
        workers = [w["pid"] for w in d.workers()]
        ledger = json.loads((Path(d.sections["daemon"]["state_dir"]) / orphans.FILE)
                            .read_text())
        assert [e["pid"] for e in ledger["workers"]] == workers
        assert os.getpgid(grandchild) == workers[0]  # in its worker's process group

        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait(10)
        wait_for(lambda: all_gone(workers), 10, what="the dead master's worker to exit")
        # The bug: the grandchild outlives its worker and keeps beating.
        time.sleep(0.3)
        assert not gone(grandchild)
        before = _mtime(beat)
        wait_for(lambda: _mtime(beat) != before, 5, what="the orphan's heartbeat")

        d.start()
        with d.client() as c:
            job = c.wait(jid, timeout=30)
        assert job.status == "succeeded", job.error
        # The rerun found the old grandchild gone: it was killed before the requeue.
        assert job.result["grandchild"] == grandchild
        assert job.result["grandchild_alive"] is False
        assert gone(grandchild)
        stopped = _mtime(beat)
        time.sleep(0.3)
        assert _mtime(beat) == stopped  # no more heartbeats
        assert job.attempt == 1  # an interrupted attempt is requeued, not burned
        reruns = [h for h in job.history if h.get("reason") == "interrupted"]
        assert len(reruns) == 1, job.history
        log = d.log.read_text()
        assert f"killing pid {grandchild}" in log, log[-3000:]
    finally:
        if grandchild is not None and not gone(grandchild):
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)


@pytest.mark.timeout(30)
def test_the_ledger_spares_a_reused_group_number_and_older_processes(tmp_path):
    """Create times guard against pid reuse: a process now holding a recorded worker's
    number with another create time, and a process older than the worker, are spared."""
    me = psutil.Process()
    path = tmp_path / orphans.FILE
    # Our own process group, recorded as if a worker younger than us had led it.
    pgid = os.getpgid(0)
    leader = psutil.Process(pgid) if psutil.pid_exists(pgid) else None
    entries = [{"pid": pgid, "pgid": pgid, "created": me.create_time() + 100.0}]
    path.write_text(json.dumps({"master": -1, "boot": psutil.boot_time(), "workers": entries}))
    assert orphans.leftovers(path) == []
    if leader is not None:
        entries = [{"pid": pgid, "pgid": pgid, "created": leader.create_time()}]
        path.write_text(json.dumps({"master": -1, "boot": psutil.boot_time() - 3600,
                                    "workers": entries}))
        assert orphans.leftovers(path) == []  # rebooted since: nothing can be left
    path.write_text("{not json")
    assert orphans.leftovers(path) == []
    assert orphans.leftovers(tmp_path / "missing.json") == []
