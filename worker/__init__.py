"""The worker side of jobsup: what handlers import.

``from worker import JobContext, Transient, Permanent, RateLimited, SoftTimeout``
"""

from worker.context import JobContext
from worker.errors import (
    Interrupt,
    JobFailure,
    Permanent,
    RateLimited,
    SoftTimeout,
    Transient,
)

__all__ = ["Interrupt", "JobContext", "JobFailure", "Permanent", "RateLimited", "SoftTimeout",
           "Transient"]
