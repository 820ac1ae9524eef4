"""Signal handlers only record; the main loop acts.

Handlers append the signal number to a list and Python's wake-up fd makes
the master's poll return, so the loop handles signals at a known point, by the
same code paths as the API's ``shutdown`` and ``reload`` operations.
"""

from __future__ import annotations

import os
import signal

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
           signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)


class SignalReceiver:
    def __init__(self) -> None:
        self.pending: list[int] = []
        self.child_exited = False
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)

    def install(self) -> None:
        signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, self._record)

    def _record(self, signum: int, frame: object) -> None:
        if signum == signal.SIGCHLD:
            self.child_exited = True
        else:
            self.pending.append(signum)

    def drain(self) -> list[int]:
        try:
            while os.read(self.rfd, 512):
                pass
        except BlockingIOError:
            pass
        taken, self.pending = self.pending, []
        return taken

    def restore(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        for fd in (self.rfd, self.wfd):
            os.close(fd)
