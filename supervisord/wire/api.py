"""The client API on the wire: one pydantic model per operation, msgpack frames.

A request is one frame holding a map ``{"v": 1, "op": ..., "rid": ..., ...}``;
the reply is one frame ``{"v": 1, "rid": ..., "ok": true, "result": ...}`` or
``{"ok": false, "error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

import msgpack
import pydantic
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from supervisord.errors import BadRequest, JobsupError, ValidationError
from supervisord.states import JobStatus

PROTOCOL_VERSION = 1
# How deep a payload may nest (a list or map inside another counts one level).  A
# record holding it is read back and sent in replies, whose encoder stops at 512
# levels; 64 leaves room for the reply around it and is deeper than any real input.
MAX_PAYLOAD_DEPTH = 64

JobId = Annotated[str, Field(pattern=r"^[0-9a-z]{1,64}$")]
TagMap = dict[Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^=\n]+$")],
              Annotated[str, Field(max_length=1024, pattern=r"^[^\n]*$")]]
Priority = Annotated[int, Field(ge=-1_000_000, le=1_000_000)]


class _Request(BaseModel):
    """What every request carries besides its own fields."""

    model_config = ConfigDict(extra="forbid", strict=True)
    v: Literal[1] = 1  # the protocol version; a request without it is taken as v1
    rid: int | str | None = None  # echoed in the reply, to match replies to requests


class _JobOptions(_Request):
    """The options of a new job; unset ones take the job type's value from the config."""

    type: Annotated[str, Field(min_length=1, max_length=200)]  # a job type in the config
    priority: Priority | None = None  # higher runs first; unset: the type's priority
    timeout: Annotated[float, Field(gt=0)] | None = None  # seconds an attempt may run
    max_attempts: Annotated[int, Field(ge=1, le=1000)] | None = None  # unset: the type's
    delay: Annotated[float, Field(ge=0)] | None = None  # seconds from now before it may run
    run_at: float | None = None  # epoch seconds before which it does not run (beats delay)
    tags: TagMap = Field(default_factory=dict)  # string map, filterable with jobs' tag


class Submit(_JobOptions):
    """Submit one job.  The reply (a ``SubmitReply``) comes once the job is in Redis;
    with ``wait``, the reply is instead the job's final record, in a list of one, as
    ``wait`` sends it."""

    op: Literal["submit"]
    payload: Any = None  # the handler's input: any msgpack value, up to max_payload
    # Idempotency key: a second submit with it gets the first job's id (new: false).
    key: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    wait: bool = False  # reply with the final record instead of the id: one round trip
    wait_timeout: Annotated[float, Field(ge=0)] | None = None  # seconds; unset: no limit


class SubmitMany(_JobOptions):
    """Submit many jobs of one type with the same options, written in one atomic step.
    The reply is the list of their ids, in the order of ``payloads``."""

    op: Literal["submit_many"]
    payloads: Annotated[list[Any], Field(min_length=1, max_length=100_000)]  # one job each
    # One idempotency key (or nil) per payload.
    keys: list[Annotated[str, Field(min_length=1, max_length=256)] | None] | None = None


class Get(_Request):
    """One job's record as it is now (see Job records); ``not_found`` if there is none."""

    op: Literal["get"]
    id: JobId


class Wait(_Request):
    """Reply once every job named has ended (succeeded, failed or cancelled): a list
    with one entry per id, in their order.  ``timeout`` if they have not all ended in
    time, ``not_found`` if one does not exist."""

    op: Literal["wait"]
    ids: Annotated[list[JobId], Field(min_length=1, max_length=100_000)]
    timeout: Annotated[float, Field(ge=0)] | None = None  # seconds; unset: no limit
    # records: whole records; outcomes: status, result and error only (cheap for bulk)
    view: Literal["records", "outcomes"] = "records"


class Logs(_Request):
    """What the job's handler wrote to stdout and stderr and logged (``LogsReply``)."""

    op: Literal["logs"]
    id: JobId


class Cancel(_Request):
    """Cancel a job: one not started ends cancelled at once; a running one is stopped,
    and ends cancelled once its handler has (``CancelReply``)."""

    op: Literal["cancel"]
    id: JobId


class Jobs(_Request):
    """List job records, newest first, one page at a time (``JobsReply``)."""

    op: Literal["jobs"]
    # Only jobs in this status.
    status: Literal[tuple(s.value for s in JobStatus)] | None = None  # type: ignore[valid-type]
    type: str | None = None  # only jobs of this type
    tag: Annotated[list[str], Field(min_length=2, max_length=2)] | None = None  # [key, value]
    limit: Annotated[int, Field(ge=1, le=10_000)] = 50  # records per page
    # What the last page returned: "created_at:last_id" (a float, then a job id).
    cursor: Annotated[str, Field(max_length=200,
                                 pattern=r"^[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?:[0-9a-z]{0,64}$")
                      ] | None = None


class DeadLetters(_Request):
    """The dead-letter set (failed jobs): list them, retry them with fresh attempts, or
    purge (delete) them (``DeadLettersReply``)."""

    op: Literal["dlq"]
    action: Literal["list", "retry", "purge"] = "list"
    ids: list[JobId] | None = None  # retry and purge: these jobs only; unset: all of them
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100  # list: at most this many records


class Status(_Request):
    """What ``jobsup status`` shows: pools, workers, queues, circuits, Redis health (a
    map; see Status)."""

    op: Literal["status"]


class Ping(_Request):
    """Who answers, and what a client needs before it talks more (``PingReply``)."""

    op: Literal["ping"]


class Metrics(_Request):
    """The master's Prometheus text, for the web process's /metrics."""

    op: Literal["metrics"]


