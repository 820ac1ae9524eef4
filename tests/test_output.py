"""Captured job output: stdout, stderr and logging records of a handler, tagged with
the job in the daemon's log and kept with the job in Redis (``jobsup logs``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(90)

OUTPUT_JOBS = {
    "talk": {"handler": "tests.handlers_output:talk", "timeout": 30},
    "flood": {"handler": "tests.handlers_output:flood", "timeout": 30, "max_output": 1000},
    "drip": {"handler": "tests.handlers_output:drip", "timeout": 60},
}
LINES = ["one: to stdout", "two: to stderr", "WARNING tests.handlers_output: three: a logging record",
         "four: from a child process", "five: straight to fd 1"]


def test_stdout_stderr_and_logging_are_kept_in_order(daemon_factory):
    d = daemon_factory(jobs=OUTPUT_JOBS)
    with d.client() as c:
        jid = c.submit("talk")
        assert c.wait(jid, timeout=30).result == "talked"
        text = c.logs(jid)
    assert text.splitlines() == LINES
    out = d.cli("logs", jid)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == LINES
