"""What an earlier master's workers left behind, found and ended before their jobs rerun.

The parent-death signal ends a worker with its master, but not the worker's own
children: a handler's ffmpeg is re-parented and keeps running, and the next
master would rerun its job beside it.  So the master keeps a ledger in the state
directory of every live worker: pid, process group and create time, and the
box's boot time.  On start, before any job is requeued, each process group of the
ledger is killed (SIGKILL), member by member, when the members still match:

- after a reboot nothing in the ledger can be alive, so it is skipped;
- a pid is taken for the worker only if its create time is the recorded one;
- Linux hands out a pid only while no process group of that number has members,
  so where a process now holds the group's number with another create time, the
  old group is empty and the number belongs to someone else: it is skipped;
- a group member counts only if it was created after the worker was (a process
  older than the worker cannot be one of its descendants).

What is left is a group number that was reused and whose new leader has exited
since, with members left over: that needs the pids to wrap around to the exact
number between two masters, and is not guarded against.
A handler that leaves its process group (``setsid``) escapes the ledger; the
per-worker cgroups of ``memory_limit_kind = "cgroup"`` catch those too.  The
ledger is written atomically (a temporary file renamed over it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path

import psutil

log = logging.getLogger("jobsup.orphans")

FILE = "workers.json"


class Ledger:
    """The live workers of this master, as the next master needs to know them."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILE
        self.entries: dict[int, dict] = {}
        self.boot = psutil.boot_time()

    def add(self, pid: int) -> None:
        try:
            proc = psutil.Process(pid)
            entry = {"pid": pid, "pgid": os.getpgid(pid), "created": proc.create_time()}
        except (psutil.Error, ProcessLookupError):
            return  # gone already: nothing of it can linger
        self.entries[pid] = entry
        self.write()

    def remove(self, pid: int) -> None:
        if self.entries.pop(pid, None) is not None:
            self.write()

    def write(self) -> None:
        data = {"master": os.getpid(), "boot": self.boot, "workers": list(self.entries.values())}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.path)


def _entries(path: Path) -> list[dict]:
    """The workers a ledger names, or none when it is missing, foreign or stale."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); no leftovers of an earlier master looked for",
                    path, exc)
        return []
    if abs(float(data.get("boot", 0)) - psutil.boot_time()) > 1.0:
        return []  # rebooted since: nothing of that master lives
    if data.get("master") == os.getpid():
        return []
    return list(data.get("workers") or [])


def leftovers(path: Path) -> list[psutil.Process]:
    """The processes that the ledger at ``path`` says an earlier master's workers left."""
    entries = _entries(path)
    groups = {int(e["pgid"]): float(e["created"]) for e in entries}
    pids = {int(e["pid"]): float(e["created"]) for e in entries}
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["create_time"]) if entries else ():
        if proc.pid not in pids:
            continue
        if abs(proc.info["create_time"] - pids[proc.pid]) < 0.01:
            found.append(proc)  # the worker itself outlived its master
        else:
            groups.pop(proc.pid, None)  # the group's number is someone else's now
    for proc in psutil.process_iter(["create_time"]) if groups else ():
        try:
            born = groups.get(os.getpgid(proc.pid))
        except ProcessLookupError:
            continue
        if (born is not None and proc.info["create_time"] >= born - 0.01
                and proc.pid != os.getpid() and proc not in found):
            found.append(proc)
    return found


def kill_leftovers(state_dir: Path, timeout: float = 5.0) -> int:
    """SIGKILL what an earlier master's workers left, and wait until it is gone.

    Returns how many processes were killed.  Called before the jobs of that master
    are requeued, so that no old copy runs beside the new attempt.
    """
    procs = leftovers(Path(state_dir) / FILE)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            log.warning("killing pid %d (%s), left running by a worker of an earlier master",
                        proc.pid, _name(proc))
            proc.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:  # a zombie nobody reaps counts as gone
        alive = [p for p in alive if _running(p)]
        time.sleep(0.02)
    for proc in alive:
        log.error("pid %d left by an earlier master did not die of SIGKILL", proc.pid)
    return len(procs)


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:120] or proc.name()
    except psutil.Error:
        return "?"


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