class Shutdown(_Request):
    """Stop the daemon, as SIGTERM does (SIGQUIT with ``fast``) (``ShutdownReply``)."""

    op: Literal["shutdown"]
    fast: bool = False  # requeue running jobs and stop now instead of letting them finish


class Reload(_Request):
    """Reload the config file, as SIGHUP does (``ReloadReply``)."""

    op: Literal["reload"]


Request = Annotated[
    Submit | SubmitMany | Get | Wait | Cancel | Jobs | DeadLetters | Status | Ping | Shutdown
    | Reload | Logs | Metrics,
    Field(discriminator="op"),
]
_REQUEST = TypeAdapter(Request)
OPERATIONS = ("submit", "submit_many", "get", "wait", "cancel", "jobs", "dlq", "status",
              "ping", "shutdown", "reload", "logs", "metrics")


# -- replies ---------------------------------------------------------------------------
# The ``result`` of each operation.  The daemon builds these itself, so they are
# typed for readers and checkers (TypedDict costs nothing at run time); requests,
# which come from the network, are validated by the models above.  A job record is
# the map of DESIGN §3 (``redis.store.decode_record``), and ``status`` the map that
# ``status.describe`` builds.

class SubmitReply(TypedDict):
    id: str
    new: bool  # False: an idempotency key found the job it names


class CancelReply(TypedDict, total=False):
    id: str
    status: str  # cancelled, cancelling, or the final status it already had
    local: bool  # the job runs or waits on this node, which stops it at once
    message: str


class LogsReply(TypedDict):
    id: str
    status: str
    text: str  # the last max_output bytes of what the job's handler wrote and logged
    run: str  # which attempt wrote last, as its ``output`` events name it
    at: int  # bytes that attempt wrote in all: events up to here are in ``text``


class JobsReply(TypedDict):
    jobs: list[dict]
    cursor: str | None  # pass back for the next page; None after the last
    # How many jobs match the filters (all pages); None when several filters match
    # more jobs than the daemon counts one by one (10,000): then total_at_most bounds it.
    total: int | None
    total_at_most: int  # at most this many match (the smallest filter's index size)


class DeadLettersReply(TypedDict, total=False):
    jobs: list[dict]  # action list
    total: int
    ids: list[str]  # actions retry and purge: the jobs they touched


class PingReply(TypedDict):
    node: str  # daemon.node_id
    pid: int  # the master's
    version: int  # the protocol version it speaks
    events: str  # the events (PUB) endpoint, api.events
    max_message: int  # api.max_message: clients refuse larger requests before sending
    accepting: bool  # the daemon takes submits (not draining or stopping)
    redis_up: bool  # the master's Redis answers (as its last write or read found it)


class MetricsReply(TypedDict):
    text: str  # Prometheus text exposition format


class ShutdownReply(TypedDict):
    stopping: bool
    fast: bool


class ReloadReply(TypedDict):
    reloaded: bool
    errors: list[dict]  # why the file was refused (the old config stays): loc and msg each


def encode(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def nesting_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists or maps more than ``limit`` levels deep.

    Walked with a stack of its own, not by recursion, so that no input can make
    the check itself fail.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list | tuple))
    return False


def _scalar(value: Any) -> bool:
    return value is None or (isinstance(value, int | str) and not isinstance(value, bool))


def decode_request(frame: bytes, max_size: int) -> tuple[Any, Any]:
    """Parse one request frame; returns (rid, model) or raises a JobsupError."""
    if len(frame) > max_size:
        raise BadRequest(f"request of {len(frame)} bytes is over the {max_size} byte limit")
    try:
        data = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:
        raise BadRequest(f"request is not a valid msgpack frame ({type(exc).__name__}: {exc})"
                         ) from None
    if not isinstance(data, dict):
        raise BadRequest("request must be a msgpack map with an 'op' field")
    rid = data.get("rid")
    if not _scalar(rid) or (isinstance(rid, str) and len(rid) > 200):
        # Echoed in the reply, so it must be something a reply can carry.
        raise BadRequest("rid must be an integer, a string of at most 200 characters or nil, "
                         f"not a {type(rid).__name__}")
    if data.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise BadRequest(f"protocol version {data.get('v')!r} is not supported; "
                         f"this daemon speaks v{PROTOCOL_VERSION}", rid=rid)
    op = data.get("op")
    if not isinstance(op, str):
        raise BadRequest(f"op must be a string naming the operation, not a {type(op).__name__};"
                         f" known: {', '.join(OPERATIONS)}", rid=rid)
    if op not in OPERATIONS:
        raise BadRequest(f"unknown operation {op[:100]!r}; known: {', '.join(OPERATIONS)}",
                         rid=rid)
    try:
        return rid, _REQUEST.validate_python(data)
    except pydantic.ValidationError as exc:
        raise invalid(exc, rid) from None


def invalid(exc: pydantic.ValidationError, rid: Any = None,
            message: str = "invalid request") -> ValidationError:
    errors = [{"loc": ".".join(str(p) for p in e["loc"][1:] or e["loc"]) or "(request)",
               "msg": e["msg"]} for e in exc.errors()]
    detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:10])
    return ValidationError(f"{message}: {detail}", errors=errors, rid=rid)


def ok(rid: Any, result: Any) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "rid": rid, "ok": True, "result": result})


def error(rid: Any, exc: JobsupError) -> bytes:
    wire = exc.to_wire()
    wire["details"] = {k: v for k, v in wire["details"].items() if k != "rid"}
    return encode({"v": PROTOCOL_VERSION, "rid": rid, "ok": False, "error": wire})
