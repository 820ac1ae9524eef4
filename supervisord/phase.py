"""The daemon's phase, as a guarded state machine: running → draining → stopping → done.

Only ``Phase.to`` moves it: a move the table does not allow is a bug and
raises; every move is logged.  ``done`` may be reached from anywhere (the loop
gives up after repeated internal errors).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from supervisord.errors import InvalidTransition
from supervisord.states import Phase

log = logging.getLogger("jobsup.master")

_MOVES = {
    Phase.RUNNING: frozenset({Phase.DRAINING, Phase.DONE}),
    Phase.DRAINING: frozenset({Phase.STOPPING, Phase.DONE}),
    Phase.STOPPING: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}


class PhaseMachine:
    def __init__(self, on_change: Callable[[Phase, Phase, str], None] | None = None) -> None:
        self.now = Phase.RUNNING
        self.running = True  # taking submits and dispatching (read several times a pass)
        self.done = False
        self.on_change = on_change  # (old, new, why): the loop publishes it as an event

    def to(self, new: Phase, why: str) -> None:
        if new not in _MOVES[self.now]:
            raise InvalidTransition(f"daemon phase {self.now} -> {new} ({why})")
        log.info("phase %s -> %s (%s)", self.now, new, why)
        old, self.now = self.now, new
        self.running, self.done = new is Phase.RUNNING, new is Phase.DONE
        if self.on_change is not None:
            self.on_change(old, new, why)
