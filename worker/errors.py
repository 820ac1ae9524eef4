"""What handlers raise to tell the supervisor why a job failed.

The kind decides the policy (DESIGN.md section 3): ``Transient`` retries with
backoff, ``Permanent`` fails at once, ``RateLimited`` waits ``retry_after``
without burning an attempt.  Any other exception is kind ``exception``.
"""

from __future__ import annotations

from supervisord.errors import JobsupError


class JobFailure(JobsupError):
    """Raised by a handler to classify its failure; the subclasses say how."""

    kind = "exception"


class Transient(JobFailure):
    """Raised when the job may succeed if tried again later (a flaky dependency)."""

    kind = "transient"


class Permanent(JobFailure):
    """Raised when trying again cannot help (bad input); the job fails now."""

    kind = "permanent"


class RateLimited(JobFailure):
    """Raised when a dependency asked us to slow down; retried after ``retry_after`` s."""

    kind = "rate_limited"

    def __init__(self, message: str = "rate limited", retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = float(retry_after)


class SoftTimeout(JobFailure):
    """Raised inside a handler when its job type's ``soft_timeout`` has passed.

    An ``Exception`` on purpose (unlike ``Interrupt``): a handler may catch it,
    save or clean up, and return a result.  If it escapes, the job fails with
    kind ``timeout`` and the type's retry policy applies.  The hard ``timeout``
    still kills the worker's process group if the handler keeps going.
    """

    kind = "timeout"


class Interrupt(BaseException):
    """Raised into a handler when the supervisor stops it (timeout, shutdown).

    A ``BaseException`` so that a handler's ``except Exception`` cannot swallow
    it; ``finally`` blocks still run.
    """
