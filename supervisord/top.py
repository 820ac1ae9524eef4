"""``jobsup top``: a live full-screen view of one daemon, in the manner of circus-top.

Each frame is one ``status`` request: pools with their queue depths, workers,
job types with their rates, circuits and Redis health.  Rates come from the
daemon's counts since it started (``status["counts"]`` and ``["types"]``) read
frame after frame: the change over the last ``RATE_WINDOW`` seconds, or, from a
single reading (``--once``), the average since the master started.

Drawn with rich on the terminal's alternate screen; keys are read with stdin in
cbreak mode, and the terminal is put back however the view ends (``q``, Ctrl-C,
an error).  A daemon that does not answer is said so on the screen and asked
again each frame.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from supervisord import units
from supervisord.client import Client
from supervisord.errors import JobsupError

REFRESH = 1.0  # seconds between frames
RATE_WINDOW = 10.0  # seconds the rates are taken over
PLAIN_WIDTH = 160  # columns of a frame printed off a terminal (unless COLUMNS says)
EXIT_OK, EXIT_UNREACHABLE = 0, 3
_RATED = ("submitted", "started", "succeeded", "failed", "retried")


class Rates:
    """Per-second rates from successive readings of the daemon's counts."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.readings: deque[tuple[float, dict]] = deque()

    def add(self, now: float, st: dict) -> None:
        if st.get("pid") != (self.readings[-1][1].get("pid") if self.readings else None):
            self.readings.clear()  # another master (restarted): its counts start again
        self.readings.append((now, st))
        while len(self.readings) > 2 and now - self.readings[1][0] >= self.window:
            self.readings.popleft()

    @property
    def span(self) -> float | None:
        """Seconds the rates are over; None while they are averages since start."""
        if len(self.readings) < 2:
            return None
        return self.readings[-1][0] - self.readings[0][0]

    def _pair(self) -> tuple[dict, dict, float]:
        (t0, old), (t1, new) = self.readings[0], self.readings[-1]
        if len(self.readings) < 2:
            return {}, new, max(new.get("uptime") or 0.0, 1e-9)
        return old, new, max(t1 - t0, 1e-9)

    def counts(self, type_: str | None = None) -> dict[str, float]:
        """Per-second rate of each count, in all or for one job type."""
        old, new, dt = self._pair()

        def pick(st: dict) -> dict:
            return (st.get("types") or {}).get(type_, {}) if type_ else st.get("counts") or {}

        before, after = pick(old), pick(new)
        return {k: max(0, after.get(k, 0) - before.get(k, 0)) / dt for k in _RATED}

    def depth(self, pool: str) -> float | None:
        """How fast a pool's queue grows (negative: drains), per second."""
        if len(self.readings) < 2:
            return None
        old, new, dt = self._pair()
        before, after = _queued(old, pool), _queued(new, pool)
        return None if before is None or after is None else (after - before) / dt


def _queued(st: dict, pool: str) -> int | None:
    return next((p.get("queued") for p in st.get("pools", ()) if p["name"] == pool), None)


def _rate(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:,.1f}" if abs(r) < 100 else f"{r:,.0f}"


def _table(title: str, *columns: str) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
              pad_edge=False, expand=False)
    for name in columns:
        t.add_column(name, no_wrap=True,
                     justify="left" if name in ("POOL", "TYPE", "STATE", "JOB") else "right")
    return t


def _header(st: dict, endpoint: str) -> Text:
    r = st.get("redis") or {}
    redis = (Text(f"redis up {r.get('version', '')} {r.get('latency_ms', '-')}ms",
                  style="green") if r.get("up") else
             Text(f"redis DOWN ({r.get('error') or 'unreachable'})", style="bold red"))
    head = Text.assemble(
        ("jobsup top", "bold"), f"  node {st['node']} pid {st['pid']} ",
        (st["phase"], "green" if st.get("accepting") else "yellow"),
        f" up {units.duration(st.get('uptime'))}  {endpoint}  ", redis,
        f"  dead letters {st.get('dead_letters') if st.get('dead_letters') is not None else '-'}"
        f"  {datetime.now().strftime('%H:%M:%S')}")
    return head


def _pools(st: dict, rates: Rates) -> Table:
    t = _table("POOLS AND QUEUES", "POOL", "WORKERS", "IDLE", "BUSY", "QUEUED", "HELD",
               "QUEUE/s", "STATE")
    for p in st.get("pools", ()):
        t.add_row(p["name"], f"{p['workers']}/{p['target']}", str(p["idle"]), str(p["busy"]),
                  "-" if p.get("queued") is None else f"{p['queued']:,}",
                  str(p.get("prefetched", 0)), _rate(rates.depth(p["name"])),
                  Text("DEGRADED", style="bold red") if p.get("degraded") else "ok")
    return t


