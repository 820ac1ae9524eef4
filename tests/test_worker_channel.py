"""The master survives a worker that sends it garbage (user code runs in workers)."""

from __future__ import annotations

import pytest


@pytest.mark.timeout(60)
def test_malformed_worker_messages_are_ignored(daemon_factory):
    d = daemon_factory(jobs={"rude": {"handler": "tests.handlers:rude"}})
    with d.client() as c:
        job = c.wait(c.submit("rude"), timeout=20)
        assert job.status == "succeeded" and job.result == "still here"
        assert c.wait(c.submit("add", {"a": 1, "b": 1}), timeout=20).result == 2
    log = d.log.read_text()
    assert "sent a malformed message" in log
    assert "unexpected error in the master loop" not in log


@pytest.mark.timeout(60)
def test_a_corrupt_channel_costs_its_worker_and_job_only(daemon_factory):
    d = daemon_factory(jobs={"vandal": {"handler": "tests.handlers:vandal", "max_attempts": 5}})
    with d.client() as c:
        job = c.wait(c.submit("vandal"), timeout=30)
        # Each attempt kills its worker (a crash); the second makes it a poison pill.
        assert job.status == "failed" and job.error["kind"] == "crash", job.error
        assert job.attempt == 2
        assert c.wait(c.submit("add", {"a": 1, "b": 1}), timeout=20).result == 2
    assert "broke its channel" in d.log.read_text()
