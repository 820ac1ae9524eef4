"""Redis as the state of record: every job transition is one atomic script call.

The master gathers one loop pass of transitions and sends them as one
``apply`` call (plus one ``submit`` call for new jobs) in a single pipeline, so
the per-job cost is a few Redis commands inside Lua, not a round trip each.
Every change to a job that a worker ran is fenced by the attempt's lease
token: a stale attempt's result is discarded by the script, not by Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import redis

from supervisord.redis.keys import Keys
from supervisord.redis.layout import migrate_untagged
from supervisord.redis.pipe import RedisPipe, read_pipelined
from supervisord.redis.replicas import NO_REPLICAS, Replicas
from supervisord.redis.scripts import RESERVED_FIELDS, OpArgs
from supervisord.states import TERMINAL

_RECORD_BLOBS = ("payload", "result", "error", "tags")
_NUMBERS = {
    "priority": int, "attempt": int, "max_attempts": int, "crashes": int, "rate_limited": int,
    "progress": float, "timeout": float, "created_at": float, "started_at": float,
    "finished_at": float, "run_at": float,
}


# Jobs of the smallest index a count of several filters checks one by one; above it the
# count is given as a bound (``Store.count``).
COUNT_SCAN_LIMIT = 10_000

_packer = msgpack.Packer(use_bin_type=True)


def pack(value: Any) -> bytes:
    """msgpack with one reused Packer (the master is one thread; workers pack their own)."""
    return _packer.pack(value)


def unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


def history_entry(status: str, attempt: int, node: str, reason: str, *, pid: int | None = None,
                  kind: str | None = None, message: str | None = None,
                  now: float | None = None) -> bytes:
    """One history line: what happened, when, where and why."""
    entry: dict[str, Any] = {"t": now or time.time(), "status": status, "attempt": attempt,
                             "node": node, "reason": reason}
    if pid is not None:
        entry["pid"] = pid
    if kind:
        entry["kind"] = kind
    if message:
        entry["message"] = message
    return pack(entry)


@dataclass(slots=True)
class NewJob:
    id: str
    type: str
    pool: str
    payload: bytes
    priority: int
    status: str
    run_at: float
    max_attempts: int
    timeout: float
    created_at: float
    tags: dict[str, str]
    key: str
    key_ttl: float
    history: bytes
    tags_blob: bytes | None = None  # computed once per request by bulk submits
    tagidx: str | None = None
    lease: str = ""  # set when the job goes straight to a worker of this node


    def argv(self) -> list:
        tagidx = self.tagidx if self.tagidx is not None else tag_index(self.tags)
        return [self.id, self.type, self.pool, self.payload, self.priority, self.status,
                self.run_at, self.max_attempts, self.timeout, self.created_at,
                self.tags_blob if self.tags_blob is not None else pack(self.tags), self.key,
                self.key_ttl, self.history, tagidx, self.lease]


def tag_index(tags: dict[str, str]) -> str:
    """The tag index entries of a job, as the Lua scripts read them."""
    return "\n".join(f"{k}={v}" for k, v in sorted(tags.items()))


@dataclass(slots=True)
class Reserved:
    """A job this node took from its pool's queue, with what a worker needs to run it."""

    pool: str
    id: str
    token: str
    type: str
    payload: bytes
    attempt: int
    max_attempts: int
    timeout: float
    crashes: int
    priority: int
    created_at: float
    run_at: float
    rate_limited: int
    awaited: bool = False  # its submitter waits for the result in the same request
    started_at: float = 0.0  # when an earlier attempt started; 0 if it never has

    @classmethod
    def from_row(cls, row: list[bytes]) -> Reserved:
        def num(b: bytes, conv=float, default=0):
            return conv(b) if b not in (b"", None) else default
        return cls(
            pool=row[0].decode(), id=row[1].decode(), token=row[2].decode(),
            type=row[3].decode(), payload=row[4], attempt=num(row[5], int, 1),
            max_attempts=num(row[6], int, 1), timeout=num(row[7]), crashes=num(row[8], int),
            priority=num(row[9], int), created_at=num(row[10]), run_at=num(row[11]),
            rate_limited=num(row[12], int), started_at=num(row[13]),
        )


