"""The embedded redis-server is supervised: SIGKILLed under load, it is restarted over
the same AOF at once, the daemon serves again, and nothing acknowledged is lost or run
twice; a server that cannot start is retried with a growing delay, saying why.

Real processes throughout: a daemon with ``redis.url = "embedded"``, its own
redis-server (found by its pid file), a client submitting in a thread.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis

from supervisord.errors import JobsupError, NotFound, Unavailable
from tests.conftest import Daemon, scrape_metrics, wait_for

TALLY = {"tally": {"handler": "tests.handlers:tally", "timeout": 30}}


def redis_pid(d: Daemon) -> int | None:
    """The pid of the daemon's embedded redis-server now, if one runs and is its child."""
    state = Path(d.sections["daemon"]["state_dir"])
    try:
        pid = int((state / "redis.pid").read_text().strip())
        proc = psutil.Process(pid)
        if proc.name() == "redis-server" and proc.status() != psutil.STATUS_ZOMBIE \
                and proc.ppid() == d.pid:
            return pid
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def zombies(d: Daemon) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(d.pid).children()
                if p.status() == psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return []


def restarts(d: Daemon) -> float:
    with d.client() as c:
        port = c.status()["metrics_port"]
    return scrape_metrics(port).get(("jobsup_redis_restarts_total", frozenset()), 0.0)


def serves(d: Daemon, tally: Path) -> bool:
    """A fresh submit+wait succeeds (ahead of the load's backlog)."""
    try:
        with d.client(timeout=5) as c:
            job = c.wait(c.submit("tally", {"file": str(tally), "n": -1}, priority=10),
                         timeout=5)
            return job.status == "succeeded"
    except JobsupError:
        return False


class Load(threading.Thread):
    """Submits ``tally`` jobs one after the other until stopped; keeps every id that a
    submit returned (acknowledged), counts the refusals."""

    def __init__(self, d: Daemon, tally: Path) -> None:
        super().__init__(daemon=True)
        self.d, self.tally = d, tally
        self.stop = threading.Event()
        self.acked: dict[str, int] = {}
        self.refused: list[str] = []
        self.other: list[str] = []

    def run(self) -> None:
        n = 0
        with self.d.client(timeout=10) as c:
            while not self.stop.is_set():
                n += 1
                try:
                    jid = c.submit("tally", {"file": str(self.tally), "n": n, "sleep": 0.02})
                except Unavailable as exc:
                    self.refused.append(str(exc))
                    time.sleep(0.02)
                    continue
                except JobsupError as exc:
                    self.other.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.02)
                    continue
                self.acked[jid] = n
                time.sleep(0.01)  # about as fast as two workers run them: no backlog


@pytest.mark.timeout(150)
def test_sigkilled_embedded_redis_is_restarted_and_nothing_acknowledged_is_lost(
        daemon_factory, tmp_path: Path):
    d = daemon_factory(redis_url="embedded", jobs=TALLY, redis={"socket_timeout": 1.0})
    tally = tmp_path / "tally.txt"
    assert restarts(d) == 0
    load = Load(d, tally)
    load.start()
    try:
        wait_for(lambda: len(load.acked) >= 20, 20, 0.05, "the load to get going")
        for round_ in range(3):
            old = redis_pid(d)
            assert old is not None, f"round {round_ + 1}: no embedded redis-server runs"
            os.kill(old, signal.SIGKILL)
            new = wait_for(lambda old=old: (p := redis_pid(d)) not in (None, old) and p,
                           2.5, 0.02, f"a new redis-server after SIGKILL {round_ + 1}")
            assert new != old
            wait_for(lambda: serves(d, tally), 10, 0.1,
                     f"the daemon to serve again after SIGKILL {round_ + 1}")
            n = len(load.acked)
            wait_for(lambda n=n: len(load.acked) >= n + 10, 20, 0.05, "the load to resume")
        wait_for(lambda: not zombies(d), 5, 0.05, "no zombie child of the master")
    finally:
        load.stop.set()
        load.join(30)
    assert not load.other, load.other[:5]
    for message in load.refused:  # refusals during an outage say what to do
        assert "Redis" in message and ("try again" in message or "Resubmit" in message), \
            message
    with d.client(timeout=30) as c:
        jobs = c.wait_many(list(load.acked), timeout=60)
    problems = []
    for job in jobs:
        done = [h for h in job.history if h.get("status") == "succeeded"]
        if job.status != "succeeded" or len(done) != 1 or job.result != load.acked[job.id]:
            problems.append(f"{job.id}: {job.status}, result {job.result!r}, "
                            f"{len(done)} succeeded entries; history {job.history}")
    runs = collections.Counter(tally.read_text().split())
    twice = {jid: n for jid, n in runs.items() if n > 1}
    never = [jid for jid in load.acked if runs[jid] == 0]
    assert not problems and not twice and not never, (
        f"{len(load.acked)} acknowledged; wrong outcomes: {problems[:5]}; handlers run "
        f"more than once: {twice}; acknowledged but never run: {never[:5]}")
    assert restarts(d) == 3
    assert not zombies(d)
    log = d.log.read_text()
    assert log.count("restarting it over the same data") == 3, log[-3000:]


