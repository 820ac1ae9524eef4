"""Job and worker states, and failure kinds.

This module imports nothing from the project so that every other module can
use it; the transitions themselves live in ``lifecycle.py`` and the Lua scripts.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class FailureKind(StrEnum):
    EXCEPTION = "exception"
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    PERMANENT = "permanent"
    INVALID = "invalid"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    CRASH = "crash"
    LOST = "lost"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class WorkerState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"


class KillReason(StrEnum):
    """Why the master ended a worker; decides the failure kind of its job."""

    TIMEOUT = "timeout"
    MEMORY = "memory"
    HEARTBEAT = "heartbeat"
    CANCEL = "cancel"
    RECYCLE = "recycle"
    SHUTDOWN = "shutdown"
    RETIRE = "retire"


class Phase(StrEnum):
    """Where the master is in its life; shutdown moves it down this list."""

    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"
    DONE = "done"
