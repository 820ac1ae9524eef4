"""Expiry: a job not started within its type's ``max_age`` of its submit never runs.

Work that is only worth doing while fresh (a reply to a user who has gone, a
frame of a live stream) must not run late and cost a worker: once it is too
old it ends ``failed`` with kind ``expired``.  The check is made where a job
is about to go to a worker, so it also covers the queue a restarted master
recovers (recovery puts held jobs back in the queue; they expire on their way
out of it).  The transition is the apply script's ``finish`` op, fenced by
the reservation's token like any other, so a job that another node already
started is never touched.
"""

from __future__ import annotations

from collections.abc import Callable

from supervisord.config import Config, JobTypeConfig
from supervisord.redis import scripts
from supervisord.redis.store import Op, Reserved, history_entry, pack
from supervisord.states import FailureKind


def age(job: Reserved, now: float) -> float:
    """Seconds since the job was submitted."""
    return now - job.created_at


def expired(policy: JobTypeConfig, job: Reserved, now: float) -> bool:
    """Whether a job about to start is past its type's ``max_age``.

    Only a job that never started expires: an attempt that ran once (and is
    retried, or was requeued by a shutdown) was started in time.
    """
    return (policy.max_age is not None and job.started_at == 0 and job.attempt == 1
            and age(job, now) > policy.max_age)


def sweep(cfg: Config) -> list[tuple[str, float, str, float]]:
    """The queue sweep's arguments (``lua/expire.lua``): every type with a ``max_age``."""
    return [(name, jt.max_age, f"{jt.max_age:g}", jt.failure_ttl)
            for name, jt in cfg.jobs.items() if jt.max_age is not None]


def message(policy: JobTypeConfig, job: Reserved, now: float) -> str:
    return (f"not started within max_age of {policy.max_age:g}s "
            f"(waited {age(job, now):.1f}s since submit)")


def op(policy: JobTypeConfig, job: Reserved, node: str, now: float, awaited: bool) -> Op:
    """End the job failed, kind ``expired``, without running it (a dead letter)."""
    text = message(policy, job, now)
    error = pack({"kind": FailureKind.EXPIRED.value, "message": text, "traceback": None,
                  "attempt": job.attempt})
    hist = history_entry("failed", job.attempt, node, "expired before it started",
                         kind=FailureKind.EXPIRED, message=text, now=now)
    # An expiry says nothing about the dependency behind the type: no circuit update.
    return Op("finish", job.id, job.token,
              scripts.Finish("failed", error, hist, policy.failure_ttl, ""), record=awaited)


class Expiries:
    """After commit: count the job as failed (kind ``expired``), announce it, answer waiters."""

    def __init__(self, failed, publish: Callable[..., None],
                 finished: Callable[[str], None]) -> None:
        self.failed = failed
        self.publish = publish
        self.finished = finished

    def swept(self, expired: list[tuple[str, str, str]]) -> None:
        """Jobs the queue sweep ended (already committed): (id, type, message) each."""
        for job_id, job_type, text in expired:
            self.failed.labels(job_type, FailureKind.EXPIRED.value).inc()
            self.publish(job_id, "state", status="failed", attempt=1,
                         kind=FailureKind.EXPIRED.value, message=text)
            self.finished(job_id)

    def hook(self, job: Reserved, text: str, now: float) -> Callable[[str], None]:
        def effect(flag: str) -> None:
            if flag == "0":
                return  # someone else moved it first (a cancel, another node)
            self.failed.labels(job.type, FailureKind.EXPIRED.value).inc()
            self.publish(job.id, "state", status="failed", attempt=job.attempt,
                         kind=FailureKind.EXPIRED.value, message=text, at=now)
            self.finished(job.id)
        return effect
