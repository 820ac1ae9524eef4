"""One loop pass of pending Redis writes and what to do once they commit.

Every transition is an ``Op`` for the ``apply`` script plus an after-commit
effect (publish an event, wake waiters, count a metric).  Effects run only
when Redis applied the op; a stale attempt's op is discarded there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from supervisord.api import PendingSubmit
from supervisord.store import Op

Effect = Callable[[bool], None]


@dataclass
class Batch:
    submits: list[PendingSubmit] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    effects: list[Effect | None] = field(default_factory=list)

    def add(self, op: Op, effect: Effect | None = None) -> None:
        self.ops.append(op)
        self.effects.append(effect)

    def __bool__(self) -> bool:
        return bool(self.submits or self.ops)

    def take(self) -> Batch:
        taken = Batch(self.submits, self.ops, self.effects)
        self.submits, self.ops, self.effects = [], [], []
        return taken

    def put_back(self, taken: Batch, submits: bool = False) -> None:
        """Keep a pass's transitions after Redis failed, ahead of newer ones."""
        self.ops[:0] = taken.ops
        self.effects[:0] = taken.effects
        if submits:
            self.submits[:0] = taken.submits
