"""Handlers used only by the tests (named in test configs as ``tests.handlers:...``).

Workers run with the daemon's working directory (the repository root) on
``sys.path``, so this module imports as ``tests.handlers`` inside a worker.
"""

from __future__ import annotations

import os
from typing import Any

from worker import JobContext

_INIT_CALLS = 0


def init_state() -> dict:
    """A pool ``init`` hook: runs once per worker, before its first job."""
    global _INIT_CALLS
    _INIT_CALLS += 1
    return {"model": "loaded", "init_pid": os.getpid(), "weights": [1, 2, 3]}


def read_state(payload: Any, ctx: JobContext) -> dict:
    """Returns what the pool's init hook gave this worker, and how often it ran."""
    return {"state": ctx.state, "init_calls": _INIT_CALLS, "pid": os.getpid()}
