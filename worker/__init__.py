"""The worker side of jobsup: what handlers import.

``from worker import JobContext, Transient, Permanent, RateLimited``
"""

from worker.context import JobContext
from worker.errors import Interrupt, JobFailure, Permanent, RateLimited, Transient

__all__ = ["Interrupt", "JobContext", "JobFailure", "Permanent", "RateLimited", "Transient"]
