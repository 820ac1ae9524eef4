"""The pass's batch and the Redis writes in flight: send, receive, outage state.

``Writer.send`` takes the pass's submits and transitions (plus the
reservation the scheduler asks for) and writes them as one pipeline, unless
as many writes as may be are in flight; ``receive`` reads replies, oldest
first, once the connection's fd is readable, and hands each commit or failure
back to the loop.  A write Redis refused for want of its scripts is sent again
(the one NOSCRIPT path is in ``redis.store``).  A failed write's transitions go
back at the front of the batch for the next try.

While Redis is away the batch is the outage buffer: the jobs the node holds
keep running and their outcomes wait in it, in order, until a reconnect writes
them.  It is bounded by ``redis.outage_buffer``: at the bound, progress updates
are coalesced to the newest per job, and if that is not enough, no further held
job is started (``saturated``), so the buffer grows past the bound by at most
the outcomes of the jobs already running.  Nothing acknowledged is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from supervisord.clock import SYSTEM, Clock
from supervisord.redis.pipe import RedisPipe
from supervisord.redis.replicas import ReplicasBehind
from supervisord.redis.store import Applied, NewJob, Op, Store, lacks_scripts
from supervisord.settings import Settings

log = logging.getLogger("jobsup.writer")

Effect = Callable[[str], None]
Wants = dict[str, tuple[int, list[str]]]  # pool -> (how many, the types to look in)


@dataclass(eq=False)
class PendingSubmit:
    """New jobs waiting for the pass's Redis write, and whom to answer after it."""

    jobs: list[NewJob]
    identity: bytes
    rid: Any
    many: bool
    wait: bool = False
    wait_timeout: float | None = None


@dataclass
class Batch:
    """One loop pass of pending writes: submits, and ops with their after-commit effects."""

    submits: list[PendingSubmit] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    effects: list[Effect | None] = field(default_factory=list)

    def add(self, op: Op, effect: Effect | None = None) -> None:
        self.ops.append(op)
        self.effects.append(effect)

    def __bool__(self) -> bool:
        return bool(self.submits or self.ops)

    def take(self) -> Batch:
        taken = Batch(self.submits, self.ops, self.effects)
        self.submits, self.ops, self.effects = [], [], []
        return taken

    def put_back(self, taken: Batch, submits: bool = False) -> None:
        """Keep a pass's transitions after Redis failed, ahead of newer ones."""
        self.ops[:0] = taken.ops
        self.effects[:0] = taken.effects
        if submits:
            self.submits[:0] = taken.submits


@dataclass
class Commit:
    taken: Batch
    wants: Wants
    created: list[tuple[str, bool]]
    applied: Applied


@dataclass
class Failure:
    taken: Batch
    error: Exception


