"""The client API: one handler per operation, exceptions mapped to error replies.

Submits are not answered here: they join the master's batch and are
acknowledged after the pipeline that writes them to Redis has returned.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic
import redis

from supervisord import protocol
from supervisord.errors import (
    JobsupError,
    NotFound,
    PayloadTooLarge,
    ShuttingDown,
    Timeout,
    Unavailable,
    UnknownJobType,
)
from supervisord.states import TERMINAL, JobStatus
from supervisord.store import NewJob, history_entry, pack, tag_index

if TYPE_CHECKING:
    from supervisord.master import Master

log = logging.getLogger("jobsup.api")
_NO_TAGS = pack({})


@dataclass(eq=False)
class PendingSubmit:
    """New jobs waiting for the pass's Redis write, and whom to answer after it."""

    jobs: list[NewJob]
    identity: bytes
    rid: Any
    many: bool
    wait: bool = False
    wait_timeout: float | None = None


@dataclass(eq=False)
class Waiter:
    identity: bytes
    rid: Any
    ids: list[str]
    remaining: set[str]
    view: str  # protocol.Wait.view
    deadline: float | None


class Api:
    def __init__(self, master: Master) -> None:
        self.m = master
        self.waiters: dict[str, list[Waiter]] = {}
        self.timed: set[Waiter] = set()  # waits with a deadline
        self._recheck_at = 0

    # -- framing ------------------------------------------------------------
    def reply(self, identity: bytes, frame: bytes) -> None:
        self.m.api_sock.send_multipart((identity, frame))

    def fail(self, identity: bytes, rid: Any, exc: JobsupError) -> None:
        self.reply(identity, protocol.error(rid, exc))

    def handle(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            if frames:
                self.fail(frames[0], None, protocol.BadRequest(
                    f"expected one request frame, got {len(frames) - 1}"))
            return
        identity, frame = frames
        rid = None
        try:
            rid, req = protocol.decode_request(frame, self.m.cfg.api.max_message)
            getattr(self, f"op_{req.op}")(identity, rid, req)
        except JobsupError as exc:
            found = exc.details.get("rid")
            self.fail(identity, rid if found is None else found, exc)
        except redis.RedisError as exc:
            self.m.redis_failed(exc)
            self.fail(identity, rid, Unavailable(f"Redis is unreachable ({exc}); try again"))
        except Exception as exc:
            log.exception("request failed")
            self.fail(identity, rid, JobsupError(f"internal error: {type(exc).__name__}: {exc}"))

    # -- submits ------------------------------------------------------------
    def _check_open(self) -> None:
        if not self.m.accepting:
            raise ShuttingDown("the daemon is shutting down and takes no new jobs; "
                               "resubmit once it is back or to another node")
        if not self.m.redis_up:
            raise Unavailable("Redis is unreachable, so the job could not be stored; "
                              "nothing was queued, try again shortly")

    def _new_jobs(self, req: protocol.Submit | protocol.SubmitMany, payloads: list[Any],
                  keys: list[str | None], now: float) -> list[NewJob]:
        """Validate and build the jobs of one request; what they share is computed once."""
        cfg = self.m.cfg
        jt = cfg.jobs[req.type]
        schema = self.m.schemas.get(req.type)
        run_at = req.run_at if req.run_at is not None else now + (req.delay or 0.0)
        status = JobStatus.SCHEDULED if run_at > now + 0.001 else JobStatus.QUEUED
        shared = {
            "type": req.type, "pool": cfg.pool_of(req.type), "status": status,
            "priority": req.priority if req.priority is not None else jt.priority,
            "run_at": run_at if status == JobStatus.SCHEDULED else now,
            "max_attempts": req.max_attempts or jt.max_attempts,
            "timeout": req.timeout or jt.timeout or 0, "created_at": now, "tags": req.tags,
            "key_ttl": jt.key_ttl, "tags_blob": pack(req.tags) if req.tags else _NO_TAGS,
            "tagidx": tag_index(req.tags) if req.tags else "",
            "history": history_entry(status, 1, self.m.node, "submitted", now=now),
        }
        many = isinstance(req, protocol.SubmitMany)
        jobs = []
        for n, (payload, key) in enumerate(zip(payloads, keys, strict=True)):
            where = f"payloads[{n}]: " if many else ""
            if schema is not None:
                try:
                    payload = schema.model_validate(payload).model_dump(mode="json")
                except pydantic.ValidationError as exc:
                    raise protocol.invalid(
                        exc, message=f"{where}payload of {req.type!r} is invalid") from None
            try:
                blob = pack(payload)
            except (TypeError, ValueError) as exc:
                raise protocol.ValidationError(f"{where}payload cannot be encoded: {exc}"
                                               ) from None
            if len(blob) > jt.max_payload:
                raise PayloadTooLarge(
                    f"{where}payload of {len(blob)} bytes is over max_payload {jt.max_payload} "
                    f"for {req.type!r}; store large data elsewhere and pass a reference")
            jobs.append(NewJob(id=self.m.ids.next(), payload=blob, key=key or "", **shared))
        return jobs

    def _known(self, job_type: str) -> None:
        if job_type not in self.m.cfg.jobs:
            known = ", ".join(sorted(self.m.cfg.jobs)) or "none"
            raise UnknownJobType(f"unknown job type {job_type!r}; this daemon runs: {known}")

    def op_submit(self, identity: bytes, rid: Any, req: protocol.Submit) -> None:
        self._known(req.type)
        self._check_open()
        jobs = self._new_jobs(req, [req.payload], [req.key], time.time())
        self.m.jobs.hand_over(jobs, awaited=req.wait)
        self.m.batch.submits.append(PendingSubmit(jobs, identity, rid, many=False,
                                                  wait=req.wait,
                                                  wait_timeout=req.wait_timeout))

    def op_submit_many(self, identity: bytes, rid: Any, req: protocol.SubmitMany) -> None:
        self._known(req.type)
        self._check_open()
        if req.keys is not None and len(req.keys) != len(req.payloads):
            raise protocol.ValidationError("keys must have one entry per payload")
        keys = req.keys or [None] * len(req.payloads)
        jobs = self._new_jobs(req, req.payloads, keys, time.time())
        self.m.jobs.hand_over(jobs, awaited=False)
        self.m.batch.submits.append(PendingSubmit(jobs, identity, rid, many=True))

    # -- queries ------------------------------------------------------------
    def op_get(self, identity: bytes, rid: Any, req: protocol.Get) -> None:
        record = self.m.store.get(req.id)
        if record is None:
            raise NotFound(f"no job {req.id} (it never existed or has expired)")
        self.reply(identity, protocol.ok(rid, record))

    def op_wait(self, identity: bytes, rid: Any, req: protocol.Wait) -> None:
        running = self.m.running
        if len(req.ids) == 1 and req.ids[0] in running:
            statuses = ["running"]  # known here, no need to ask Redis
        else:
            statuses = self.m.store.status_of(req.ids)
        missing = [i for i, s in zip(req.ids, statuses, strict=True) if s is None]
        if missing:
            raise NotFound(f"no job {missing[0]} (it never existed or has expired)",
                           ids=missing[:20])
        self.wait_for(identity, rid, req.ids, statuses, req.view, req.timeout)

    def wait_for(self, identity: bytes, rid: Any, ids: list[str], statuses: list[str],
                 view: str, timeout: float | None) -> None:
        """Answer now if every job is final, else when the last one is."""
        remaining = {i for i, s in zip(ids, statuses, strict=True)
                     if JobStatus(s) not in TERMINAL}
        deadline = time.monotonic() + timeout if timeout is not None else None
        waiter = Waiter(identity, rid, list(ids), remaining, view, deadline)
        if not remaining:
            self.answer([waiter])
            return
        for job_id in remaining:
            self.waiters.setdefault(job_id, []).append(waiter)
        if deadline is not None:
            self.timed.add(waiter)

    def finished(self, job_id: str, done: list[Waiter]) -> None:
        """A job reached a final state (committed): wake whoever waits for it."""
        for waiter in self.waiters.pop(job_id, ()):
            waiter.remaining.discard(job_id)
            if not waiter.remaining:
                done.append(waiter)
                self.timed.discard(waiter)

    def answer(self, waiters: list[Waiter], known: dict[str, dict] | None = None) -> None:
        """Reply to finished waiters, one read per view; records the last write returned
        need no read."""
        store = self.m.store
        found: dict[str, dict[str, Any]] = {"records": dict(known or {}), "outcomes": {}}
        read = {"records": store.get_many, "outcomes": store.outcomes}
        for view, have in found.items():
            need = sorted({i for w in waiters if w.view == view for i in w.ids} - set(have))
            if need:
                have.update(zip(need, read[view](need), strict=True))
        for w in waiters:
            self.reply(w.identity, protocol.ok(w.rid, [found[w.view][i] for i in w.ids]))

    def expire_waiters(self, now: float) -> None:
        """Answer waits whose timeout passed; only waits with a deadline are looked at."""
        expired = [w for w in self.timed if w.deadline <= now]
        for w in expired:
            self.timed.discard(w)
            for job_id in w.remaining:
                left = [x for x in self.waiters.get(job_id, ()) if x is not w]
                if left:
                    self.waiters[job_id] = left
                else:
                    self.waiters.pop(job_id, None)
            pending = sorted(w.remaining)
            self.fail(w.identity, w.rid, Timeout(
                f"{len(pending)} job(s) not finished in time: {', '.join(pending[:5])}",
                ids=pending[:100]))

    def recheck_waiters(self, limit: int = 200) -> None:
        """Jobs finished by another node sharing Redis are found by a slow poll.

        Jobs that run here wake their waiters directly; the poll only looks at a
        rotating slice of the others, so a wait on 10,000 jobs costs Redis
        ``limit`` reads a second, not 10,000.
        """
        others = [i for i in self.waiters if i not in self.m.running]
        if not others:
            return
        start = self._recheck_at % len(others)
        ids = (others[start:] + others[:start])[:limit]
        self._recheck_at = start + len(ids)
        done: list[Waiter] = []
        for job_id, status in zip(ids, self.m.store.status_of(ids), strict=True):
            if status is None or JobStatus(status) in TERMINAL:
                self.finished(job_id, done)
        if done:
            self.answer(done)

    def op_cancel(self, identity: bytes, rid: Any, req: protocol.Cancel) -> None:
        record_type = self.m.store.r.hget(self.m.store.keys.job(req.id), "type")
        ttl = self.m.jobs.policy(record_type.decode()).failure_ttl if record_type else 86400.0
        status, extra = self.m.store.cancel(req.id, ttl)
        if status == "missing":
            raise NotFound(f"no job {req.id} (it never existed or has expired)")
        if status == "running":
            local = self.m.jobs.request_cancel(req.id, extra)
            result = {"id": req.id, "status": "cancelling", "local": local}
        elif status == "cancelled":
            self.m.jobs.cancelled_before_run(req.id)
            result = {"id": req.id, "status": "cancelled"}
        else:
            result = {"id": req.id, "status": status, "message": f"job already {status}"}
        self.reply(identity, protocol.ok(rid, result))

    def op_jobs(self, identity: bytes, rid: Any, req: protocol.Jobs) -> None:
        tag = (req.tag[0], req.tag[1]) if req.tag else None
        ids, cursor = self.m.store.list_ids(req.status, req.type, tag, req.limit, req.cursor)
        records = [r for r in self.m.store.get_many(ids) if r is not None]
        self.reply(identity, protocol.ok(rid, {"jobs": records, "cursor": cursor}))

    def op_dlq(self, identity: bytes, rid: Any, req: protocol.DeadLetters) -> None:
        store = self.m.store
        if req.action == "list":
            ids = store.dead_letter_ids(req.limit)
            result: Any = {"jobs": [r for r in store.get_many(ids) if r is not None],
                           "total": store.dead_letter_count()}
        else:
            if req.action == "retry" and not self.m.accepting:
                raise ShuttingDown("the daemon is shutting down; retry dead letters later")
            done = store.dead_letters(req.action, req.ids)
            if req.action == "retry":
                for pool in self.m.workers.pools.values():
                    pool.hot.update(self.m.types_of(pool.name))
            result = {"ids": done}
        self.reply(identity, protocol.ok(rid, result))

    def op_status(self, identity: bytes, rid: Any, req: protocol.Status) -> None:
        self.reply(identity, protocol.ok(rid, self.m.describe()))

    def op_ping(self, identity: bytes, rid: Any, req: protocol.Ping) -> None:
        self.reply(identity, protocol.ok(rid, {"node": self.m.node, "pid": os.getpid(),
                                               "version": protocol.PROTOCOL_VERSION,
                                               "events": self.m.cfg.api.events}))

    def op_shutdown(self, identity: bytes, rid: Any, req: protocol.Shutdown) -> None:
        self.m.begin_shutdown(fast=req.fast, why="stop requested over the API")
        self.reply(identity, protocol.ok(rid, {"stopping": True, "fast": req.fast}))

    def op_reload(self, identity: bytes, rid: Any, req: protocol.Reload) -> None:
        errors = self.m.reload()
        self.reply(identity, protocol.ok(rid, {"reloaded": not errors, "errors": errors}))
