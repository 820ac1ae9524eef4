"""Supervision policies end to end: circuits, fallback, budgets, schemas, restarts, cancel."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from supervisord.errors import ValidationError
from tests.conftest import wait_for


def scrape(daemon) -> str:
    with daemon.client() as c:
        port = c.status()["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """Value of one sample (0 when absent); labels must match exactly those given."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def circuit_of(c, job_type: str) -> dict:
    return next(x for x in c.status()["circuits"] if x["type"] == job_type)


@pytest.mark.timeout(90)
def test_circuit_opens_holds_its_type_and_closes_after_a_trial(daemon_factory, tmp_path: Path):
    flag = tmp_path / "down"
    flag.write_text("")
    d = daemon_factory(jobs={"dep": {"handler": "tests.handlers:switch", "max_attempts": 1,
                                     "circuit_breaker": {"failures": 3, "open_for": 1.5}}})
    with d.client() as c:
        first = [c.submit("dep", {"flag": str(flag), "n": n}) for n in range(3)]
        assert {j.status for j in c.wait_many(first, timeout=30)} == {"failed"}
        wait_for(lambda: circuit_of(c, "dep")["state"] == "open", 10, what="circuit to open")
        # The gauge follows once the master has read the write's reply (Redis has the
        # state a moment before): it may lag the status by a loop pass.
        wait_for(lambda: sample(scrape(d), "jobsup_circuit_state", type="dep") == 2, 5,
                 what="the circuit gauge to read open")

        held = [c.submit("dep", {"flag": str(flag), "n": n}) for n in range(3, 6)]
        others = c.wait_many(c.submit_many("echo", [{"x": n} for n in range(20)]), timeout=30)
        assert {j.status for j in others} == {"succeeded"}  # other types keep flowing
        assert {c.get(i).status for i in held} == {"queued"}

        # Still down when open_for ends: exactly one trial runs, fails, and reopens it.
        wait_for(lambda: sum(c.get(i).status == "failed" for i in held) == 1, 15,
                 what="one trial job")
        wait_for(lambda: circuit_of(c, "dep")["state"] == "open", 10, what="circuit to reopen")
        assert sum(c.get(i).status == "queued" for i in held) == 2

        flag.unlink()  # the dependency is back: the next trial succeeds and closes it
        jobs = c.wait_many(held, timeout=30)
        assert sorted(j.status for j in jobs) == ["failed", "succeeded", "succeeded"]
        assert circuit_of(c, "dep")["state"] == "closed"
    assert "circuit of dep opened" in d.log.read_text()
    assert "circuit of dep is now half_open" in d.log.read_text()
    assert "circuit of dep is now closed" in d.log.read_text()


@pytest.mark.timeout(60)
def test_fallback_after_retries_links_both_ways(daemon_factory):
    d = daemon_factory(jobs={
        "primary": {"handler": "examples.demo:fail", "max_attempts": 2,
                    "backoff": {"base": 0.01, "max": 0.02}, "fallback": "echo"}})
    with d.client() as c:
        jid = c.submit("primary", {"how": "exception"})
        job = c.wait(jid, timeout=20)
        assert job.status == "failed" and job.attempt == 2
        fallback_id = job.model_extra["fallback_job"]
        fb = c.wait(fallback_id, timeout=20)
        assert fb.status == "succeeded" and fb.type == "echo"
        assert fb.result == {"how": "exception"}  # the same payload
        assert fb.model_extra["fallback_of"] == jid
        assert c.dead_letters() == []  # its fallback carries on; not a dead letter


@pytest.mark.timeout(60)
def test_open_circuit_reroutes_to_fallback(daemon_factory):
    d = daemon_factory(jobs={
        "dep": {"handler": "tests.handlers:always_transient", "max_attempts": 1,
                "circuit_breaker": {"failures": 2, "open_for": 60}, "fallback": "echo"}})
    with d.client() as c:
        for jid in [c.submit("dep", {"n": n}) for n in range(2)]:
            c.wait(jid, timeout=20)
        wait_for(lambda: circuit_of(c, "dep")["state"] == "open", 10, what="circuit to open")
        later = c.submit("dep", {"n": 9})
        job = c.wait(later, timeout=20)
        assert job.status == "succeeded" and job.type == "echo" and job.result == {"n": 9}
        assert job.model_extra["rerouted_from"] == "dep"
        assert any("re-routed to echo" in h["reason"] for h in job.history)


@pytest.mark.timeout(60)
def test_retry_budget_makes_failures_final(daemon_factory):
    d = daemon_factory(jobs={
        "down": {"handler": "tests.handlers:always_transient", "max_attempts": 50,
                 "backoff": {"base": 0.01, "max": 0.02}, "retry_budget": 3}})
    with d.client() as c:
        job = c.wait(c.submit("down"), timeout=30)
    assert job.status == "failed" and job.attempt == 4
    assert "retry budget of 3/min spent" in job.history[-1]["reason"]
    assert sample(scrape(d), "jobsup_jobs_retried_total", type="down", kind="transient") == 3
    assert sample(scrape(d), "jobsup_jobs_failed_total", type="down", kind="transient") == 1


