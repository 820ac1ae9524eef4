"""soft_timeout: ``worker.SoftTimeout`` raised in the handler, the hard timeout still kills."""

from __future__ import annotations

import subprocess
import sys

import pytest

from supervisord import config
from supervisord.errors import ConfigError
from tests.conftest import ROOT, gone, wait_for, write_config

pytestmark = pytest.mark.timeout(90)

JOBS = {
    "tidy": {"handler": "tests.handlers_output:tidy", "timeout": 20, "soft_timeout": 0.5},
    "stubborn": {"handler": "tests.handlers_output:stubborn", "timeout": 2.0,
                 "soft_timeout": 0.5, "max_attempts": 1},
    "careless": {"handler": "tests.handlers_output:careless", "timeout": 20,
                 "soft_timeout": 0.5, "max_attempts": 2, "backoff": {"base": 0.01, "max": 0.02}},
}


def test_a_handler_that_catches_it_returns_its_result(daemon_factory):
    d = daemon_factory(jobs=JOBS)
    with d.client() as c:
        job = c.wait(c.submit("tidy"), timeout=30)
    assert job.status == "succeeded"
    assert job.result == {"partial": True, "steps": True,
                          "why": "soft_timeout of 0.5s reached"}


def test_a_handler_that_ignores_it_is_killed_at_the_hard_timeout(daemon_factory, tmp_path):
    d = daemon_factory(jobs=JOBS)
    pidfile = tmp_path / "child.pid"
    with d.client() as c:
        job = c.wait(c.submit("stubborn", {"pidfile": str(pidfile)}), timeout=30)
    assert job.status == "failed"
    assert job.error["kind"] == "timeout"
    assert "exceeded its timeout of 2s" in job.error["message"]
    # The whole process group went, the handler's child with it.
    child = int(pidfile.read_text())
    wait_for(lambda: gone(child), 10, what="the handler's child to be killed")


def test_a_handler_that_lets_it_escape_fails_with_kind_timeout_and_is_retried(daemon_factory):
    d = daemon_factory(jobs=JOBS)
    with d.client() as c:
        job = c.wait(c.submit("careless"), timeout=30)
    assert job.status == "failed"
    assert job.attempt == 2  # the timeout kind is retried by default
    assert job.error["kind"] == "timeout"
    assert job.error["message"] == "SoftTimeout: soft_timeout of 0.5s reached"
    retried = [h for h in job.history if h["status"] in ("queued", "scheduled") and h.get("kind")]
    assert [h["kind"] for h in retried] == ["timeout"]
    # The worker was not killed: it took the second attempt, and is still there.
    pids = [h["pid"] for h in job.history if h["status"] == "running"]
    assert set(pids) <= {w["pid"] for w in d.workers()}
    # Each attempt's output is kept, the second after a line that says which it is.
    with d.client() as c:
        assert c.logs(job.id) == ("attempt 1 starts\n"
                                  f"--- attempt 2, node test-node, pid {pids[1]} ---\n"
                                  "attempt 2 starts\n")


def test_soft_timeout_must_be_shorter_than_timeout(tmp_path):
    with pytest.raises(ConfigError) as caught:
        config.validate({"jobs": {"x": {"handler": "a:b", "timeout": 5, "soft_timeout": 5}}})
    assert caught.value.errors == [{
        "loc": "jobs.x",
        "msg": "soft_timeout (5s) must be shorter than timeout (5s): the hard timeout kills "
               "the worker, so a later soft one would never be seen"}]
    assert config.validate({"jobs": {"x": {"handler": "a:b", "timeout": 5,
                                           "soft_timeout": 4.5}}}).jobs["x"].soft_timeout == 4.5
    path = write_config(tmp_path / "bad.toml", {"jobs": {"x": {"handler": "a:b", "timeout": 1,
                                                               "soft_timeout": 3}}})
    out = subprocess.run([sys.executable, "-m", "supervisord", "config", "check", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2
    assert "soft_timeout (3s) must be shorter than timeout (1s)" in out.stdout + out.stderr
