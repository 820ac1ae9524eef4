"""The dead-letter set: list, retry with fresh attempts (history kept), purge."""

from __future__ import annotations

import json

import pytest

from tests.conftest import wait_for


@pytest.mark.timeout(60)
def test_list_retry_purge(daemon, redis_server):
    with daemon.client() as c:
        failed = [c.submit("fail", {"how": "permanent"}) for _ in range(3)]
        for jid in failed:
            assert c.wait(jid, timeout=20).status == "failed"
        listed = c.dead_letters()
        assert {j.id for j in listed} == set(failed)

        out = daemon.cli("dlq", "list", "--json")
        assert out.returncode == 0, out.stderr
        assert {j["id"] for j in json.loads(out.stdout)} == set(failed)

        # Retry one: fresh attempts, old history kept, it fails again (permanent).
        out = daemon.cli("dlq", "retry", failed[0])
        assert out.returncode == 0, out.stderr
        job = c.wait(failed[0], timeout=20)
        assert job.status == "failed" and job.attempt == 1
        reasons = [h["reason"] for h in job.history]
        assert "retried from the dead-letter set" in reasons
        assert [h["status"] for h in job.history].count("failed") == 2

        # A job id that is not a dead letter is reported, exit 2.
        ok = c.submit("echo", {"x": 1})
        c.wait(ok, timeout=20)
        out = daemon.cli("dlq", "retry", ok)
        assert out.returncode == 2 and ok in out.stderr

        out = daemon.cli("dlq", "purge", "--yes")
        assert out.returncode == 0, out.stderr
        assert "purged 3" in out.stdout
        assert c.dead_letters() == []
        r = redis_server.client()
        for jid in failed:
            assert not r.exists(f"{{jobsup}}:job:{jid}")
            assert r.zscore("{jobsup}:idx:all", jid) is None
            assert r.zscore("{jobsup}:idx:status:failed", jid) is None


@pytest.mark.timeout(60)
def test_retry_all_runs_again(daemon):
    with daemon.client() as c:
        ids = [c.submit("crash", {"crash_on": [1, 2]}) for _ in range(2)]
        jobs = c.wait_many(ids, timeout=30)
        assert {j.status for j in jobs} == {"failed"}
        assert {j.error["kind"] for j in jobs} == {"crash"}
        # Fresh attempts start at 1 again, so crash_on [1, 2] would crash; use the CLI --all
        # and check the jobs went back to the queue and ran (crash again -> failed again).
        out = daemon.cli("dlq", "retry", "--all")
        assert out.returncode == 0 and "requeued 2" in out.stdout
        wait_for(lambda: all(c.get(i).status == "failed" and len(c.get(i).history) > 6
                             for i in ids), 30, what="retried jobs to run and fail again")
