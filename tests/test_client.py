"""The Python client against a real daemon: the API of DESIGN.md section 5, ordering,
delays, events, metrics and retries."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from supervisord import Client, errors
from tests.conftest import Daemon, scrape_metrics, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def c(shared: Daemon) -> Iterator[Client]:
    with shared.client() as client:
        yield client


# -- submit, get, wait, cancel, jobs, status -----------------------------------------


def test_submit_with_options(c):
    jid = c.submit("add", {"a": 1, "b": 2}, priority=5, timeout=12, max_attempts=4,
                   tags={"user": "opts", "team": "t"}, key="opts-key-1")
    job = c.get(jid)
    assert job.id == jid
    assert job.type == "add"
    assert job.pool == "default"
    assert job.payload == {"a": 1, "b": 2}
    assert job.priority == 5
    assert job.timeout == 12
    assert job.max_attempts == 4
    assert job.tags == {"user": "opts", "team": "t"}
    assert job.key == "opts-key-1"
    assert job.status in ("queued", "running", "succeeded")
    done = c.wait(jid, timeout=20)
    assert (done.status, done.result, done.attempt) == ("succeeded", 3, 1)
    assert done.terminal
    assert done.progress == 100
    assert done.error is None
    assert done.created_at <= done.started_at <= done.finished_at


def test_defaults_from_job_type(c):
    job = c.wait(c.submit("noop"), timeout=20)
    assert job.priority == 0
    assert job.max_attempts == 3  # the type's default
    assert job.tags in ({}, None)
    assert job.key is None
    assert job.result is None
    assert job.status == "succeeded"


def test_idempotency_key(c):
    first = c.submit("echo", {"n": 1}, key="idem-1")
    again = c.submit("echo", {"n": 2}, key="idem-1")
    other = c.submit("echo", {"n": 3}, key="idem-2")
    assert first == again
    assert other != first
    assert c.wait(first, timeout=20).result == {"n": 1}
    # Also after the job finished, and inside submit_many.
    assert c.submit("echo", {"n": 4}, key="idem-1") == first
    ids = c.submit_many("echo", [{"n": 5}, {"n": 6}, {"n": 7}],
                        keys=["idem-1", "idem-3", "idem-3"])
    assert ids[0] == first
    assert ids[1] == ids[2] != first
    assert c.wait(ids[1], timeout=20).result == {"n": 6}


def test_submit_many_returns_ids_in_order(c):
    payloads = [{"i": i} for i in range(50)]
    ids = c.submit_many("echo", payloads, tags={"batch": "order"})
    assert len(ids) == len(set(ids)) == 50
    jobs = c.wait_many(ids, timeout=30)
    assert [j.id for j in jobs] == ids
    assert [j.result for j in jobs] == payloads
    assert {j.tags["batch"] for j in jobs} == {"order"}


def test_outcomes_return_results_and_errors_in_order(c):
    ids = c.submit_many("echo", [{"i": i} for i in range(20)])
    fail = c.submit("fail", {"how": "permanent"})
    outcomes = c.outcomes([*ids, fail], timeout=30)
    assert [o.id for o in outcomes] == [*ids, fail]
    assert [o.result for o in outcomes[:20]] == [{"i": i} for i in range(20)]
    assert all(o.ok and o.type == "echo" and o.finished_at for o in outcomes[:20])
    failed = outcomes[-1]
    assert (failed.status, failed.ok, failed.error["kind"]) == ("failed", False, "permanent")
    # The same answers as the whole records give.
    records = c.wait_many([*ids, fail], timeout=5)
    assert [(r.status, r.result, r.attempt, r.finished_at) for r in records] == [
        (o.status, o.result, o.attempt, o.finished_at) for o in outcomes]


def test_large_payloads_and_results_cross_the_worker_channel(c):
    """Near max_payload each, and several at once: more than a socket buffer holds, so
    the master queues what the channel does not take and sends it when writable."""
    payloads = [{"i": i, "blob": f"{i}" * 900_000} for i in range(8)]
    ids = c.submit_many("echo", payloads)
    outcomes = c.outcomes(ids, timeout=60)
    assert [o.status for o in outcomes] == ["succeeded"] * 8
    assert [o.result for o in outcomes] == payloads


def test_get_unknown_id(c):
    with pytest.raises(errors.NotFound):
        c.get("nosuchjob0000000")
    with pytest.raises(errors.NotFound):
        c.wait("nosuchjob0000000", timeout=1)
    with pytest.raises(errors.NotFound):
        c.cancel("nosuchjob0000000")


def test_wait_timeout_raises(c):
    jid = c.submit("sleep", {"seconds": 30})
    try:
        t0 = time.monotonic()
        with pytest.raises(errors.Timeout):
            c.wait(jid, timeout=0.2)
        assert time.monotonic() - t0 < 5
        assert c.get(jid).status in ("queued", "running")
        assert c.ping()["node"] == "test-node"  # the connection is still good
    finally:
        c.cancel(jid)
    job = c.wait(jid, timeout=20)
    assert job.status == "cancelled"
    assert job.error["kind"] == "cancelled"


def test_wait_raise_on_failure(c):
    jid = c.submit("fail", {"how": "permanent"})
    with pytest.raises(errors.JobFailed):
        c.wait(jid, timeout=20, raise_on_failure=True)
    job = c.get(jid)
    assert job.status == "failed"
    assert job.error["kind"] == "permanent"
    assert job.attempt == 1


def test_cancel_running_and_delayed(c):
    running = c.submit("sleep", {"seconds": 30})
    wait_for(lambda: c.get(running).status == "running", 20, 0.05, "the job to start")
    assert c.cancel(running)["status"] in ("cancelling", "cancelled")
    job = c.wait(running, timeout=20)
    assert job.status == "cancelled"
    assert job.finished_at - job.started_at < 15

    delayed = c.submit("noop", delay=60)
    assert c.get(delayed).status == "scheduled"
    assert c.cancel(delayed)["status"] == "cancelled"
    job = c.get(delayed)
    assert job.status == "cancelled"
    assert job.started_at is None
    assert c.cancel(delayed)["status"] == "cancelled"  # already final: same answer


def test_jobs_filters(c):
    mine = [c.submit("add", {"a": n, "b": 0}, tags={"user": "list-u1"}) for n in range(4)]
    theirs = c.submit("add", {"a": 9, "b": 0}, tags={"user": "list-u2"})
    c.wait_many([*mine, theirs], timeout=20)
    found = c.jobs(tag=("user", "list-u1"))
    assert [j.id for j in found] == mine[::-1]
    found = c.jobs(status="succeeded", type="add", tag=("user", "list-u1"), limit=2)
    assert [j.id for j in found] == mine[::-1][:2]
    assert c.jobs(status="failed", tag=("user", "list-u1")) == []
    page1, cursor = c.jobs_page(tag=("user", "list-u1"), limit=3)
    page2, _ = c.jobs_page(tag=("user", "list-u1"), limit=3, cursor=cursor)
    assert [j.id for j in page1 + page2] == mine[::-1]


def test_status(c, shared):
    st = c.status()
    assert st["node"] == "test-node"
    assert st["redis"]["up"] is True
    assert [p["name"] for p in st["pools"]] == ["default"]
    assert st["pools"][0]["target"] == 2
    assert len(st["workers"]) == 2
    for w in st["workers"]:
        assert w["pool"] == "default"
        assert w["pid"] in shared.descendants()
        assert w["rss"] > 0
    assert isinstance(st["metrics_port"], int) and st["metrics_port"] > 0


# -- ordering ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("prefetch", [None, 0], ids=["default-prefetch", "no-prefetch"])
def test_priority_then_fifo(daemon_factory, prefetch):
    pool = {"name": "default", "workers": 1}
    if prefetch is not None:
        pool["prefetch"] = prefetch
    d = daemon_factory(pools=[pool])
    with d.client() as c:
        blocker = c.submit("sleep", {"seconds": 1.0})
        wait_for(lambda: c.get(blocker).status == "running", 20, 0.02, "the blocker to run")
        low = [c.submit("noop", priority=0, tags={"n": str(n)}) for n in range(3)]
        high = [c.submit("noop", priority=10, tags={"n": str(n)}) for n in range(3)]
        mid = c.submit("noop", priority=5)
        assert c.get(blocker).status == "running", "the blocker must outlast the submits"
        jobs = {j.id: j for j in c.wait_many([*low, *high, mid], timeout=30)}
    order = sorted(jobs, key=lambda i: jobs[i].started_at)
    names = {**{i: f"high{n}" for n, i in enumerate(high)}, mid: "mid",
             **{i: f"low{n}" for n, i in enumerate(low)}}
    assert [names[i] for i in order] == ["high0", "high1", "high2", "mid", "low0", "low1",
                                         "low2"]


@pytest.mark.timeout(90)
def test_fifo_within_equal_priority(daemon_factory):
    d = daemon_factory(pools=[{"name": "default", "workers": 1}])
    with d.client() as c:
        blocker = c.submit("sleep", {"seconds": 0.5})
        wait_for(lambda: c.get(blocker).status == "running", 20, 0.02, "the blocker to run")
        ids = [c.submit("noop") for _ in range(5)] + c.submit_many("noop", [None] * 5)
        jobs = c.wait_many(ids, timeout=30)
    starts = [j.started_at for j in jobs]
    assert starts == sorted(starts)


def test_delay(c):
    jid = c.submit("echo", {"late": True}, delay=1.0)
    job = c.get(jid)
    assert job.status == "scheduled"
    assert job.run_at == pytest.approx(job.created_at + 1.0, abs=0.01)
    job = c.wait(jid, timeout=20)
    assert job.status == "succeeded"
    assert job.result == {"late": True}
    assert job.started_at >= job.created_at + 1.0
    assert job.started_at < job.created_at + 10
    assert [h["status"] for h in job.history] == ["scheduled", "queued", "running",
                                                  "succeeded"]


# -- events -----------------------------------------------------------------------------


def test_events_for_a_job(c):
    jid = c.submit("sleep", {"seconds": 1.0})
    events = list(c.events(jid, timeout=30))
    first, last = events[0], events[-1]
    assert first["event"] == "state"
    assert first["job"] == jid
    assert first["status"] in ("queued", "running")
    assert last["event"] == "state"
    assert last["status"] == "succeeded"
    assert all(e["job"] == jid for e in events)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress, events
    assert all(0 <= e["progress"] <= 100 for e in progress)
    values = [e["progress"] for e in progress]
    assert values == sorted(values)
    states = [e["status"] for e in events if e["event"] == "state"]
    assert "running" in states
    assert states.count("succeeded") == 1


def test_events_for_a_finished_job_end_at_once(c):
    jid = c.submit("noop")
    c.wait(jid, timeout=20)
    events = list(c.events(jid, timeout=5))
    assert len(events) == 1
    assert events[0]["status"] == "succeeded"


# -- metrics and retries -----------------------------------------------------------------


def metric(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.mark.timeout(90)
def test_metrics(daemon):
    with daemon.client() as c:
        port = c.status()["metrics_port"]
        ids = c.submit_many("echo", [{"n": n} for n in range(10)])
        fail = c.submit("fail", {"how": "exception"})
        crash = c.submit("crash", {"crash_on": [1]})
        jobs = c.wait_many([*ids, fail, crash], timeout=40)
        assert [j.status for j in jobs] == ["succeeded"] * 10 + ["failed", "succeeded"]

        running = c.submit("sleep", {"seconds": 30})
        try:
            wait_for(lambda: metric(scrape_metrics(port), "jobsup_jobs_running",
                                    pool="default") == 1,
                     20, 0.1, "jobs_running to show the sleep job")
        finally:
            c.cancel(running)
            c.wait(running, timeout=20)

    def settled() -> dict | None:
        m = scrape_metrics(port)
        want = {("jobsup_jobs_running", "default"): 0, ("jobsup_queue_depth", "default"): 0,
                ("jobsup_workers", "idle"): 2}
        got = {("jobsup_jobs_running", "default"): metric(m, "jobsup_jobs_running",
                                                          pool="default"),
               ("jobsup_queue_depth", "default"): metric(m, "jobsup_queue_depth",
                                                         pool="default"),
               ("jobsup_workers", "idle"): metric(m, "jobsup_workers", pool="default",
                                                  state="idle")}
        if got == want and metric(m, "jobsup_dead_letter_jobs") == 1:
            return m
        return None

    m = wait_for(settled, 20, 0.2, "the gauges to settle")
    assert metric(m, "jobsup_jobs_submitted_total", type="echo") == 10
    assert metric(m, "jobsup_jobs_started_total", type="echo") == 10
    assert metric(m, "jobsup_jobs_succeeded_total", type="echo") == 10
    assert metric(m, "jobsup_jobs_submitted_total", type="fail") == 1
    assert metric(m, "jobsup_jobs_started_total", type="fail") == 2  # one per attempt
    assert metric(m, "jobsup_jobs_failed_total", type="fail", kind="exception") == 1
    assert metric(m, "jobsup_jobs_retried_total", type="fail", kind="exception") == 1
    assert metric(m, "jobsup_jobs_retried_total", type="crash", kind="crash") == 1
    assert metric(m, "jobsup_jobs_succeeded_total", type="crash") == 1
    assert metric(m, "jobsup_worker_restarts_total", pool="default", reason="crash") == 1
    assert metric(m, "jobsup_job_duration_seconds_count", type="echo") == 10
    assert 0 <= metric(m, "jobsup_job_duration_seconds_sum", type="echo") < 10
    assert metric(m, "jobsup_job_queue_wait_seconds_count", type="echo") == 10
    assert 0 <= metric(m, "jobsup_job_queue_wait_seconds_sum", type="echo") < 60
    assert metric(m, "jobsup_job_duration_seconds_bucket", type="echo", le="+Inf") == 10
    assert metric(m, "jobsup_redis_up") == 1
    assert metric(m, "jobsup_pool_degraded", pool="default") == 0
    assert metric(m, "jobsup_workers", pool="default", state="busy") == 0
    assert metric(m, "jobsup_jobs_failed_total", type="echo", kind="exception") is None


@pytest.mark.timeout(90)
def test_retry_then_fail(daemon):
    with daemon.client() as c:
        port = c.status()["metrics_port"]
        job = c.wait(c.submit("fail", {"how": "exception"}), timeout=30)
    assert job.status == "failed"
    assert job.attempt == 2
    assert job.max_attempts == 2
    assert job.error["kind"] == "exception"
    assert "the handler broke" in job.error["message"]
    assert "RuntimeError" in (job.error.get("traceback") or "")
    failures = [h for h in job.history if h.get("kind") == "exception"]
    assert len(failures) == 2
    assert [h["attempt"] for h in failures] == [1, 2]
    assert failures[-1]["status"] == "failed"
    states = [h["status"] for h in job.history]
    assert states[:2] == ["queued", "running"]
    assert states[-2:] == ["running", "failed"]
    assert states.count("running") == 2
    assert set(states[2:-2]) <= {"scheduled", "queued"}  # backoff, then due
    m = scrape_metrics(port)
    assert metric(m, "jobsup_jobs_retried_total", type="fail", kind="exception") == 1
    assert metric(m, "jobsup_jobs_failed_total", type="fail", kind="exception") == 1


@pytest.mark.timeout(90)
def test_one_client_outlives_a_daemon_restart(daemon_factory):
    """The client's connection breaks when the daemon stops; its next call opens a new
    one, and a call cut off mid-wait says so at once instead of waiting out its timeout."""
    d = daemon_factory()
    with d.client(timeout=30) as c:
        assert c.run("add", {"a": 1, "b": 2}).result == 3
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
        with pytest.raises(errors.Unavailable, match="no jobsup daemon answers"):
            c.call("ping")
        d.start()
        assert c.run("add", {"a": 2, "b": 2}).result == 4  # the same client, reconnected
        job = c.submit("sleep", {"seconds": 20})
        killer = threading.Timer(1.0, d.kill)  # SIGKILL while the wait below is under way
        killer.start()
        t0 = time.monotonic()
        with pytest.raises(errors.Unavailable, match="lost the connection"):
            c.wait(job, timeout=25)
        assert time.monotonic() - t0 < 10
        killer.join()
