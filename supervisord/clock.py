"""Time behind a small interface, so that state logic is unit-tested with a fake clock.

Parts that keep deadlines (pools' restart backoff, the watchdog, shutdown)
take a ``Clock``; the daemon passes ``SYSTEM``, tests pass a ``FakeClock``
they move by hand.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class _System:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


SYSTEM: Clock = _System()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0, wall: float = 1.7e9) -> None:
        self.now = start
        self.wall_offset = wall - start

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds
