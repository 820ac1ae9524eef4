"""Redis Sentinel (DESIGN §10): a daemon on ``redis+sentinel://`` rides out a failover.

Real processes on loopback: a redis-server master, two replicas and three
sentinels (the same redis-server binary, run with ``--sentinel``), and a real
daemon with ``redis.min_replicas = 1``.  Two replicas, so that the promoted
master still has one to confirm writes to.

- The master is SIGKILLed under load: the sentinels promote a replica, the
  daemon finds it, submits work again within a bounded time, clients meanwhile
  get ``Unavailable`` saying why, and every acknowledged job ends succeeded
  exactly once.
- With its replicas gone, the master alone cannot confirm a write:
  submits fail with ``Unavailable`` naming ``redis.min_replicas``, and work
  again once a replica is back.
- A write that reaches a demoted master (READONLY) drops the connection, so the
  next one asks the sentinels for the master again.
- A bad ``redis+sentinel://`` URL is a config error that says what is wrong.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from supervisord.config import validate
from supervisord.errors import ConfigError, JobsupError, Unavailable
from supervisord.redis.embedded import find_server
from supervisord.redis.pipe import RedisPipe
from tests.conftest import Daemon, wait_for
from tests.test_redis_faults import Load, _back_within, _outcome_problems

SERVICE = "jobsup-test"
DAEMON_REDIS = {"min_replicas": 1, "socket_timeout": 2.0, "replica_timeout": 0.5,
                "retry_interval": 0.2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SentinelSet:
    """A master, replicas and sentinels, each a redis-server process of this test."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[int, subprocess.Popen] = {}  # port -> process
        self.master_port = _free_port()
        self.replica_ports: list[int] = []
        self.sentinel_ports: list[int] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def _spawn(self, port: int, *args: str) -> None:
        data = self.dir / str(port)
        data.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [find_server(), *args, "--port", str(port), "--bind", "127.0.0.1",
             "--dir", str(data), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def server(self, port: int, replica_of: int | None = None) -> None:
        self._spawn(port, *(("--replicaof", "127.0.0.1", str(replica_of))
                            if replica_of else ()))

    def sentinel(self, port: int) -> None:
        conf = self.dir / f"sentinel-{port}.conf"
        conf.write_text(
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 2\n")
        self.procs[port] = subprocess.Popen(
            [find_server(), str(conf), "--sentinel", "--port", str(port),
             "--bind", "127.0.0.1", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def start(self) -> None:
        self.server(self.master_port)
        for _ in range(2):
            port = _free_port()
            self.replica_ports.append(port)
            self.server(port, replica_of=self.master_port)
        for _ in range(3):
            port = _free_port()
            self.sentinel_ports.append(port)
            self.sentinel(port)
        wait_for(self._watching, 30, 0.1, "every sentinel to see the master, both "
                 "replicas and the two other sentinels")

    def _watching(self) -> bool:
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as s:
                    state = s.sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            if state.get("num-slaves") != 2 or state.get("num-other-sentinels") != 2:
                return False
        return True

    def master(self) -> int | None:
        """The master's port as a majority of the sentinels now reports it."""
        seen = []
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError, TypeError), \
                    redis.Redis(port=port, socket_timeout=1) as s:
                seen.append(int(s.sentinel_get_master_addr_by_name(SERVICE)[1]))
        best = max(set(seen), key=seen.count, default=None)
        return best if seen.count(best) >= 2 else None

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    s = SentinelSet(tmp_path / "sentinel")
    try:
        s.start()
        yield s
    finally:
        s.stop()


class Submits(threading.Thread):
    """Plain submits one after the other: an id back is an acknowledgement."""

    def __init__(self, d: Daemon) -> None:
        super().__init__(daemon=True)
        self.d = d
        self.stop = threading.Event()
        self.acked: dict[str, int] = {}
        self.refusals: list[str] = []  # the Unavailable messages clients got
        self.other: list[str] = []

    def run(self) -> None:
        n = 100_000
        with self.d.client(timeout=30) as c:
            while not self.stop.is_set():
                n += 1
                try:
                    self.acked[c.submit("add", {"a": n, "b": 1})] = n
                except Unavailable as exc:
                    self.refusals.append(str(exc))
                    time.sleep(0.02)
                except JobsupError as exc:
                    self.other.append(f"submit: {type(exc).__name__}: {exc}")
                    time.sleep(0.02)


@pytest.mark.timeout(120)
def test_master_killed_under_load_fails_over_without_loss(daemon_factory, sentinels):
    d = daemon_factory(redis_url=sentinels.url, redis=DAEMON_REDIS)
    submits, runs = Submits(d), Load(d)
    for load in (submits, runs):
        load.start()
    try:
        wait_for(lambda: len(submits.acked) >= 50 and len(runs.acked) >= 10, 30, 0.05,
                 "the load to get going")
        old = sentinels.master_port
        sentinels.kill(old)
        t0 = time.monotonic()
        promoted = wait_for(lambda: (m := sentinels.master()) not in (None, old) and m,
                            30, 0.1, "the sentinels to promote a replica")
        before = len(submits.acked)
        back = _back_within(d, 30)
        assert back is not None, (f"no submit went through within 30 s of the failover "
                                  f"to port {promoted}:\n{d.log.read_text()[-3000:]}")
        wait_for(lambda: len(submits.acked) >= before + 50, 30, 0.05,
                 "submits to go on after the failover")
        took = time.monotonic() - t0
    finally:
        for load in (submits, runs):
            load.stop.set()
        for load in (submits, runs):
            load.join(40)
    assert not submits.other and not runs.other, (submits.other + runs.other)[:5]
    assert submits.refusals, "no submit was refused: the failover went unnoticed?"
    vague = [m for m in submits.refusals if "Redis" not in m]
    assert not vague, f"refusals that do not say Redis is the cause: {vague[:3]}"
    problems = _outcome_problems(d, {**submits.acked, **runs.acked})
    assert not problems, (f"{len(problems)} acknowledged job(s) went wrong across the "
                          f"failover ({took:.1f} s):\n" + "\n".join(problems[:10]))
    # The jobs are in the master the sentinels now name (a slow promotion can be
    # retried with the other replica), which the daemon found by itself.
    now = wait_for(lambda: (m := sentinels.master()) not in (None, old) and m, 10, 0.1,
                   "the sentinels to agree on the master")
    with redis.Redis(port=now) as r:
        assert r.execute_command("ROLE")[0] == b"master"
        assert r.hget(f"{{jobsup}}:job:{next(iter(submits.acked))}", "status") == b"succeeded"


@pytest.mark.timeout(90)
def test_min_replicas_refuses_what_no_replica_confirmed(daemon_factory, sentinels):
    d = daemon_factory(redis_url=sentinels.url, redis=DAEMON_REDIS)
    with d.client(timeout=10) as c:
        assert c.wait(c.submit("add", {"a": 1, "b": 1}), timeout=20).result == 2
        for port in sentinels.replica_ports:
            sentinels.kill(port)
        refused = wait_for(lambda: _refusal(c), 20, 0.1, "a submit to be refused")
        assert "redis.min_replicas" in refused and "replica" in refused, refused
        # A replica back: confirmed writes, so submits go through again.
        sentinels.server(sentinels.replica_ports[0], replica_of=sentinels.master_port)
    assert _back_within(d, 30) is not None, d.log.read_text()[-3000:]


@pytest.mark.timeout(30)
def test_a_write_to_a_demoted_master_reconnects(tmp_path: Path):
    """A failover can leave the write pipe on a server that is now a replica: its writes
    get READONLY.  Nothing was written, so the pipe drops the connection (the next one
    asks the sentinels again) and the write counts as lost, to be sent again."""
    servers = SentinelSet(tmp_path / "servers")
    other = _free_port()
    try:
        servers.server(servers.master_port)
        servers.server(other)
        client = redis.Redis(port=servers.master_port, socket_timeout=2)
        wait_for(lambda: _answers(client) and _answers(redis.Redis(port=other)), 10, 0.05,
                 "both redis-servers to answer")
        pipe = RedisPipe(client, depth=1)
        pipe.send([("SET", "k", "1")], "first")
        assert pipe.receive() == ([b"OK"], "first")
        client.execute_command("REPLICAOF", "127.0.0.1", str(other))  # demoted
        pipe.send([("SET", "k", "2")], "second")
        with pytest.raises(redis.ConnectionError, match="read-only replica"):
            pipe.receive()
        assert not pipe.connected and pipe.abandon() == ["second"]
    finally:
        servers.stop()


def _answers(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.ConnectionError):
        return bool(client.ping())
    return False


def _refusal(c) -> str | None:
    try:
        c.submit("add", {"a": 2, "b": 2})
    except Unavailable as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://127.0.0.1:26379", "names no Sentinel service"),
    ("redis+sentinel://127.0.0.1:26379/", "names no Sentinel service"),
    ("redis+sentinel://h1:port/svc", "'h1:port' is not a sentinel address"),
    ("redis+sentinel://h1:26379,,h2/svc", "'(empty)' is not a sentinel address"),
    ("redis+sentinel://h1:70000/svc", "port 70000 is out of range"),
    ("redis+sentinel://h1/svc/zero", "database after the service must be a number"),
    ("redis+sentinel://h1/my service", "is not a Sentinel service name"),
    ("sentinel://h1/svc", "redis+sentinel://"),
])
def test_bad_sentinel_url_is_a_clear_config_error(url: str, says: str):
    with pytest.raises(ConfigError) as caught:
        validate({"redis": {"url": url}})
    (error,) = caught.value.errors
    assert error["loc"] == "redis" and says in error["msg"], error


def test_min_replicas_is_checked():
    for redis_cfg, says in (
        ({"min_replicas": 1}, "the embedded Redis has no replicas"),
        ({"url": "redis://127.0.0.1/", "min_replicas": -1}, "greater than or equal to 0"),
        ({"url": "redis://127.0.0.1/", "min_replicas": 1, "replica_timeout": 5},
         "must be shorter than socket_timeout"),
    ):
        with pytest.raises(ConfigError) as caught:
            validate({"redis": redis_cfg})
        assert any(says in e["msg"] for e in caught.value.errors), caught.value.errors
    good = validate({"redis": {"url": "redis+sentinel://:pw@a:1,b/svc/2", "min_replicas": 2}})
    assert good.redis.min_replicas == 2
