"""The ``ctx`` a handler receives: who it is, what it may use, how to report."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from supervisord.wire import worker as msgs


class JobContext:
    """Per-attempt context handed to a handler as its second argument."""

    __slots__ = ("_cancel", "_send", "attempt", "deadline", "gpu", "job_id", "state", "token",
                 "type")

    def __init__(self, *, job_id: str, job_type: str, attempt: int, deadline: float | None,
                 gpu: list[int] | None, state: Any, token: str,
                 send: Callable[[tuple], None]) -> None:
        self.job_id = job_id
        self.type = job_type
        self.attempt = attempt
        self.deadline = deadline
        self.gpu = gpu
        self.state = state
        self.token = token
        self._send = send
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        """True once someone asked to cancel this job; return soon when you see it."""
        return self._cancel.is_set()

    def progress(self, pct: float, message: str = "") -> None:
        """Record progress (0-100) on the job and publish it to watchers."""
        pct = max(0.0, min(100.0, float(pct)))
        self._send(msgs.encode(msgs.Progress(self.token, pct, str(message))))

    def emit(self, chunk: str | bytes) -> None:
        """Stream a chunk of output to watchers (not stored on the record)."""
        if isinstance(chunk, bytes):
            chunk = chunk.decode("utf-8", "replace")
        self._send(msgs.encode(msgs.Emit(self.token, str(chunk))))
