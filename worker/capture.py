"""Captured output: fds 1 and 2 of the worker go to one pipe, read back per job.

At the file-descriptor level, not by swapping ``sys.stdout``: what C
extensions write to fd 1/2, and what child processes of a handler print
(they inherit the fds), is captured too.  stdout and stderr share one pipe so
that their order is kept; they are not told apart.  A reader thread sends
what it reads to the master as ``Output`` messages tagged with the job that
runs now; at the end of a job the main thread flushes Python's streams and
drains the pipe under the same lock, before the job's result is sent, so no
line of a job is sent after its result or counted to the next job.

``logging`` records reach the master as ``Log`` messages (level and logger
kept), through a handler that first drains the pipe, so they stay in order
with prints; the worker runtime's own records go the same way, with no job,
so that the master writes every line of the daemon's log in its format.
Output written between jobs (a grandchild that outlived its job, say) is sent
with no job.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
from collections.abc import Callable

from supervisord.wire import worker as msgs

_CHUNK = 1 << 16


class Capture:
    def __init__(self, send: Callable[[bytes], None]) -> None:
        self.send = send
        self.lock = threading.Lock()
        self.token = ""
        sys.stdout.flush()
        sys.stderr.flush()
        read, write = os.pipe()
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        os.set_blocking(read, False)
        self.read_fd = read
        # Lines as they come, not when a buffer fills: in order with the other stream.
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)

    def start(self) -> None:
        threading.Thread(target=self._pump, name="output", daemon=True).start()

    def _pump(self) -> None:
        while True:
            select.select([self.read_fd], [], [])
            with self.lock:
                self._read_all()

    def _read_all(self) -> None:
        """Send what the pipe holds now (the caller holds ``lock``)."""
        while True:
            try:
                data = os.read(self.read_fd, _CHUNK)
            except BlockingIOError:
                return
            if not data:
                return
            self.send(msgs.encode(msgs.Output(self.token, data)))

    def drain(self) -> None:
        """Send everything written so far, tagged with the current job."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a handler closed or replaced it
                pass
        with self.lock:
            self._read_all()

    def begin(self, token: str) -> None:
        self.drain()  # what came between jobs is no job's
        with self.lock:
            self.token = token

    def end(self) -> None:
        self.drain()
        with self.lock:
            self.token = ""

    def record(self, level: int, logger: str, message: str) -> None:
        """Send one logging record, after the output written before it."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        with self.lock:
            self._read_all()
            self.send(msgs.encode(msgs.Log(self.token, level, logger, message)))


class CaptureHandler(logging.Handler):
    """The root handler in a worker: each record goes to the master, with the job."""

    def __init__(self, capture: Capture) -> None:
        super().__init__()
        self.capture = capture
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.capture.record(record.levelno, record.name, self.format(record))
        except Exception:
            self.handleError(record)
