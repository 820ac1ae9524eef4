"""What handlers print and log, on the master's side (the worker's side is ``worker.capture``).

Each chunk a worker sends is (a) logged line by line to the daemon's log,
tagged with the job's id, type, attempt and the worker's pid, (b) published as
an ``output`` event for ``jobsup logs --follow`` and watchers, and (c) kept for
Redis: the last ``max_output`` bytes of the job type, written with the pass's
other transitions at most every ``FLUSH_EVERY`` seconds per job, and always
before the attempt's outcome.  What the master holds per job is bounded by
``max_output`` (older bytes are dropped first: only the last ones are kept in
Redis anyway) plus one partial line of at most ``MAX_LINE`` bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from supervisord.clock import SYSTEM, Clock
from supervisord.events import Publisher
from supervisord.pool.workers import Running
from supervisord.redis import scripts
from supervisord.redis.store import Op
from supervisord.settings import Settings
from supervisord.writer import Batch

log = logging.getLogger("jobsup.output")

FLUSH_EVERY = 0.2  # seconds between output writes to Redis for one job
MAX_LINE = 16 * 1024  # a longer line is logged in pieces


@dataclass(eq=False)
class _Buffer:
    pending: bytearray = field(default_factory=bytearray)  # not yet written to Redis
    total: int = 0  # bytes this attempt wrote in all
    line: bytearray = field(default_factory=bytearray)  # an unfinished line, for the log
    written: float = 0.0  # monotonic time of the last write
    header: bytes = b""  # what starts the attempt's output after an earlier attempt's


def job_fields(run: Running | None, pid: int) -> dict:
    """The fields a captured line carries in the daemon's log (``logs.JsonFormatter``)."""
    if run is None:
        return {"worker_pid": pid}
    job = run.job
    return {"job_id": job.id, "job_type": job.type, "attempt": job.attempt, "worker_pid": pid}


class Output:
    def __init__(self, settings: Settings, batch: Batch, events: Publisher,
                 up: Callable[[], bool], clock: Clock = SYSTEM) -> None:
        self.settings = settings
        self.batch = batch
        self.events = events
        self.up = up  # Redis takes writes now: while it does not, pending stays bounded here
        self.clock = clock
        self.buffers: dict[str, _Buffer] = {}  # by lease token

    def configure(self, settings: Settings) -> None:
        self.settings = settings

    def _limit(self, run: Running) -> int:
        return self.settings.policy(run.job.type).max_output

    # -- from workers -------------------------------------------------------------
    def data(self, run: Running | None, pid: int, data: bytes) -> None:
        """Bytes from a worker's fds 1/2; ``run`` None when no job of it was running."""
        if run is None:
            for line in _lines(bytearray(data), final=True):
                log.info("%s", line, extra=job_fields(None, pid))
            return
        buf = self._buffer(run, pid)
        self._keep(run, buf, data)
        buf.line += data
        extra = job_fields(run, pid)
        for line in _lines(buf.line, final=False):
            log.info("%s", line, extra=extra)

    def record(self, run: Running | None, pid: int, level: int, logger: str,
               message: str) -> None:
        """A handler's ``logging`` record: logged at its level under its logger's name."""
        target = logging.getLogger("jobsup.output")
        if target.isEnabledFor(level):
            rec = logging.LogRecord(logger, level, "(worker)", 0, "%s", (message,), None)
            for key, value in job_fields(run, pid).items():
                setattr(rec, key, value)
            target.handle(rec)
        if run is not None:
            buf = self._buffer(run, pid)
            text = f"{logging.getLevelName(level)} {logger}: {message}\n"
            self._keep(run, buf, text.encode("utf-8", "replace"))

    def _buffer(self, run: Running, pid: int) -> _Buffer:
        buf = self.buffers.get(run.job.token)
        if buf is None:
            header = f"--- attempt {run.job.attempt}, node {self.settings.node}, pid {pid} ---\n"
            buf = self.buffers[run.job.token] = _Buffer(written=self.clock.monotonic(),
                                                        header=header.encode())
        return buf

    def _keep(self, run: Running, buf: _Buffer, data: bytes) -> None:
        limit = self._limit(run)
        start = buf.total
        buf.total += len(data)
        if self.events.wanted(run.job.id):
            self.events.publish(run.job.id, "output", data=data.decode("utf-8", "replace"),
                                captured=True, run=run.job.token, at=buf.total,
                                size=len(data), start=start)
        if limit <= 0:
            return
        buf.pending += data
        if len(buf.pending) > limit:
            del buf.pending[:len(buf.pending) - limit]

    # -- to Redis -----------------------------------------------------------------
    def _write(self, run: Running, buf: _Buffer) -> None:
        if buf.pending:
            data, buf.pending = bytes(buf.pending), bytearray()
            self.batch.add(Op("output", run.job.id, run.job.token,
                              scripts.Output(data, self._limit(run), buf.total, buf.header)))
            buf.header = b""
        buf.written = self.clock.monotonic()

    def finish(self, run: Running, pid: int) -> None:
        """The attempt is over: its last line to the log, the rest to Redis, before the
        outcome that the caller adds next."""
        buf = self.buffers.pop(run.job.token, None)
        if buf is None:
            return
        if buf.line:
            extra = job_fields(run, pid)
            for line in _lines(buf.line, final=True):
                log.info("%s", line, extra=extra)
        self._write(run, buf)

    def flush_due(self, running: dict[str, Running]) -> None:
        """Write what running jobs printed since their last write, every FLUSH_EVERY."""
        if not self.buffers or not self.up():
            return
        if len(self.buffers) > len(running):  # attempts that ended without a word (a reload)
            live = {run.job.token for run in running.values()}
            for token in [t for t in self.buffers if t not in live]:
                del self.buffers[token]
        now = self.clock.monotonic()
        for run in running.values():
            buf = self.buffers.get(run.job.token)
            if buf is not None and buf.pending and now - buf.written >= FLUSH_EVERY:
                self._write(run, buf)


def _lines(buf: bytearray, final: bool) -> list[str]:
    """Whole lines taken from the front of ``buf`` (all of it when ``final``), as text."""
    out = []
    while True:
        end = buf.find(b"\n")
        if end < 0:
            if (final and buf) or len(buf) >= MAX_LINE:
                out.append(buf.decode("utf-8", "replace"))
                buf.clear()
            return out
        out.append(buf[:end].decode("utf-8", "replace"))
        del buf[:end + 1]
