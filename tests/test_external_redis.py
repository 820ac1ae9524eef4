"""An external Redis: credentials by URL (a wrong password is a clear start-up error);
one that goes away and comes back (DESIGN §8): the daemon runs the jobs it holds, keeps
their outcomes in its bounded outage buffer, refuses submits with ``Unavailable``, and
writes every outcome, once, when Redis is back."""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from supervisord.config import Config
from supervisord.errors import Unavailable
from supervisord.redis.embedded import find_server
from supervisord.redis.store import Op, Store
from supervisord.settings import Settings
from supervisord.writer import Commit, Writer
from tests.conftest import RedisServer, statuses, wait_for


@pytest.fixture
def password_redis(tmp_path: Path):
    sock = tmp_path / "auth-redis.sock"
    proc = subprocess.Popen(
        [find_server(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "600",
         "--dir", str(tmp_path), "--save", "", "--appendonly", "no",
         "--user", "jobsup", "on", ">s3cret", "~*", "&*", "+@all",
         "--requirepass", "admin-only"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def up() -> bool:
        try:
            return redis.Redis(unix_socket_path=str(sock), username="jobsup",
                               password="s3cret").ping()
        except (redis.ConnectionError, redis.AuthenticationError, FileNotFoundError):
            return False
    wait_for(up, 10, what="password-protected redis-server")
    yield sock
    proc.kill()
    proc.wait(5)


@pytest.mark.timeout(60)
def test_daemon_uses_url_credentials(daemon_factory, password_redis: Path):
    d = daemon_factory(redis_url=f"unix://jobsup:s3cret@{password_redis}")
    with d.client() as c:
        assert c.wait(c.submit("add", {"a": 20, "b": 22}), timeout=20).result == 42
    r = redis.Redis(unix_socket_path=str(password_redis), username="jobsup", password="s3cret")
    assert r.exists("{jobsup}:idx:all")


@pytest.mark.timeout(60)
def test_wrong_password_fails_clearly(daemon_factory, password_redis: Path):
    d = daemon_factory(start=False, redis_url=f"unix://jobsup:wrong@{password_redis}")
    d.start(wait=False)
    assert d.wait_exit(40) != 0
    log = d.log.read_text()
    assert "invalid username-password pair" in log.lower() or "auth" in log.lower(), log[-2000:]


@pytest.mark.timeout(120)
def test_outcomes_of_held_jobs_survive_an_outage_and_are_written_once(daemon_factory,
                                                                       tmp_path: Path):
    server = RedisServer(tmp_path / "external")
    server.start()
    try:
        _outage(daemon_factory, server, tmp_path / "tally.txt")
    finally:
        server.stop(signal.SIGKILL)


def _outage(daemon_factory, server: RedisServer, tally: Path) -> None:
    d = daemon_factory(redis_url=server.url, pools=[{"name": "default", "workers": 3}],
                       redis={"socket_timeout": 1.0, "retry_interval": 0.2},
                       jobs={"tally": {"handler": "tests.handlers:tally", "timeout": 60}})
    with d.client() as c:
        ids = [c.submit("tally", {"file": str(tally), "n": n, "sleep": 2.0})
               for n in range(3)]
        wait_for(lambda: statuses(server.client(), ids) == ["running"] * 3, 15, 0.05,
                 "three jobs running")
        server.stop(signal.SIGKILL)  # a hard stop: the AOF keeps what was acknowledged
        # New submits are refused plainly while Redis is away...
        deadline = time.monotonic() + 10
        while True:
            try:
                jid = c.submit("tally", {"file": str(tally), "n": 99})
            except Unavailable as exc:
                message = str(exc)
                break
            ids.append(jid)  # acknowledged before the daemon saw Redis go: it must end too
            assert time.monotonic() < deadline, "submits were still accepted 10 s in"
            time.sleep(0.1)
        # The submit that found Redis gone says so; those after it are refused up front.
        assert "Redis" in message and any(
            text in message for text in ("NOT accepted", "may or may not be stored", "try again"))
        with pytest.raises(Unavailable, match=r"Redis is unreachable.*try again"):
            c.submit("tally", {"file": str(tally), "n": 100})
        # ...and the jobs it held run to their end meanwhile.
        wait_for(lambda: tally.exists() and len(tally.read_text().split()) >= 3, 20, 0.1,
                 "the held jobs' handlers to finish while Redis is down")
        time.sleep(0.5)  # their outcomes now wait in the outage buffer
        server.start()  # same socket, same directory and AOF
        wait_for(d.accepts, 15, 0.1, "the daemon to take submits again")
        jobs = c.wait_many(ids, timeout=30)
    for job in jobs:
        done = [h for h in job.history if h.get("status") == "succeeded"]
        assert job.status == "succeeded" and len(done) == 1, (job.id, job.status, job.history)
    assert [j.result for j in jobs[:3]] == [0, 1, 2]
    runs = collections.Counter(tally.read_text().split())
    assert all(runs[jid] == 1 for jid in ids), runs
    log = d.log.read_text()
    held = [int(n) for n in re.findall(
        r"wrote the (\d+) transition\(s\) held meanwhile", log)]
    assert held and max(held) >= 3, log[-3000:]


def _op(kind: str, job_id: str) -> Op:
    return Op(kind, job_id, "token", ())


def test_outage_buffer_is_bounded_by_coalescing_progress_then_holding_starts():
    """Pure writer state (no Redis is touched): past ``redis.outage_buffer`` held
    transitions, progress is coalesced to the newest per job; if still over, no further
    job is started (``saturated``) until Redis is back.  Outcomes are never dropped."""
    cfg = Config.model_validate({"redis": {"outage_buffer": 100}})
    w = Writer(None, None, Settings.build(cfg), watch_fd=lambda fd: None, wake=-1)
    w.up = False
    for n in range(150):
        w.batch.add(_op("progress", f"j{n % 3}"))
    for n in range(60):
        w.batch.add(_op("finish", f"f{n}"))
    assert not w.saturated()  # 150 progress updates of 3 jobs: 3 kept, and 60 outcomes
    assert [op.kind for op in w.batch.ops].count("progress") == 3
    assert len(w.batch.ops) == len(w.batch.effects) == 63
    for n in range(60, 120):
        w.batch.add(_op("finish", f"f{n}"))
    assert w.saturated()
    assert sum(op.kind == "finish" for op in w.batch.ops) == 120  # nothing dropped
    w.ok()
    assert not w.saturated()  # Redis is back: the buffer is written, jobs start again


def test_writer_probes_redis_when_it_was_found_away_with_nothing_to_write(redis_server):
    """The writer against a real Redis: a failure seen elsewhere (a read that timed out)
    marks Redis away while nothing is in flight.  An empty write then goes as a probe
    once the retry time came, and its reply brings the writer back up; without it an
    idle node would refuse submits for ever."""
    cfg = Config.model_validate({"redis": {"retry_interval": 0.05}})
    store = Store(redis_server.client(), "probe", "n1")
    pipe = store.pipe()
    pipe.connect()
    w = Writer(store, pipe, Settings.build(cfg), watch_fd=lambda fd: None, wake=-1)
    w.ok()
    assert not w.probe_due()  # up: nothing to find out
    w.failed(redis.TimeoutError("a read timed out"))
    assert w.probe_due() and not w.may_send()  # away, and the retry time has not come
    wait_for(w.may_send, 2, 0.01, "the retry time")
    assert w.send({}, 0) == []
    assert not w.probe_due()  # one probe at a time
    [reply] = w.receive(block=True)
    assert isinstance(reply, Commit) and not reply.taken
    w.ok()  # what the loop does with a commit
    assert w.up and not w.probe_due()
