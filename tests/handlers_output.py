"""Handlers for the captured-output and soft-timeout tests (``tests.handlers_output:...``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from typing import Any

from worker import JobContext, SoftTimeout

log = logging.getLogger("tests.handlers_output")


def talk(payload: Any, ctx: JobContext) -> str:
    """Writes to stdout, stderr, the logging module and fd 1 from a child process."""
    print("one: to stdout")
    sys.stderr.write("two: to stderr\n")
    log.warning("three: a logging record")
    subprocess.run([sys.executable, "-c", "print('four: from a child process')"], check=True)
    os.write(1, b"five: straight to fd 1\n")
    return "talked"


def flood(payload: dict, ctx: JobContext) -> int:
    """Prints ``payload["lines"]`` numbered lines of about 100 bytes."""
    for n in range(payload["lines"]):
        print(f"line {n:06d} " + "x" * 88)
    return payload["lines"]


def drip(payload: dict, ctx: JobContext) -> int:
    """Prints one line, then waits for a file to exist before the next (a live job)."""
    print("first line", flush=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(payload["go"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    print("second line", flush=True)
    return 2


def tidy(payload: Any, ctx: JobContext) -> dict:
    """Catches SoftTimeout, cleans up and returns what it got done."""
    done = 0
    try:
        while True:
            time.sleep(0.05)
            done += 1
    except SoftTimeout as exc:
        return {"partial": True, "steps": done > 0, "why": str(exc)}


def stubborn(payload: dict, ctx: JobContext) -> None:
    """Starts a child, then swallows SoftTimeout and anything else raised into it, so
    only a kill of the process group ends them."""
    child = subprocess.Popen(["sleep", "60"])
    with open(payload["pidfile"], "w") as fh:
        fh.write(str(child.pid))
    while True:
        try:
            time.sleep(30)
        except BaseException:  # ignoring everything is the point
            pass


def careless(payload: Any, ctx: JobContext) -> None:
    """Says which attempt it is, then lets SoftTimeout escape."""
    print(f"attempt {ctx.attempt} starts")
    time.sleep(30)
