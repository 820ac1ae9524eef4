"""The client API: one handler per operation, exceptions mapped to error replies.

Submits are not answered here: they join the writer's batch and are
acknowledged after the pipeline that writes them to Redis has returned.  The
API gets the parts it serves requests from passed in; it holds no master.

Redis errors are told apart: a command Redis rejects because of what a
request asked (``ResponseError``) is that request's ``BadRequest``; only a
timeout or a broken connection is an outage.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import pydantic
import redis
import zmq

from supervisord import status
from supervisord.errors import (
    BadRequest,
    JobsupError,
    NotFound,
    PayloadTooLarge,
    ShuttingDown,
    Unavailable,
    UnknownJobType,
)
from supervisord.ids import IdGenerator
from supervisord.lifecycle import Lifecycle
from supervisord.phase import PhaseMachine
from supervisord.redis.reader import Reads
from supervisord.redis.store import NewJob, Store, history_entry, pack, tag_index
from supervisord.scheduler import Scheduler
from supervisord.settings import Settings
from supervisord.states import JobStatus
from supervisord.waiters import Waiters
from supervisord.wire import api as protocol
from supervisord.writer import PendingSubmit, Writer

log = logging.getLogger("jobsup.api")
_NO_TAGS = pack({})
# Operations answered from Redis: while it is unreachable they fail at once rather
# than make the loop wait out a socket timeout.
_READS_REDIS = frozenset({"get", "wait", "cancel", "jobs", "dlq", "logs"})


class Control:
    """What the API's control operations call: the loop's own shutdown and reload."""

    def __init__(self, shutdown: Callable[[bool, str], None], reload: Callable[[], list],
                 facts: Callable[[], Callable[[], dict]],
                 describe: Callable[[dict], dict], metrics: Callable[[], str]) -> None:
        self.shutdown = shutdown
        self.reload = reload
        self.facts = facts  # status's Redis reads (off the loop)
        self.describe = describe  # status from those facts and the loop's own state
        self.metrics = metrics  # the registry's Prometheus text


class Api:
    def __init__(self, sock: zmq.Socket, settings: Settings, store: Store, ids: IdGenerator,
                 phase: PhaseMachine, writer: Writer, scheduler: Scheduler, jobs: Lifecycle,
                 waiters: Waiters, control: Control, reads: Reads) -> None:
        self.sock = sock
        self.settings = settings
        self.store = store
        self.ids = ids
        self.phase = phase
        self.writer = writer
        self.scheduler = scheduler
        self.jobs = jobs
        self.waiters = waiters
        self.control = control
        self.reads = reads

    def configure(self, settings: Settings) -> None:
        self.settings = settings

    # -- framing ------------------------------------------------------------
    def reply(self, identity: bytes, rid: Any, result: Any) -> None:
        self.sock.send_multipart((identity, protocol.ok(rid, result)))

    def fail(self, identity: bytes, rid: Any, exc: JobsupError) -> None:
        self.sock.send_multipart((identity, protocol.error(rid, exc)))

    def handle(self, frames: list[bytes], source: Callable[[], int] | None = None) -> None:
        """One request; ``source`` gives the fd of the connection it came on (read only
        for waits, which are dropped when that connection closes)."""
        if len(frames) != 2:
            if frames:
                self.fail(frames[0], None, BadRequest(
                    f"expected one request frame, got {len(frames) - 1}"))
            return
        identity, frame = frames
        rid, op = None, "malformed"
        try:
            rid, req = protocol.decode_request(frame, self.settings.cfg.api.max_message)
            op = req.op
            if source is not None and (op == "wait" or (op == "submit" and req.wait)):
                self.waiters.note_source(identity, source())
            if op in _READS_REDIS and not self.writer.up:
                raise Unavailable("Redis is unreachable; nothing was changed, try again "
                                  "shortly (jobsup status shows Redis health)")
            getattr(self, f"op_{op}")(identity, rid, req)
        except Exception as exc:
            self._failed(identity, rid, op, exc)

    def _failed(self, identity: bytes, rid: Any, op: str, exc: Exception) -> None:
        """One mapping from what went wrong to the error reply, for requests answered at
        once and for those answered when their Redis read is back."""
        if isinstance(exc, JobsupError):
            found = exc.details.get("rid")
            self.fail(identity, rid if found is None else found, exc)
        elif isinstance(exc, redis.ResponseError):
            # Redis refused what this request asked for: the request's error, not an outage.
            log.warning("Redis rejected a command of a %s request: %s", op, exc)
            self.fail(identity, rid, BadRequest(
                f"Redis rejected this request ({exc}); check its arguments"))
        elif isinstance(exc, redis.RedisError):
            self.writer.failed(exc)
            self.fail(identity, rid, Unavailable(f"Redis is unreachable ({exc}); try again"))
        else:
            log.error("request failed", exc_info=exc)
            self.fail(identity, rid, JobsupError(f"internal error: {type(exc).__name__}: {exc}"))

    def later(self, identity: bytes, rid: Any, op: str, read: Callable[[], Any],
              answer: Callable[[Any], None]) -> None:
        """Run ``read`` (the request's Redis calls) off the loop, then ``answer`` with its
        result in the loop; what either raises becomes the request's error reply."""

        def done(result: Any) -> None:
            try:
                if isinstance(result, Exception):
                    raise result
                answer(result)
            except Exception as exc:
                self._failed(identity, rid, op, exc)

        self.reads.submit(read, done)

    # -- submits ------------------------------------------------------------
    def _check_open(self) -> None:
        if not self.phase.running:
            raise ShuttingDown("the daemon is shutting down and takes no new jobs; "
                               "resubmit once it is back or to another node")
        if not self.writer.up:
            raise Unavailable("Redis is unreachable, so the job could not be stored; "
                              "nothing was queued, try again shortly")

    def _new_jobs(self, req: protocol.Submit | protocol.SubmitMany, payloads: list[Any],
                  keys: list[str | None], now: float) -> list[NewJob]:
        """Validate and build the jobs of one request; what they share is computed once."""
        s = self.settings
        jt = s.cfg.jobs[req.type]
        schema = s.schemas.get(req.type)
        run_at = req.run_at if req.run_at is not None else now + (req.delay or 0.0)
        status = JobStatus.SCHEDULED if run_at > now + 0.001 else JobStatus.QUEUED
        shared = {
            "type": req.type, "pool": s.pool_of(req.type), "status": status,
            "priority": req.priority if req.priority is not None else jt.priority,
            "run_at": run_at if status == JobStatus.SCHEDULED else now,
            "max_attempts": req.max_attempts or jt.max_attempts,
            "timeout": req.timeout or jt.timeout or 0, "created_at": now, "tags": req.tags,
            "key_ttl": jt.key_ttl, "tags_blob": pack(req.tags) if req.tags else _NO_TAGS,
            "tagidx": tag_index(req.tags) if req.tags else "",
            "history": history_entry(status, 1, s.node, "submitted", now=now),
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
            if protocol.nesting_over(payload, protocol.MAX_PAYLOAD_DEPTH):
                raise protocol.ValidationError(
                    f"{where}payload nests more than {protocol.MAX_PAYLOAD_DEPTH} levels of "
                    "lists and maps; flatten it (or pass a reference to the data)")
            try:
                blob = pack(payload)
            except (TypeError, ValueError) as exc:
                raise protocol.ValidationError(f"{where}payload cannot be encoded: {exc}"
                                               ) from None
            if len(blob) > jt.max_payload:
                raise PayloadTooLarge(
                    f"{where}payload of {len(blob)} bytes is over max_payload {jt.max_payload} "
                    f"for {req.type!r}; store large data elsewhere and pass a reference")
            jobs.append(NewJob(id=self.ids.next(), payload=blob, key=key or "", **shared))
        return jobs

    def _known(self, job_type: str) -> None:
        if job_type not in self.settings.cfg.jobs:
            known = ", ".join(sorted(self.settings.cfg.jobs)) or "none"
            raise UnknownJobType(f"unknown job type {job_type!r}; this daemon runs: {known}")

    def op_submit(self, identity: bytes, rid: Any, req: protocol.Submit) -> None:
        self._known(req.type)
        self._check_open()
        jobs = self._new_jobs(req, [req.payload], [req.key], time.time())
        self.scheduler.hand_over(jobs, awaited=req.wait, accepting=self.phase.running)
        self.writer.batch.submits.append(PendingSubmit(jobs, identity, rid, many=False,
                                                       wait=req.wait,
                                                       wait_timeout=req.wait_timeout))

    def op_submit_many(self, identity: bytes, rid: Any, req: protocol.SubmitMany) -> None:
        self._known(req.type)
        self._check_open()
        if req.keys is not None and len(req.keys) != len(req.payloads):
            raise protocol.ValidationError("keys must have one entry per payload")
        keys = req.keys or [None] * len(req.payloads)
        jobs = self._new_jobs(req, req.payloads, keys, time.time())
        self.scheduler.hand_over(jobs, awaited=False, accepting=self.phase.running)
        self.writer.batch.submits.append(PendingSubmit(jobs, identity, rid, many=True))

    # -- queries: Redis is read off the loop (``later``), the answer built in it ------
    def op_get(self, identity: bytes, rid: Any, req: protocol.Get) -> None:
        def answer(record: dict | None) -> None:
            if record is None:
                raise NotFound(f"no job {req.id} (it never existed or has expired)")
            self.reply(identity, rid, record)

        self.later(identity, rid, "get", lambda: self.store.get(req.id), answer)

    def op_logs(self, identity: bytes, rid: Any, req: protocol.Logs) -> None:
        def answer(found: dict | None) -> None:
            if found is None:
                raise NotFound(f"no job {req.id} (it never existed or has expired)")
            self.reply(identity, rid, protocol.LogsReply(**found))

        self.later(identity, rid, "logs", lambda: self.store.output(req.id), answer)

    def op_wait(self, identity: bytes, rid: Any, req: protocol.Wait) -> None:
        self.await_jobs(identity, rid, req.ids, req.view, req.timeout)

    def await_jobs(self, identity: bytes, rid: Any, ids: list[str], view: str,
                   timeout: float | None) -> None:
        """Answer when every job is final; their statuses come from Redis unless they all
        run here."""
        local = self.scheduler.local_statuses(ids)
        if local is not None:
            self.wait_for(identity, rid, ids, local, view, timeout)
            return
        since = self.waiters.mark()

        def answer(statuses: list[str | None]) -> None:
            missing = [i for i, s in zip(ids, statuses, strict=True) if s is None]
            if missing:
                raise NotFound(f"no job {missing[0]} (it never existed or has expired)",
                               ids=missing[:20])
            self.wait_for(identity, rid, ids, statuses, view, timeout, since)

        self.later(identity, rid, "wait", lambda: self.store.status_of(ids), answer)

    def wait_for(self, identity: bytes, rid: Any, ids: list[str], statuses: list[str],
                 view: str, timeout: float | None, since: int | None = None) -> None:
        """``since``: the waiters' mark when ``statuses`` were read, so that a job that
        finished while they were read is not waited for."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        self.waiters.wait(identity, rid, ids, statuses, view, deadline, since)

    def op_cancel(self, identity: bytes, rid: Any, req: protocol.Cancel) -> None:
        policy = self.settings.policy

        def read() -> tuple[str, str]:
            job_type = self.store.job_type(req.id)
            return self.store.cancel(req.id, policy(job_type).failure_ttl if job_type
                                     else 86400.0)

        def answer(found: tuple[str, str]) -> None:
            status = found[0]
            if status == "missing":
                raise NotFound(f"no job {req.id} (it never existed or has expired)")
            if status in ("running", "held"):
                result = protocol.CancelReply(id=req.id, status="cancelling",
                                              local=self.scheduler.cancel(req.id))
            elif status == "cancelled":
                self.waiters.finished(req.id)
                self.waiters.answer_ready()
                result = protocol.CancelReply(id=req.id, status="cancelled")
            else:
                result = protocol.CancelReply(id=req.id, status=status,
                                              message=f"job already {status}")
            self.reply(identity, rid, result)

        self.later(identity, rid, "cancel", read, answer)

    def op_jobs(self, identity: bytes, rid: Any, req: protocol.Jobs) -> None:
        tag = (req.tag[0], req.tag[1]) if req.tag else None
        store = self.store

        def read() -> protocol.JobsReply:
            ids, cursor = store.list_ids(req.status, req.type, tag, req.limit, req.cursor)
            records = [r for r in store.get_many(ids) if r is not None]
            total, at_most = store.count(req.status, req.type, tag)
            return protocol.JobsReply(jobs=records, cursor=cursor, total=total,
                                      total_at_most=at_most)

        self.later(identity, rid, "jobs", read, lambda found: self.reply(identity, rid, found))

    def op_dlq(self, identity: bytes, rid: Any, req: protocol.DeadLetters) -> None:
        store = self.store
        if req.action == "retry" and not self.phase.running:
            raise ShuttingDown("the daemon is shutting down; retry dead letters later")

        def read() -> protocol.DeadLettersReply:
            if req.action == "list":
                ids = store.dead_letter_ids(req.limit)
                return protocol.DeadLettersReply(
                    jobs=[r for r in store.get_many(ids) if r is not None],
                    total=store.dead_letter_count())
            return protocol.DeadLettersReply(ids=store.dead_letters(req.action, req.ids))

        def answer(result: protocol.DeadLettersReply) -> None:
            if req.action == "retry":
                self.scheduler.wake_all()
            self.reply(identity, rid, result)

        self.later(identity, rid, "dlq", read, answer)

    def op_status(self, identity: bytes, rid: Any, req: protocol.Status) -> None:
        def answer(facts: dict | Exception) -> None:
            if isinstance(facts, Exception):  # status answers without Redis, saying why
                facts = status.unknown(str(facts))
            self.reply(identity, rid, self.control.describe(facts))

        self.reads.submit(self.control.facts(), answer)

    def op_ping(self, identity: bytes, rid: Any, req: protocol.Ping) -> None:
        self.reply(identity, rid, protocol.PingReply(
            node=self.settings.node, pid=os.getpid(), version=protocol.PROTOCOL_VERSION,
            events=self.settings.cfg.api.events, max_message=self.settings.cfg.api.max_message,
            accepting=self.phase.running, redis_up=self.writer.up))

    def op_metrics(self, identity: bytes, rid: Any, req: protocol.Metrics) -> None:
        """In the loop, like a scrape of the old in-process server (which held the GIL as
        long): a few hundred samples, about a millisecond, once per scrape."""
        self.reply(identity, rid, protocol.MetricsReply(text=self.control.metrics()))

    def op_shutdown(self, identity: bytes, rid: Any, req: protocol.Shutdown) -> None:
        self.control.shutdown(req.fast, "stop requested over the API")
        self.reply(identity, rid, protocol.ShutdownReply(stopping=True, fast=req.fast))

    def op_reload(self, identity: bytes, rid: Any, req: protocol.Reload) -> None:
        errors = self.control.reload()
        self.reply(identity, rid, protocol.ReloadReply(reloaded=not errors, errors=errors))

