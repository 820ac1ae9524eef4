"""Daemon logging: stderr (journald) by default, or a file reopened on SIGUSR1.

With a log file, fds 1 and 2 are pointed at it too, so that workers, which
inherit them, log to the same place; workers started after a reopen use the
new file, running ones keep the old one until they are recycled.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Logs:
    def __init__(self, path: str | None, level: str) -> None:
        self.path = path
        self.level = getattr(logging, level.upper())
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
        self.handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(self.handler)

    def reopen(self) -> None:
        if self.path:
            self.setup()
            logging.getLogger("jobsup").info("log file %s reopened", self.path)
