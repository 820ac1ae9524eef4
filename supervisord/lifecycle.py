"""Job transitions on this node: each builds one ``Op`` and its after-commit effect.

The decision (retry when, fail, fall back) is made here from the type's
policy; the change itself is applied by ``lua/apply.lua`` atomically and
fenced by the attempt's lease token.  Effects (events, metrics, waiters) run
only once Redis has applied the op.

``Lifecycle`` owns the table of runs on this node's workers.  What it needs
is passed in: the settings, the batch its ops go to, the pool (to talk to
workers), events, metrics, the waiters, and two hooks into the scheduler
(a type has queued work again; a scheduled job is due at some time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from supervisord.clock import SYSTEM, Clock
from supervisord.events import Publisher
from supervisord.policies import budget, circuit, cost, expiry
from supervisord.policies import fallback as fallback_policy
from supervisord.policies import retry as outcome
from supervisord.pool.workers import Running, WorkerHandle, Workers
from supervisord.redis import scripts
from supervisord.redis.store import Op, Reserved, history_entry, pack
from supervisord.settings import Settings
from supervisord.states import FailureKind, KillReason
from supervisord.waiters import Waiters
from supervisord.web.metrics import Metrics
from supervisord.wire import worker as msgs
from supervisord.writer import Batch

log = logging.getLogger("jobsup.jobs")

START_WRITE_DELAY = 0.005  # seconds a run may go before its start is written on its own


class Lifecycle:
    def __init__(self, settings: Settings, batch: Batch, workers: Workers, events: Publisher,
                 metrics: Metrics, waiters: Waiters, queued: Callable[[str], None],
                 due: Callable[[float], None], clock: Clock = SYSTEM) -> None:
        self.settings = settings
        self.batch = batch
        self.workers = workers
        self.events = events
        self.metrics = metrics
        self.waiters = waiters
        self.queued = queued  # a job of this type is in its queue again
        self.due = due  # a job becomes due at this wall-clock time
        self.clock = clock
        self.fallbacks = fallback_policy.Fallbacks(metrics.submitted, events.publish, queued)
        self.expiries = expiry.Expiries(metrics.failed, events.publish, waiters.finished)
        self.costs = cost.Costs(metrics.registry)
        self.running: dict[str, Running] = {}
        self.unstarted: list[Running] = []  # runs whose start is not written yet
        self.next_start_write: float | None = None

    def configure(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def node(self) -> str:
        return self.settings.node

    def awaited(self, job: Reserved) -> bool:
        """Whether the write that ends this job should read its record back."""
        return job.awaited or self.waiters.awaits_alone(job.id)

    # -- starting -----------------------------------------------------------------------
    def expire_if_old(self, job: Reserved) -> bool:
        """End a job past its type's ``max_age`` instead of starting it; True if it was."""
        policy, now = self.settings.policy(job.type), self.clock.time()
        if not expiry.expired(policy, job, now):
            return False
        log.info("job %s of %s expired: %s", job.id, job.type, expiry.message(policy, job, now))
        self.batch.add(expiry.op(policy, job, self.node, now, self.awaited(job)),
                       self.expiries.hook(job, expiry.message(policy, job, now), now))
        return True

    def start(self, w: WorkerHandle, job: Reserved) -> None:
        """Hand a job to a worker: it starts now if the worker is idle, else right after
        the worker's current job (a pipelined job, for pools of short jobs)."""
        timeout = job.timeout or None
        run = Running(job=job, worker=w, started=0.0, deadline=None)
        soft = self.settings.policy(job.type).soft_timeout
        if soft is not None and timeout and soft >= timeout:
            soft = None  # a submit's shorter --timeout comes first
        self.workers.send(w, msgs.Run(job.token, job.id, job.type, job.payload, job.attempt,
                                      self.clock.time() + timeout if timeout else None, soft))
        if w.job is None:
            self.begin(w, run)
        else:
            w.ahead.append(run)

    def begin(self, w: WorkerHandle, run: Running) -> None:
        """The attempt starts on the worker: the clock, the watchdog and the record."""
        job, now = run.job, self.clock.time()
        run.started = now
        run.deadline = self.clock.monotonic() + job.timeout if job.timeout else None
        self.workers.take(w, run)
        self.running[job.id] = run
        if run.doomed:
            self.request_cancel(job.id, job.token)
        per_type = self.metrics.of_type(job.type)
        per_type.started.inc()
        self.costs.started(self.settings.policy(job.type), job)
        per_type.queue_wait.observe(max(0.0, now - max(job.created_at, job.run_at)))
        node = self.node
        hist = history_entry("running", job.attempt, node, "started", pid=w.pid, now=now)

        def effect(flag: str) -> None:
            if flag != "0":
                self.events.state(job.id, "running", attempt=job.attempt, pid=w.pid, node=node,
                                  at=now)
            elif w.job is run:
                self.request_cancel(job.id, job.token)  # cancelled while on its way

        # Written with the attempt's outcome, or after START_WRITE_DELAY if it runs longer:
        # a short job then costs one Redis write, not two, and its caller waits for one.
        run.start_op = (Op("start", job.id, job.token, scripts.Start(f"{node}:{w.pid}", hist, now)),
                        effect)
        self.unstarted.append(run)
        if self.next_start_write is None:
            self.next_start_write = now + START_WRITE_DELAY

    def record_start(self, run: Running) -> None:
        """Put a run's deferred start transition into the batch (before anything after it)."""
        if run.start_op is not None:
            self.batch.add(*run.start_op)
            run.start_op = None

    def record_due_starts(self, now: float) -> None:
        """Write the starts of runs older than START_WRITE_DELAY."""
        later = []
        for run in self.unstarted:
            if run.start_op is None:
                continue
            if now - run.started >= START_WRITE_DELAY:
                self.record_start(run)
            else:
                later.append(run)
        self.unstarted = later
        self.next_start_write = (min(r.started for r in later) + START_WRITE_DELAY
                                 if later else None)

    def finished_run(self, w: WorkerHandle, keep: bool = True) -> None:
        """A worker is done with its job: it takes the next one sent ahead, idles or goes."""
        run = w.job
        if run is not None:
            self.running.pop(run.job.id, None)
            self.write_progress(run)
        following = self.workers.free(w, keep)
        if following is not None:
            self.begin(w, following)

    # -- outcomes ---------------------------------------------------------------------
    def succeed(self, run: Running, result: bytes) -> None:
        job, now = run.job, self.clock.time()
        per_type = self.metrics.of_type(job.type)
        per_type.duration.observe(now - run.started)
        hist = history_entry("succeeded", job.attempt, self.node, "handler returned",
                             pid=run.worker.pid, now=now)

        def effect(flag: str) -> None:
            if flag != "0":
                per_type.succeeded.inc()
                self.events.state(job.id, "succeeded", attempt=job.attempt, at=now)
                self.waiters.finished(job.id)

        policy = self.settings.policy(job.type)
        update, awaited = circuit.update(policy.circuit_breaker, None), self.awaited(job)
        if run.start_op is not None:
            # Its start was never written: write start and success as one transition.
            (start, start_effect), run.start_op = run.start_op, None
            worker, running_hist, started_at = start.args

            def both(flag: str) -> None:
                start_effect(flag)
                effect(flag)

            self.batch.add(Op("ran", job.id, job.token, scripts.Ran(
                worker, running_hist, started_at, result, hist, policy.result_ttl, update),
                record=awaited), both)
            return
        self.batch.add(Op("finish", job.id, job.token, scripts.Finish(
            "succeeded", result, hist, policy.result_ttl, update), record=awaited), effect)

    def fail(self, run: Running, kind: FailureKind, message: str, tb: str | None = None,
             retry_after: float | None = None) -> None:
        self.record_start(run)
        job, now, node = run.job, self.clock.time(), self.node
        policy = self.settings.policy(job.type)
        self.metrics.of_type(job.type).duration.observe(now - run.started)
        d = outcome.decide(policy, kind, attempt=job.attempt, max_attempts=job.max_attempts,
                           crashes=job.crashes, rate_limited=job.rate_limited,
                           timeout=job.timeout or None, retry_after=retry_after)
        error = pack({"kind": kind.value, "message": message, "traceback": tb,
                      "attempt": job.attempt})
        pid, update = run.worker.pid, circuit.update(policy.circuit_breaker, kind)
        final = history_entry("failed", job.attempt, node, d.reason, pid=pid, kind=kind,
                              message=message, now=now)

        def failed(flag: str) -> None:
            if flag == "0":
                return
            self.metrics.failed.labels(job.type, kind.value).inc()
            fallback = flag if flag not in ("1", "2", "c") else None
            self.events.state(job.id, "failed", attempt=job.attempt, kind=kind.value,
                              message=message, fallback_job=fallback, at=now)
            self.waiters.finished(job.id)
            if fallback:
                self.fallbacks.committed(job.id, job.type, policy.fallback, fallback)

        if not d.retry and policy.fallback:
            self.batch.add(fallback_policy.op(
                self.settings.cfg, policy, job.id, job.type, job.token, error, final, update,
                now, node, self.awaited(job)), failed)
            return
        if not d.retry:
            self.batch.add(Op("finish", job.id, job.token, scripts.Finish(
                "failed", error, final, policy.failure_ttl, update),
                record=self.awaited(job)), failed)
            return
        run_at = now + d.delay if d.delay > 0 else 0.0
        status = "scheduled" if run_at else "queued"
        flags = ("a" if d.burn_attempt else "") + ("c" if d.crash else "") + (
            "r" if d.rate_limited else "")
        hist = history_entry(status, job.attempt, node, d.reason, pid=pid, kind=kind,
                             message=message, now=now)
        if run_at:
            self.due(run_at)
        else:
            self.queued(job.type)
        next_attempt = job.attempt + (1 if d.burn_attempt else 0)
        budget_final = budget.spent(policy, job.attempt, node, pid, kind, message, now)

        def retried(flag: str) -> None:
            if flag == "2":
                failed("1")
            elif flag == "1":
                self.metrics.retried.labels(job.type, kind.value).inc()
                self.events.state(job.id, status, attempt=next_attempt, kind=kind.value,
                                  message=message, run_at=run_at or None, at=now)

        self.batch.add(Op("retry", job.id, job.token, scripts.Retry(
            error, hist, run_at, flags, d.timeout or "", update, budget.limit(policy),
            budget_final,
            policy.failure_ttl)), retried)

    def settle_cancelled(self, run: Running, reason: str) -> None:
        self.record_start(run)
        job, now = run.job, self.clock.time()
        error = pack({"kind": "cancelled", "message": reason, "traceback": None,
                      "attempt": job.attempt})
        hist = history_entry("cancelled", job.attempt, self.node, reason, pid=run.worker.pid,
                             kind="cancelled", now=now)

        def effect(flag: str) -> None:
            if flag == "0":
                return  # a stale attempt (already settled): announcing it again would repeat
            self.events.state(job.id, "cancelled", attempt=job.attempt, at=now)
            self.waiters.finished(job.id)

        self.batch.add(Op("finish", job.id, job.token, scripts.Finish(
            "cancelled", error, hist, self.settings.policy(job.type).failure_ttl, ""),
            record=self.awaited(job)), effect)

    def cancel_held(self, job: Reserved, reason: str) -> None:
        """A job this node holds but never started was cancelled: end it, fenced."""
        error = pack({"kind": "cancelled", "message": reason, "traceback": None,
                      "attempt": job.attempt})
        now = self.clock.time()
        hist = history_entry("cancelled", job.attempt, self.node, reason, kind="cancelled",
                             now=now)

        def effect(flag: str) -> None:
            if flag != "0":
                self.events.state(job.id, "cancelled", attempt=job.attempt, at=now)
                self.waiters.finished(job.id)

        self.batch.add(Op("finish", job.id, job.token, scripts.Finish(
            "cancelled", error, hist, self.settings.policy(job.type).failure_ttl, ""),
            record=self.awaited(job)), effect)

    def requeue(self, run: Running | Reserved, reason: str) -> None:
        """Give a job back to its queue without burning an attempt."""
        job = run.job if isinstance(run, Running) else run
        if isinstance(run, Running):
            self.record_start(run)
            self.running.pop(job.id, None)
            if run.worker.job is run:
                run.worker.job = None
        now = self.clock.time()
        hist = history_entry("queued", job.attempt, self.node, reason, now=now) if reason else b""

        def effect(flag: str) -> None:
            if flag == "c":  # a cancel was waiting for it: it ended cancelled
                self.events.state(job.id, "cancelled", attempt=job.attempt)
                self.waiters.finished(job.id)
            elif flag != "0" and reason:  # a job given back unstarted changes nothing seen
                self.events.state(job.id, "queued", attempt=job.attempt, message=reason, at=now)

        ttl = self.settings.policy(job.type).failure_ttl
        self.batch.add(Op("requeue", job.id, job.token, scripts.Requeue(hist, ttl)), effect)

    def write_progress(self, run: Running) -> None:
        """Progress is coalesced: at most one write per job per flush interval."""
        if run.progress is None:
            return
        self.record_start(run)
        pct, message = run.progress
        run.progress = None
        run.progress_written = self.clock.monotonic()
        self.batch.add(Op("progress", run.job.id, run.job.token, scripts.Progress(pct, message)))

    def lost_worker(self, run: Running, w: WorkerHandle, reason: KillReason | None,
                    text: str) -> None:
        """Decide what a job's attempt was, given why its worker is gone."""
        self.running.pop(run.job.id, None)
        pid = w.pid
        if reason is KillReason.TIMEOUT:
            self.fail(run, FailureKind.TIMEOUT,
                      f"exceeded its timeout of {run.job.timeout:g}s; worker pid {pid} {text}")
        elif reason is KillReason.MEMORY:
            pool = self.settings.pools.get(w.pool)
            limit = pool.max_rss if pool else 0
            why = w.kill_why or f"went over max_rss ({limit} bytes)"
            self.fail(run, FailureKind.MEMORY, f"worker pid {pid} {why} and was {text}")
        elif reason is KillReason.HEARTBEAT:
            self.fail(run, FailureKind.TIMEOUT,
                      f"worker pid {pid} sent no heartbeat for "
                      f"{self.settings.cfg.daemon.heartbeat_timeout:g}s (hung or stopped); "
                      f"{text}")
        elif reason is KillReason.CANCEL:
            self.settle_cancelled(run, f"cancelled; worker pid {pid} {text} after cancel_grace")
        elif reason is KillReason.SHUTDOWN:
            self.requeue(run, "node shut down while it ran")
        else:
            self.fail(run, FailureKind.CRASH, f"worker pid {pid} {text} while running the job")

    # -- cancellation -------------------------------------------------------------------
    def request_cancel(self, job_id: str, token: str | None = None) -> bool:
        """Ask a running job to stop: ctx.cancelled now, a kill after cancel_grace.

        Without a token, whichever attempt runs here is asked: a cancel that reached
        Redis before this node's start did must still reach the handler.
        """
        run = self.running.get(job_id)
        if run is None or (token and run.job.token != token) or run.cancel_at is not None:
            return run is not None
        self.workers.send(run.worker, msgs.Cancel(run.job.token), control=True)
        run.cancel_at = (self.clock.monotonic()
                         + self.settings.policy(run.job.type).cancel_grace)
        return True

    def doom_ahead(self, job_id: str) -> bool:
        """A job sent ahead to a busy worker was cancelled: stop it the moment it starts."""
        for w in self.workers.all():
            for run in w.ahead:
                if run.job.id == job_id:
                    run.doomed = True
                    return True
        return False