class Writer:
    def __init__(self, store: Store, pipe: RedisPipe, settings: Settings,
                 watch_fd: Callable[[int | None], None], wake: int,
                 clock: Clock = SYSTEM) -> None:
        self.store = store
        self.pipe = pipe
        self.settings = settings
        self.watch_fd = watch_fd  # the loop polls this fd for replies
        self.wake = wake  # written when a reconnect attempt has finished
        self.clock = clock
        self.batch = Batch()
        self.up = False
        self.retry_at = 0.0
        self.resync = False  # replies were lost: jobs may be held that we never heard of
        self._seen = False
        self._fd: int | None = None
        self._saturated = False
        self._coalesced = -1  # the batch's length when it was last coalesced
        self._retried = 0  # transitions in the last write sent while Redis was away
        self._eager_until = 0.0  # monotonic: retry fast until then (a restarted Redis)

    def configure(self, settings: Settings) -> None:
        self.settings = settings

    # -- state --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.pipe.busy

    def may_send(self) -> bool:
        return (self.pipe.connected and not self.pipe.full
                and (self.up or self.clock.monotonic() >= self.retry_at))

    def probe_due(self) -> bool:
        """Redis was found away and nothing is in flight: an empty write must go to find
        out whether it is back.  Nothing else would: an idle node writes nothing, and a
        node that thinks Redis away refuses the submits and reservations that would."""
        return not self.up and not self.pipe.busy

    def suspect(self) -> bool:
        """Redis is down, or slow to answer the oldest write: blocking reads would stall
        the loop, so periodic ones wait."""
        timeout = min(0.25, self.settings.cfg.redis.socket_timeout / 4)
        return not self.up or self.pipe.overdue(timeout, self.clock.monotonic())

    def maintain(self) -> None:
        """Without a connection, try for one in the background once the retry time came."""
        if not self.pipe.connected and self.clock.monotonic() >= self.retry_at:
            self.pipe.reconnect(self.wake)

    def reconnected(self) -> None:
        """A background connect finished: use it, or wait for the next retry."""
        error = self.pipe.adopt()
        if error is not None:
            self.failed(error)
        elif self.pipe.connected:
            self.watch_fd(self.pipe.fileno())
            self._fd = self.pipe.fileno()

    def reserving(self) -> bool:
        """A reservation is in flight (how many to take next depends on its reply)."""
        return any(context[0] for _, context in self.pipe.inflight)

    def retry_now(self, eager: float = 2.0) -> None:
        """Redis was just restarted: connect as soon as it listens (retrying every 50 ms
        for ``eager`` seconds), not one ``retry_interval`` later."""
        self.retry_at = 0.0
        self._eager_until = self.clock.monotonic() + eager

    def saturated(self) -> bool:
        """Redis is away and the outage buffer is at its bound: start no further job."""
        if self.up:
            return False  # every pass: keep it cheap
        bound = self.settings.cfg.redis.outage_buffer
        if len(self.batch.ops) < bound:
            return False
        if len(self.batch.ops) != self._coalesced:  # only when something was added
            self._coalesce()
            self._coalesced = len(self.batch.ops)
        full = len(self.batch.ops) >= bound
        if full and not self._saturated:
            log.error("the outage buffer holds %d transitions (redis.outage_buffer %d): "
                      "starting no further job until Redis is back; running jobs go on and "
                      "their outcomes are kept", len(self.batch.ops), bound)
        self._saturated = full
        return full

    def _coalesce(self) -> None:
        """Keep only the newest progress update of each job (progress is advisory)."""
        ops, effects = self.batch.ops, self.batch.effects
        newest: dict[str, int] = {}
        for at, op in enumerate(ops):
            if op.kind == "progress":
                newest[op.id] = at
        keep = [at for at, op in enumerate(ops)
                if op.kind != "progress" or newest[op.id] == at]
        if len(keep) < len(ops):
            self.batch.ops = [ops[at] for at in keep]
            self.batch.effects = [effects[at] for at in keep]

    def ok(self) -> None:
        if not self.up:
            if self._seen:
                held = (f"; wrote the {self._retried} transition(s) held meanwhile"
                        if self._retried else "")
                log.warning("Redis is reachable again%s", held)
            self._seen = True
            self.up = True
            self._saturated = False

    def failed(self, exc: Exception) -> None:
        """Redis is unreachable (a timeout or a broken connection)."""
        if self.up:
            log.error("Redis is unreachable (%s); keeping transitions in the outage buffer "
                      "and refusing submits until it is back", exc)
        self.up = False
        now = self.clock.monotonic()
        interval = self.settings.cfg.redis.retry_interval
        if now < self._eager_until:
            interval = min(interval, 0.05)
        self.retry_at = now + interval

    # -- writing ------------------------------------------------------------------
    def send(self, wants: Wants, promote: int) -> list[Failure]:
        """Write the batch (and the reservation); returns the write if it failed at once."""
        taken = self.batch.take()
        if not self.up:
            self._retried = len(taken.ops)
        jobs = [job for pending in taken.submits for job in pending.jobs]
        s = self.settings
        try:
            self.pipe.send(self.store.write_commands(jobs, taken.ops, wants, promote,
                                                     self.clock.time(), s.routes, s.breakers),
                           (wants, (taken, bool(jobs))))
        except redis.RedisError as exc:
            return [Failure(taken, exc), *self.lose(exc)]
        fd = self.pipe.fileno()
        if fd != self._fd:
            self._fd = fd
            self.watch_fd(fd)
        return []

    def receive(self, block: bool = False) -> list[Commit | Failure]:
        """Replies of writes in flight, oldest first: what each came to."""
        out: list[Commit | Failure] = []
        while self.pipe.busy:
            try:
                replies, (wants, (taken, had_submits)) = self.pipe.receive()
            except redis.RedisError as exc:
                return out + self.lose(exc)
            if self.store.scripts_missing(replies):  # Redis restarted empty-handed
                self.resend(taken, out)
                return out
            try:
                replies = self.store.replicas.confirmed(replies)
            except ReplicasBehind as exc:  # as if its reply were lost: so are those after it
                self.pipe.disconnect()
                return [*out, *self.lose(exc), Failure(taken, exc)]
            try:
                created, applied = self.store.parse_write(replies, had_submits, taken.ops)
            except redis.RedisError as exc:
                out.append(Failure(taken, exc))
                continue
            out.append(Commit(taken, wants, created, applied))
            if not (block or self.pipe.more()):
                break
        return out

    def resend(self, taken: Batch, out: list[Commit | Failure]) -> None:
        """Put back a write Redis refused for want of its scripts, with those behind it
        (sent with the same scripts), in order."""
        again = [taken]
        while self.pipe.busy:
            try:
                replies, (wants, (later, had_submits)) = self.pipe.receive()
            except redis.RedisError as exc:
                for batch in reversed(again):
                    self.batch.put_back(batch, submits=True)
                out.extend(self.lose(exc))
                return
            if lacks_scripts(replies):  # sent with the same lost scripts
                again.append(later)
            else:
                try:
                    replies = self.store.replicas.confirmed(replies)
                except ReplicasBehind:  # sent again below; what it reserved is re-checked
                    again.append(later)
                    self.resync = True
                    continue
                out.append(Commit(later, wants,
                                  *self.store.parse_write(replies, had_submits, later.ops)))
        for batch in reversed(again):
            self.batch.put_back(batch, submits=True)

    def overdue(self) -> list[Failure]:
        """Writes in flight past ``redis.socket_timeout``: Redis is frozen or cut off, so
        give them up as failed (their submits get ``Unavailable``; transitions retry)."""
        timeout = self.settings.cfg.redis.socket_timeout
        if not self.pipe.overdue(timeout, self.clock.monotonic()):
            return []
        self.pipe.disconnect()
        return self.lose(redis.TimeoutError(
            f"Redis did not answer within redis.socket_timeout ({timeout:g}s)"))

    def deadline(self) -> float | None:
        """When the oldest write in flight becomes overdue (monotonic)."""
        return self.pipe.deadline(self.settings.cfg.redis.socket_timeout)

    def cut(self, exc: Exception) -> list[Failure]:
        """Redis is gone for certain (its process died): drop the connection now, not at
        the next write, so that the reconnect starts at once."""
        self.pipe.disconnect()
        return self.lose(exc)

    def lose(self, exc: Exception) -> list[Failure]:
        """The connection failed: every write in flight is lost, and kept for a retry."""
        if self._fd is not None:
            self._fd = None
            self.watch_fd(None)
        # Newest first: each goes back to the front of the batch, so the oldest ends first.
        return [Failure(taken, exc) for _, (taken, _) in reversed(self.pipe.abandon())]
