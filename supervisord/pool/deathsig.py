"""Tie a child's life to its parent's with Linux's parent-death signal.

Kept free of project imports: the worker and the exec trampoline load it
before anything else, so that a child of a SIGKILLed master never lingers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int, expected_parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` when our parent dies; die now if it already did."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)


def main() -> None:
    """``python -m supervisord.pool.deathsig PARENT SIGNAL PROGRAM ARGS...``: exec, signal set."""
    parent, sig, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    set_parent_death_signal(sig, parent)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main()
