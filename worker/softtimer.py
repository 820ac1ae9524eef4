"""The soft timeout: ``worker.SoftTimeout`` raised in the handler's thread.

The worker arms its own timer (``ITIMER_REAL``, so ``SIGALRM``) from the
``soft_timeout`` that came with the job, instead of waiting for a message from
the master: the master's loop may be busy, and a timer in the worker needs no
round trip.  Python runs signal handlers in the main thread, which is where
handlers run, between bytecodes: a handler blocked in one long C call (a
native library that does not return to the interpreter) sees SoftTimeout only
when that call returns; the hard ``timeout`` of the master's watchdog covers
that case.  Handlers must not use ``signal.alarm``/``SIGALRM`` themselves.
"""

from __future__ import annotations

import signal
from types import FrameType

from worker.errors import SoftTimeout


class SoftTimer:
    """One timer per worker, armed for the length of one handler call."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.armed = False
        # Set while the main thread writes a frame to the master: raising then would
        # leave half a frame on the channel, so the timeout waits a moment.
        self.sending = False
        signal.signal(signal.SIGALRM, self._fire)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        if not self.armed:  # the handler returned just as the timer went off
            return
        if self.sending:
            signal.setitimer(signal.ITIMER_REAL, 0.005)
            return
        self.armed = False
        raise SoftTimeout(f"soft_timeout of {self.seconds:g}s reached")

    def arm(self, seconds: float | None) -> None:
        if not seconds or seconds <= 0:
            return
        self.seconds = float(seconds)
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def disarm(self) -> None:
        if self.armed or self.seconds:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.seconds = 0.0
