"""What happens to a job after a failed attempt: retry when, or fail now.

Pure functions of the job's counters and its type's policy, so that the
rules are unit-tested without a daemon.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from supervisord.states import FailureKind

if TYPE_CHECKING:
    from supervisord.config import JobTypeConfig

class Backoff(BaseModel):
    """``[jobs.T] backoff``: the delay before attempt n+1 is uniform in
    [0, min(max, base * factor^(n-1))] (full jitter)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base: Annotated[float, Field(ge=0)] = 1.0
    factor: Annotated[float, Field(ge=1)] = 2.0
    max: Annotated[float, Field(ge=0)] = 60.0


# Kinds that never burn an attempt when retried.
_FREE_RETRY = {FailureKind.RATE_LIMITED, FailureKind.LOST}


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    delay: float = 0.0
    burn_attempt: bool = True
    crash: bool = False
    rate_limited: bool = False
    timeout: float | None = None
    reason: str = ""


def backoff(policy: JobTypeConfig, attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, base*factor^(n-1))]."""
    ceiling = min(policy.backoff.max, policy.backoff.base * policy.backoff.factor ** (attempt - 1))
    return (rng or random).uniform(0, ceiling)


def decide(policy: JobTypeConfig, kind: FailureKind, *, attempt: int, max_attempts: int,
           crashes: int, rate_limited: int, timeout: float | None,
           retry_after: float | None = None) -> Decision:
    crash = kind == FailureKind.CRASH
    if kind in (FailureKind.PERMANENT, FailureKind.INVALID, FailureKind.CANCELLED):
        return Decision(False, crash=crash, reason=f"{kind} failures are not retried")
    if crash and crashes + 1 >= policy.max_crashes:
        return Decision(False, crash=True,
                        reason=f"poison pill: killed its worker {crashes + 1} times")
    if kind == FailureKind.RATE_LIMITED:
        if rate_limited >= policy.max_rate_limited:
            return Decision(False, reason=f"rate limited {rate_limited} times")
        return Decision(True, delay=max(0.0, retry_after or 1.0), burn_attempt=False,
                        rate_limited=True, reason=f"rate limited, retry after {retry_after}s")
    if kind in _FREE_RETRY:
        return Decision(True, burn_attempt=False, reason=f"requeued after {kind}")
    if kind not in policy.retry_on:
        return Decision(False, crash=crash, reason=f"{kind} is not in retry_on")
    if attempt >= max_attempts:
        return Decision(False, crash=crash, reason=f"gave up after {attempt} attempts")
    grown = None
    if kind == FailureKind.TIMEOUT and timeout and policy.timeout_growth > 1:
        grown = timeout * policy.timeout_growth
    # A crash says more about the worker than the input: rerun at once.
    delay = 0.0 if crash else backoff(policy, attempt)
    return Decision(True, delay=delay, crash=crash, timeout=grown,
                    reason=f"retry {attempt + 1}/{max_attempts} after {kind}")
