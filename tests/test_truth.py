"""Status tells the truth (DESIGN.md section 3, last guarantee).

- A cancel of a job that has started reaches its handler, and the record shows
  ``cancelled`` only once the handler has stopped, also in the first
  milliseconds of a run, while its start may not be written to Redis yet.
- ``queue_depth`` (the metric and ``Client.status()``'s pool ``queued``)
  counts every job waiting to start, also those the node holds (prefetched)
  ahead of its workers.

Real daemon, real workers, real Redis; the handlers live in ``tests/handlers.py``
and talk to the test through marker files.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import scrape_metrics, wait_for

COOP = {"coop": {"handler": "tests.handlers:cooperative", "timeout": 30, "max_attempts": 1}}
HOLD = {"hold": {"handler": "tests.handlers:hold", "timeout": 60, "max_attempts": 1}}
_TERMINAL = ("succeeded", "failed", "cancelled")


def _poll_file(path: Path, timeout: float) -> bool:
    """Wait for ``path`` to exist, looking every millisecond."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


# -- 1. a cancel reaches the handler; cancelled only once it has stopped ---------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_cancel_right_after_start_reaches_handler_and_settles_after_it_stops(
        daemon_factory, tmp_path, workers):
    d = daemon_factory(pools=[{"name": "default", "workers": workers}], jobs=COOP)
    with d.client(timeout=15) as c:
        for i in range(20):
            where = tmp_path / f"run{i}"
            where.mkdir()
            started, saw, stopped = where / "started", where / "saw_cancel", where / "stopped"
            jid = c.submit("coop", {"dir": str(where), "seconds": 5.0, "linger": 0.1})
            assert _poll_file(started, 10), f"run {i}: job {jid} never started"
            reply = c.cancel(jid)  # as soon as the handler's first line has run

            # The first read of the record that says cancelled must come after the
            # handler wrote its "stopped" marker (in its finally, before returning).
            deadline = time.monotonic() + 15
            while True:
                job = c.get(jid)
                if job.status in _TERMINAL:
                    stopped_then = stopped.exists()
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"run {i}: job {jid} still {job.status} 15 s after the cancel")
                time.sleep(0.001)
            assert job.status == "cancelled", (
                f"run {i}: job {jid} ended {job.status}, not cancelled (cancel replied "
                f"{reply}); error {job.error}")
            assert stopped_then, (
                f"run {i}: job {jid} read 'cancelled' while its handler was still running "
                f"(no 'stopped' marker yet; saw_cancel marker: {saw.exists()}; cancel replied "
                f"{reply}); history {job.history}")
            assert saw.exists(), (
                f"run {i}: the handler of {jid} stopped without ever seeing ctx.cancelled "
                f"(cancel replied {reply}); history {job.history}")
            assert job.error and job.error.get("kind") == "cancelled", job.error


# -- 2. queue_depth counts the jobs a node holds ahead of its workers -----------------------
def _depths(c, port: int) -> tuple[float | None, int | None]:
    gauge = scrape_metrics(port).get(("jobsup_queue_depth", frozenset({("pool", "default")})))
    pool = next(p for p in c.status()["pools"] if p["name"] == "default")
    return gauge, pool["queued"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("submitted", [3, 5])
def test_queue_depth_counts_jobs_held_ahead_of_workers(daemon_factory, tmp_path, submitted):
    d = daemon_factory(pools=[{"name": "default", "workers": 2}], jobs=HOLD)
    release = tmp_path / "release"
    waiting = submitted - 2
    with d.client(timeout=15) as c:
        port = c.status()["metrics_port"]
        ids = [c.submit("hold", {"release": str(release), "seconds": 40, "n": n})
               for n in range(submitted)]
        try:
            def both_busy() -> bool:
                ws = c.status()["workers"]
                return sum(1 for w in ws if w["state"] == "busy") == 2
            wait_for(both_busy, 20, 0.02, "both workers to be busy")

            seen: list[tuple] = []
            deadline = time.monotonic() + 8  # the gauge updates about once a second
            while True:
                gauge, queued = _depths(c, port)
                pool = next(p for p in c.status()["pools"] if p["name"] == "default")
                seen.append((gauge, queued, pool.get("prefetched")))
                if gauge == waiting and queued == waiting:
                    break
                if time.monotonic() > deadline:
                    distinct = sorted(set(seen), key=str)
                    pytest.fail(
                        f"{submitted} submitted, 2 running: {waiting} wait to start, but "
                        f"(jobsup_queue_depth, status queued, prefetched) read {seen[-1]} "
                        f"(last of {len(seen)} reads over 8 s; distinct: {distinct})")
                time.sleep(0.2)
        finally:
            release.touch()
        jobs = c.wait_many(ids, timeout=40)
    assert [j.status for j in jobs] == ["succeeded"] * submitted
    assert all(j.result["released"] for j in jobs), [j.result for j in jobs]

    def drained() -> bool:
        return _depths(c2, port) == (0, 0)
    with d.client() as c2:
        wait_for(drained, 10, 0.2, "queue depth back to 0 once every job ran")