@dataclass(slots=True)
class Op:
    """One transition for ``apply``: kind, job id, lease token and its arguments."""

    kind: str
    id: str
    token: str
    args: OpArgs
    record: bool = False  # read the job's record back after the write: someone waits

    def argv(self) -> list:
        return [self.kind, self.id, self.token, len(self.args), *self.args]


@dataclass(frozen=True, slots=True)
class Route:
    """Where jobs of a type go while its circuit is open."""

    type: str
    fallback: str
    pool: str
    timeout: float
    max_attempts: int


@dataclass(slots=True)
class Applied:
    flags: list[str]  # per op: '1' applied, '0' discarded, '2' retry made final, or a new id
    promoted: list[str]
    reserved: list[Reserved] = field(default_factory=list)
    circuit_changes: list[tuple[str, str]] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)  # finished jobs with waiters
    next_due: float | None = None  # when the earliest scheduled job is due; 0 when none,
    # None when the write did not look (a write of submits alone)


def _script(name: str) -> str:
    lua = Path(__file__).parent / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Store:
    """The jobsup data model over a redis-py client."""

    def __init__(self, client: redis.Redis, prefix: str, node: str,
                 replicas: Replicas = NO_REPLICAS) -> None:
        self.r = client
        self.replicas = replicas
        self.keys = Keys(prefix)
        self.prefix = self.keys.base  # what the scripts get as ARGV[1]
        self.node = node
        self.sources = {name: _script(name) for name in (
            "submit", "apply", "recover", "cancel", "janitor", "dlq", "expire", "heartbeat")}
        self.sha: dict[str, str] = {}
        self._writes: RedisPipe | None = None  # for ``write`` outside the loop
        self.load_scripts()

    def migrate_layout(self) -> int:
        """Rename the keys an older jobsup wrote without the hash tag (once; see
        ``layout.py``); returns how many it moved."""
        return migrate_untagged(self.r, self.keys.prefix)

    def pipe(self, depth: int = 2) -> RedisPipe:
        """A connection of its own for the loop's writes in flight."""
        return RedisPipe(self.r, depth)

    def load_scripts(self) -> None:
        """Load the Lua scripts once; calls then send only their SHA."""
        for name, source in self.sources.items():
            self.sha[name] = self.r.script_load(source)

    def call(self, name: str, argv: list) -> Any:
        """One script call, outside the loop's writes (recover, cancel, janitor, dlq)."""
        wait = self.replicas.command()
        for attempt in (1, 2):
            try:
                if wait is None:
                    return self.r.evalsha(self.sha[name], 1, self.keys.anchor, *argv)
                with self.r.pipeline(transaction=False) as pipe:  # one connection: WAIT
                    pipe.evalsha(self.sha[name], 1, self.keys.anchor, *argv)  # WAIT covers it
                    pipe.execute_command(*wait)
                    return self.replicas.confirmed(pipe.execute())[0]
            except redis.exceptions.NoScriptError as exc:
                if attempt == 2 or not self.scripts_missing([exc]):
                    raise
        raise AssertionError("unreachable")

    # -- writes -----------------------------------------------------------
    def submit_argv(self, jobs: list[NewJob], now: float) -> list:
        argv: list = [self.prefix, now, len(jobs)]
        for job in jobs:
            argv.extend(job.argv())
        return argv

    def apply_argv(self, ops: list[Op], wants: dict[str, tuple[int, list[str]]], now: float,
                   promote_limit: int, routes: list[Route] = (),
                   breakers: set[str] | frozenset = frozenset()) -> list:
        argv: list = [self.prefix, self.node, now, len(ops)]
        for op in ops:
            argv.extend(op.argv())
        argv.append(promote_limit)
        argv.append(len(wants))
        for pool, (n, types) in wants.items():
            argv.extend((pool, n, len(types)))
            for job_type in types:  # '1' marks a type with a circuit breaker to consult
                argv.extend((job_type, "1" if job_type in breakers else "0"))
        argv.append(len(routes))
        for r in routes:
            argv.extend((r.type, r.fallback, r.pool, r.timeout, r.max_attempts))
        return argv

    def write_commands(self, submits: list[NewJob], ops: list[Op],
                       wants: dict[str, tuple[int, list[str]]], promote_limit: int, now: float,
                       routes: list[Route] = (), breakers: set[str] | frozenset = frozenset()
                       ) -> list[tuple]:
        """The commands of one pass: a submit call (if any), an apply call (unless the
        pass only submits), and reads of the records someone waits for."""
        commands = []
        if submits:
            commands.append(("EVALSHA", self.sha["submit"], 1, self.keys.anchor,
                             *self.submit_argv(submits, now)))
        if ops or wants or promote_limit or not submits:
            commands.append(("EVALSHA", self.sha["apply"], 1, self.keys.anchor,
                             *self.apply_argv(ops, wants, now, promote_limit, routes, breakers)))
        for op in ops:
            if op.record:  # plain reads after the script: far cheaper than inside Lua
                commands.append(("HGETALL", self.keys.job(op.id)))
                commands.append(("LRANGE", self.keys.history(op.id), 0, -1))
        wait = self.replicas.command()
        if wait is not None:  # last: its reply says the replicas have all of the above
            commands.append(wait)
        return commands

    @staticmethod
    def parse_write(replies: list, had_submits: bool, ops: list[Op]
                    ) -> tuple[list[tuple[str, bool]], Applied]:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        created: list[tuple[str, bool]] = []
        if had_submits:
            flat = replies[0]
            created = [(flat[j].decode(), flat[j + 1] == b"1") for j in range(0, len(flat), 2)]
        at = 1 if had_submits else 0
        wanted = [op.id for op in ops if op.record]
        if len(replies) == at + 2 * len(wanted):  # submits alone: no apply call
            return created, Applied(flags=[], promoted=[])
        flags, promoted, rows, next_due, changes = replies[at]
        reads = replies[at + 1:]
        n = len(RESERVED_FIELDS)
        reserved = [Reserved.from_row(rows[j:j + n]) for j in range(0, len(rows), n)]
        return created, Applied(
            flags=flags.decode().split(",") if flags else [],
            promoted=[p.decode() for p in promoted],
            reserved=reserved,
            next_due=float(next_due) if next_due else 0.0,
            circuit_changes=[tuple(c.decode().split("=", 1)) for c in changes],
            records={job_id: decode_record(_as_dict(reads[2 * k]), reads[2 * k + 1])
                     for k, job_id in enumerate(wanted)},
        )

    def write(self, submits: list[NewJob], ops: list[Op],
              wants: dict[str, tuple[int, list[str]]], promote_limit: int = 0,
              now: float | None = None, routes: list[Route] = (),
              breakers: set[str] | frozenset = frozenset(),
              ) -> tuple[list[tuple[str, bool]], Applied]:
        """Submit new jobs and apply one pass of transitions in one round trip, through the
        same pipe and commands as the loop's writes (so tests of the Lua take the path
        production takes)."""
        now = now or time.time()
        if self._writes is None:
            self._writes = self.pipe(depth=1)
        for attempt in (1, 2):
            self._writes.send(self.write_commands(submits, ops, wants, promote_limit, now,
                                                  routes, breakers), None)
            try:
                replies, _ = self._writes.receive()
            except redis.RedisError:
                self._writes.abandon()
                raise
            if attempt == 2 or not self.scripts_missing(replies):
                break
        return self.parse_write(self.replicas.confirmed(replies), bool(submits), ops)

    def scripts_missing(self, replies: list) -> bool:
        """The one NOSCRIPT path: Redis lost its script cache (a restart or a failover),
        so the scripts are loaded again and the caller sends its write once more."""
        if lacks_scripts(replies):
            self.load_scripts()
            return True
        return False

    def submit(self, jobs: list[NewJob]) -> list[tuple[str, bool]]:
        return self.write(jobs, [], {})[0]

    def apply(self, ops: list[Op], wants: dict[str, tuple[int, list[str]]] | None = None,
              promote_limit: int = 0, now: float | None = None,
              routes: list[Route] = (), breakers: set[str] | frozenset = frozenset()
              ) -> Applied:
        return self.write([], ops, wants or {}, promote_limit, now, routes, breakers)[1]

    def recover(self, node: str, reason: str, keep: tuple[str, ...] = ()) -> int:
        """Requeue every job ``node`` holds but ``keep``, without burning attempts."""
        return int(self.call("recover", [self.prefix, node, time.time(), reason, self.node, *keep]))

    def expire_queued(self, types: list[tuple[str, float, str, float]], limit: int = 1000
                      ) -> list[tuple[str, str, str]]:
        """End queued jobs past their type's max_age: (type, max_age, its label, ttl) each.

        Returns (id, type, message) of each job that expired.
        """
        if not types:
            return []
        argv: list = [self.prefix, time.time(), self.node, limit, len(types)]
        for t in types:
            argv.extend(t)
        flat = [b.decode() for b in self.call("expire", argv)]
        return [(flat[j], flat[j + 1], flat[j + 2]) for j in range(0, len(flat), 3)]

    def job_type(self, job_id: str) -> str | None:
        raw = self.r.hget(self.keys.job(job_id), "type")
        return raw.decode() if raw else None

    def cancel(self, job_id: str, ttl: float) -> tuple[str, str]:
        """Cancel a job: ('cancelled'|'running'|'held'|'missing'|status, lease or owner).

        ``ttl`` is how long a cancelled record is kept.
        """
        err = pack({"kind": "cancelled", "message": "cancelled on request", "traceback": None})
        reply = self.call("cancel", [self.prefix, job_id, time.time(), err, ttl, self.node])
        status = reply[0].decode()
        return status, (reply[1].decode() if len(reply) > 1 else "")

    def cancel_requested(self, ids: list[str]) -> list[str]:
        """Which of these jobs someone asked to cancel (through any node)."""
        rows = read_pipelined(self.r, [("HGET", self.keys.job(i), "cancel_requested")
                                       for i in ids])
        return [i for i, flag in zip(ids, rows, strict=True) if flag == b"1"]

    def health(self) -> dict:
        """Round-trip latency and what INFO says, for ``status``."""
        t0 = time.perf_counter()
        self.r.ping()
        latency = round((time.perf_counter() - t0) * 1000, 3)
        info = self.r.info()
        return {"latency_ms": latency, "version": info.get("redis_version"),
                "used_memory": info.get("used_memory"),
                "aof_enabled": bool(info.get("aof_enabled"))}

    def dead_letters(self, action: str, ids: list[str] | None = None) -> list[str]:
        """``retry`` (fresh attempts, history kept) or ``purge`` failed jobs; all if no ids."""
        done = [i.decode() for i in self.call("dlq", [self.prefix, time.time(), action,
                                                      self.node, *(ids or [])])]
        if action == "purge":
            while self.expire(limit=1000) == 1000:
                pass
        return done

    def dead_letter_ids(self, limit: int = 100) -> list[str]:
        return [i.decode() for i in self.r.zrevrange(self.keys.dead_letters, 0, limit - 1)]

    def expire(self, now: float | None = None, limit: int = 500) -> int:
        return int(self.call("janitor", [self.prefix, now or time.time(), limit]))

    # -- reads ------------------------------------------------------------
    def get(self, job_id: str) -> dict | None:
        return self.get_many([job_id])[0]

    def get_many(self, ids: list[str]) -> list[dict | None]:
        commands: list[tuple] = []
        for job_id in ids:
            commands.append(("HGETALL", self.keys.job(job_id)))
            commands.append(("LRANGE", self.keys.history(job_id), 0, -1))
        rows = read_pipelined(self.r, commands)
        return [decode_record(_as_dict(rows[j]), rows[j + 1]) for j in range(0, len(rows), 2)]

    def output(self, job_id: str) -> dict | None:
        """A job's captured output as stored: the text (its last ``max_output`` bytes),
        the attempt that wrote last (``run``) and how many bytes that attempt wrote in
        all (``at``), so a follower can tell what it has seen; None if no such job."""
        fields, text = read_pipelined(self.r, [
            ("HMGET", self.keys.job(job_id), "status", "output_run", "output_at"),
            ("GET", self.keys.output(job_id))])
        status, run, at = fields
        if status is None:
            return None
        return {"id": job_id, "status": status.decode(),
                "text": (text or b"").decode("utf-8", "replace"),
                "run": run.decode() if run else "", "at": int(at) if at else 0}

    def status_of(self, ids: list[str]) -> list[str | None]:
        rows = read_pipelined(self.r, [("HGET", self.keys.job(i), "status") for i in ids])
        return [s.decode() if s else None for s in rows]

    def outcomes(self, ids: list[str]) -> list[dict | None]:
        """What finished jobs came to, without the rest of their records: for bulk waits."""
        rows = read_pipelined(self.r, [("HMGET", self.keys.job(i), *_OUTCOME) for i in ids])
        return [decode_outcome(job_id, row) for job_id, row in zip(ids, rows, strict=True)]

    def list_ids(self, status: str | None = None, job_type: str | None = None,
                 tag: tuple[str, str] | None = None, limit: int = 50,
                 cursor: str | None = None) -> tuple[list[str], str | None]:
        """Newest first from the smallest matching index; ``cursor`` pages on.

        The cursor is ``created_at:last_id``; paging resumes after the last id's
        rank, so a bulk submit's jobs (which share one ``created_at``) are all listed.

        Filters intersect indexes kept by the same atomic transitions as the
        records: the smallest index is walked page by page and each member is
        checked against the others, so no query scans the keyspace.
        """
        indexes, sizes = self._indexes(status, job_type, tag)
        primary = indexes[sizes.index(min(sizes))]
        others = [k for k in indexes if k != primary]
        offset = self._resume_at(primary, cursor)
        found: list[tuple[str, float]] = []
        page = max(limit * 2, 100)
        while len(found) < limit:
            rows = self.r.zrevrange(primary, offset, offset + page - 1, withscores=True)
            if not rows:
                return [i for i, _ in found], None
            offset += len(rows)
            found += self._matching(rows, others)[:limit - len(found)]
        return [i for i, _ in found], f"{found[-1][1]!r}:{found[-1][0]}"

    def _indexes(self, status: str | None, job_type: str | None, tag: tuple[str, str] | None
                 ) -> tuple[list[str], list[int]]:
        """The indexes a listing's filters name (all jobs without any) and their sizes."""
        indexes = [key for key, wanted in (
            (self.keys.index_status(status or ""), status),
            (self.keys.index_type(job_type or ""), job_type),
            (self.keys.index_tag(*tag) if tag else "", tag)) if wanted] or [self.keys.index_all]
        pipe = self.r.pipeline(transaction=False)
        for key in indexes:
            pipe.zcard(key)
        return indexes, pipe.execute()

    def count(self, status: str | None = None, job_type: str | None = None,
              tag: tuple[str, str] | None = None, scan_limit: int = COUNT_SCAN_LIMIT
              ) -> tuple[int | None, int]:
        """How many jobs match the filters: ``(total, at_most)``.

        One filter (or none) is one index's size.  Several intersect: the smallest
        index is walked and each member checked against the others, but only when
        it holds at most ``scan_limit`` jobs; above that ``total`` is None and
        ``at_most`` (the smallest index's size) bounds it, so a count never costs
        more than ``scan_limit`` lookups per filter.
        """
        indexes, sizes = self._indexes(status, job_type, tag)
        smallest = min(sizes)
        if len(indexes) == 1:
            return smallest, smallest
        if smallest > scan_limit:
            return None, smallest
        primary = indexes[sizes.index(smallest)]
        others = [k for k in indexes if k != primary]
        rows = self.r.zrange(primary, 0, scan_limit - 1, withscores=True)
        return len(self._matching(rows, others)), smallest

    def _resume_at(self, index: str, cursor: str | None) -> int:
        if not cursor:
            return 0
        score, _, last = cursor.partition(":")
        rank = self.r.zrevrank(index, last) if last else None
        if rank is not None:
            return rank + 1
        # The last job expired meanwhile: resume below its time.
        return int(self.r.zcount(index, score, "+inf"))

    def _matching(self, rows: list[tuple[bytes, float]], others: list[str]
                  ) -> list[tuple[str, float]]:
        if not others:
            return [(m.decode(), score) for m, score in rows]
        pipe = self.r.pipeline(transaction=False)
        for member, _ in rows:
            for key in others:
                pipe.zscore(key, member)
        hits = pipe.execute()
        n = len(others)
        return [(m.decode(), score) for j, (m, score) in enumerate(rows)
                if all(h is not None for h in hits[j * n:(j + 1) * n])]

    def queue_depths(self, types_of: dict[str, list[str]]) -> dict[str, int]:
        """Queued jobs per pool: the sum over the pool's type queues."""
        pipe = self.r.pipeline(transaction=False)
        for types in types_of.values():
            for job_type in types:
                pipe.zcard(self.keys.queue(job_type))
        counts = iter(pipe.execute())
        return {pool: sum(next(counts) for _ in types) for pool, types in types_of.items()}

    def circuits(self, types: list[str]) -> list[dict]:
        """The circuit of each type: state, consecutive failures, open until."""
        pipe = self.r.pipeline(transaction=False)
        for job_type in types:
            pipe.hgetall(self.keys.circuit(job_type))
        out = []
        for job_type, raw in zip(types, pipe.execute(), strict=True):
            h = {k.decode(): v.decode() for k, v in raw.items()}
            out.append({"type": job_type, "state": h.get("state", "closed"),
                        "failures": int(h.get("failures", 0)),
                        "open_until": float(h["open_until"]) if h.get("open_until") else None,
                        "trial": h.get("trial") or None})
        return out

    def dead_letter_count(self) -> int:
        return int(self.r.zcard(self.keys.dead_letters))


