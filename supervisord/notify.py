"""systemd's notify protocol: tell the service manager when jobsup is ready,
what it is doing, and that its loop still turns.

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named
in ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket).  It is a
few lines, so jobsup speaks it itself rather than depend on libsystemd.

The watchdog ping goes out only from the loop after a completed pass: a
master that is stopped (SIGSTOP), stuck in a call or failing every pass stops
pinging, and systemd restarts it (the next start recovers every job).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING

from supervisord.states import WorkerState

if TYPE_CHECKING:
    from supervisord.pool.workers import Pool

log = logging.getLogger("jobsup.master")

STATUS_EVERY = 5.0  # seconds between STATUS= lines
_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """The socket end of sd_notify; does nothing where ``NOTIFY_SOCKET`` is unset."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        self.sock: socket.socket | None = None
        if address is not None:
            # Non-blocking: a service manager that is slow to read must not stall the loop.
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                      | socket.SOCK_NONBLOCK)
        self.watchdog_every = _watchdog_interval(env, pid) if address else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *fields: str) -> bool:
        """Send one message; a failure is logged once and never stops the daemon."""
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("systemd notify to %r failed (%s); carrying on without it",
                            self.address, exc)
                self._warned = True
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Half of ``WATCHDOG_USEC``, as sd_watchdog_enabled advises; None when the
    watchdog is off or meant for another process (``WATCHDOG_PID``)."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID")
    try:
        if owner and int(owner) != pid:
            return None
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r / WATCHDOG_PID=%r: not numbers", usec, owner)
        return None
    return value / 2e6 if value > 0 else None


def take_environment(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Remove the notify variables from the environment and return them, so that
    workers, handlers and the embedded redis-server never speak for the daemon."""
    env = os.environ if env is None else env
    return {name: env.pop(name) for name in _ENV if name in env}


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC`` wants it on reload."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def summary(running: int, queued: int | None, ready: int, target: int, redis_up: bool,
            phase: str = "running") -> str:
    """One line for ``systemctl status``: "12 running, 340 queued, 8/8 workers, redis up"."""
    head = "" if phase == "running" else f"{phase}: "
    waiting = "? queued" if queued is None else f"{queued} queued"
    return (f"{head}{running} running, {waiting}, {ready}/{target} workers, "
            f"redis {'up' if redis_up else 'DOWN'}")


def workers_up(pools: Iterable[Pool]) -> tuple[int, int]:
    """(workers ready or busy, the pools' targets together) for the STATUS= line."""
    up = target = 0
    for pool in pools:
        target += pool.target
        up += sum(1 for w in pool.workers.values()
                  if w.staying and w.state is not WorkerState.STARTING)
    return up, target


def pools_started(pools: Iterable[Pool]) -> bool:
    """Every pool has its workers started: each reported ready, or the pool's
    start-up failed (an ``init`` that raised, a worker that died before it was
    ready).  A failed pool is logged and retried by the pool itself; it must not
    hold READY=1 back, or systemd would kill a daemon whose other pools work."""
    for pool in pools:
        if pool.target == 0 or pool.init_failures or (pool.deaths and not pool.ever_ready):
            continue
        up, target = workers_up([pool])
        if up < target:
            return False
    return True


class Systemd:
    """What the loop tells systemd, and when.

    ``started`` says whether start-up is complete (the loop passes the pools'
    state); ``status`` builds the STATUS= line.  Both are read only here, at
    the end of a pass.
    """

    def __init__(self, notifier: Notifier, started: Callable[[], bool],
                 status: Callable[[], str], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.notifier = notifier
        self.started = started
        self.status = status
        self.clock = clock
        self.ready = False
        self.stopping = False
        now = clock()
        self.next_ping = now if notifier.watchdog_every else None
        self.next_status = now + STATUS_EVERY

    def next_deadline(self) -> float | None:
        """When the loop must wake for the next ping (None: no watchdog)."""
        return self.next_ping if self.notifier.enabled else None

    def after_pass(self) -> None:
        """Called once per completed loop pass: READY once, STATUS and WATCHDOG on time."""
        if not self.notifier.enabled:
            return
        now = self.clock()
        if not self.ready and not self.stopping and self.started():
            self.ready = True
            self.notifier.send("READY=1", f"STATUS={self.status()}")
            self.next_status = now + STATUS_EVERY
            log.info("start-up complete; told systemd READY=1")
        elif now >= self.next_status:
            self.notifier.send(f"STATUS={self.status()}")
            self.next_status = now + STATUS_EVERY
        every = self.notifier.watchdog_every
        if every and self.next_ping is not None and now >= self.next_ping:
            self.notifier.send("WATCHDOG=1")
            self.next_ping = now + every

    def reloading(self) -> None:
        if not self.ready:
            return  # still starting: READY=1 comes when start-up is done
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
                           "STATUS=reloading the config")

    def reloaded(self) -> None:
        """READY=1 after a reload, applied or refused (the old config keeps running)."""
        if not self.ready or self.stopping:
            return
        self.notifier.send("READY=1", f"STATUS={self.status()}")

    def begin_stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.notifier.send("STOPPING=1", "STATUS=stopping")
