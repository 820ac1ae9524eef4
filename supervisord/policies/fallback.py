"""Fallback: a second job type that takes a job over.

Two ways in: a job whose retries are exhausted ends ``failed`` and is
re-submitted as its type's ``fallback`` (``op``, the apply script's fallback
branch, ``Fallbacks.committed``); and while a type's circuit is open, its
queued jobs are re-routed in place (``routes``, read by the reservation in
``lua/apply.lua``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from supervisord.config import Config, JobTypeConfig
from supervisord.redis import scripts
from supervisord.redis.store import Op, Route, history_entry

log = logging.getLogger("jobsup.jobs")


def routes(cfg: Config) -> tuple[Route, ...]:
    """Where each type with a circuit breaker and a fallback goes while its circuit is open."""
    jobs = cfg.jobs
    return tuple(Route(name, jt.fallback, cfg.pool_of(jt.fallback),
                       jobs[jt.fallback].timeout or 0, jobs[jt.fallback].max_attempts)
                 for name, jt in jobs.items() if jt.circuit_breaker and jt.fallback)


def op(cfg: Config, policy: JobTypeConfig, job_id: str, job_type: str, token: str,
       error: bytes, final: bytes, circuit: str, now: float, node: str,
       awaited: bool) -> Op:
    """End the job failed and queue a job of the fallback type with its payload."""
    fb = cfg.jobs[policy.fallback]
    queued = history_entry("queued", 1, node, f"fallback for {job_type} job {job_id}", now=now)
    return Op("fallback", job_id, token, scripts.Fallback(
        error, final, policy.failure_ttl, policy.fallback, cfg.pool_of(policy.fallback),
        fb.max_attempts, fb.timeout or 0, queued, circuit), record=awaited)


class Fallbacks:
    """After commit: count, announce and wake the fallback type's queue."""

    def __init__(self, submitted, publish: Callable[..., None],
                 queued: Callable[[str], None]) -> None:
        self.submitted = submitted
        self.publish = publish
        self.queued = queued

    def committed(self, job_id: str, job_type: str, fallback: str, new_id: str) -> None:
        self.submitted.labels(fallback).inc()
        self.publish(new_id, "state", status="queued", attempt=1, type=fallback,
                     fallback_of=job_id)
        self.queued(fallback)
        log.info("job %s of %s failed; re-submitted as %s job %s", job_id, job_type, fallback,
                 new_id)