@pytest.mark.timeout(120)
def test_a_redis_that_cannot_start_is_retried_with_backoff_and_the_reason_logged(
        daemon_factory, tmp_path: Path):
    d = daemon_factory(redis_url="embedded", jobs=TALLY, redis={"socket_timeout": 1.0})
    tally = tmp_path / "tally.txt"
    state = Path(d.sections["daemon"]["state_dir"])
    conf = state / "redis.conf"
    good = conf.read_text()
    with d.client() as c:
        jid = c.submit("tally", {"file": str(tally), "n": 7}, delay=1.5)
    # Restarts read this file: from now on each new server exits at once.
    conf.write_text(good + "no-such-directive yes\n")
    os.kill(redis_pid(d), signal.SIGKILL)
    wait_for(lambda: "restarting in" in d.log.read_text(), 20, 0.1,
             "the daemon to back off restarting a failing redis-server")
    wait_for(lambda: len(re.findall(r"restarting in ([\d.]+)s", d.log.read_text())) >= 2,
             20, 0.1, "a second delayed restart")
    log = d.log.read_text()
    delays = [float(x) for x in re.findall(r"restarting in ([\d.]+)s", log)]
    assert delays == sorted(delays) and delays[-1] > delays[0], delays
    assert re.search(r"before it was ready.*Its log .* ends: .*Bad directive", log), (
        f"the log does not say why redis-server failed:\n{log[-3000:]}")
    with d.client(timeout=5) as c, pytest.raises(Unavailable, match="Redis"):
        c.submit("tally", {"file": str(tally), "n": 8})
    assert not zombies(d)
    conf.write_text(good)  # mended: the next try starts it over the same AOF
    wait_for(lambda: serves(d, tally), 40, 0.2, "the daemon to serve again once mended")
    with d.client(timeout=10) as c:
        job = c.wait(jid, timeout=20)
    assert job.status == "succeeded" and job.result == 7, job
    assert not zombies(d)


@pytest.mark.timeout(90)
def test_redis_files_are_private_in_a_world_readable_state_dir(daemon_factory):
    d = daemon_factory(redis_url="embedded", start=False)
    state = Path(d.sections["daemon"]["state_dir"])
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / "redis.log").write_text("left by an earlier version\n")
    os.chmod(state / "redis.log", 0o644)
    d.start()
    with d.client() as c:
        c.wait(c.submit("echo", {"secret": "hunter2"}), timeout=20)
    r = redis.Redis(unix_socket_path=str(state / "redis.sock"))
    try:
        r.bgrewriteaof()  # the rewritten AOF is a new file, made by a forked child
        wait_for(lambda: r.info("persistence")["aof_rewrite_in_progress"] == 0
                 and r.info("persistence")["aof_last_bgrewrite_status"] == "ok", 20, 0.05,
                 "the AOF rewrite")
    finally:
        r.close()
    made = [p for p in state.rglob("*")
            if p.name.startswith("redis.") or "aof" in p.name or p.suffix == ".rdb"]
    names = {p.name for p in made}
    assert {"redis.log", "redis.pid", "redis.sock", "jobsup.aof"} <= names, names
    assert any(b"hunter2" in p.read_bytes() for p in made if "aof" in p.name)
    loose = {str(p.relative_to(state)): oct(p.stat().st_mode & 0o777) for p in made
             if p.stat().st_mode & 0o077}
    assert not loose, f"readable by others in a 0755 state dir: {loose}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("persist", [False, True])
def test_persist_false_starts_empty_each_time(daemon_factory, persist: bool):
    d = daemon_factory(redis_url="embedded", redis={"persist": persist})
    state = Path(d.sections["daemon"]["state_dir"])
    r = redis.Redis(unix_socket_path=str(state / "redis.sock"))
    try:
        assert r.config_get("appendonly") == {"appendonly": "yes" if persist else "no"}
        assert r.config_get("save") == {"save": ""}
    finally:
        r.close()
    with d.client() as c:
        ids = [c.submit("noop", None, delay=3600) for _ in range(5)]
        assert {c.get(jid).status for jid in ids} == {"scheduled"}
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    d.start()
    with d.client() as c:
        if persist:
            assert {c.get(jid).status for jid in ids} == {"scheduled"}
        else:
            for jid in ids:
                with pytest.raises(NotFound):
                    c.get(jid)
            assert c.wait(c.submit("add", {"a": 1, "b": 2}), timeout=20).result == 3
    if not persist:
        assert not list(state.glob("*.aof")) and not list(state.glob("*.rdb"))


def test_persist_false_is_refused_for_an_external_redis():
    from supervisord.config import RedisConfig

    with pytest.raises(ValueError, match="embedded Redis only"):
        RedisConfig(url="redis://127.0.0.1:6379", persist=False)


def test_restart_delay_backs_off_only_for_failed_starts_and_death_bursts():
    from supervisord.redis.embedded import restart_delay

    # A server that was serving and died: at once, however often that happened before.
    assert [restart_delay(0, deaths) for deaths in (1, 5, 10)] == [0.0, 0.0, 0.0]
    # Servers that die before they are ready: the first retried at once, then doubling.
    assert [restart_delay(n, n) for n in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert restart_delay(30, 30) == 30.0
    # More than ten deaths a minute of servers that did start: backing off too.
    assert [restart_delay(0, d) for d in (11, 12, 13)] == [0.5, 1.0, 2.0]
