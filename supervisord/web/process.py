"""The web process: the master's side of it (bind, start, watch, restart, stop).

The HTTP side (status page, JSON, event stream, /metrics) runs in a child
process, ``python -m supervisord.web.server``, so that no HTTP client, however
slow or many, can hold up the master's loop: the child is a client of the
API like any other.  The master binds ``metrics.listen`` itself, so that a
port in use is a start-up error that names the key, port 0 resolves to a
port ``status`` reports, and a restarted child serves on the same socket
without a moment in which connections are refused (they wait in the
backlog).  The child gets the listening socket by fd, dies with the master
(parent-death signal), and is supervised as the embedded Redis is: a pidfd
in the loop's poll shows at once that it died; ``exited`` reaps it and says
when to start the next one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import zmq
import zmq.auth

from supervisord import __version__
from supervisord.config import Config
from supervisord.errors import ConfigError
from supervisord.redis.embedded import log_tail, restart_delay

log = logging.getLogger("jobsup.web")

_WINDOW = 60.0  # seconds over which deaths are counted
_SETTLED = 5.0  # a child that lived this long counts as having started


def bind(listen: str) -> socket.socket:
    """The listening socket of ``metrics.listen`` (HOST:PORT, port 0 for any)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ConfigError(f"metrics.listen {listen}: cannot listen there ({exc})", errors=[{
            "loc": "metrics.listen",
            "msg": f"cannot listen on {listen} ({exc.strerror or exc}): another process may "
                   "hold the port (another jobsup?); pick a free port, 0 for any, or '' to "
                   "turn the HTTP side off"}]) from None
    sock.set_inheritable(True)
    return sock


class WebProcess:
    """One web child at a time on the socket the master bound."""

    def __init__(self, cfg: Config, node: str) -> None:
        self.sock = bind(cfg.metrics.listen)
        self.port: int = self.sock.getsockname()[1]
        self.dir = cfg.state_path / "web"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logfile = self.dir / "web.log"
        self.curve_public: bytes | None = None
        self.settings = {
            "node": node, "version": __version__, "master": os.getpid(),
            "endpoint": cfg.api.endpoint, "events": cfg.api.events,
            "web": cfg.web.model_dump(), "curve_server_key": None, "curve_client_cert": None,
        }
        if cfg.api.curve_secret_key:
            self._curve(cfg.api.curve_secret_key)
        self.proc: subprocess.Popen | None = None
        self.pidfd: int | None = None
        self.started_at = 0.0  # monotonic
        self.failures = 0  # children in a row that died within _SETTLED seconds
        self.deaths: list[float] = []
        self.restart_at: float | None = None  # monotonic; set while none runs

    def _curve(self, server_secret: str) -> None:
        """A key pair of its own for this run: the master's authenticator admits it beside
        the operator's allowed clients (``security.secure_api``).  Written 0600 in the
        state dir, since the client side reads certificates from files."""
        for old in self.dir.glob("client.key*"):
            old.unlink()
        old_mask = os.umask(0o077)
        try:
            public_file, secret_file = zmq.auth.create_certificates(str(self.dir), "client")
        finally:
            os.umask(old_mask)
        self.curve_public, _ = zmq.auth.load_certificate(public_file)
        self.settings["curve_server_key"] = server_secret  # the client reads its public half
        self.settings["curve_client_cert"] = secret_file

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def spawn(self) -> None:
        argv = [sys.executable, "-m", "supervisord.pool.deathsig", str(os.getpid()),
                str(int(signal.SIGTERM)), sys.executable, "-m", "supervisord.web.server",
                str(self.sock.fileno())]
        out = os.open(self.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out,
                                         pass_fds=(self.sock.fileno(),),
                                         start_new_session=True, umask=0o077)
        finally:
            os.close(out)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(self.settings).encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died at once: the pidfd says so
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("web process pid %d on port %d", self.proc.pid, self.port)

    def restart(self, now: float) -> bool:
        try:
            self.spawn()
            return True
        except OSError as exc:
            self.failures += 1
            self.restart_at = now + max(restart_delay(self.failures, len(self.deaths)), 0.5)
            log.error("could not start the web process (%s); trying again in %.1fs", exc,
                      self.restart_at - now)
            return False

    def exited(self, now: float) -> float:
        """The child died: reap it, log why with its log's tail, plan the next start."""
        assert self.proc is not None
        self.proc.poll()
        self._close_pidfd()
        lived = now - self.started_at
        self.failures = 0 if lived >= _SETTLED else self.failures + 1
        self.deaths = [t for t in self.deaths if t > now - _WINDOW] + [now]
        delay = restart_delay(self.failures, len(self.deaths))
        self.restart_at = now + delay
        status = self.proc.returncode
        how = (f"killed by signal {signal.Signals(-status).name}" if status is not None
               and status < 0 else f"exited with status {status}")
        log.error("web process pid %d %s after %.1fs; restarting it in %.1fs. Its log (%s) "
                  "ends: %s", self.proc.pid, how, lived, delay, self.logfile,
                  log_tail(self.logfile))
        return delay

    def restart_due(self, now: float) -> bool:
        return self.restart_at is not None and now >= self.restart_at

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
            self.pidfd = None

    def stop(self, timeout: float = 5.0) -> None:
        self.restart_at = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            log.info("web process stopped")
        self._close_pidfd()
        self.sock.close()
