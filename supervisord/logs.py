"""Daemon logging: stderr (journald) by default, or a file reopened on SIGUSR1.

With a log file, fds 1 and 2 are pointed at it too, so that what a worker
writes outside the capture of job output (its runtime's own lines, a crash's
last words) lands in the same place; workers started after a reopen use the
new file, running ones keep the old one until they are recycled.

Two formats (``daemon.log_format``): ``text`` for people, and ``json``, one
object a line for log shippers, with ``time``, ``level``, ``logger``,
``message``, ``node`` and, on lines about a job (its captured output among
them), ``job_id``, ``job_type``, ``attempt`` and ``worker_pid``.  The JSON is
built with the standard library: the fields are fixed and few, and a
formatter of twenty lines is less to keep than a dependency.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a record may carry about a job, in the order the text format shows it.
JOB_FIELDS = ("job_id", "job_type", "attempt", "worker_pid")


class TextFormatter(logging.Formatter):
    """The classic line, with ``[job ID type attempt N pid P]`` before a job's lines."""

    def __init__(self) -> None:
        super().__init__(_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        job_id = getattr(record, "job_id", None)
        pid = getattr(record, "worker_pid", None)
        if job_id is None and pid is None:
            return line
        head, sep, message = line.partition(": ")
        if job_id is None:
            return f"{head}{sep}[worker pid {pid}] {message}"
        tag = (f"[job {job_id} {getattr(record, 'job_type', '?')} attempt "
               f"{getattr(record, 'attempt', '?')} pid {pid}]")
        return f"{head}{sep}{tag} {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line; a traceback goes in ``exc_info`` as text."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "node": self.node,
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(kind: str, node: str) -> logging.Formatter:
    return JsonFormatter(node) if kind == "json" else TextFormatter()


class Logs:
    def __init__(self, path: str | None, level: str, kind: str = "text",
                 node: str = "") -> None:
        self.path = path
        self.level = getattr(logging, level.upper())
        self.kind = kind
        self.node = node
        self.handler: logging.Handler | None = None

    def setup(self) -> None:
        root = logging.getLogger()
        root.setLevel(self.level)
        if self.handler is not None:
            root.removeHandler(self.handler)
            self.handler.close()
        if self.path:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(formatter(self.kind, self.node))
        root.addHandler(self.handler)

    def reopen(self) -> None:
        if self.path:
            self.setup()
            logging.getLogger("jobsup").info("log file %s reopened", self.path)
