"""Handlers for the tests of what jobsup asks of the box: GPUs, cgroups, leftovers.

Named in test configs as ``tests.box_handlers:...``; workers import them from the
repository root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from worker import JobContext

# A grandchild that outlives its worker: ignores SIGTERM, leaves its process group
# alone, and touches a heartbeat file every 50 ms until it is killed.
_GRANDCHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
beat = sys.argv[1]
with open(beat + ".pid", "w") as fh:
    fh.write(str(os.getpid()))
while True:
    with open(beat, "w") as fh:
        fh.write(str(time.time()))
    time.sleep(0.05)
"""


def environment(payload: Any, ctx: JobContext) -> dict:
    """What a worker was given: its GPU pinning and its cgroup."""
    with open("/proc/self/cgroup") as fh:
        cgroup = fh.read()
    return {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu": ctx.gpu, "pid": os.getpid(), "cgroup": cgroup}


def leave_grandchild(payload: dict, ctx: JobContext) -> dict:
    """First run: start a grandchild that ignores SIGTERM, then run until killed.
    A rerun (the marker file exists) reports whether that grandchild still runs."""
    beat, marker = payload["beat"], payload["beat"] + ".started"
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        # Not waited for on purpose: it is what a handler's ffmpeg would be.
        subprocess.Popen([sys.executable, "-c", _GRANDCHILD, beat])
        time.sleep(3600)
    with open(beat + ".pid") as fh:
        old = int(fh.read())
    return {"grandchild": old, "grandchild_alive": _alive(old), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def grow(payload: dict, ctx: JobContext) -> int:
    """Touch ``payload["bytes"]`` of fresh memory page by page (for the cgroup OOM kill)."""
    block = bytearray(int(payload["bytes"]))
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)
