"""Keys of the untagged layout (``jobsup:job:ID``), written by the jobsup release before
the cluster-safe one, are renamed to ``{jobsup}:…`` at the first start, and every job
in them goes on as it was.

The older daemon really runs: its source is taken from the last commit of that layout
(``git archive``), so its keys are exactly what it wrote.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import ROOT, all_gone, wait_for

OLD = "f1b383c15add347ce71e90be7e2e0a6365e989c4"  # the last commit of the untagged layout
JOBS = {"hold": {"handler": "tests.handlers:hold", "timeout": 60, "max_attempts": 3}}
FAST = {"node_ttl": 1.0}


def old_source(where) -> None:
    """The older release's code, or a skip saying why it cannot be had."""
    try:
        subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD}^{{commit}}"],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs the git history of jobsup (commit {OLD[:10]}): {exc}")
    where.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD, "supervisord", "worker",
                              "examples", "tests/__init__.py", "tests/handlers.py"],
                             check=True, capture_output=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True, timeout=60)


@pytest.mark.timeout(180)
def test_an_older_installations_keys_are_moved_and_its_jobs_go_on(daemon_factory, tmp_path,
                                                                   redis_server):
    old_root = tmp_path / "old-src"
    old_source(old_root)
    release = tmp_path / "release"
    r = redis_server.client()

    old = daemon_factory(start=False, node_id="node-old", daemon=FAST, jobs=JOBS)
    old.root = old_root
    old.start()
    with old.client() as c:
        done = c.submit("add", {"a": 2, "b": 3}, key="five")
        c.wait(done, timeout=30)
        dead = c.submit("fail", {})
        wait_for(lambda: c.get(dead).status == "failed", 30, what="a dead letter")
        running = c.submit_many("hold", [{"release": str(release)}] * 2)
        wait_for(lambda: all(c.get(i).status == "running" for i in running), 30,
                 what="two jobs running on the older daemon")
        queued = c.submit_many("add", [{"a": n, "b": 1} for n in range(3)])
        later = c.submit("add", {"a": 40, "b": 2}, delay=6.0)
        assert c.get(later).status == "scheduled"
        assert {c.get(i).status for i in queued} == {"queued"}
    assert r.exists(f"jobsup:job:{done}") and not r.exists(f"{{jobsup}}:job:{done}")

    # While the older daemon heartbeats, the new one refuses to start (it would write
    # keys the older one never reads).
    early = daemon_factory(start=False, node_id="node-new", daemon=FAST)
    early.start(wait=False)
    assert early.wait_exit(30) != 0
    assert "older version still runs" in early.log.read_text()
    assert r.exists(f"jobsup:job:{done}")  # nothing moved

    workers = old.descendants()
    os.kill(old.pid, signal.SIGKILL)
    old.proc.wait(10)
    wait_for(lambda: all_gone(workers), 10, what="the older daemon's workers to exit")
    wait_for(lambda: not r.exists("jobsup:node:node-old"), 10,
             what="the older daemon's heartbeat to expire")
    untagged = len(list(r.scan_iter("jobsup:*")))
    release.touch()

    new = daemon_factory(node_id="node-new", daemon=FAST, jobs=JOBS)
    text = new.log.read_text()
    assert f"moved {untagged} key(s) of prefix 'jobsup'" in text, text[-2000:]
    assert not list(r.scan_iter("jobsup:*"))  # every key moved
    with new.client() as c:
        assert c.get(done).result == 5
        assert c.submit("add", {"a": 9, "b": 9}, key="five") == done  # the key still holds
        assert [j.id for j in c.dead_letters()] == [dead]
        jobs = c.wait_many([*running, *queued, later], timeout=60)
        assert {j.status for j in jobs} == {"succeeded"}, [(j.id, j.status) for j in jobs]
        for job in jobs[:2]:  # running on the older node when it died: requeued as lost
            assert [h.get("kind") for h in job.history].count("lost") == 1
            assert job.attempt == 1 and job.worker["node"] == "node-new"
        assert [j.result for j in jobs[2:]] == [1, 2, 3, 42]
        assert c.retry_dead_letters([dead]) == [dead]
        wait_for(lambda: (j := c.get(dead)).status == "failed" and any(
            h.get("reason") == "retried from the dead-letter set" for h in j.history), 30,
            what="the dead letter to run again")

    # A second start moves nothing (one GET finds the marker).
    new.signal(signal.SIGTERM)
    assert new.wait_exit(30) == 0
    before = new.log.read_text().count("key(s) of prefix")
    new.start()
    time.sleep(0.5)
    assert new.log.read_text().count("key(s) of prefix") == before
    with new.client() as c:
        assert c.get(done).result == 5