def _workers(st: dict) -> Table:
    t = _table("WORKERS", "POOL", "PID", "STATE", "JOB", "RSS", "CPU", "GPU", "GPU MEM",
               "UPTIME", "DONE")
    for w in st.get("workers", ()):
        t.add_row(w["pool"], str(w["pid"]), w["state"], w.get("job") or "-",
                  units.size(w.get("rss")), f"{w.get('cpu') or 0:.0f}%",
                  ",".join(map(str, w["gpu"])) if w.get("gpu") else "-",
                  units.gpu_memory(w.get("gpu_memory")), units.duration(w.get("uptime")),
                  f"{w.get('jobs_done', 0):,}")
    return t


def _types(st: dict, rates: Rates) -> Table:
    span = rates.span
    over = ("average since start" if span is None else
            f"last {span:.1f}s" if span < 10 else f"last {span:.0f}s")
    t = _table(f"JOB TYPES (per second, {over}; totals since start)", "TYPE", "SUBMIT/s",
               "START/s", "OK/s", "FAIL/s", "RETRY/s", "SUBMITTED", "SUCCEEDED", "FAILED")
    rows = [(name, rates.counts(name), counts)
            for name, counts in sorted((st.get("types") or {}).items())]
    rows.append(("all", rates.counts(), st.get("counts") or {}))
    for name, r, total in rows:
        t.add_row(Text(name, style="bold") if name == "all" else name,
                  *(_rate(r[k]) for k in _RATED),
                  *(f"{total.get(k, 0):,}" for k in ("submitted", "succeeded", "failed")))
    return t


def _circuits(st: dict) -> Table | None:
    if not st.get("circuits"):
        return None
    t = _table("CIRCUITS", "TYPE", "STATE", "FAILURES")
    for c in st["circuits"]:
        style = {"open": "bold red", "half-open": "yellow"}.get(c["state"], "")
        t.add_row(c["type"], Text(c["state"], style=style), str(c.get("failures", "")))
    return t


def frame(st: dict | None, rates: Rates, endpoint: str, error: str | None = None,
          live: bool = False) -> RenderableType:
    """One screen: what the daemon said, or why it said nothing (the live view asks
    again each frame)."""
    keys = [Text("q quits", style="dim")] if live else []
    if st is None:
        return Group(
            Text.assemble(("jobsup top", "bold"), f"  {endpoint}  ",
                          ("daemon unreachable", "bold red")),
            Text(f"{error}"), *keys)
    parts: list[RenderableType] = [_header(st, endpoint), *keys, _pools(st, rates),
                                   _workers(st), _types(st, rates)]
    circuits = _circuits(st)
    if circuits is not None:
        parts.append(circuits)
    return Group(*parts)


def _read(c: Client, rates: Rates) -> tuple[dict | None, str | None]:
    try:
        st = c.status()
    except JobsupError as exc:
        return None, exc.message
    rates.add(time.monotonic(), st)
    return st, None


@contextmanager
def _cbreak() -> Iterator[Callable[[float], str]]:
    """stdin in cbreak mode (keys arrive one by one, Ctrl-C still interrupts); yields a
    function that waits up to S seconds for a key.  The old mode is put back."""
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None

    def key(timeout: float) -> str:
        if fd is None:
            time.sleep(timeout)
            return ""
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 32).decode(errors="replace") if ready else ""

    try:
        if fd is not None:
            tty.setcbreak(fd)
        yield key
    finally:
        if fd is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def once(c: Client, endpoint: str) -> int:
    """Print one frame (plain text off a terminal) and exit: 3 if the daemon or its
    Redis is unreachable."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PLAIN_WIDTH)
    rates = Rates()
    st, error = _read(c, rates)
    console.print(frame(st, rates, endpoint, error))
    return EXIT_OK if st is not None and (st.get("redis") or {}).get("up") else EXIT_UNREACHABLE


def live(c: Client, endpoint: str, refresh: float = REFRESH) -> int:
    """The full-screen view until ``q`` (or Ctrl-C)."""
    rates = Rates()
    console = Console()
    try:
        with _cbreak() as key, Live(console=console, screen=True, auto_refresh=False,
                                    redirect_stdout=False, redirect_stderr=False) as view:
            while True:
                st, error = _read(c, rates)
                view.update(frame(st, rates, endpoint, error, live=True), refresh=True)
                deadline = time.monotonic() + refresh
                while (left := deadline - time.monotonic()) > 0:
                    if "q" in key(left).lower():
                        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK


def run(c: Client, show_once: bool = False, refresh: float = REFRESH) -> int:
    """``jobsup top``: the live view on a terminal, else one frame as ``--once``.  A
    request gets a short timeout, so that a frame never hangs."""
    c.timeout, c.connect_timeout = min(c.timeout, 2.0), min(c.connect_timeout, 1.0)
    if show_once or not sys.stdout.isatty():
        return once(c, c.endpoint)
    return live(c, c.endpoint, refresh)
