"""Cost: what each attempt of a type is worth, so that the price of retries shows.

``[jobs.T] cost`` is a number per attempt in whatever unit the operator
counts (dollars of API calls, GPU seconds).  Every attempt that starts adds
it to ``jobsup_jobs_cost_total{type}``; an attempt that is not the job's
first start (a retry, or a rerun after a crash or a lost node) also adds it
to ``jobsup_retry_cost_total{type}``.  A type with no cost adds nothing and
has no series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from supervisord.config import JobTypeConfig
from supervisord.redis.store import Reserved


def rerun(job: Reserved) -> bool:
    """Whether this start repeats work: a later attempt, or one that started before."""
    return job.attempt > 1 or job.started_at > 0


class Costs:
    """The two cost counters, registered beside the daemon's other metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter("jobsup_jobs_cost", "Cost of attempts started (jobs.T.cost each)",
                             ["type"], registry=registry)
        self.retries = Counter("jobsup_retry_cost", "Cost of attempts after a job's first",
                               ["type"], registry=registry)

    def started(self, policy: JobTypeConfig, job: Reserved) -> None:
        """An attempt started: charge its type."""
        if not policy.cost:
            return
        self.total.labels(job.type).inc(policy.cost)
        if rerun(job):
            self.retries.labels(job.type).inc(policy.cost)
