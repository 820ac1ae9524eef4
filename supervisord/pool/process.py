"""The OS side of workers: start one from a clean interpreter, end its whole tree.

Workers are started with fork+exec of a fresh Python (no ZeroMQ context or
Redis connection crosses into them), each in its own process group, and
watched through a pidfd so that the master's poll wakes the moment one exits.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import psutil


@dataclass(slots=True)
class Child:
    pid: int
    popen: subprocess.Popen
    pidfd: int

    def reap(self) -> int | None:
        """The wait status if the child has exited, else None."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == 0:
            return None
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        return status

    def close(self) -> None:
        try:
            os.close(self.pidfd)
        except OSError:
            pass


def spawn(spec: dict, env: dict[str, str], user: str | None = None,
          group: str | None = None, pass_fds: tuple[int, ...] = ()) -> Child:
    child_env = dict(os.environ)
    child_env.update(env)
    child_env["JOBSUP_WORKER_SPEC"] = json.dumps(spec)
    popen = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        env=child_env, stdin=subprocess.DEVNULL, close_fds=True, pass_fds=pass_fds,
        process_group=0, user=user, group=group,
    )
    return Child(pid=popen.pid, popen=popen, pidfd=os.pidfd_open(popen.pid))


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def signal_tree(pid: int, sig: int, tree: list[psutil.Process] | None = None) -> None:
    """Signal a worker's process group and every descendant that left the group.

    "No such process" is fine: the tree may already be gone.
    """
    for proc in tree if tree is not None else descendants(pid):
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def describe_exit(status: int) -> tuple[str, str]:
    """(short, long) text for a wait status, naming the signal when there is one."""
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return sig, f"killed by signal {sig}"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    return f"exit {code}", f"exited with status {code}"


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of a worker and all its descendants, in bytes.

    Raises psutil.Error when the worker itself is gone; a descendant that exits
    while we look is simply not counted.
    """
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def become_subreaper() -> None:
    """Orphans of a worker's children come to us, so that we can end them too."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap_orphans(known: set[int]) -> None:
    """Kill and reap processes re-parented to us whose worker is gone."""
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return
    for child in children:
        if child.pid in known:
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                child.kill()
            os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass
