"""Shared fixtures: a real redis-server and real jobsup daemons, cleaned up by pid.

Nothing here is faked: ``redis_server`` starts the same redis-server binary
the daemon embeds, on a private unix socket; ``daemon`` starts ``jobsup run``
as a subprocess with a config written into the test's own directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from supervisord.client import Client
from supervisord.errors import Unavailable
from supervisord.redis.embedded import find_server

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> Any:
    """Poll until ``predicate`` returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def scrape_metrics(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample on a daemon's /metrics, keyed by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        procs = []
    for proc in [*procs]:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = directory / "redis.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [find_server(), "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "600", "--dir", str(self.dir), "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(unix_socket_path=str(self.socket))
        wait_for(lambda: _pings(client), 10, what="redis-server to answer")
        client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop(signal.SIGKILL)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """Write a TOML config: ``{"daemon": {...}, "pools": [{...}], "jobs": {name: {...}}}``."""
    lines: list[str] = []
    for name, body in sections.items():
        if name == "pools":
            for pool in body:
                lines.append("[[pools]]")
                lines += [f"{k} = {_toml(v)}" for k, v in pool.items()]
        elif name == "jobs":
            for job_name, job in body.items():
                lines.append(f"[jobs.{job_name}]")
                lines += [f"{k} = {_toml(v)}" for k, v in job.items()]
        else:
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


DEMO_JOBS = {
    "noop": {"handler": "examples.demo:noop", "timeout": 30},
    "echo": {"handler": "examples.demo:echo", "timeout": 30},
    "add": {"handler": "examples.demo:add", "timeout": 30},
    "sleep": {"handler": "examples.demo:sleep", "timeout": 60},
    "flaky": {"handler": "examples.demo:flaky", "timeout": 30, "max_attempts": 10,
              "backoff": {"base": 0.01, "factor": 2.0, "max": 0.1}},
    "fail": {"handler": "examples.demo:fail", "timeout": 30, "max_attempts": 2,
             "backoff": {"base": 0.01, "max": 0.05}},
    "crash": {"handler": "examples.demo:crash", "timeout": 30, "max_attempts": 5},
    "spawn": {"handler": "examples.demo:spawn", "timeout": 60},
    "hog": {"handler": "examples.demo:hog", "timeout": 60, "max_attempts": 1},
}


class Daemon:
    """One ``jobsup run`` subprocess with its own state dir, sockets and config."""

    def __init__(self, directory: Path, redis_url: str, overrides: dict[str, Any]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"ipc://{directory}/api.sock"
        self.events = f"ipc://{directory}/events.sock"
        sections: dict[str, Any] = {
            "daemon": {"node_id": overrides.pop("node_id", "test-node"),
                       "state_dir": str(directory / "state"), "shutdown_grace": 5.0,
                       "kill_grace": 1.0, "heartbeat_interval": 0.2, "heartbeat_timeout": 3.0},
            "redis": {"url": redis_url},
            "api": {"endpoint": self.endpoint, "events": self.events},
            "metrics": {"listen": "127.0.0.1:0"},
            "pools": [{"name": "default", "workers": 2}],
            "jobs": dict(DEMO_JOBS),
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and key in ("daemon", "redis", "api", "metrics"):
                sections[key] = {**sections[key], **value}
            elif key == "jobs":
                sections["jobs"] = {**sections["jobs"], **value}
            else:
                sections[key] = value
        self.sections = sections
        self.config = write_config(directory / "jobsup.toml", sections)
        self.log = directory / "daemon.log"
        self.root = ROOT  # the source tree it runs from (another version's, in a test)
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> Daemon:
        env = dict(os.environ, PYTHONPATH=str(self.root), PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisord", "-c", str(self.config), "run"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n"
                                     f"{self.log.read_text()[-3000:]}")
            try:
                with self.client(connect_timeout=0.2, timeout=1.0) as c:
                    st = c.status()
            except Exception:
                return False
            return all(p["idle"] + p["busy"] >= min(p["target"], 1) for p in st["pools"])
        wait_for(ready, timeout, 0.05, "daemon and its workers to be ready")

    def client(self, **kwargs: Any) -> Client:
        return Client(self.endpoint, **kwargs)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def accepts(self) -> bool:
        """Whether a submit gets through now (Redis may still be catching up)."""
        with self.client() as c:
            try:
                c.wait(c.submit("add", {"a": 0, "b": 0}), timeout=20)
                return True
            except Unavailable:
                return False

    def workers(self) -> list[dict]:
        with self.client() as c:
            return c.status()["workers"]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def cli(self, *args: str, input: str | None = None, timeout: float = 60.0
            ) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.run([sys.executable, "-m", "supervisord", "-c", str(self.config),
                               *args], capture_output=True, text=True, input=input,
                              timeout=timeout, cwd=ROOT, env=env)

    def descendants(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def kill(self) -> None:
        """SIGKILL the daemon and everything it started (test clean-up)."""
        if self.proc is None:
            return
        pids = self.descendants()
        kill_tree(self.pid)
        for pid in pids:
            kill_tree(pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@pytest.fixture
def daemon_factory(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Daemon]]:
    """``daemon_factory(**overrides)`` starts a daemon on the test's private Redis."""
    started: list[Daemon] = []
    counter = iter(range(100))

    def make(start: bool = True, redis_url: str | None = None, **overrides: Any) -> Daemon:
        d = Daemon(tmp_path / f"d{next(counter)}", redis_url or redis_server.url, overrides)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        d.kill()


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory()


def gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def all_gone(pids: Iterable[int]) -> bool:
    return all(gone(pid) for pid in pids)


def statuses(r: redis.Redis, ids: list[str], prefix: str = "{jobsup}") -> list[str | None]:
    """Job statuses straight from Redis, as the state of record has them."""
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(f"{prefix}:job:{job_id}", "status")
    return [s.decode() if s else None for s in pipe.execute()]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon per test module, for tests that only add and look at their own jobs."""
    base = tmp_path_factory.mktemp("shared")
    server = RedisServer(base / "redis")
    server.start()
    daemon = Daemon(base / "d", server.url, {})
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.kill()
        server.stop()