def lacks_scripts(replies: list) -> bool:
    """Redis refused a write because it does not know its scripts (NOSCRIPT)."""
    return any(isinstance(r, redis.exceptions.NoScriptError) for r in replies)


def _blob(raw: bytes) -> Any:
    return unpack(raw) if raw else None


# How each stored field becomes a record field: blobs are msgpack, numbers convert,
# hidden ones stay out; a field not named here is text.  Looked up once per field,
# since a waiter's reply decodes a record on the round trip.
_BLOB, _HIDE = object(), object()
_FIELDS: dict[bytes, tuple[str, Any]] = {
    **{name.encode(): (name, _BLOB) for name in _RECORD_BLOBS},
    **{name.encode(): (name, conv) for name, conv in _NUMBERS.items()},
    b"lease": ("lease", _HIDE), b"tagidx": ("tagidx", _HIDE),
    b"output_run": ("output_run", _HIDE), b"output_at": ("output_at", _HIDE),
}
_OUTCOME = ("status", "result", "error", "attempt", "finished_at", "type")


def _as_dict(reply: Any) -> dict[bytes, bytes]:
    """HGETALL's reply: a dict over RESP3, a flat list over RESP2."""
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))


def decode_record(fields: dict[bytes, bytes], history: list[bytes]) -> dict | None:
    """A job hash as the record of DESIGN.md section 3."""
    if not fields:
        return None
    rec: dict[str, Any] = {}
    for raw_key, raw in fields.items():
        name, kind = _FIELDS.get(raw_key) or (raw_key.decode(), None)
        if kind is None:
            rec[name] = raw.decode()
        elif kind is _BLOB:
            rec[name] = unpack(raw) if raw else None
        elif kind is not _HIDE:
            rec[name] = kind(raw) if raw else None
    worker = rec.pop("worker", None)
    if worker:
        node, _, pid = worker.rpartition(":")
        rec["worker"] = {"node": node, "pid": int(pid)}
    else:
        rec["worker"] = None
    rec["key"] = rec.get("key") or None
    rec["cancel_requested"] = rec.get("cancel_requested") == "1"
    rec["progressed"] = rec.get("progressed") == "1"  # the handler reported progress
    rec["progress_message"] = rec.get("progress_message") or None
    rec["history"] = [unpack(entry) for entry in history]
    for name in ("started_at", "finished_at", "result", "error"):
        rec.setdefault(name, None)
    rec["terminal"] = rec["status"] in TERMINAL
    return rec


def decode_outcome(job_id: str, row: list[bytes | None]) -> dict | None:
    status, result, error, attempt, finished_at, job_type = row
    if status is None:
        return None
    return {"id": job_id, "type": job_type.decode() if job_type else "",
            "status": status.decode(), "result": _blob(result), "error": _blob(error),
            "attempt": int(attempt) if attempt else 1,
            "finished_at": float(finished_at) if finished_at else None}
