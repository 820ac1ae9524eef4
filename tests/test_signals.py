"""The signals table of DESIGN.md section 5, with real signals to a real daemon.

SIGTERM/SIGINT drain gracefully, SIGQUIT (or a second SIGINT) stops fast,
SIGHUP reloads the config file, SIGTTIN/SIGTTOU resize every pool, SIGUSR1
reopens the log file; ``jobsup stop`` and ``jobsup reload`` do the same over
the API.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from supervisord.errors import ShuttingDown, Unavailable
from tests.conftest import Daemon, all_gone, statuses, wait_for, write_config

PREFIX = "{jobsup}"



def field(r: redis.Redis, job_id: str, name: str) -> str | None:
    value = r.hget(f"{PREFIX}:job:{job_id}", name)
    return value.decode() if value is not None else None


def in_queue(r: redis.Redis, job_id: str) -> bool:
    """The job waits in one of the queues (whatever their layout: per pool or per type)."""
    return any(r.type(key) == b"zset" and r.zscore(key, job_id) is not None
               for key in r.scan_iter(f"{PREFIX}:queue:*"))


def history(r: redis.Redis, job_id: str) -> list[dict]:
    from supervisord.redis.store import unpack

    return [unpack(h) for h in r.lrange(f"{PREFIX}:hist:{job_id}", 0, -1)]


def log_has(d: Daemon, text: str) -> bool:
    return text in d.log.read_text(errors="replace")


def pool_sizes(d: Daemon) -> dict[str, tuple[int, int]]:
    """(target, live workers) per pool."""
    with d.client() as c:
        st = c.status()
    live = {}
    for w in st["workers"]:
        if w["state"] in ("starting", "idle", "busy"):
            live[w["pool"]] = live.get(w["pool"], 0) + 1
    return {p["name"]: (p["target"], live.get(p["name"], 0)) for p in st["pools"]}


def wait_running(r: redis.Redis, ids: list[str], n: int | None = None) -> None:
    want = len(ids) if n is None else n
    wait_for(lambda: statuses(r, ids).count("running") >= want, 20,
             what=f"{want} job(s) to be running")


# -- SIGTERM / SIGINT: graceful ---------------------------------------------------------

@pytest.mark.timeout(60)
def test_sigterm_drains_running_jobs_and_keeps_queued_ones(daemon_factory, redis_server):
    d = daemon_factory()
    r = redis_server.client()
    with d.client() as c:
        running = c.submit_many("sleep", [{"seconds": 2.0}] * 2)
        wait_running(r, running)
        queued = c.submit_many("sleep", [{"seconds": 2.0}] * 4)
    children = d.descendants()
    assert len(children) >= 2

    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    wait_for(lambda: log_has(d, "SIGTERM: graceful shutdown"), 10,
             what="the daemon to start draining")
    with d.client() as c, pytest.raises(ShuttingDown, match="shutting down"):
        c.submit("add", {"a": 1, "b": 2})
    assert d.wait_exit(20) == 0
    took = time.monotonic() - sent
    grace = d.sections["daemon"]["shutdown_grace"]
    assert took < grace + 3.0, took

    assert statuses(r, running) == ["succeeded", "succeeded"]
    for job_id in running:
        assert field(r, job_id, "attempt") == "1"
    assert statuses(r, queued) == ["queued"] * 4
    for job_id in queued:
        assert in_queue(r, job_id), job_id  # runnable by the next start, not stuck
        assert field(r, job_id, "attempt") == "1"
    assert r.hlen(f"{PREFIX}:owned:test-node") == 0
    wait_for(lambda: all_gone(children), 10, what="no process of the daemon to be left")
    r.close()


@pytest.mark.timeout(60)
def test_sigterm_requeues_a_job_longer_than_shutdown_grace(daemon_factory, redis_server):
    d = daemon_factory(daemon={"shutdown_grace": 1.0})
    r = redis_server.client()
    with d.client() as c:
        long_job = c.submit("sleep", {"seconds": 30.0})
        wait_running(r, [long_job])
    children = d.descendants()

    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(15) == 0
    took = time.monotonic() - sent
    assert 0.9 <= took < 1.0 + d.sections["daemon"]["kill_grace"] + 4.0, took

    assert field(r, long_job, "status") == "queued"
    assert field(r, long_job, "attempt") == "1"
    assert in_queue(r, long_job)
    last = history(r, long_job)[-1]
    assert last["status"] == "queued" and last["attempt"] == 1, last
    assert "shutdown_grace" in last["reason"], last
    wait_for(lambda: all_gone(children), 10, what="no process of the daemon to be left")
    r.close()


# -- SIGQUIT, second SIGINT: fast -------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["SIGQUIT", "SIGINT twice"])
def test_fast_stop_requeues_in_flight_jobs(daemon_factory, redis_server, how):
    d = daemon_factory()  # shutdown_grace 5 s: a fast stop must not wait for it
    r = redis_server.client()
    with d.client() as c:
        ids = c.submit_many("sleep", [{"seconds": 30.0}] * 2)
        wait_running(r, ids)
    children = d.descendants()

    sent = time.monotonic()
    if how == "SIGQUIT":
        d.signal(signal.SIGQUIT)
    else:
        d.signal(signal.SIGINT)
        wait_for(lambda: log_has(d, "SIGINT: graceful shutdown"), 10,
                 what="the first SIGINT to start a graceful stop")
        d.signal(signal.SIGINT)
    assert d.wait_exit(15) == 0
    took = time.monotonic() - sent
    assert took < d.sections["daemon"]["shutdown_grace"], took

    assert statuses(r, ids) == ["queued", "queued"]
    for job_id in ids:
        assert field(r, job_id, "attempt") == "1"
        assert in_queue(r, job_id)
        assert history(r, job_id)[-1]["status"] == "queued"
    wait_for(lambda: all_gone(children), 10, what="the workers to be killed")
    r.close()


# -- SIGHUP: reload ---------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_sighup_reload_resizes_pool_and_rejects_invalid_file(daemon_factory):
    d = daemon_factory()
    assert pool_sizes(d) == {"default": (2, 2)}
    with d.client() as c:
        before = c.submit_many("sleep", [{"seconds": 0.2}] * 10)
        d.sections["pools"][0]["workers"] = 3
        write_config(d.config, d.sections)
        d.signal(signal.SIGHUP)
        during = c.submit_many("sleep", [{"seconds": 0.2}] * 10)
        wait_for(lambda: pool_sizes(d) == {"default": (3, 3)}, 20,
                 what="the pool to grow to 3 workers")
        after = c.submit_many("sleep", [{"seconds": 0.2}] * 6)
        jobs = c.wait_many(before + during + after, timeout=60)
    assert [j.status for j in jobs] == ["succeeded"] * len(jobs)
    assert log_has(d, "reload: config")

    # An invalid file: the running config stays and the log says why.
    d.sections["pools"][0]["workers"] = -1
    write_config(d.config, d.sections)
    d.signal(signal.SIGHUP)
    wait_for(lambda: log_has(d, "keeping the running config"), 10,
             what="the reload to be refused")
    assert log_has(d, "pools[0].workers")
    assert pool_sizes(d) == {"default": (3, 3)}
    with d.client() as c:
        assert c.wait(c.submit("add", {"a": 20, "b": 22}), timeout=20).result == 42
    assert d.proc.poll() is None


# -- SIGTTIN / SIGTTOU: resize ----------------------------------------------------------

@pytest.mark.timeout(60)
def test_sigttin_sigttou_resize_every_pool(daemon_factory):
    d = daemon_factory(pools=[{"name": "default", "workers": 2},
                              {"name": "other", "workers": 1}])
    wait_for(lambda: pool_sizes(d) == {"default": (2, 2), "other": (1, 1)}, 20,
             what="both pools to be up")
    d.signal(signal.SIGTTIN)
    wait_for(lambda: pool_sizes(d) == {"default": (3, 3), "other": (2, 2)}, 20,
             what="one more worker in every pool")
    d.signal(signal.SIGTTOU)
    wait_for(lambda: pool_sizes(d) == {"default": (2, 2), "other": (1, 1)}, 20,
             what="one fewer worker in every pool")
    d.signal(signal.SIGTTOU)
    wait_for(lambda: pool_sizes(d) == {"default": (1, 1), "other": (0, 0)}, 20,
             what="one fewer again")
    wait_for(lambda: len(d.workers()) == 1, 20, what="the retired workers to exit")
    with d.client() as c:
        assert c.wait(c.submit("add", {"a": 1, "b": 2}), timeout=20).result == 3


# -- SIGUSR1: reopen the log ------------------------------------------------------------

@pytest.mark.timeout(60)
def test_sigusr1_reopens_the_log_file(daemon_factory, tmp_path: Path):
    path = tmp_path / "jobsup.log"
    d = daemon_factory(daemon={"log_file": str(path)})
    wait_for(lambda: path.exists() and "jobsup node test-node" in path.read_text(), 10,
             what="the daemon to log to its log file")
    rotated = path.with_name("jobsup.log.1")
    path.rename(rotated)
    d.signal(signal.SIGUSR1)
    wait_for(lambda: path.exists() and "reopened" in path.read_text(), 10,
             what="a new log file with the reopen message")
    # The daemon keeps logging to the new file, not the rotated one.
    size = rotated.stat().st_size
    d.signal(signal.SIGTTIN)
    wait_for(lambda: "pool sizes now default=3" in path.read_text(), 10,
             what="later log lines in the new file")
    assert rotated.stat().st_size == size
    with d.client() as c:
        assert c.wait(c.submit("add", {"a": 1, "b": 1}), timeout=20).result == 2


# -- jobsup stop / jobsup reload ---------------------------------------------------------

@pytest.mark.timeout(90)
def test_cli_reload_and_stop(daemon_factory, redis_server):
    d = daemon_factory()
    d.sections["pools"][0]["workers"] = 3
    write_config(d.config, d.sections)
    out = d.cli("reload")
    assert out.returncode == 0, out.stderr
    assert "reloaded" in out.stdout
    wait_for(lambda: pool_sizes(d) == {"default": (3, 3)}, 20, what="3 workers after reload")

    d.sections["pools"][0]["workers"] = -1
    write_config(d.config, d.sections)
    # --endpoint: the client must reach the daemon even though the file is now invalid.
    out = d.cli("reload", "--endpoint", d.endpoint)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "pools[0].workers" in out.stderr
    assert pool_sizes(d) == {"default": (3, 3)}
    d.sections["pools"][0]["workers"] = 3
    write_config(d.config, d.sections)

    r = redis_server.client()
    with d.client() as c:
        running = c.submit("sleep", {"seconds": 1.0})
        wait_running(r, [running])
    children = d.descendants()
    out = d.cli("stop")
    assert out.returncode == 0, out.stderr
    assert f"pid {d.pid}" in out.stdout
    assert d.wait_exit(20) == 0  # `stop` waits for the daemon to be gone, so this is quick
    assert field(r, running, "status") == "succeeded"
    wait_for(lambda: all_gone(children), 10, what="no process of the daemon to be left")
    with d.client(connect_timeout=0.5) as c, pytest.raises(Unavailable):
        c.submit("add", {"a": 1, "b": 1})
    r.close()
