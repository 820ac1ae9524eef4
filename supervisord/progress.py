"""Progress of the CLI's long commands: a bar on a terminal, one summary line at the end.

The bar goes to stderr and only when stderr is a terminal (and the command was
not asked for ``--json``), so what a script reads from stdout never changes.
A wait on many jobs is asked for in slices in submission order, so the bar
counts jobs known to be final and never runs ahead of the truth; the daemon
answers a slice whose jobs are already final at once.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from supervisord.errors import Timeout

SLICES = 100  # a wait on many jobs is asked for in about this many requests
MAX_SLICE = 1_000  # jobs in one of them, at most
FINAL = ("succeeded", "failed", "cancelled")


class Finished(Protocol):
    id: str
    status: str


F = TypeVar("F", bound=Finished)


def summary(n: int, tally: Counter[str], seconds: float) -> str:
    """'10,000 jobs: 9,990 succeeded, 8 failed, 2 cancelled in 12.4 s'."""
    parts = ", ".join(f"{tally[s]:,} {s}" for s in FINAL)
    return f"{n:,} job{'' if n == 1 else 's'}: {parts} in {seconds:.1f} s"


class Bar:
    """A bar on stderr when it is a terminal, else nothing; counts what it is told."""

    def __init__(self, what: str, total: int | None, shown: bool) -> None:
        self.what = what
        self.tally: Counter[str] = Counter()
        self.started = time.monotonic()
        self._progress: Any = None  # rich.progress.Progress, imported only to draw one
        self._task: Any = None
        if shown:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                MofNCompleteColumn(), TextColumn("{task.fields[tally]}"),
                TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(file=sys.stderr), transient=False)
            self._task = self._progress.add_task(what, total=total, tally="")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __enter__(self) -> Bar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def total(self, n: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=n)

    def advance(self, n: int, statuses: Sequence[str] = ()) -> None:
        """``n`` more done; ``statuses`` the final states of those that are jobs."""
        self.tally.update(statuses)
        if self._progress is not None:
            shown = " ".join(f"{self.tally[s]:,} {s}" for s in FINAL if self.tally[s])
            self._progress.update(self._task, advance=n, tally=shown)


def shown(as_json: bool = False) -> bool:
    """Whether a bar is drawn: on a terminal (stderr), and not for ``--json``."""
    return not as_json and sys.stderr.isatty()


def slices(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    size = max(1, min(MAX_SLICE, math.ceil(len(ids) / SLICES)))
    for at in range(0, len(ids), size):
        yield ids[at:at + size]


def wait_all(fetch: Callable[[list[str], float | None], list[F]], ids: Sequence[str],
             bar: Bar, timeout: float | None = None) -> list[F]:
    """Wait until every job is final, slice by slice, counting each on ``bar``.

    ``fetch(ids, timeout)`` is ``Client.wait_many`` or ``Client.outcomes``; ``timeout``
    bounds the whole wait, not each slice.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    done: list[F] = []
    for part in slices(ids):
        left = None if deadline is None else max(0.001, deadline - time.monotonic())
        try:
            found = fetch(list(part), left)
        except Timeout:
            raise Timeout(f"{len(ids) - len(done):,} of {len(ids):,} job(s) not known to be "
                          f"finished within {timeout:g}s (the first: {part[0]}); they carry "
                          "on, wait again to see them end", ids=list(part[:100])) from None
        done.extend(found)
        bar.advance(len(found), [j.status for j in found])
    return done


def all_succeeded(found: Sequence[Any]) -> bool:
    return all(j.status == "succeeded" for j in found)
