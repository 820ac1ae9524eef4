"""Job transitions on this node: each builds one ``Op`` and its after-commit effect.

The decision (retry when, fail, fall back) is made here from the type's
policy; the change itself is applied by ``lua/apply.lua`` atomically and
fenced by the attempt's lease token.  Effects (events, metrics, waiters) run
only once Redis has applied the op.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from supervisord import outcome
from supervisord.config import JobTypeConfig
from supervisord.states import FailureKind, KillReason, Phase, WorkerState
from supervisord.store import NewJob, Op, Reserved, Route, history_entry, pack
from supervisord.workers import Running, WorkerHandle

if TYPE_CHECKING:
    from supervisord.master import Master

log = logging.getLogger("jobsup.jobs")

# Failures that say something about the dependency behind a type, so they count
# towards opening its circuit.  Bad input (permanent), a cancel, a lost node or
# one oversized job say nothing about it.
_CIRCUIT_KINDS = frozenset({FailureKind.EXCEPTION, FailureKind.TRANSIENT, FailureKind.TIMEOUT,
                            FailureKind.CRASH, FailureKind.RATE_LIMITED})
CIRCUIT_GAUGE = {"closed": 0, "half_open": 1, "open": 2}
START_WRITE_DELAY = 0.005  # seconds a run may go before its start is written on its own


class Lifecycle:
    def __init__(self, master: Master) -> None:
        self.m = master

    # -- policy lookups ---------------------------------------------------------------
    def policy(self, job_type: str) -> JobTypeConfig:
        jt = self.m.cfg.jobs.get(job_type)
        return jt if jt is not None else JobTypeConfig(handler="missing:handler")

    def circuit(self, job_type: str, kind: FailureKind | None) -> str:
        """The circuit update an attempt's outcome makes ('' when the type has none)."""
        breaker = self.policy(job_type).circuit_breaker
        if breaker is None:
            return ""
        if kind is None:
            return "S"
        if kind not in _CIRCUIT_KINDS:
            return ""
        return f"F|{breaker.failures}|{breaker.open_for}"

    def routes(self) -> list[Route]:
        cfg = self.m.cfg
        return [Route(name, jt.fallback, cfg.pool_of(jt.fallback),
                      cfg.jobs[jt.fallback].timeout or 0, cfg.jobs[jt.fallback].max_attempts)
                for name, jt in cfg.jobs.items() if jt.circuit_breaker and jt.fallback]

    def awaited(self, job: Reserved) -> bool:
        """Whether the write that ends this job should read its record back: someone
        is waiting for it (and for nothing else)."""
        if job.awaited:
            return True
        waiting = self.m.api.waiters.get(job.id, ())
        return any(len(w.remaining) == 1 for w in waiting)

    # -- transitions ----------------------------------------------------------------------
    def hand_over(self, jobs: list[NewJob], awaited: bool) -> None:
        """New jobs go straight to idle workers when nothing is queued ahead of them.

        The job runs while Redis stores it, instead of after a second round trip to
        reserve it: the submit's acknowledgement still waits for the write, and the
        job is stored as held by this node, so a crash requeues it like any other.
        Jobs with an idempotency key (Redis decides whether they are new) or a
        circuit breaker (Redis holds the circuit) take the queue.
        """
        m = self.m
        first = jobs[0]
        pool = m.workers.pools.get(first.pool)
        if (pool is None or pool.buffer or pool.hot or m.phase is not Phase.RUNNING
                or first.status != "queued" or first.type in m.breakers):
            return
        idle = pool.idle()
        for job, w in zip(jobs, idle, strict=False):
            if job.key:
                return  # the rest stay in order behind it
            job.lease = f"{m.node}|d{job.id}"
            self.start(w, Reserved(
                pool=job.pool, id=job.id, token=job.lease, type=job.type, payload=job.payload,
                attempt=1, max_attempts=job.max_attempts, timeout=job.timeout, crashes=0,
                priority=job.priority, created_at=job.created_at, run_at=job.run_at,
                rate_limited=0, awaited=awaited))

    def start(self, w: WorkerHandle, job: Reserved) -> None:
        """Hand a job to a worker: it starts now if the worker is idle, else right after
        the worker's current job (a pipelined job, for pools of short jobs)."""
        timeout = job.timeout or None
        run = Running(job=job, worker=w, started=0.0, deadline=None)
        self.m.send_worker(w.chan, (
            "run", job.token, job.id, job.type, job.payload, job.attempt,
            time.time() + timeout if timeout else None))
        if w.job is None:
            self.begin(w, run)
        else:
            w.ahead.append(run)

    def begin(self, w: WorkerHandle, run: Running) -> None:
        """The attempt starts on the worker: the clock, the watchdog and the record."""
        m, job, now = self.m, run.job, time.time()
        run.started = now
        run.deadline = time.monotonic() + job.timeout if job.timeout else None
        w.job = run
        w.state = WorkerState.BUSY
        m.running[job.id] = run
        if run.doomed:
            self.request_cancel(job.id, job.token)
        per_type = m.metrics.of_type(job.type)
        per_type.started.inc()
        per_type.queue_wait.observe(max(0.0, now - max(job.created_at, job.run_at)))
        hist = history_entry("running", job.attempt, m.node, "started", pid=w.pid, now=now)

        def effect(flag: str) -> None:
            if flag != "0":
                m.events.state(job.id, "running", attempt=job.attempt, pid=w.pid, node=m.node)
            elif w.job is run:
                self.request_cancel(job.id, job.token)  # cancelled while on its way

        # Written with the attempt's outcome, or after START_WRITE_DELAY if it runs longer:
        # a short job then costs one Redis write, not two, and its caller waits for one.
        run.start_op = (Op("start", job.id, job.token, (f"{m.node}:{w.pid}", hist, now)),
                        effect)
        m.unstarted.append(run)

    def record_start(self, run: Running) -> None:
        """Put a run's deferred start transition into the batch (before anything after it)."""
        if run.start_op is not None:
            self.m.batch.add(*run.start_op)
            run.start_op = None

    def record_due_starts(self, now: float) -> float | None:
        """Write the starts of runs older than START_WRITE_DELAY; the next such moment."""
        m, later = self.m, []
        for run in m.unstarted:
            if run.start_op is None:
                continue
            if now - run.started >= START_WRITE_DELAY:
                self.record_start(run)
            else:
                later.append(run)
        m.unstarted = later
        return min(r.started for r in later) + START_WRITE_DELAY if later else None

    def succeed(self, run: Running, result: bytes) -> None:
        m, job, now = self.m, run.job, time.time()
        per_type = m.metrics.of_type(job.type)
        per_type.duration.observe(now - run.started)
        hist = history_entry("succeeded", job.attempt, m.node, "handler returned",
                             pid=run.worker.pid, now=now)

        def effect(flag: str) -> None:
            if flag != "0":
                per_type.succeeded.inc()
                m.events.state(job.id, "succeeded", attempt=job.attempt)
                m.api.finished(job.id, m.done_waiters)

        policy = self.policy(job.type)
        circuit, awaited = self.circuit(job.type, None), self.awaited(job)
        if run.start_op is not None:
            # Its start was never written: write start and success as one transition.
            (start, start_effect), run.start_op = run.start_op, None
            worker, running_hist, started_at = start.args

            def both(flag: str) -> None:
                start_effect(flag)
                effect(flag)

            m.batch.add(Op("ran", job.id, job.token, (
                worker, running_hist, started_at, result, hist, policy.result_ttl, circuit),
                record=awaited), both)
            return
        m.batch.add(Op("finish", job.id, job.token, (
            "succeeded", result, hist, policy.result_ttl, circuit), record=awaited), effect)

    def fail(self, run: Running, kind: FailureKind, message: str, tb: str | None = None,
             retry_after: float | None = None) -> None:
        self.record_start(run)
        m, job, now = self.m, run.job, time.time()
        policy = self.policy(job.type)
        m.metrics.of_type(job.type).duration.observe(now - run.started)
        d = outcome.decide(policy, kind, attempt=job.attempt, max_attempts=job.max_attempts,
                           crashes=job.crashes, rate_limited=job.rate_limited,
                           timeout=job.timeout or None, retry_after=retry_after)
        error = pack({"kind": kind.value, "message": message, "traceback": tb,
                      "attempt": job.attempt})
        pid, circuit = run.worker.pid, self.circuit(job.type, kind)
        final = history_entry("failed", job.attempt, m.node, d.reason, pid=pid, kind=kind,
                              message=message, now=now)

        def failed(flag: str) -> None:
            if flag == "0":
                return
            m.metrics.failed.labels(job.type, kind.value).inc()
            fallback = flag if flag not in ("1", "2") else None
            m.events.state(job.id, "failed", attempt=job.attempt, kind=kind.value,
                           message=message, fallback_job=fallback)
            m.api.finished(job.id, m.done_waiters)
            if fallback:
                m.metrics.submitted.labels(policy.fallback).inc()
                m.events.state(fallback, "queued", attempt=1, type=policy.fallback,
                               fallback_of=job.id)
                m.may_have_work(policy.fallback)
                log.info("job %s of %s failed; re-submitted as %s job %s", job.id, job.type,
                         policy.fallback, fallback)

        if not d.retry and policy.fallback:
            fb = m.cfg.jobs[policy.fallback]
            hist_new = history_entry("queued", 1, m.node, f"fallback for {job.type} job {job.id}",
                                     now=now)
            m.batch.add(Op("fallback", job.id, job.token, (
                error, final, policy.failure_ttl, policy.fallback, m.cfg.pool_of(policy.fallback),
                fb.max_attempts, fb.timeout or 0, hist_new, circuit), record=self.awaited(job)),
                failed)
            return
        if not d.retry:
            m.batch.add(Op("finish", job.id, job.token, (
                "failed", error, final, policy.failure_ttl, circuit),
                record=self.awaited(job)), failed)
            return
        run_at = now + d.delay if d.delay > 0 else 0.0
        status = "scheduled" if run_at else "queued"
        flags = ("a" if d.burn_attempt else "") + ("c" if d.crash else "") + (
            "r" if d.rate_limited else "")
        hist = history_entry(status, job.attempt, m.node, d.reason, pid=pid, kind=kind,
                             message=message, now=now)
        if run_at:
            m.next_due = min(m.next_due or run_at, run_at)
        else:
            m.may_have_work(job.type)
        next_attempt = job.attempt + (1 if d.burn_attempt else 0)
        budget_final = history_entry("failed", job.attempt, m.node,
                                     f"retry budget of {policy.retry_budget}/min spent",
                                     pid=pid, kind=kind, message=message, now=now)

        def retried(flag: str) -> None:
            if flag == "2":
                failed("1")
            elif flag == "1":
                m.metrics.retried.labels(job.type, kind.value).inc()
                m.events.state(job.id, status, attempt=next_attempt, kind=kind.value,
                               message=message, run_at=run_at or None)

        budget = policy.retry_budget if policy.retry_budget is not None else -1
        m.batch.add(Op("retry", job.id, job.token, (
            error, hist, run_at, flags, d.timeout or "", circuit, budget, budget_final,
            policy.failure_ttl)), retried)

    def settle_cancelled(self, run: Running, reason: str) -> None:
        self.record_start(run)
        m, job = self.m, run.job
        error = pack({"kind": "cancelled", "message": reason, "traceback": None,
                      "attempt": job.attempt})
        hist = history_entry("cancelled", job.attempt, m.node, reason, pid=run.worker.pid,
                             kind="cancelled")

        def effect(flag: str) -> None:
            m.events.state(job.id, "cancelled", attempt=job.attempt)
            m.api.finished(job.id, m.done_waiters)

        m.batch.add(Op("finish", job.id, job.token, (
            "cancelled", error, hist, self.policy(job.type).failure_ttl, ""),
            record=self.awaited(job)), effect)

    def requeue(self, run: Running | Reserved, reason: str) -> None:
        """Give a job back to its queue without burning an attempt."""
        m = self.m
        job = run.job if isinstance(run, Running) else run
        if isinstance(run, Running):
            self.record_start(run)
            m.running.pop(job.id, None)
            if run.worker.job is run:
                run.worker.job = None
        hist = history_entry("queued", job.attempt, m.node, reason) if reason else b""

        def effect(flag: str) -> None:
            if flag != "0":
                m.events.state(job.id, "queued", attempt=job.attempt, message=reason)

        m.batch.add(Op("requeue", job.id, job.token, (hist,)), effect)

    def write_progress(self, run: Running) -> None:
        """Progress is coalesced: at most one write per job per flush interval."""
        if run.progress is None:
            return
        self.record_start(run)
        pct, message = run.progress
        run.progress = None
        run.progress_written = time.monotonic()
        self.m.batch.add(Op("progress", run.job.id, run.job.token, (pct, message)))

    def lost_worker(self, run: Running, w: WorkerHandle, reason: KillReason | None,
                    text: str) -> None:
        """Decide what a job's attempt was, given why its worker is gone."""
        pid, m = w.pid, self.m
        if reason is KillReason.TIMEOUT:
            self.fail(run, FailureKind.TIMEOUT,
                      f"exceeded its timeout of {run.job.timeout:g}s; worker pid {pid} {text}")
        elif reason is KillReason.MEMORY:
            pool = m.workers.pools.get(w.pool)
            limit = pool.cfg.max_rss if pool else 0
            self.fail(run, FailureKind.MEMORY,
                      f"worker pid {pid} went over max_rss ({limit} bytes) and was {text}")
        elif reason is KillReason.HEARTBEAT:
            self.fail(run, FailureKind.TIMEOUT,
                      f"worker pid {pid} sent no heartbeat for "
                      f"{m.cfg.daemon.heartbeat_timeout:g}s (hung or stopped); {text}")
        elif reason is KillReason.CANCEL:
            self.settle_cancelled(run, f"cancelled; worker pid {pid} {text} after cancel_grace")
        elif reason is KillReason.SHUTDOWN:
            self.requeue(run, "node shut down while it ran")
        else:
            self.fail(run, FailureKind.CRASH, f"worker pid {pid} {text} while running the job")

    # -- cancellation -------------------------------------------------------------------
    def request_cancel(self, job_id: str, token: str) -> bool:
        """Ask a running job to stop: ctx.cancelled now, a kill after cancel_grace."""
        m = self.m
        run = m.running.get(job_id)
        if run is None or run.job.token != token or run.cancel_at is not None:
            return run is not None
        m.send_worker(run.worker.control, ("cancel", token))
        run.cancel_at = time.monotonic() + self.policy(run.job.type).cancel_grace
        return True

    def cancelled_before_run(self, job_id: str) -> None:
        m = self.m
        for pool in m.workers.pools.values():
            for job in list(pool.buffer):
                if job.id == job_id:
                    pool.buffer.remove(job)
        for w in m.workers.all():
            for run in w.ahead:
                if run.job.id == job_id:
                    run.doomed = True  # already sent: stop it as soon as it starts
        m.events.state(job_id, "cancelled")
        done: list = []
        m.api.finished(job_id, done)
        if done:
            m.api.answer(done)

    def poll_remote_cancels(self) -> None:
        """A cancel that reached another node is seen here through the record's flag."""
        m = self.m
        ids = list(m.running)
        if not ids:
            return
        pipe = m.store.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(m.store.keys.job(job_id), "cancel_requested")
        for job_id, flag in zip(ids, pipe.execute(), strict=True):
            run = m.running.get(job_id)
            if flag == b"1" and run is not None:
                self.request_cancel(job_id, run.job.token)

    # -- circuits -------------------------------------------------------------------------
    def circuit_changed(self, job_type: str, state: str) -> None:
        m = self.m
        m.metrics.circuit.labels(job_type).set(CIRCUIT_GAUGE.get(state, 0))
        breaker = self.policy(job_type).circuit_breaker
        if state == "open":
            log.warning("circuit of %s opened after %s consecutive failures; jobs %s for %ss",
                        job_type, breaker.failures if breaker else "?",
                        f"go to {self.policy(job_type).fallback}"
                        if self.policy(job_type).fallback else "wait in the queue",
                        breaker.open_for if breaker else "?")
        else:
            log.warning("circuit of %s is now %s", job_type, state)
            if state == "closed":
                m.may_have_work(job_type)
        m.events.publish(f"circuit.{job_type}", "circuit", type=job_type, state=state)
