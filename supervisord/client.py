"""The Python client: ``from supervisord import Client``.

Synchronous and small.  One DEALER socket for requests (each reply matched by
its request id, so a reply that arrives after a timeout is never mistaken for
the next one) and, for ``events``, one SUB socket.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq
from pydantic import BaseModel, ConfigDict, TypeAdapter

from supervisord import zmtp
from supervisord.errors import (
    JobFailed,
    JobsupError,
    PayloadTooLarge,
    Timeout,
    Unauthorized,
    Unavailable,
    from_wire,
)
from supervisord.wire.api import PROTOCOL_VERSION, encode

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7700"
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024  # the daemon's api.max_message unless it says otherwise
# A request this small is sent without asking the daemon for its message limit.
_ASK_LIMIT_ABOVE = 64 * 1024
_TERMINAL = ("succeeded", "failed", "cancelled")


class Job(BaseModel):
    """A job record as the daemon stores it (DESIGN.md section 3)."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: str
    pool: str | None = None
    status: str
    payload: Any = None
    priority: int = 0
    attempt: int = 1
    max_attempts: int = 1
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    run_at: float | None = None
    timeout: float | None = None
    worker: dict | None = None
    progress: float = 0.0
    progress_message: str | None = None
    progressed: bool = False  # the handler reported progress at least once
    result: Any = None
    error: dict | None = None
    history: list[dict] = []
    tags: dict[str, str] | None = None
    key: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in _TERMINAL


class Outcome(BaseModel):
    """What a finished job came to, without the rest of its record (``Client.outcomes``)."""

    id: str
    type: str = ""
    status: str
    result: Any = None
    error: dict | None = None
    attempt: int = 1
    finished_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True, slots=True)
class JobsPage:
    """A page of ``Client.jobs_page``; it unpacks as ``jobs, cursor`` as before.

    ``total`` is how many jobs match the filters; None when several filters match
    more jobs than the daemon counts one by one, and then ``total_at_most`` bounds
    it (None too from a daemon that does not count).
    """

    jobs: list[Job]
    cursor: str | None
    total: int | None = None
    total_at_most: int | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.jobs, self.cursor))


_JOBS = TypeAdapter(list[Job])
_OUTCOMES = TypeAdapter(list[Outcome])


