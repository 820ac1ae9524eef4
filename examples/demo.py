"""Demo handlers: each shows one behaviour an operator cares about."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from typing import Any

from pydantic import BaseModel

from worker import JobContext, Permanent, RateLimited, Transient


class EchoInput(BaseModel):
    """An input schema: a job type that names it gets validated payloads."""

    text: str
    times: int = 1


def noop(payload: Any, ctx: JobContext) -> None:
    return None


def echo(payload: Any, ctx: JobContext) -> Any:
    return payload


def add(payload: dict, ctx: JobContext) -> int:
    return int(payload["a"]) + int(payload["b"])


def sleep(payload: dict | None, ctx: JobContext) -> dict:
    """Sleep in steps, reporting progress and honouring cancellation."""
    seconds = float((payload or {}).get("seconds", 1.0))
    steps = max(1, int(seconds / 0.05))
    for n in range(steps):
        if ctx.cancelled:
            return {"slept": n * seconds / steps, "cancelled": True}
        time.sleep(seconds / steps)
        if n % 10 == 0:
            ctx.progress(100 * n / steps, f"step {n}/{steps}")
    ctx.emit(f"slept {seconds}s")
    return {"slept": seconds, "pid": os.getpid(), "gpu": ctx.gpu,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def flaky(payload: dict | None, ctx: JobContext) -> dict:
    """Fails with Transient at the given rate (default 20%)."""
    if random.random() < float((payload or {}).get("rate", 0.2)):
        raise Transient("the dependency flaked")
    return {"attempt": ctx.attempt}


def fail(payload: dict | None, ctx: JobContext) -> None:
    """Fails the way the payload says: exception, permanent, rate_limited."""
    how = (payload or {}).get("how", "exception")
    if how == "permanent":
        raise Permanent("bad input, retrying cannot help")
    if how == "rate_limited":
        raise RateLimited("slow down", retry_after=float((payload or {}).get("retry_after", 0.2)))
    raise RuntimeError("the handler broke")


def crash(payload: dict | None, ctx: JobContext) -> dict:
    """Kills its own worker on the attempts listed in ``crash_on`` (default: always)."""
    crash_on = (payload or {}).get("crash_on")
    if crash_on is None or ctx.attempt in crash_on:
        os._exit(13)
    return {"attempt": ctx.attempt}


def spawn(payload: dict | None, ctx: JobContext) -> dict:
    """Starts a grandchild process (as a handler running ffmpeg would) and waits."""
    seconds = float((payload or {}).get("seconds", 60))
    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    pidfile = (payload or {}).get("pidfile")
    if pidfile:
        with open(pidfile, "w") as fh:
            fh.write(str(child.pid))
    child.wait()
    return {"child": child.pid}


def hog(payload: dict | None, ctx: JobContext) -> dict:
    """Allocates memory in steps of ``step`` MiB up to ``mib`` MiB, holding it."""
    mib = int((payload or {}).get("mib", 512))
    step = int((payload or {}).get("step", 16))
    hold = float((payload or {}).get("hold", 0))
    chunks = []
    for _ in range(0, mib, step):
        chunks.append(bytearray(step * 1024 * 1024))
        time.sleep(0.01)
    time.sleep(hold)
    return {"allocated_mib": len(chunks) * step}


def upper(payload: EchoInput, ctx: JobContext) -> str:
    return payload.text.upper() * payload.times
