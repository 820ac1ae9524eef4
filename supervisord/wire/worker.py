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
    NAME = "ready"
    pid: int


class InitFailed(NamedTuple):
    NAME = "init_failed"
    pid: int
    message: str
    traceback: str


class Done(NamedTuple):
    NAME = "done"
    token: str
    result: bytes
    status: str  # "" or "cancelled": the handler returned after seeing ctx.cancelled


class Error(NamedTuple):
    NAME = "error"
    token: str
    kind: str
    message: str
    traceback: str | None
    retry_after: float | None


class Progress(NamedTuple):
    NAME = "progress"
    token: str
    pct: float
    message: str


class Emit(NamedTuple):
    NAME = "emit"
    token: str
    data: str


# -- master to worker ---------------------------------------------------------------


class Run(NamedTuple):
    NAME = "run"
    token: str
    job_id: str
    type: str
    payload: bytes
    attempt: int
    deadline: float | None  # wall clock


class Stop(NamedTuple):
    NAME = "stop"


class Cancel(NamedTuple):
    NAME = "cancel"
    token: str


FromWorker = Ready | InitFailed | Done | Error | Progress | Emit
ToWorker = Run | Stop | Cancel
_FROM_WORKER: dict[str, Any] = {c.NAME: c for c in (Ready, InitFailed, Done, Error, Progress,
                                                     Emit)}
_TO_WORKER: dict[str, Any] = {c.NAME: c for c in (Run, Stop, Cancel)}


def encode(msg: FromWorker | ToWorker) -> tuple:
    """The array that goes on the socketpair: the message's name, then its fields."""
    return (msg.NAME, *msg)


def decode(msg: list) -> FromWorker:
    """A worker's message as its record; ValueError if it is none of them."""
    return _decode(msg, _FROM_WORKER)


def decode_to_worker(msg: list) -> ToWorker:
    """The master's message as its record (the worker's side)."""
    return _decode(msg, _TO_WORKER)


def _decode(msg: list, known: dict[str, Any]) -> Any:
    if not isinstance(msg, list | tuple) or not msg:
        raise ValueError(f"not a message: {type(msg).__name__}")
    cls = known.get(msg[0]) if isinstance(msg[0], str) else None
    if cls is None:
        raise ValueError(f"unknown message {msg[0]!r}")
    if len(msg) - 1 != len(cls._fields):
        raise ValueError(f"{msg[0]} with {len(msg) - 1} fields, expected {len(cls._fields)}")
    return cls._make(msg[1:])