class Client:
    """Talks to one jobsup daemon.  Use as a context manager, or call ``close``.

    ``transport`` picks the request socket: ``"auto"`` (the default) speaks ZMTP
    itself (``supervisord.zmtp``) on ``ipc://`` and ``tcp://`` endpoints without
    CurveZMQ and uses pyzmq for the rest; ``"zmq"`` always uses pyzmq's DEALER
    (for comparing the two, or should the own ZMTP misbehave somewhere).
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = 10.0,
                 connect_timeout: float = 3.0, events_endpoint: str | None = None,
                 curve_server_key: str | None = None,
                 curve_client_cert: str | None = None, transport: str = "auto",
                 max_message: int | None = None) -> None:
        if transport not in ("auto", "zmq"):
            raise ValueError(f"transport must be 'auto' or 'zmq', not {transport!r}")
        self.endpoint = endpoint or os.environ.get("JOBSUP_ENDPOINT") or DEFAULT_ENDPOINT
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.events_endpoint = events_endpoint
        # The daemon's api.max_message; asked for (once) before the first large request.
        self.max_message = max_message
        self._curve = (curve_server_key or os.environ.get("JOBSUP_CURVE_SERVER_KEY"),
                       curve_client_cert or os.environ.get("JOBSUP_CURVE_CLIENT_CERT"))
        self._ctx = zmq.Context()
        self._rids = itertools.count(1)
        self._sock: zmq.Socket | zmtp.Dealer | None = None
        self._own_zmtp = (transport == "auto" and zmtp.supported(self.endpoint)
                          and not self._curve[0])

    # -- plumbing -----------------------------------------------------------------
    def _secure(self, sock: zmq.Socket) -> None:
        server_key, client_cert = self._curve
        if not server_key:
            return
        import zmq.auth

        server_public, _ = zmq.auth.load_certificate(server_key)
        public, secret = zmq.auth.load_certificate(client_cert)
        sock.curve_serverkey = server_public
        sock.curve_publickey = public
        sock.curve_secretkey = secret

    def _socket(self) -> zmq.Socket | zmtp.Dealer:
        if self._sock is None and self._own_zmtp:
            try:
                self._sock = zmtp.Dealer(self.endpoint, self.connect_timeout)
            except (OSError, ValueError) as exc:
                raise Unavailable(f"no jobsup daemon answers at {self.endpoint} ({exc}); is "
                                  "`jobsup run` running, and is this the right endpoint?"
                                  ) from None
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            self._secure(sock)
            monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            ) if self._curve[0] else None
            sock.connect(self.endpoint)
            try:
                ready = sock.poll(self.connect_timeout * 1000, zmq.POLLOUT)
                refused = monitor is not None and bool(monitor.poll(0))
            finally:
                if monitor is not None:
                    sock.disable_monitor()
                    monitor.close(linger=0)
            if refused:
                sock.close()
                raise Unauthorized(f"the daemon at {self.endpoint} refused this client's "
                                   "CurveZMQ key; add its public key to the daemon's "
                                   "api.curve_allowed_clients and check the server key")
            if not ready:
                sock.close()
                raise Unavailable(f"no jobsup daemon answers at {self.endpoint} (waited "
                                  f"{self.connect_timeout:g}s); is `jobsup run` running, and "
                                  "is this the right endpoint?")
            self._sock = sock
        return self._sock

    def call(self, op: str, reply_timeout: float | None = -1.0, **fields: Any) -> Any:
        """Send one request and return its result, raising the daemon's error."""
        rid = next(self._rids)
        request = encode({"v": PROTOCOL_VERSION, "op": op, "rid": rid, **fields})
        if len(request) > _ASK_LIMIT_ABOVE:
            self._check_size(op, len(request))
        try:
            sock = self._socket()
            sock.send(request)
        except OSError:  # the daemon restarted since the last call: nothing was sent
            self._reset()
            sock = self._socket()
            sock.send(request)
        limit = self.timeout if reply_timeout == -1.0 else reply_timeout
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                answered = sock.poll(None if left is None else left * 1000)
            except OSError as exc:
                self._reset()
                raise Unavailable(f"lost the connection to {self.endpoint} waiting for the "
                                  f"reply to '{op}' ({exc}); it may or may not have been "
                                  "done: check before repeating it") from None
            if not answered:
                self._reset()
                raise Unavailable(f"no reply from {self.endpoint} within {limit:g}s to '{op}'")
            frames = sock.recv_multipart()
            if len(frames) != 1:
                raise JobsupError(f"the daemon at {self.endpoint} replied to '{op}' with "
                                  f"{len(frames)} frames, not one; is it a jobsup daemon "
                                  "of this version?")
            reply = msgpack.unpackb(frames[0], raw=False)
            if reply.get("rid") != rid:
                continue  # the late reply to an earlier request that timed out
            if reply.get("ok"):
                return reply.get("result")
            raise from_wire(reply.get("error") or {})

    def _check_size(self, op: str, size: int) -> None:
        """Refuse a request over the daemon's message limit before sending it.

        The daemon's socket drops a connection that sends more than
        ``api.max_message`` bytes without a reply, which a client would only see
        as a reset connection; said here, the error names the limit.
        """
        if self.max_message is None:
            reply = self.call("ping")
            self.max_message = int(reply.get("max_message") or DEFAULT_MAX_MESSAGE)
        if size > self.max_message:
            raise PayloadTooLarge(
                f"the {op} request is {size:,} bytes, over the daemon's message limit of "
                f"{self.max_message:,} bytes (api.max_message); nothing was sent. Store "
                "large data elsewhere and pass a reference (a path or URL) in the payload",
                size=size, limit=self.max_message)

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def close(self) -> None:
        self._reset()
        self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs ---------------------------------------------------------------------
    @staticmethod
    def _options(priority: int | None, timeout: float | None, max_attempts: int | None,
                 delay: float | None, run_at: float | None,
                 tags: dict[str, str] | None) -> dict[str, Any]:
        opts: dict[str, Any] = {"priority": priority, "timeout": timeout,
                                "max_attempts": max_attempts, "delay": delay,
                                "run_at": run_at, "tags": tags or {}}
        for name in ("timeout", "delay", "run_at"):
            if isinstance(opts[name], int):
                opts[name] = float(opts[name])
        return {k: v for k, v in opts.items() if v is not None}

    def submit(self, type: str, payload: Any = None, *, priority: int | None = None,
               timeout: float | None = None, max_attempts: int | None = None,
               delay: float | None = None, run_at: float | None = None,
               tags: dict[str, str] | None = None, key: str | None = None) -> str:
        """Queue one job; returns its id once it is stored in Redis."""
        opts = self._options(priority, timeout, max_attempts, delay, run_at, tags)
        if key is not None:
            opts["key"] = key
        return self.call("submit", type=type, payload=payload, **opts)["id"]

    def run(self, type: str, payload: Any = None, *, timeout: float | None = None,
            wait_timeout: float | None = None, priority: int | None = None,
            max_attempts: int | None = None, delay: float | None = None,
            tags: dict[str, str] | None = None, key: str | None = None) -> Job:
        """Submit and wait in one round trip: returns the final record.

        ``timeout`` is the job's hard timeout; ``wait_timeout`` how long to wait for it
        (``Timeout`` is raised, and the job carries on).
        """
        opts = self._options(priority, timeout, max_attempts, delay, None, tags)
        if key is not None:
            opts["key"] = key
        call_timeout = None
        if wait_timeout is not None:
            opts["wait_timeout"] = float(wait_timeout)
            call_timeout = wait_timeout + self.timeout
        records = self.call("submit", reply_timeout=call_timeout, type=type, payload=payload,
                            wait=True, **opts)
        return Job.model_validate(records[0])

    def submit_many(self, type: str, payloads: list[Any], *, priority: int | None = None,
                    timeout: float | None = None, max_attempts: int | None = None,
                    delay: float | None = None, run_at: float | None = None,
                    tags: dict[str, str] | None = None,
                    keys: list[str | None] | None = None) -> list[str]:
        """Queue many jobs of one type in one round trip and one atomic write."""
        opts = self._options(priority, timeout, max_attempts, delay, run_at, tags)
        if keys is not None:
            opts["keys"] = keys
        return self.call("submit_many", type=type, payloads=list(payloads), **opts)

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self.call("get", id=job_id))

    def wait(self, job_id: str, timeout: float | None = None,
             raise_on_failure: bool = False) -> Job:
        """Block until the job is final; raises ``Timeout`` if ``timeout`` passes first."""
        job = self.wait_many([job_id], timeout)[0]
        if raise_on_failure and job.status != "succeeded":
            raise JobFailed(f"job {job_id} {job.status}: {(job.error or {}).get('message')}",
                            id=job_id, error=job.error)
        return job

    def wait_many(self, job_ids: list[str], timeout: float | None = None) -> list[Job]:
        """Block until every job is final; one request however many jobs."""
        return _JOBS.validate_python(self._wait(job_ids, timeout, "records"))

    def outcomes(self, job_ids: list[str], timeout: float | None = None) -> list[Outcome]:
        """Block until every job is final; return each one's status, result and error.

        The bulk way to collect results: it skips the history, payload and timestamps
        that ``wait_many`` returns, which for thousands of jobs is most of the cost.
        """
        return _OUTCOMES.validate_python(self._wait(job_ids, timeout, "outcomes"))

    def _wait(self, job_ids: list[str], timeout: float | None, view: str) -> Any:
        fields: dict[str, Any] = {"ids": list(job_ids), "view": view}
        if timeout is not None:
            fields["timeout"] = float(timeout)
        call_timeout = None if timeout is None else timeout + self.timeout
        return self.call("wait", reply_timeout=call_timeout, **fields)

    def logs(self, job_id: str) -> str:
        """What the job's handler printed to stdout/stderr and logged: the last
        ``max_output`` bytes of the type, kept with the job as long as its record."""
        return self.call("logs", id=job_id)["text"]

    def follow_logs(self, job_id: str, timeout: float | None = None) -> Iterator[str]:
        """The job's output so far, then each new chunk as the handler writes it; ends
        when the job is final.  Each byte comes once: the stored text says how far the
        attempt that wrote it had got, and the live ``output`` events say where each
        chunk starts, so what both hold is shown once."""
        events = self.events(job_id, timeout=timeout)
        first = next(events)  # subscribed: what comes from now on is not missed
        stored = self.call("logs", id=job_id)
        if stored["text"]:
            yield stored["text"]
        if first.get("status") in _TERMINAL or stored["status"] in _TERMINAL:
            events.close()
            return
        seen = {stored["run"]: stored["at"]} if stored["run"] else {}
        for event in events:
            if event.get("event") != "output" or not event.get("captured"):
                continue
            run, start, end = event.get("run", ""), event.get("start", 0), event.get("at", 0)
            have = seen.get(run, 0)
            if end <= have:
                continue
            data = event.get("data", "")
            if start < have:  # partly in the stored text already
                data = data.encode()[have - start:].decode("utf-8", "replace")
            seen[run] = end
            yield data

    def cancel(self, job_id: str) -> dict:
        return self.call("cancel", id=job_id)

    def jobs(self, status: str | None = None, type: str | None = None,
             tag: tuple[str, str] | None = None, limit: int = 50,
             cursor: str | None = None) -> list[Job]:
        """Newest first.  For the next page, see ``jobs_page``."""
        return self.jobs_page(status, type, tag, limit, cursor).jobs

    def jobs_page(self, status: str | None = None, type: str | None = None,
                  tag: tuple[str, str] | None = None, limit: int = 50,
                  cursor: str | None = None) -> JobsPage:
        """One page newest first, with how many jobs match the filters in all."""
        fields: dict[str, Any] = {"limit": limit}
        for name, value in (("status", status), ("type", type), ("cursor", cursor)):
            if value is not None:
                fields[name] = value
        if tag is not None:
            fields["tag"] = list(tag)
        page = self.call("jobs", **fields)
        return JobsPage([Job.model_validate(r) for r in page["jobs"]], page["cursor"],
                        page.get("total"), page.get("total_at_most"))

    def dead_letters(self, limit: int = 100) -> list[Job]:
        """Failed jobs, most recent failure first."""
        return [Job.model_validate(r) for r in self.call("dlq", action="list",
                                                          limit=limit)["jobs"]]

    def retry_dead_letters(self, ids: list[str] | None = None) -> list[str]:
        """Run failed jobs again with fresh attempts (all of them if ``ids`` is None)."""
        fields: dict[str, Any] = {"action": "retry"}
        if ids is not None:
            fields["ids"] = list(ids)
        return self.call("dlq", **fields)["ids"]

    def purge_dead_letters(self) -> list[str]:
        """Delete every job in the dead-letter set."""
        return self.call("dlq", action="purge")["ids"]

    def status(self) -> dict:
        return self.call("status")

    def ping(self) -> dict:
        return self.call("ping")

    def shutdown(self, fast: bool = False) -> dict:
        return self.call("shutdown", fast=fast)

    def reload(self) -> dict:
        return self.call("reload")

    # -- events -------------------------------------------------------------------
    def events(self, job_id: str | None = None, timeout: float | None = None
               ) -> Iterator[dict]:
        """Live events; for one job, starting with its current state and ending at a final one."""
        endpoint = self.events_endpoint or self.ping()["events"]
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        self._secure(sub)
        sub.setsockopt(zmq.SUBSCRIBE, job_id.encode() if job_id else b"")
        sub.connect(endpoint)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = _Seen()
        try:
            time.sleep(0.05)  # let the subscription reach the publisher before we look
            if job_id:
                job = self.get(job_id)
                seen.snapshot(job)
                yield {"event": "state", "job": job_id, "status": job.status,
                       "attempt": job.attempt, "progress": job.progress,
                       "message": job.progress_message, "t": time.time(), "current": True}
                if job.terminal:
                    return
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Timeout(f"no final state within {timeout:g}s")
                if not sub.poll(None if left is None else max(1, int(left * 1000))):
                    continue
                _, body = sub.recv_multipart()
                event = msgpack.unpackb(body, raw=False)
                if not seen.new(event):
                    continue
                yield event
                if job_id and event.get("event") == "state" and event.get("status") in _TERMINAL:
                    return
        finally:
            sub.close(linger=0)


class _Seen:
    """What a watcher of one job has been shown, so that it is never shown again.

    The subscription starts before the current record is read, and the daemon
    publishes a transition's event only after Redis has it: so an event can
    arrive after a snapshot that already holds its transition.  A state event
    names its transition's history time (``at``); one no newer than the
    snapshot's last history entry is old news.  An event without it is
    dropped when it only repeats the state last shown.
    """

    def __init__(self) -> None:
        self.known_until = 0.0
        self.last: dict[str, tuple[Any, Any]] = {}

    def snapshot(self, job: Job) -> None:
        self.known_until = max((h.get("t") or 0.0 for h in job.history), default=0.0)
        self.last[job.id] = (job.status, job.attempt)

    def new(self, event: dict) -> bool:
        if event.get("event") == "progress":
            return (event.get("t") or 0.0) >= self.known_until
        if event.get("event") != "state":
            return True
        at = event.get("at")
        if at is not None and at <= self.known_until:
            return False
        state = (event.get("status"), event.get("attempt"))
        job = event.get("job", "")
        if at is None and self.last.get(job) == state:
            return False
        self.last[job] = state
        return True
