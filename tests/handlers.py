"""Handlers used only by the tests (named in test configs as ``tests.handlers:...``).

Workers run with the daemon's working directory (the repository root) on
``sys.path``, so this module imports as ``tests.handlers`` inside a worker.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from worker import JobContext

_INIT_CALLS = 0


def init_state() -> dict:
    """A pool ``init`` hook: runs once per worker, before its first job."""
    global _INIT_CALLS
    _INIT_CALLS += 1
    return {"model": "loaded", "init_pid": os.getpid(), "weights": [1, 2, 3]}


def read_state(payload: Any, ctx: JobContext) -> dict:
    """Returns what the pool's init hook gave this worker, and how often it ran."""
    return {"state": ctx.state, "init_calls": _INIT_CALLS, "pid": os.getpid()}


def switch(payload: dict, ctx: JobContext) -> dict:
    """Fails with Transient while the file named by ``payload["flag"]`` exists."""
    from worker import Transient

    if os.path.exists(payload["flag"]):
        raise Transient(f"dependency down ({payload['flag']} exists)")
    return {"ok": True, "n": payload.get("n")}


def always_transient(payload: Any, ctx: JobContext) -> None:
    from worker import Transient

    raise Transient("still down")


def stubborn(payload: Any, ctx: JobContext) -> None:
    """Ignores cancellation: blocks in a child process until killed."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import time; time.sleep(60)"], check=False)


def boom() -> None:
    """A pool ``init`` hook that cannot succeed (as a model that will not load)."""
    raise RuntimeError("cannot load the model")


def chatty(payload: dict, ctx: JobContext) -> int:
    """Reports progress as fast as it can for a while, and streams some output."""
    import time

    n, end = 0, time.monotonic() + float(payload.get("seconds", 1.0))
    while time.monotonic() < end:
        n += 1
        ctx.progress(min(99.0, n / 100), f"step {n}")
        if n % 1000 == 0:
            ctx.emit(f"line {n}")
    return n


def _runtime() -> Any:
    """The worker's Runtime, found up the call stack (it runs this handler)."""
    from worker.runtime import Runtime

    frame = sys._getframe(1)
    while not isinstance(frame.f_locals.get("self"), Runtime):
        frame = frame.f_back
    return frame.f_locals["self"]


def rude(payload: Any, ctx: JobContext) -> str:
    """Sends malformed messages on its worker's own channel to the master, then returns."""
    runtime = _runtime()
    with runtime.send_lock:
        runtime.chan.sock.sendall(runtime.chan.frame(b"\xc1 not msgpack"))
    with runtime.send_lock:
        runtime.chan.send(("error", ctx.token))  # a known kind with its fields missing
        runtime.chan.send(("done",))
        runtime.chan.send(("progress", ctx.token, "not a number", 1))  # wrong types
    return "still here"


def vandal(payload: Any, ctx: JobContext) -> str:
    """Writes bytes that are not a frame into its worker's channel: a corrupt stream."""
    runtime = _runtime()
    with runtime.send_lock:
        runtime.chan.sock.sendall(b"\xff\xff\xff\xff garbage")
    import time

    time.sleep(30)  # the master kills this worker long before
    return "unreachable"


def cooperative(payload: dict, ctx: JobContext) -> dict:
    """Cancel-aware: marks its start at once, polls ``ctx.cancelled`` every millisecond,
    and leaves marker files in ``payload["dir"]``: ``started`` (first line), ``saw_cancel``
    (when it sees the cancel) and ``stopped`` (in ``finally``, just before it returns).
    After seeing the cancel it lingers ``payload["linger"]`` seconds before returning, so
    a record that reads ``cancelled`` too early is caught."""
    import time
    from pathlib import Path

    where = Path(payload["dir"])
    (where / "started").touch()
    try:
        end = time.monotonic() + float(payload.get("seconds", 5.0))
        while time.monotonic() < end:
            if ctx.cancelled:
                (where / "saw_cancel").touch()
                time.sleep(float(payload.get("linger", 0.1)))
                return {"saw_cancel": True}
            time.sleep(0.001)
        return {"saw_cancel": False}
    finally:
        (where / "stopped").touch()


def hold(payload: dict, ctx: JobContext) -> dict:
    """Blocks until the file ``payload["release"]`` exists (or ``seconds`` pass, or a
    cancel), then returns; first appends the job id to ``payload["file"]`` if given
    (so a test can count the runs)."""
    import time

    if "file" in payload:
        with open(payload["file"], "a") as fh:
            fh.write(f"{ctx.job_id}\n")
    end = time.monotonic() + float(payload.get("seconds", 30.0))
    while time.monotonic() < end and not ctx.cancelled:
        if os.path.exists(payload["release"]):
            return {"released": True, "n": payload.get("n")}
        time.sleep(0.01)
    return {"released": False, "n": payload.get("n")}


def tally(payload: dict, ctx: JobContext) -> int:
    """Appends the job id to ``payload["file"]`` (one ``O_APPEND`` write a run, so that a
    test can count how often each job's handler ran), after ``payload["sleep"]`` s."""
    import time

    time.sleep(float(payload.get("sleep", 0)))
    fd = os.open(payload["file"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{ctx.job_id}\n".encode())
    finally:
        os.close(fd)
    return int(payload.get("n", 0))


def record_run(payload: dict, ctx: JobContext) -> dict:
    """Appends this job's id to ``payload["file"]`` (so a test sees every run), then
    sleeps ``payload["sleep"]`` seconds."""
    import time

    with open(payload["file"], "a") as fh:
        fh.write(f"{ctx.job_id}\n")
    time.sleep(float(payload.get("sleep", 0)))
    return {"ran": ctx.job_id}


def whoami(payload: dict | None, ctx: JobContext) -> int:
    """Returns the worker's pid after sleeping ``payload["sleep"]`` seconds (so that
    jobs submitted together land on different workers)."""
    import time

    time.sleep(float((payload or {}).get("sleep", 0)))
    return os.getpid()


def stepper(payload: dict, ctx: JobContext) -> dict:
    """Works in ``steps`` steps of ``interval`` seconds, reporting progress, printing a
    line (captured output) and emitting one (live output) at each; stops when cancelled."""
    import time

    steps, interval = int(payload.get("steps", 10)), float(payload.get("interval", 0.5))
    for n in range(1, steps + 1):
        if ctx.cancelled:
            return {"done": n - 1, "cancelled": True}
        time.sleep(interval)
        print(f"printed step {n}", flush=True)
        ctx.emit(f"emitted step {n}\n")
        ctx.progress(100 * n / steps, f"step {n} of {steps}")
    return {"done": steps}
