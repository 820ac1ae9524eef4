"""Expiry (``max_age``) and cost (``cost``) per job type, against real daemons.

A job past its type's ``max_age`` must end ``failed`` with kind ``expired``
and never reach its handler, whether it waited in the queue, was scheduled
with a delay, or was recovered by a restarted master; ``cost`` must show up
per attempt in ``jobs_cost_total`` and, for attempts after the first, in
``retry_cost_total``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import scrape_metrics, wait_for

RECORD = "tests.handlers:record_run"


def _runs(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _expired(job) -> bool:
    return (job.status == "failed" and job.error is not None
            and job.error["kind"] == "expired" and "max_age of 1s" in job.error["message"])


@pytest.mark.timeout(60)
def test_queued_and_delayed_jobs_past_max_age_expire_without_running(daemon_factory,
                                                                     tmp_path: Path):
    runs = tmp_path / "runs.txt"
    d = daemon_factory(pools=[{"name": "default", "workers": 1}],
                       jobs={"fresh": {"handler": RECORD, "max_age": 1.0, "timeout": 30}})
    with d.client() as c:
        blocker = c.submit("fresh", {"file": str(runs), "sleep": 2.5})
        wait_for(lambda: c.get(blocker).status == "running", 10, what="the blocker to start")
        queued = c.submit_many("fresh", [{"file": str(runs)} for _ in range(3)])
        delayed = c.submit("fresh", {"file": str(runs)}, delay=1.5)
        done = c.wait_many([blocker, *queued, delayed], timeout=30)
        assert done[0].status == "succeeded"  # it started within its max_age
        for job in done[1:]:
            assert _expired(job), job
            assert job.started_at is None and job.attempt == 1
            assert job.history[-1]["kind"] == "expired"
        assert _runs(runs) == [blocker]
        # A job that finds a worker in time still runs.
        assert c.wait(c.submit("fresh", {"file": str(runs)}), timeout=20).status == "succeeded"
        assert len(_runs(runs)) == 2
        assert queued[0] in {j.id for j in c.dead_letters()}
        port = c.status()["metrics_port"]
    m = scrape_metrics(port)
    key = frozenset({("type", "fresh"), ("kind", "expired")})
    assert m[("jobsup_jobs_failed_total", key)] == 4


@pytest.mark.timeout(90)
def test_jobs_expire_when_a_restarted_master_recovers_its_queue(daemon_factory,
                                                                tmp_path: Path):
    runs = tmp_path / "runs.txt"
    d = daemon_factory(pools=[{"name": "default", "workers": 1}],
                       jobs={"fresh": {"handler": RECORD, "max_age": 1.0, "timeout": 30}})
    with d.client() as c:
        busy = c.submit("fresh", {"file": str(runs), "sleep": 30})
        wait_for(lambda: _runs(runs) == [busy], 10, what="the busy job to start")
        queued = c.submit_many("fresh", [{"file": str(runs)} for _ in range(3)])
    d.kill()  # SIGKILL the master and its worker with the job running
    time.sleep(1.5)  # the queued jobs are now past max_age
    d.start()
    with d.client() as c:
        done = c.wait_many(queued, timeout=30)
        assert all(_expired(job) for job in done), done
        # The job that was running had started in time: it is rerun, not expired.
        wait_for(lambda: _runs(runs) == [busy, busy], 15, what="the busy job to rerun")
        # The handler runs before its start is written (a start is written after 5 ms).
        wait_for(lambda: c.get(busy).status == "running", 10, what="the rerun's start")
        rerun = c.get(busy)
        assert rerun.status == "running" and rerun.attempt == 1
        assert any(h["status"] == "queued" for h in rerun.history[1:])
        c.cancel(busy)


@pytest.mark.timeout(60)
def test_cost_counts_every_attempt_and_retries_apart(daemon_factory):
    d = daemon_factory(jobs={
        "paid": {"handler": "examples.demo:noop", "timeout": 30, "cost": 0.25},
        "doomed": {"handler": "examples.demo:fail", "timeout": 30, "max_attempts": 3,
                   "backoff": {"base": 0.01, "max": 0.05}, "cost": 1.5},
    })
    with d.client() as c:
        ok = c.wait_many(c.submit_many("paid", [None] * 4), timeout=20)
        assert {j.status for j in ok} == {"succeeded"}
        bad = c.wait_many(c.submit_many("doomed", [None] * 2), timeout=30)
        assert [j.status for j in bad] == ["failed", "failed"]
        assert [j.attempt for j in bad] == [3, 3]
        port = c.status()["metrics_port"]
    m = scrape_metrics(port)
    paid, doomed = frozenset({("type", "paid")}), frozenset({("type", "doomed")})
    assert m[("jobsup_jobs_cost_total", paid)] == pytest.approx(1.0)
    assert m.get(("jobsup_retry_cost_total", paid), 0.0) == 0.0
    assert m[("jobsup_jobs_cost_total", doomed)] == pytest.approx(2 * 3 * 1.5)
    assert m[("jobsup_retry_cost_total", doomed)] == pytest.approx(2 * 2 * 1.5)
    # A type without a cost has no cost series at all.
    assert not any(name.endswith("cost_total") and ("type", "noop") in labels
                   for name, labels in m)
