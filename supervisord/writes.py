"""The Redis writes of the loop: up to two pipelines in flight, effects after commit.

A mixin of ``Master``: ``flush`` sends the pass's submits and transitions (and
the reservation of queued jobs) as one pipeline, unless the pipe is full;
``read_redis`` takes replies, oldest first, when the connection's fd is
readable, and ``committed`` acknowledges submits, runs effects, takes reserved
jobs and wakes waiters.  A failed write keeps its transitions for the next try.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import redis
import zmq

from supervisord import protocol
from supervisord.batch import Batch
from supervisord.errors import Unavailable
from supervisord.states import Phase
from supervisord.store import Reserved

log = logging.getLogger("jobsup.master")


class Writes:
    def flush(self) -> None:
        """Send the pass's writes to Redis, unless as many as may be are in flight.

        A reservation (and promotion) goes only when none is in flight, since how
        many jobs to take depends on what the last one brought.
        """
        if self.pipe.full:
            return
        now = time.time()
        for pending in self.batch.submits:
            last = pending.jobs[-1]
            if last.status == "queued" and not last.lease:  # not all went straight to workers
                self.may_have_work(last.type)
                self.make_way(last.pool, last.priority)
        settled = self.may_reserve()
        promote = 500 if settled and self.next_due and now >= self.next_due else 0
        wants = ({p.name: (n, sorted(p.hot)) for p in self.workers.pools.values()
                  if (n := p.want())}
                 if settled and self.phase is Phase.RUNNING and self.redis_up else {})
        if not (self.batch or wants or promote):
            return
        if not self.redis_up and time.monotonic() < self.redis_retry_at:
            return
        taken = self.batch.take()
        jobs = [job for pending in taken.submits for job in pending.jobs]
        try:
            self.pipe.send(self.store.write_commands(jobs, taken.ops, wants, promote, now,
                                                     self.routes, self.breakers),
                           (taken, wants, bool(jobs)))
        except redis.RedisError as exc:
            self.write_failed(taken, exc)
            self.lose_writes(exc)
            return
        fd = self.pipe.fileno()
        if fd != self._pipe_fd:
            if self._pipe_fd is not None:
                self.poller.unregister(self._pipe_fd)
            self.poller.register(fd, zmq.POLLIN)
            self._pipe_fd = fd

    def may_reserve(self) -> bool:
        """No reservation is in flight."""
        return not any(wants for _, wants, _ in self.pipe.contexts())

    def read_redis(self, ready: dict, block: bool = False) -> None:
        """Replies of writes in flight, oldest first: commit their effects, or keep
        their transitions for a retry."""
        if not self.pipe.busy or not (block or self._pipe_fd in ready):
            return
        while self.pipe.busy:
            try:
                replies, (taken, wants, had_submits) = self.pipe.receive()
            except redis.RedisError as exc:
                self.lose_writes(exc)
                return
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self.store.load_scripts()  # Redis restarted empty-handed: send again
                self.resend(taken)
                return
            try:
                created, applied = self.store.parse_write(replies, had_submits, taken.ops)
            except redis.RedisError as exc:
                self.write_failed(taken, exc)
                continue
            self.committed(taken, wants, created, applied)
            if not (block or self.pipe.more()):
                return

    def lose_writes(self, exc: Exception) -> None:
        """The connection failed: every write in flight is lost, and kept for a retry."""
        if self._pipe_fd is not None:
            self.poller.unregister(self._pipe_fd)
            self._pipe_fd = None
        for taken, _, _ in reversed(self.pipe.abandon()):  # the oldest ends up first
            self.write_failed(taken, exc)

    def resend(self, taken: Batch) -> None:
        """Put back a write Redis refused for want of its scripts, with those behind it
        (sent with the same scripts), in order."""
        again = [taken]
        while self.pipe.busy:
            try:
                replies, (later, wants, had_submits) = self.pipe.receive()
            except redis.RedisError as exc:
                for batch in reversed(again):
                    self.batch.put_back(batch, submits=True)
                self.lose_writes(exc)
                return
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                again.append(later)
            else:
                self.committed(later, wants,
                               *self.store.parse_write(replies, had_submits, later.ops))
        for batch in reversed(again):
            self.batch.put_back(batch, submits=True)

    def write_failed(self, taken: Batch, exc: Exception) -> None:
        self.redis_failed(exc)
        for pending in taken.submits:
            started = [job for job in pending.jobs if job.lease]
            for job in started:  # it went straight to a worker: stop it, it was never stored
                self.jobs.request_cancel(job.id, job.lease)
            self.api.fail(pending.identity, pending.rid, Unavailable(
                f"Redis write failed ({exc}); the job was NOT accepted" + (
                    f" ({len(started)} had already started on a worker and were told to "
                    "stop)" if started else "") + ". Resubmit; an idempotency key makes "
                "resubmitting safe"))
        self.batch.put_back(taken)
        self._resync = True  # replies were lost: jobs may be held that we never heard of

    def committed(self, taken: Batch, wants: dict[str, tuple[int, list[str]]], created: list,
                  applied: Any) -> None:
        self.redis_ok()
        self.acknowledge(taken.submits, created)
        for effect, applied_flag in zip(taken.effects, applied.flags, strict=True):
            if effect is not None:
                try:
                    effect(applied_flag)
                except Exception:
                    log.exception("after-commit effect failed")
        self.take_reserved(wants, applied.reserved, applied.promoted)
        if applied.next_due is not None:
            self.next_due = applied.next_due
        for job_type, state in applied.circuit_changes:
            self.jobs.circuit_changed(job_type, state)
        try:
            if self._resync:
                self._resync = False
                known = tuple(self.running) + tuple(
                    j.id for p in self.workers.pools.values() for j in p.buffer)
                n = self.store.recover(self.node, "resync", keep=known)
                if n:
                    log.warning("requeued %d job(s) whose hand-over reply Redis lost", n)
            if self.done_waiters:
                done, self.done_waiters = self.done_waiters, []
                self.api.answer(done, applied.records)
        except redis.RedisError as exc:
            self.redis_failed(exc)
        self.dispatch()

    def settle_writes(self, timeout: float = 10.0) -> None:
        """At exit: finish the write in flight and send what is left, synchronously."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and hasattr(self, "pipe"):
            if self.pipe.busy:
                self.read_redis({}, block=True)
            elif self.batch and self.redis_up:
                self.flush()
            else:
                return
            if not self.redis_up:
                return

    def acknowledge(self, submits: list, created: list[tuple[str, bool]]) -> None:
        at = 0
        for pending in submits:
            rows = created[at:at + len(pending.jobs)]
            at += len(pending.jobs)
            for job, (job_id, new) in zip(pending.jobs, rows, strict=True):
                if new:
                    self.metrics.submitted.labels(job.type).inc()
                    self.events.state(job_id, job.status, attempt=1, type=job.type)
                    if job.status == "scheduled":
                        self.next_due = min(self.next_due or job.run_at, job.run_at)
            ids = [job_id for job_id, _ in rows]
            if pending.wait:
                # Submit-and-wait: the job is stored; the reply is its final record.
                job_id, new = rows[0]
                status = pending.jobs[0].status if new else self.store.status_of([job_id])[0]
                self.api.wait_for(pending.identity, pending.rid, [job_id], [status], "records",
                                  pending.wait_timeout)
                continue
            self.api.reply(pending.identity, protocol.ok(
                pending.rid, ids if pending.many else {"id": ids[0], "new": rows[0][1]}))

    def take_reserved(self, wants: dict[str, tuple[int, list[str]]], reserved: list[Reserved],
                      promoted: list[str]) -> None:
        got: dict[str, int] = {}
        for job in reserved:
            pool = self.workers.pools.get(job.pool)
            if pool is None or self.phase is not Phase.RUNNING:
                self.jobs.requeue(job, "pool no longer on this node")
                continue
            pool.buffer.append(job)
            got[job.pool] = got.get(job.pool, 0) + 1
        for name in got:  # keep each buffer in queue order: priority, then id
            pool = self.workers.pools[name]
            pool.buffer = deque(sorted(pool.buffer, key=lambda j: (-j.priority, j.id)))
        for name, (n, _) in wants.items():
            if got.get(name, 0) < n:
                self.workers.pools[name].hot.clear()  # those queues are empty (or held)
        for job_type in promoted:
            self.may_have_work(job_type)

    def make_way(self, pool_name: str, priority: int) -> None:
        """Higher-priority work arrived: give back prefetched jobs that rank below it."""
        pool = self.workers.pools.get(pool_name)
        if pool is None or not pool.buffer or pool.buffer[-1].priority >= priority:
            return
        keep = [job for job in pool.buffer if job.priority >= priority]
        for job in pool.buffer:
            if job.priority < priority:
                self.jobs.requeue(job, "")  # never started: no history entry
        pool.buffer = deque(keep)

    def redis_failed(self, exc: Exception) -> None:
        if self.redis_up and isinstance(exc, redis.ResponseError):
            log.critical("Redis rejected a jobsup script (a bug; please report it): %s; "
                         "holding %d transition(s) and retrying", exc, len(self.batch.ops))
        elif self.redis_up:
            log.error("Redis is unreachable (%s); holding %d transition(s) and refusing "
                      "submits until it is back", exc, len(self.batch.ops))
        self.redis_up = False
        self.metrics.redis_up.set(0)
        self.redis_retry_at = time.monotonic() + self.cfg.redis.retry_interval

    def redis_ok(self) -> None:
        if not self.redis_up:
            if self._redis_seen:
                log.warning("Redis is reachable again")
            self._redis_seen = True
            self.redis_up = True
            self.metrics.redis_up.set(1)
