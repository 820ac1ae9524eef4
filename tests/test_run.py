"""Submit-and-wait in one request: ``Client.run`` and ``jobsup submit --wait``."""

from __future__ import annotations

import pytest

from supervisord.errors import Timeout


@pytest.mark.timeout(60)
def test_run_returns_the_final_record(shared):
    with shared.client() as c:
        job = c.run("add", {"a": 4, "b": 5})
        assert job.status == "succeeded" and job.result == 9
        assert [h["status"] for h in job.history] == ["queued", "running", "succeeded"]

        failed = c.run("fail", {"how": "permanent"})
        assert failed.status == "failed" and failed.error["kind"] == "permanent"

        # The same idempotency key again: the existing job, already final, at once.
        first = c.run("echo", {"n": 1}, key="run-once")
        again = c.run("echo", {"n": 2}, key="run-once")
        assert again.id == first.id and again.result == {"n": 1}


@pytest.mark.timeout(60)
def test_run_wait_timeout_leaves_the_job_running(shared):
    with shared.client() as c:
        with pytest.raises(Timeout):
            c.run("sleep", {"seconds": 2.0}, wait_timeout=0.3)
        running = c.jobs(type="sleep", limit=1)[0]
        assert running.status in ("queued", "running")
        assert c.wait(running.id, timeout=20).status == "succeeded"
