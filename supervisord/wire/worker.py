"""Master <-> worker messages as typed records.

On the socketpair a message is a msgpack array whose first item names it
(cheapest to pack and unpack, measured against maps); on either side it is
one of these NamedTuples, built by ``decode`` from the array, so no code
indexes ``msg[2]``.  A message of an unknown name or the wrong length raises
``ValueError``.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Ready(NamedTuple):
    pid: int


class InitFailed(NamedTuple):
    pid: int
    message: str
    traceback: str


class Done(NamedTuple):
    token: str
    result: bytes
    status: str  # "" or "cancelled": the handler returned after seeing ctx.cancelled


class Error(NamedTuple):
    token: str
    kind: str
    message: str
    traceback: str | None
    retry_after: float | None


class Progress(NamedTuple):
    token: str
    pct: float
    message: str


class Emit(NamedTuple):
    token: str
    data: str


FromWorker = Ready | InitFailed | Done | Error | Progress | Emit
_BY_NAME: dict[str, Any] = {"ready": Ready, "init_failed": InitFailed, "done": Done,
                            "error": Error, "progress": Progress, "emit": Emit}


def decode(msg: list) -> FromWorker:
    """A worker's message as its record; ValueError if it is none of them."""
    if not isinstance(msg, list | tuple) or not msg:
        raise ValueError(f"not a message: {type(msg).__name__}")
    cls = _BY_NAME.get(msg[0]) if isinstance(msg[0], str) else None
    if cls is None:
        raise ValueError(f"unknown message {msg[0]!r}")
    if len(msg) - 1 != len(cls._fields):
        raise ValueError(f"{msg[0]} with {len(msg) - 1} fields, expected {len(cls._fields)}")
    return cls._make(msg[1:])
