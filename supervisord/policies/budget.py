"""The retry budget: at most ``retry_budget`` retries of a type a minute, cluster-wide.

Counted in Redis (``budget:TYPE:MINUTE``) by ``lua/apply.lua``'s retry branch,
so that every node shares one budget; a retry over it turns final there
(flag '2'), and the history says why.
"""

from __future__ import annotations

from supervisord.config import JobTypeConfig
from supervisord.redis.store import history_entry
from supervisord.states import FailureKind


def limit(policy: JobTypeConfig) -> int:
    """The apply script's budget argument: retries a minute, -1 for none."""
    return policy.retry_budget if policy.retry_budget is not None else -1


def spent(policy: JobTypeConfig, attempt: int, node: str, pid: int, kind: FailureKind,
          message: str, now: float) -> bytes:
    """The history entry of a retry the budget turned final."""
    return history_entry("failed", attempt, node,
                         f"retry budget of {policy.retry_budget}/min spent",
                         pid=pid, kind=kind, message=message, now=now)