@pytest.mark.timeout(120)
def test_realistic_run_transient_failures_all_succeed_and_metrics_agree(daemon_factory):
    d = daemon_factory(jobs={"flaky": {"handler": "examples.demo:flaky", "max_attempts": 20,
                                       "backoff": {"base": 0.005, "max": 0.05}}})
    with d.client() as c:
        jobs = c.wait_many(c.submit_many("flaky", [{"rate": 0.2}] * 200), timeout=100)
    assert {j.status for j in jobs} == {"succeeded"}
    retried = sum(1 for j in jobs for h in j.history if h.get("kind") == "transient")
    assert retried == sum(j.attempt - 1 for j in jobs)
    assert retried > 0
    text = scrape(d)
    assert sample(text, "jobsup_jobs_retried_total", type="flaky", kind="transient") == retried
    assert sample(text, "jobsup_jobs_failed_total", type="flaky", kind="transient") == 0
    assert sample(text, "jobsup_jobs_succeeded_total", type="flaky") == 200
    assert sample(text, "jobsup_jobs_started_total", type="flaky") == 200 + retried


@pytest.mark.timeout(60)
def test_rate_limited_waits_without_burning_attempts(daemon_factory):
    d = daemon_factory(jobs={"limited": {"handler": "examples.demo:fail", "max_attempts": 1,
                                         "max_rate_limited": 2}})
    with d.client() as c:
        # Long enough for the CLI (a new process) to see the job while it is scheduled.
        jid = c.submit("limited", {"how": "rate_limited", "retry_after": 1.5})
        wait_for(lambda: c.get(jid).status == "scheduled", 10, what="a scheduled retry")
        shown = d.cli("job", jid)
        assert "next run" in shown.stdout and "rate_limited" in shown.stdout
        job = c.wait(jid, timeout=20)
    assert job.status == "failed" and job.attempt == 1
    assert [h.get("kind") for h in job.history].count("rate_limited") == 3
    assert "rate limited 2 times" in job.history[-1]["reason"]


@pytest.mark.timeout(60)
def test_schema_validates_at_submit_and_handler_gets_the_model(daemon_factory, redis_server):
    d = daemon_factory(jobs={"upper": {"handler": "examples.demo:upper",
                                       "schema": "examples.demo:EchoInput"}})
    r = redis_server.client()
    with d.client() as c:
        before = r.dbsize()
        with pytest.raises(ValidationError) as err:
            c.submit("upper", {"times": "many"})
        fields = {e["loc"] for e in err.value.errors}
        assert {"text", "times"} <= fields
        assert r.dbsize() == before
        job = c.wait(c.submit("upper", {"text": "ab", "times": 2}), timeout=20)
    assert job.result == "ABAB"
    out = d.cli("submit", "upper", json.dumps({"times": 1}))
    assert out.returncode == 2 and "text" in out.stderr


@pytest.mark.timeout(60)
def test_cancel_running_job_cooperative_and_forced(daemon_factory):
    d = daemon_factory(jobs={"stubborn": {"handler": "tests.handlers:stubborn",
                                          "cancel_grace": 0.5}})
    with d.client() as c:
        soft = c.submit("sleep", {"seconds": 20})
        wait_for(lambda: c.get(soft).status == "running", 10, what="sleep to run")
        pid = c.get(soft).worker["pid"]
        assert c.cancel(soft)["status"] == "cancelling"
        job = c.wait(soft, timeout=10)
        assert job.status == "cancelled"
        assert pid in {w["pid"] for w in c.status()["workers"]}  # it returned: not killed

        hard = c.submit("stubborn")
        wait_for(lambda: c.get(hard).status == "running", 10, what="stubborn to run")
        pid = c.get(hard).worker["pid"]
        c.cancel(hard)
        job = c.wait(hard, timeout=15)
        assert job.status == "cancelled" and job.attempt == 1
        wait_for(lambda: pid not in {w["pid"] for w in c.status()["workers"]}, 10,
                 what="the stubborn worker to be replaced")
        assert c.wait(c.submit("echo", 1), timeout=10).status == "succeeded"


@pytest.mark.timeout(60)
def test_restart_intensity_degrades_the_pool(daemon_factory):
    d = daemon_factory(pools=[{"name": "default", "workers": 2, "max_restarts": 2,
                               "restart_window": 60}])
    with d.client() as c:
        for jid in [c.submit("crash") for _ in range(2)]:
            c.wait(jid, timeout=30)
        wait_for(lambda: c.status()["pools"][0]["degraded"], 10, what="pool degraded")
        assert sample(scrape(d), "jobsup_pool_degraded", pool="default") == 1
        assert sample(scrape(d), "jobsup_worker_restarts_total", pool="default",
                      reason="crash") >= 3
        # It recovers: after the backoff the pool is whole again and serves jobs.
        assert c.wait(c.submit("echo", 1), timeout=30).status == "succeeded"
    assert "restart backoff" in d.log.read_text()


@pytest.mark.timeout(60)
def test_no_worker_can_start_exits_nonzero(daemon_factory):
    d = daemon_factory(start=False, pools=[{"name": "default", "workers": 2,
                                            "init": "tests.handlers:boom"}])
    d.start(wait=False)
    assert d.wait_exit(45) == 1
    log = d.log.read_text()
    assert "cannot load the model" in log
    assert "no worker of any pool could start" in log
