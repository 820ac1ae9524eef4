"""The web process: ``python -m supervisord.web.server FD`` (the master starts it).

It serves the HTTP contract of README "HTTP endpoints" with aiohttp on the
listening socket FD that the master bound, reading its settings as JSON from
stdin.  It is a client of the master's API and events socket like any
other: it never touches Redis or the master's memory, so a slow or hostile
HTTP client costs this process, not the master's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import mimetypes
import re
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from supervisord.client import Job
from supervisord.errors import (
    ActionsDisabled,
    BadRequest,
    BadToken,
    JobsupError,
    NotFound,
    TooManyStreams,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from supervisord.states import JobStatus
from supervisord.web.backend import Backend
from supervisord.web.stream import Hub, to_json

log = logging.getLogger("jobsup.web")

STATIC = Path(__file__).resolve().parent / "static"
_JOB_ID = re.compile(r"^[0-9a-z]{1,64}$")
_MAX_LIMIT = 1000
_STREAM_BUFFER = 64 * 1024  # bytes, in the process and in the kernel, per event stream
_STATUSES = tuple(s.value for s in JobStatus)
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
          ".json": "application/json", ".map": "application/json"}
_NO_PAGE = """<!doctype html><meta charset="utf-8"><title>jobsup</title>
<h1>jobsup</h1><p>The status page is not installed in this copy of jobsup
(supervisord/web/static/index.html is missing). The JSON endpoints work:
<a href="/api/status">/api/status</a>, <a href="/api/jobs">/api/jobs</a>,
<a href="/metrics">/metrics</a>.</p>
"""
_ENDPOINTS = ("GET /, /healthz, /readyz, /metrics, /api/info, /api/status, /api/jobs, "
              "/api/jobs/ID, /api/jobs/ID/logs, /api/dlq, /api/events; POST "
              "/api/jobs/ID/cancel, /api/dlq/retry, /api/dlq/purge")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=to_json(data), status=status,
                        content_type="application/json", charset="utf-8")


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return _json({"error": {"code": code, "message": message, **extra}}, status)


def _status_of(exc: JobsupError) -> tuple[int, str]:
    if isinstance(exc, NotFound):
        return 404, "unknown_job"
    if isinstance(exc, BadToken):
        return 401, exc.code
    if isinstance(exc, ActionsDisabled):
        return 403, exc.code
    if isinstance(exc, ValidationError | BadRequest):
        return 400, exc.code
    if isinstance(exc, Unavailable | Unauthorized):
        return 503, exc.code
    return 500, exc.code


@web.middleware
async def errors(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """Every error as the contract's JSON: what is wrong and what to do."""
    try:
        return await handler(request)
    except JobsupError as exc:
        status, code = _status_of(exc)
        return _error(status, code, exc.message)
    except web.HTTPNotFound:
        return _error(404, "not_found", f"no endpoint {request.method} {request.path[:200]}; "
                      f"this server answers {_ENDPOINTS}")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = _error(405, "method_not_allowed", f"{request.path[:200]} does not take "
                          f"{request.method}; it takes {allowed}")
        response.headers["Allow"] = allowed
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, "http", exc.reason)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("request %s %s failed", request.method, request.path[:200])
        return _error(500, "internal", "internal error in the web process (logged in "
                      "STATE_DIR/web/web.log); the daemon itself is unaffected")


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and each known: a typo is an error."""
    out: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed:
            raise BadRequest(f"unknown query parameter {key[:50]!r}; "
                             f"{request.path} takes: {', '.join(allowed) or 'none'}")
        if key in out:
            raise BadRequest(f"query parameter {key!r} given twice; give it once")
        out[key] = value
    return out


def _limit(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise BadRequest(f"limit must be a whole number from 1 to {_MAX_LIMIT}, not "
                         f"{value[:30]!r}") from None
    if not 1 <= limit <= _MAX_LIMIT:
        raise BadRequest(f"limit {limit} is out of range: ask for 1 to {_MAX_LIMIT} and "
                         "page on with the cursor")
    return limit


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["id"]
    if not _JOB_ID.match(job_id):
        raise NotFound(f"no job {job_id[:80]!r}: job ids are lowercase letters and digits")
    return job_id


def _record(raw: dict) -> dict:
    """A record as ``jobsup job ID --json`` prints it."""
    return Job.model_validate(raw).model_dump(mode="json")


class Server:
    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.web = settings["web"]
        self.backend = Backend(settings)
        self.hub = Hub(settings)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors], client_max_size=1024 * 1024)
        get, post = web.get, web.post
        app.add_routes([
            get("/", self.index), get("/static/{name:.*}", self.static),
            get("/healthz", self.healthz), get("/readyz", self.readyz),
            get("/metrics", self.metrics), get("/api/info", self.info),
            get("/api/status", self.status), get("/api/jobs", self.jobs),
            get("/api/jobs/{id}", self.job), get("/api/jobs/{id}/logs", self.logs),
            get("/api/dlq", self.dlq), get("/api/events", self.events),
            post("/api/jobs/{id}/cancel", self.cancel), post("/api/dlq/retry", self.retry),
            post("/api/dlq/purge", self.purge),
        ])
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self.hub.start(asyncio.get_running_loop())

    async def _stop(self, app: web.Application) -> None:
        await self.hub.close()
        self.backend.close()

    # -- the page -------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        page = STATIC / "index.html"
        if page.is_file():
            return web.FileResponse(page, headers={"Content-Type": "text/html; charset=utf-8",
                                                   "Cache-Control": "no-cache"})
        return web.Response(text=_NO_PAGE, content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        root = STATIC.resolve()
        try:
            path = (root / name).resolve()
        except (OSError, ValueError):
            path = root
        if root not in path.parents or not path.is_file():
            raise web.HTTPNotFound()
        kind = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] \
            or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith(("json", "xml")):
            kind += "; charset=utf-8"
        return web.FileResponse(path, headers={"Content-Type": kind,
                                               "Cache-Control": "no-cache",
                                               "X-Content-Type-Options": "nosniff"})

    # -- health ---------------------------------------------------------------------
    async def _ping(self) -> dict | str:
        """The master's ping reply, or why there is none."""
        try:
            return await self.backend.call("ping", timeout=1.0)
        except JobsupError as exc:
            return f"the master does not answer ({exc.message})"

    async def healthz(self, request: web.Request) -> web.Response:
        _query(request, ())
        pong = await self._ping()
        if isinstance(pong, str):
            return _json({"ok": False, "reason": pong}, 503)
        return _json({"ok": True, "node": pong["node"], "pid": pong["pid"]})

    async def readyz(self, request: web.Request) -> web.Response:
        _query(request, ())
        pong = await self._ping()
        if isinstance(pong, str):
            reason = pong
        elif not pong.get("redis_up", True):
            reason = ("Redis is unreachable from the daemon; submits are refused until it "
                      "answers again (jobsup status shows Redis health)")
        elif not pong.get("accepting", True):
            reason = "the daemon is draining (shutting down) and takes no new jobs"
        else:
            return _json({"ready": True})
        return _json({"ready": False, "reason": reason}, 503)

    async def metrics(self, request: web.Request) -> web.Response:
        _query(request, ())
        reply = await self.backend.call("metrics")
        return web.Response(body=reply["text"].encode(), headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    # -- reads ----------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        _query(request, ())
        s = self.settings
        return _json({"node": s["node"], "version": s["version"],
                      "actions": bool(self.web["actions"])})

    async def status(self, request: web.Request) -> web.Response:
        _query(request, ())
        return _json(await self.backend.call("status"))

    async def jobs(self, request: web.Request) -> web.Response:
        q = _query(request, ("status", "type", "tag", "limit", "cursor"))
        fields: dict[str, Any] = {"limit": _limit(q.get("limit"), 50)}
        if q.get("status"):
            if q["status"] not in _STATUSES:
                raise BadRequest(f"status {q['status'][:30]!r} is not a job status; use one "
                                 f"of {', '.join(_STATUSES)}")
            fields["status"] = q["status"]
        if q.get("type"):
            fields["type"] = q["type"]
        if q.get("tag"):
            key, eq, value = q["tag"].partition("=")
            if not eq or not key:
                raise BadRequest(f"tag must read KEY=VALUE, not {q['tag'][:60]!r}")
            fields["tag"] = [key, value]
        if q.get("cursor"):
            fields["cursor"] = q["cursor"]
        page = await self.backend.call("jobs", **fields)
        return _json({"jobs": [_record(r) for r in page["jobs"]], "cursor": page.get("cursor"),
                      "total": page.get("total")})

    async def job(self, request: web.Request) -> web.Response:
        _query(request, ())
        return _json(_record(await self.backend.call("get", id=_job_id(request))))

    async def logs(self, request: web.Request) -> web.Response:
        _query(request, ())
        found = await self.backend.call("logs", id=_job_id(request))
        return web.Response(text=found["text"], content_type="text/plain", charset="utf-8")

    async def dlq(self, request: web.Request) -> web.Response:
        q = _query(request, ("limit",))
        found = await self.backend.call("dlq", action="list", limit=_limit(q.get("limit"), 100))
        return _json({"jobs": [_record(r) for r in found["jobs"]], "total": found.get("total")})

    # -- the event stream -----------------------------------------------------------
    async def events(self, request: web.Request) -> web.StreamResponse:
        q = _query(request, ("job", "last_event_id"))
        job = q.get("job") or None
        if job is not None and not _JOB_ID.match(job):
            raise BadRequest(f"job {job[:80]!r} is not a job id (lowercase letters and digits)")
        last = request.headers.get("Last-Event-ID") or q.get("last_event_id") or None
        hub = self.hub
        if hub.full():
            raise TooManyStreams(f"{len(hub.watchers)} event streams are open, the most "
                                 "[web] max_streams allows; close one, retry later, or raise "
                                 "max_streams")
        watcher, first = await hub.join(job, last)
        transport = request.transport
        if transport is not None:
            # Small buffers between the queue and the client, so that one that does not
            # read fills its queue (and is dropped) soon, holding little kernel memory.
            transport.set_write_buffer_limits(high=_STREAM_BUFFER)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _STREAM_BUFFER)
            watcher.abort = transport.abort
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n: connected\n\n" + b"".join(first))
            while True:
                try:
                    msg = await asyncio.wait_for(watcher.queue.get(), hub.heartbeat)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if msg is None:
                    break
                burst = [msg]  # what else is queued goes in the same write
                while not watcher.queue.empty() and burst[-1] is not None:
                    burst.append(watcher.queue.get_nowait())
                if burst[-1] is None:
                    break
                await response.write(b"".join(burst))
        except (ConnectionError, RuntimeError):
            pass  # the client went away (or was dropped)
        finally:
            hub.leave(watcher)
        return response

    # -- actions --------------------------------------------------------------------
    def _authorize(self, request: web.Request) -> None:
        if not self.web["actions"]:
            raise ActionsDisabled("actions are off on this daemon: set [web] actions = true "
                                  "and a token to allow cancel, retry and purge over HTTP")
        given = request.headers.get("X-Jobsup-Token")
        if given is None:
            raise BadToken("this action needs the X-Jobsup-Token header with [web] token")
        if not hmac.compare_digest(given.encode(), str(self.web["token"]).encode()):
            raise BadToken("the X-Jobsup-Token header does not match [web] token")

    async def _body(self, request: web.Request) -> dict:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    async def cancel(self, request: web.Request) -> web.Response:
        self._authorize(request)
        _query(request, ())
        return _json(await self.backend.call("cancel", id=_job_id(request)))

    async def retry(self, request: web.Request) -> web.Response:
        self._authorize(request)
        _query(request, ())
        body = await self._body(request)
        ids, every = body.get("ids"), body.get("all")
        if set(body) - {"ids", "all"} or (ids is None) == (every is not True):
            raise BadRequest('send {"ids": [ID, ...]} or {"all": true}')
        fields: dict[str, Any] = {"action": "retry"}
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) and _JOB_ID.match(i)
                                                    for i in ids):
                raise BadRequest("ids must be a list of job ids")
            fields["ids"] = ids
        found = await self.backend.call("dlq", **fields)
        return _json({"retried": found["ids"]})

    async def purge(self, request: web.Request) -> web.Response:
        self._authorize(request)
        _query(request, ())
        found = await self.backend.call("dlq", action="purge")
        return _json({"purged": found["ids"]})


def main() -> None:
    """Entry point: the master passes the listening socket's fd and writes the settings
    (endpoints, Curve files, ``[web]``) to stdin, then closes it."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s jobsup-web %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings = json.loads(sys.stdin.read())
    sock = socket.socket(fileno=int(sys.argv[1]))
    server = Server(settings)
    log.info("serving on %s (master pid %s)", sock.getsockname(), settings["master"])
    web.run_app(server.app(), sock=sock, shutdown_timeout=1.0, print=None, access_log=None,
                handle_signals=True)


if __name__ == "__main__":
    main()
