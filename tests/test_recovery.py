"""Recovery end to end: real processes, real Redis, real SIGKILLs.

Each test breaks something for real (the master, its embedded redis-server, an
external Redis) and checks the contract of DESIGN.md section 3: every
acknowledged job ends ``succeeded`` exactly once, interrupted work is requeued
without burning an attempt, and the daemon says clearly what is wrong.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import redis

from supervisord.errors import Unavailable
from supervisord.redis.embedded import EmbeddedRedis
from tests.conftest import Daemon, all_gone, gone, statuses, wait_for

PREFIX = "{jobsup}"



def redis_server_of(d: Daemon) -> psutil.Process:
    for pid in d.descendants():
        try:
            proc = psutil.Process(pid)
            if proc.name() == "redis-server":
                return proc
        except psutil.Error:
            continue
    raise AssertionError(f"no redis-server among the descendants of daemon pid {d.pid}")


def check_succeeded_once(jobs: list, interrupted: set[str]) -> None:
    """Every job succeeded on its first attempt, with one result and one success."""
    for job in jobs:
        assert job.status == "succeeded", (job.id, job.status, job.error, job.history)
        assert job.result is not None and job.result["slept"] == pytest.approx(0.3), job.id
        assert job.attempt == 1, (job.id, job.history)
        steps = [h["status"] for h in job.history]
        assert steps.count("succeeded") == 1, (job.id, job.history)
        assert steps[-1] == "succeeded", (job.id, job.history)
        assert all(h["attempt"] == 1 for h in job.history), (job.id, job.history)
        if job.id in interrupted:
            first_run = steps.index("running")
            later = job.history[first_run + 1:]
            assert any(h["status"] == "queued" and h["reason"] == "interrupted"
                       for h in later), (job.id, job.history)
            assert "running" in [h["status"] for h in later[1:]], (job.id, job.history)


def submit_and_wait_running(d: Daemon, r: redis.Redis, n: int = 40) -> list[str]:
    with d.client() as c:
        ids = c.submit_many("sleep", [{"seconds": 0.3}] * n)
    wait_for(lambda: "running" in statuses(r, ids), 20, what="a job to be running")
    return ids


@pytest.mark.timeout(90)
def test_master_sigkill_requeues_without_burning_attempts(daemon_factory, redis_server):
    d = daemon_factory()
    r = redis_server.client()
    ids = submit_and_wait_running(d, r)
    workers = [w["pid"] for w in d.workers()]
    assert len(workers) == 2
    children = d.descendants()

    os.kill(d.pid, signal.SIGKILL)  # the master only: its workers must follow on their own
    d.proc.wait(10)
    at_kill = dict(zip(ids, statuses(r, ids), strict=True))
    interrupted = {i for i, s in at_kill.items() if s == "running"}
    assert interrupted, at_kill
    assert "queued" in at_kill.values(), at_kill  # work was left in the queue too
    wait_for(lambda: all_gone(children), 10, what="the dead master's workers to exit")
    assert all(s in ("queued", "running", "succeeded") for s in at_kill.values()), at_kill

    d.start()
    with d.client() as c:
        jobs = c.wait_many(ids, timeout=60)
    check_succeeded_once(jobs, interrupted)
    assert "requeued" in d.log.read_text()
    r.close()


@pytest.mark.timeout(90)
def test_embedded_redis_survives_sigkill_of_master_and_redis(daemon_factory):
    d = daemon_factory(redis_url="embedded")
    state = Path(d.sections["daemon"]["state_dir"])
    sock = state / "redis.sock"
    assert os.stat(sock).st_mode & 0o777 == 0o600
    r = redis.Redis(unix_socket_path=str(sock))
    config = {**r.config_get("appendonly"), **r.config_get("appendfsync"),
              **r.config_get("maxmemory-policy")}
    assert config == {"appendonly": "yes", "appendfsync": "everysec",
                      "maxmemory-policy": "noeviction"}

    ids = submit_and_wait_running(d, r)
    r.close()
    server = redis_server_of(d)
    children = d.descendants()
    os.kill(d.pid, signal.SIGKILL)
    server.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    wait_for(lambda: all_gone(children), 10, what="workers and redis-server to exit")

    d.start()
    with d.client() as c:
        jobs = c.wait_many(ids, timeout=60)
    interrupted = {j.id for j in jobs if any(
        h["reason"] == "interrupted" and h.get("message", "").startswith("was running")
        for h in j.history)}
    assert interrupted, "no job was running when the master was killed"
    check_succeeded_once(jobs, interrupted)

    # A graceful stop takes the embedded redis-server down with the daemon.
    server = redis_server_of(d)
    assert os.stat(sock).st_mode & 0o777 == 0o600
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    wait_for(lambda: gone(server.pid), 15, what="the embedded redis-server to stop")


@pytest.mark.timeout(60)
def test_embedded_start_leaves_a_foreign_redis_named_by_a_stale_pidfile(daemon_factory,
                                                                        redis_server):
    """After a reboot, redis.pid may name a pid that now belongs to another redis-server
    (the system's, another daemon's): the embedded start must not stop that one."""
    d = daemon_factory(redis_url="embedded", start=False)
    state = Path(d.sections["daemon"]["state_dir"])
    state.mkdir(parents=True, mode=0o700)
    foreign = redis_server.proc.pid
    (state / "redis.pid").write_text(f"{foreign}\n")
    d.start()
    assert redis_server.proc.poll() is None, "the embedded start killed a foreign redis-server"
    assert redis_server.client().ping()
    own = redis_server_of(d).pid
    assert own != foreign
    # The same check, asked directly: our own server is recognised, the foreign one is not.
    assert EmbeddedRedis(state)._ours(own)
    assert not EmbeddedRedis(state)._ours(foreign)
    with d.client() as c:
        assert c.wait(c.submit("add", {"a": 1, "b": 2}), timeout=20).result == 3


@pytest.mark.timeout(90)
def test_a_refused_write_stops_the_job_it_handed_to_a_worker(daemon_factory, redis_server):
    """A job goes to an idle worker while Redis stores it.  If Redis refuses that write
    (here: out of memory) and then stays away (killed), the client is told the job was
    not accepted and the worker is told to stop it at once: it does not run on
    unrecorded until Redis is back."""
    d = daemon_factory()
    r = redis_server.client()
    message = ""
    for _ in range(5):  # a heartbeat write may notice the refusal first: then try again
        with d.client() as c:
            assert c.wait(c.submit("add", {"a": 1, "b": 2}), timeout=20).result == 3
            r.config_set("maxmemory", 1)
            try:
                c.submit("sleep", {"seconds": 30})
            except Unavailable as exc:
                message = exc.message
        if "told to stop" in message:
            break
        r.config_set("maxmemory", 0)
        wait_for(lambda: d.accepts(), 20, 0.2, "the daemon to accept submits again")
    r.close()
    redis_server.stop(signal.SIGKILL)
    assert "NOT accepted" in message and "told to stop" in message, message
    wait_for(lambda: all(w["state"] == "idle" for w in d.workers()), 15, 0.1,
             "the worker to stop the job nobody recorded, with Redis still down")

    redis_server.start()  # the same dir, without the memory limit
    wait_for(lambda: d.accepts(), 30, 0.2, "the daemon to accept submits again")
    r = redis_server.client()
    assert r.zcard(f"{PREFIX}:idx:type:sleep") == 0  # never stored
    r.close()


@pytest.mark.timeout(90)
def test_redis_outage_refuses_submits_and_recovers(daemon_factory, redis_server):
    d = daemon_factory()
    r = redis_server.client()
    with d.client() as c:
        before = c.submit_many("sleep", [{"seconds": 0.3}] * 12)
    wait_for(lambda: "running" in statuses(r, before), 20, what="a job to be running")
    r.close()

    redis_server.stop(signal.SIGKILL)
    down_at = time.time()
    errors: list[str] = []

    def refused() -> bool:
        with d.client(timeout=15) as c:
            try:
                c.submit("add", {"a": 1, "b": 2})
            except Unavailable as exc:
                errors.append(exc.message)
                return True
        return False  # accepted before the daemon noticed; Redis is dead, so not likely

    wait_for(refused, 20, 0.1, "a submit to be refused while Redis is down")
    assert "redis" in errors[-1].lower(), errors
    with d.client(timeout=15) as c, pytest.raises(Unavailable, match=r"(?i)redis"):
        c.submit_many("add", [{"a": 1, "b": 2}] * 3)
    time.sleep(1.0)  # let the outage last a few retry intervals while jobs finish
    assert d.proc.poll() is None, d.log.read_text()[-3000:]

    up_at = time.time()
    redis_server.start()  # the same dir: the AOF brings the data back
    assert d.proc.poll() is None, d.log.read_text()[-3000:]

    def accepted() -> str | None:
        with d.client(timeout=15) as c:
            try:
                return c.submit("add", {"a": 2, "b": 3})
            except Unavailable:
                return None

    new = wait_for(accepted, 30, 0.2, "submits to work again after Redis is back")
    with d.client() as c:
        jobs = c.wait_many(before, timeout=60)
        for job in jobs:
            assert job.status == "succeeded", (job.id, job.status, job.error, job.history)
            assert [h["status"] for h in job.history].count("succeeded") == 1, job.history
        # Jobs that finished while Redis was down were held by the master and written
        # once it was back, with the time they really finished.
        ended = [h["t"] for j in jobs for h in j.history if h["status"] == "succeeded"]
        assert any(down_at < t < up_at for t in ended), (down_at, up_at, sorted(ended))
        assert c.wait(new, timeout=30).result == 5
    assert d.proc.poll() is None
    log = d.log.read_text()
    assert "Redis is unreachable" in log


@pytest.mark.timeout(60)
def test_second_daemon_with_same_node_id_refuses_to_start(daemon_factory):
    first = daemon_factory()
    second = daemon_factory(start=False)
    assert second.sections["daemon"]["node_id"] == first.sections["daemon"]["node_id"]
    second.start(wait=False)
    code = second.wait_exit(30)
    assert code != 0
    out = second.log.read_text()
    assert "node id" in out and "node_id" in out, out[-3000:]
    assert "test-node" in out, out[-3000:]
    # The first daemon is untouched and still runs jobs.
    assert first.proc.poll() is None
    with first.client() as c:
        assert c.wait(c.submit("add", {"a": 1, "b": 1}), timeout=20).result == 2
