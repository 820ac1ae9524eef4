"""What runs where: pool buffers, reservations, hand-over and dispatch.

Each pool has a buffer of jobs this node reserved from Redis ahead of its
workers (``prefetch``), and a set of job types that may have queued work
("hot"): only those queues are asked for jobs.  A type turns hot when a job of
it is queued (a submit, a retry, a closed circuit), and cold when a
reservation came back short, unless it was marked again after that
reservation was sent: a submit written behind a reservation must not be
forgotten until the next discovery tick.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from supervisord.lifecycle import Lifecycle
from supervisord.pool.workers import Pool, WorkerHandle, Workers
from supervisord.redis.store import NewJob, Reserved
from supervisord.settings import Settings
from supervisord.writer import PendingSubmit, Wants


@dataclass(eq=False)
class Queue:
    """One pool's share of the scheduler."""

    buffer: deque[Reserved] = field(default_factory=deque)
    hot: dict[str, int] = field(default_factory=dict)  # type -> mark when it turned hot
    avg_run: float = 1.0  # moving average of job run time here, seconds


class Scheduler:
    def __init__(self, settings: Settings, workers: Workers, jobs: Lifecycle) -> None:
        self.settings = settings
        self.workers = workers
        self.jobs = jobs
        self.queues: dict[str, Queue] = {name: Queue() for name in workers.pools}
        self.next_due = 0.0  # wall-clock time of the earliest scheduled job; 0 when unknown
        self._mark = 0
        self._reserve_mark = 0  # the mark when the reservation in flight was sent
        self.paused = False  # take nothing new from Redis nor hand over (a resync is out)

    def configure(self, settings: Settings) -> None:
        self.settings = settings
        for name in self.workers.pools:
            self.queues.setdefault(name, Queue())

    def queue(self, pool: str) -> Queue:
        return self.queues.setdefault(pool, Queue())

    # -- how much to hold -------------------------------------------------------------
    def prefetch(self, pool: Pool) -> int:
        """Jobs held ahead of the workers: about 5 ms of work, at least 1, at most 128.

        Short jobs need a deep buffer, or workers wait for Redis between jobs; long
        ones need almost none, and a deep buffer would only delay higher-priority
        jobs submitted later (and keep work from other nodes).
        """
        if pool.cfg.prefetch is not None:
            return pool.cfg.prefetch
        avg = self.queue(pool.name).avg_run
        return max(1, min(128, math.ceil(max(1, pool.target) * 0.005 / max(avg, 1e-5))))

    def pipeline_depth(self, pool: Pool) -> int:
        """Jobs sent ahead to a busy worker, so that it never waits for a round trip to
        the master between short jobs: a few for tiny jobs, none for long ones (which
        must never wait behind another while a worker may be free)."""
        avg = self.queue(pool.name).avg_run
        if pool.cfg.prefetch == 0 or avg >= 0.02:
            return 0
        return 4 if avg < 0.002 else 1

    def _can_take_more(self, pool: Pool, w: WorkerHandle, depth: int) -> bool:
        limit = pool.cfg.max_jobs_per_worker
        return (w.job is not None and len(w.ahead) < depth and w.staying
                and w.generation == pool.generation
                and not (limit and w.jobs_done + len(w.ahead) + 2 > limit))

    def want(self, pool: Pool) -> int:
        """How many jobs to take from Redis now: enough for idle workers plus prefetch."""
        q = self.queue(pool.name)
        if not q.hot or not pool.staying():
            return 0
        return max(0, len(pool.idle()) + self.prefetch(pool) - len(q.buffer))

    def wants(self) -> Wants:
        self._reserve_mark = self._mark
        return {p.name: (n, sorted(self.queue(p.name).hot))
                for p in self.workers.pools.values() if (n := self.want(p))}

    def eager(self) -> bool:
        """Some pool would take jobs from Redis now (asked several times a pass: the
        common answer, no hot type anywhere, is found without looking at workers)."""
        if not any(q.hot for q in self.queues.values()):
            return False
        return any(self.want(p) for p in self.workers.pools.values())

    def ran(self, pool: str, seconds: float) -> None:
        q = self.queue(pool)
        q.avg_run += 0.1 * (seconds - q.avg_run)

    def held(self, pool: str) -> int:
        """Jobs this node holds for the pool that have not started: buffered or sent
        ahead to a busy worker."""
        p = self.workers.pools.get(pool)
        ahead = sum(len(w.ahead) for w in p.workers.values()) if p else 0
        return len(self.queue(pool).buffer) + ahead

    # -- hot types ----------------------------------------------------------------------
    def may_have_work(self, job_type: str) -> None:
        """A job of this type was queued: its pool should look in Redis again."""
        pool = self.settings.pool_of(job_type)
        if pool is not None and pool in self.workers.pools:
            self._mark += 1
            self.queue(pool).hot[job_type] = self._mark

    def wake_all(self) -> None:
        for name in self.workers.pools:
            for job_type in self.settings.types_of.get(name, ()):
                self.may_have_work(job_type)

    def discover(self) -> None:
        """Look for jobs other nodes queued, in pools with idle workers."""
        for name, pool in self.workers.pools.items():
            if pool.idle():
                for job_type in self.settings.types_of.get(name, ()):
                    self.may_have_work(job_type)

    def due(self, run_at: float) -> None:
        self.next_due = min(self.next_due or run_at, run_at)

    # -- submits and reservations --------------------------------------------------------
    def hand_over(self, jobs: list[NewJob], awaited: bool, accepting: bool) -> None:
        """New jobs go straight to idle workers when nothing is queued ahead of them.

        The job runs while Redis stores it, instead of after a second round trip to
        reserve it: the submit's acknowledgement still waits for the write, and the
        job is stored as held by this node, so a crash requeues it like any other.
        Jobs with an idempotency key (Redis decides whether they are new) or a
        circuit breaker (Redis holds the circuit) take the queue.
        """
        first = jobs[0]
        pool = self.workers.pools.get(first.pool)
        q = self.queues.get(first.pool)
        if (pool is None or q is None or q.buffer or q.hot or not accepting or self.paused
                or first.status != "queued" or first.type in self.settings.breakers):
            return
        node = self.settings.node
        for job, w in zip(jobs, pool.idle(), strict=False):
            if job.key:
                return  # the rest stay in order behind it
            job.lease = f"{node}|d{job.id}"
            self.jobs.start(w, Reserved(
                pool=job.pool, id=job.id, token=job.lease, type=job.type, payload=job.payload,
                attempt=1, max_attempts=job.max_attempts, timeout=job.timeout, crashes=0,
                priority=job.priority, created_at=job.created_at, run_at=job.run_at,
                rate_limited=0, awaited=awaited))

    def submitted(self, submits: list[PendingSubmit]) -> None:
        """Submits about to be written: queued ones make their pool look in Redis, and
        push back prefetched jobs of lower priority."""
        for pending in submits:
            last = pending.jobs[-1]
            if last.status == "queued" and not last.lease:  # not all went straight to workers
                self.may_have_work(last.type)
                self.make_way(last.pool, last.priority)

    def take_reserved(self, wants: Wants, reserved: list[Reserved], promoted: list[str],
                      accepting: bool) -> None:
        got: dict[str, int] = {}
        for job in reserved:
            q = self.queues.get(job.pool)
            if q is None or job.pool not in self.workers.pools or not accepting:
                self.jobs.requeue(job, "pool no longer on this node")
                continue
            q.buffer.append(job)
            got[job.pool] = got.get(job.pool, 0) + 1
        for name in got:  # keep each buffer in queue order: priority, then id
            q = self.queues[name]
            q.buffer = deque(sorted(q.buffer, key=lambda j: (-j.priority, j.id)))
        for name, (n, _) in wants.items():
            if got.get(name, 0) < n:
                # Those queues are empty (or held), unless marked after the ask was sent.
                q = self.queue(name)
                q.hot = {t: m for t, m in q.hot.items() if m > self._reserve_mark}
        for job_type in promoted:
            self.may_have_work(job_type)

    def make_way(self, pool_name: str, priority: int) -> None:
        """Higher-priority work arrived: give back prefetched jobs that rank below it."""
        q = self.queues.get(pool_name)
        if q is None or not q.buffer or q.buffer[-1].priority >= priority:
            return
        for job in q.buffer:
            if job.priority < priority:
                self.jobs.requeue(job, "")  # never started: no history entry
        q.buffer = deque(job for job in q.buffer if job.priority >= priority)

    def give_back(self, reason: str) -> None:
        """Every buffered job goes back to its queue (shutdown)."""
        for q in self.queues.values():
            while q.buffer:
                self.jobs.requeue(q.buffer.popleft(), reason)

    def remove_held(self, job_id: str) -> Reserved | None:
        """Take a buffered job out of its buffer (it was cancelled)."""
        for q in self.queues.values():
            for job in q.buffer:
                if job.id == job_id:
                    q.buffer.remove(job)
                    return job
        return None

    def cancel(self, job_id: str) -> bool:
        """A cancel of a job this node may hold: reach its handler if it runs here (the
        record becomes cancelled once the handler stops); end it if it waits here."""
        if self.jobs.request_cancel(job_id):
            return True
        held = self.remove_held(job_id)
        if held is not None:
            self.jobs.cancel_held(held, "cancel requested before it started")
            return True
        return self.jobs.doom_ahead(job_id)

    def local_statuses(self, ids: list[str]) -> list[str] | None:
        """The statuses of jobs that all run here, known without asking Redis; else None."""
        running = self.jobs.running
        if all(i in running for i in ids):
            return ["running"] * len(ids)
        return None

    def buffered_ids(self) -> Iterator[str]:
        for q in self.queues.values():
            for job in q.buffer:
                yield job.id

    # -- dispatch -----------------------------------------------------------------------
    def _next(self, q: Queue) -> Reserved | None:
        """The next buffered job to start; those past their ``max_age`` end on the way."""
        while q.buffer:
            job = q.buffer.popleft()
            if not self.jobs.expire_if_old(job):
                return job
        return None

    def dispatch(self) -> None:
        """Hand buffered jobs to idle workers, then pipeline to busy ones if short."""
        for name, pool in self.workers.pools.items():
            q = self.queues.get(name)
            if q is None or not q.buffer:
                continue
            for w in pool.idle():
                job = self._next(q)
                if job is None:
                    break
                self.jobs.start(w, job)
            depth = self.pipeline_depth(pool)
            if q.buffer and depth:
                busy = [w for w in pool.busy() if self._can_take_more(pool, w, depth)]
                while q.buffer and busy:  # one each in turn, so that workers share evenly
                    for w in list(busy):
                        job = self._next(q)
                        if job is None:
                            break
                        self.jobs.start(w, job)
                        if not self._can_take_more(pool, w, depth):
                            busy.remove(w)
