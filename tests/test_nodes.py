"""Several daemons on one Redis: they share the queue, and a dead node's jobs are recovered."""

from __future__ import annotations

import os
import signal

import pytest

from tests.conftest import all_gone, wait_for


@pytest.mark.timeout(90)
def test_two_nodes_share_work_and_recover_a_dead_one(daemon_factory):
    fast = {"node_ttl": 2.0}
    a = daemon_factory(node_id="node-a", daemon=fast)
    b = daemon_factory(node_id="node-b", daemon=fast)
    with a.client() as ca, b.client() as cb:
        # Jobs submitted to one node run on both.
        ids = ca.submit_many("sleep", [{"seconds": 0.2}] * 12)
        jobs = ca.wait_many(ids, timeout=60)
        assert {j.status for j in jobs} == {"succeeded"}
        assert {j.worker["node"] for j in jobs} == {"node-a", "node-b"}

        # A node dies with jobs running: the other one requeues them as `lost`.
        long = cb.submit_many("sleep", [{"seconds": 3.0}] * 4)
        wait_for(lambda: any(j.status == "running" and j.worker["node"] == "node-b"
                             for j in (cb.get(i) for i in long)), 20,
                 what="a job running on node-b")
        on_b = [i for i in long if (j := cb.get(i)).status == "running"
                and j.worker["node"] == "node-b"]
        b_workers = b.descendants()
        os.kill(b.pid, signal.SIGKILL)
        b.proc.wait(10)
        wait_for(lambda: all_gone(b_workers), 10, what="node-b's workers to exit")

        done = ca.wait_many(long, timeout=60)
    assert {j.status for j in done} == {"succeeded"}
    for job in done:
        if job.id in on_b:
            lost = [h for h in job.history if h.get("kind") == "lost"]
            assert lost and lost[0]["node"] == "node-a"
            assert "node-b" in lost[0]["message"]
            assert job.attempt == 1  # a lost node does not burn an attempt
            assert job.worker["node"] == "node-a"
    assert "node-b stopped heartbeating" in a.log.read_text()
