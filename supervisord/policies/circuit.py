"""The circuit breaker: which outcomes count, what Redis is told, what a change does.

The state lives in Redis (``circuit:TYPE``) so that every node sharing it
agrees; ``lua/apply.lua`` moves it atomically with the attempt's outcome.
Python decides only what an outcome says about the dependency behind a type
(``update``) and reacts once a change has committed (``Circuits.changed``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from supervisord.states import FailureKind

log = logging.getLogger("jobsup.circuit")


class CircuitBreaker(BaseModel):
    """``[jobs.T] circuit_breaker``: open after ``failures`` consecutive counted failures,
    stay open ``open_for`` seconds, then let one trial job through."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    failures: Annotated[int, Field(ge=1)] = 5
    open_for: Annotated[float, Field(ge=0)] = 30.0

# Failures that say something about the dependency behind a type, so they count
# towards opening its circuit.  Bad input (permanent), a cancel, a lost node or
# one oversized job say nothing about it.
COUNTED = frozenset({FailureKind.EXCEPTION, FailureKind.TRANSIENT, FailureKind.TIMEOUT,
                     FailureKind.CRASH, FailureKind.RATE_LIMITED})
GAUGE = {"closed": 0, "half_open": 1, "open": 2}


def update(breaker: CircuitBreaker | None, kind: FailureKind | None) -> str:
    """The circuit argument of an attempt's outcome for the apply script: '' none,
    'S' a success, 'F|failures|open_for' a counted failure."""
    if breaker is None:
        return ""
    if kind is None:
        return "S"
    if kind not in COUNTED:
        return ""
    return f"F|{breaker.failures}|{breaker.open_for}"


class Circuits:
    """After-commit hook of circuit changes: log, gauge, event, wake the queue."""

    def __init__(self, gauge, publish: Callable[..., None],
                 reopened: Callable[[str], None]) -> None:
        self.gauge = gauge
        self.publish = publish
        self.reopened = reopened

    def changed(self, job_type: str, state: str, breaker: CircuitBreaker | None,
                fallback: str | None) -> None:
        self.gauge.labels(job_type).set(GAUGE.get(state, 0))
        if state == "open":
            log.warning("circuit of %s opened after %s consecutive failures; jobs %s for %ss",
                        job_type, breaker.failures if breaker else "?",
                        f"go to {fallback}" if fallback else "wait in the queue",
                        breaker.open_for if breaker else "?")
        else:
            log.warning("circuit of %s is now %s", job_type, state)
            if state == "closed":
                self.reopened(job_type)
        self.publish(f"circuit.{job_type}", "circuit", type=job_type, state=state)
