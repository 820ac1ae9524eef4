"""Progress and streamed output: coalesced in Redis, live for watchers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, wait_for


def hset_calls(r) -> int:
    stats = r.info("commandstats")
    return int(stats.get("cmdstat_hset", {}).get("calls", 0))


@pytest.mark.timeout(60)
def test_chatty_progress_is_coalesced(daemon_factory, redis_server):
    d = daemon_factory(jobs={"chatty": {"handler": "tests.handlers:chatty"}})
    r = redis_server.client()
    with d.client() as c:
        c.wait(c.submit("echo", 1), timeout=20)  # warm up
        before = hset_calls(r)
        jid = c.submit("chatty", {"seconds": 1.5})
        saw = wait_for(lambda: (j := c.get(jid)).progress > 0 and j, 10,
                       what="progress on the record while it runs")
        assert saw.status == "running" and saw.progress_message.startswith("step ")
        job = c.wait(jid, timeout=20)
    calls = job.result
    writes = hset_calls(r) - before
    assert calls > 2000, "the handler should have reported progress thousands of times"
    # A handful of writes per transition plus one per 0.2 s of progress, not one per call.
    assert writes < 60, f"{writes} HSETs for {calls} progress calls"
    assert job.progress == 100


@pytest.mark.timeout(60)
def test_watch_starts_with_current_state_and_ends_at_final(daemon):
    with daemon.client() as c:
        jid = c.submit("sleep", {"seconds": 1.0})
        wait_for(lambda: c.get(jid).status == "running", 10, what="the job to run")
        events = list(c.events(jid, timeout=20))
    assert events[0]["status"] == "running" and events[0].get("current")
    assert any(e["event"] == "progress" for e in events)
    assert any(e["event"] == "output" and "slept" in e["data"] for e in events)
    assert events[-1]["event"] == "state" and events[-1]["status"] == "succeeded"

    # The CLI, late: the job is finished, so it prints the final state and exits.
    out = daemon.cli("watch", jid, "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 1 and lines[0]["status"] == "succeeded"


@pytest.mark.timeout(60)
def test_watch_all_streams_state_changes(daemon, tmp_path):
    out_file = tmp_path / "watch.out"
    with open(out_file, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "supervisord", "-c", str(daemon.config),
                                 "watch", "--json"], stdout=out, text=True, cwd=ROOT)
    try:
        with daemon.client() as c:
            # Until the watcher is subscribed, nobody receives events: keep submitting.
            def watched() -> bool:
                c.wait(c.submit("echo", 1), timeout=10)
                return b"" in {bytes.fromhex(t) for t in c.status()["subscriptions"]}
            wait_for(watched, 20, interval=0.1, what="the watcher to subscribe")
            ids = [c.submit("echo", n) for n in range(3)]
            c.wait_many(ids, timeout=20)

        def states() -> dict[str, list[str]]:
            events = [json.loads(line) for line in out_file.read_text().splitlines()
                      if line.endswith("}")]
            return {jid: [e["status"] for e in events
                          if e.get("job") == jid and e["event"] == "state"] for jid in ids}
        wait_for(lambda: all(s[-1:] == ["succeeded"] for s in states().values()), 10,
                 what="watch to print every job's final state")
        assert all(s == ["queued", "running", "succeeded"] for s in states().values())
    finally:
        proc.terminate()
        proc.wait(10)


_ORDER = {"scheduled": 0, "queued": 0, "running": 1, "succeeded": 2, "failed": 2,
          "cancelled": 2}


@pytest.mark.timeout(90)
def test_events_after_the_snapshot_never_repeat_or_go_back(daemon):
    """Watching a job from its submit on: each state event moves it forwards."""
    with daemon.client() as c:
        for _ in range(25):
            jid = c.submit("sleep", {"seconds": 0.05})
            states = [(e["status"], e.get("attempt")) for e in c.events(jid, timeout=20)
                      if e["event"] == "state"]
            ranks = [_ORDER[s] for s, _ in states]
            assert ranks == sorted(set(ranks)), states  # strictly forwards, no repeats
            assert states[-1] == ("succeeded", 1), states
            assert all(a == 1 for _, a in states), states


@pytest.mark.timeout(60)
def test_watch_prints_one_cancelled_line_with_its_attempt(daemon_factory):
    d = daemon_factory(jobs={"stubborn": {"handler": "tests.handlers:stubborn", "timeout": 30,
                                          "cancel_grace": 0.5}})
    with d.client() as c:
        for job_type in ("sleep", "stubborn"):
            jid = c.submit(job_type, {"seconds": 30})
            wait_for(lambda jid=jid: c.get(jid).status == "running", 10, what="the job to run")
            proc = subprocess.Popen(
                [sys.executable, "-m", "supervisord", "-c", str(d.config), "watch", jid],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
            try:
                first = proc.stdout.readline()  # the current state: it is subscribed
                assert "running" in first, first
                c.cancel(jid)
                out, _ = proc.communicate(timeout=20)
            finally:
                proc.kill()
                proc.wait(5)
            lines = [first, *out.splitlines()]
            cancelled = [line for line in lines if " cancelled" in line]
            assert len(cancelled) == 1, lines
            assert "(attempt 1)" in cancelled[0] and "None" not in "".join(lines), lines
            assert c.get(jid).status == "cancelled"
