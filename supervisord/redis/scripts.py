"""Typed arguments of each ``apply`` op, in the order ``lua/apply.lua`` reads them.

An ``Op`` carries one of these records; being tuples, they go on the wire as
they are (``Op.argv``), and the Lua side reads ``a[1]..a[n]`` in the order of
the fields named here.  Adding an op is one record here and one branch of
``apply.lua``.
"""

from __future__ import annotations

from typing import NamedTuple


class Start(NamedTuple):
    worker: str  # "node:pid"
    history: bytes
    started_at: float


class Ran(NamedTuple):
    """A short attempt's start and success in one write."""

    worker: str
    running_history: bytes
    started_at: float
    result: bytes
    history: bytes
    ttl: float
    circuit: str


class Finish(NamedTuple):
    status: str  # succeeded, failed or cancelled
    blob: bytes  # the result, or the error
    history: bytes
    ttl: float
    circuit: str


class Retry(NamedTuple):
    error: bytes
    history: bytes
    run_at: float  # 0: queued now
    flags: str  # 'a' burn an attempt, 'c' count a crash, 'r' count a rate limit
    timeout: float | str  # '' keeps the job's timeout
    circuit: str
    budget: int  # retries a minute for the type, -1 unbounded
    final_history: bytes  # if the budget is spent
    final_ttl: float


class Fallback(NamedTuple):
    error: bytes
    history: bytes
    ttl: float
    type: str
    pool: str
    max_attempts: int
    timeout: float
    new_history: bytes
    circuit: str


class Requeue(NamedTuple):
    history: bytes  # b"": no history entry (a job that never started here)
    cancelled_ttl: float  # if a cancel waited for it, it ends cancelled, kept this long


class Progress(NamedTuple):
    pct: float
    message: str


class Output(NamedTuple):
    """Captured output of one attempt, appended; the key keeps the last ``limit`` bytes."""

    data: bytes
    limit: int
    at: int  # bytes this attempt has written in all, this chunk included (for followers)
    header: bytes  # put before the chunk when an earlier attempt's output is stored


OpArgs = Start | Ran | Finish | Retry | Fallback | Requeue | Progress | Output

# The fields of one reserved job in the apply script's reply, in order.
RESERVED_FIELDS = ("pool", "id", "token", "type", "payload", "attempt", "max_attempts",
                   "timeout", "crashes", "priority", "created_at", "run_at", "rate_limited",
                   "started_at")
