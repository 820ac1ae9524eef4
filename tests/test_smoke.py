"""The basic path: submit, run, result, against a real daemon and Redis."""

from __future__ import annotations


def test_submit_and_wait(daemon):
    with daemon.client() as c:
        jid = c.submit("add", {"a": 2, "b": 3})
        job = c.wait(jid, timeout=20)
    assert job.status == "succeeded"
    assert job.result == 5
    assert job.attempt == 1
    assert [h["status"] for h in job.history] == ["queued", "running", "succeeded"]
    assert job.worker["pid"] in {w["pid"] for w in daemon.workers()}


def test_submit_many_all_succeed(daemon):
    with daemon.client() as c:
        ids = c.submit_many("echo", [{"n": n} for n in range(300)])
        jobs = c.wait_many(ids, timeout=60)
    assert [j.result for j in jobs] == [{"n": n} for n in range(300)]
    assert len(set(ids)) == 300
