"""Captured job output: stdout, stderr and logging records of a handler, tagged with
the job in the daemon's log and kept with the job in Redis (``jobsup logs``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import zmq

from supervisord.config import validate
from supervisord.events import Publisher
from supervisord.output import Output
from supervisord.pool.workers import Running
from supervisord.redis.store import Reserved
from supervisord.settings import Settings
from supervisord.writer import Batch
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(90)

OUTPUT_JOBS = {
    "talk": {"handler": "tests.handlers_output:talk", "timeout": 30},
    "flood": {"handler": "tests.handlers_output:flood", "timeout": 30, "max_output": 1000},
    "drip": {"handler": "tests.handlers_output:drip", "timeout": 60},
}
LINES = ["one: to stdout", "two: to stderr",
         "WARNING tests.handlers_output: three: a logging record",
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


def test_output_over_max_output_keeps_the_last_bytes(daemon_factory):
    d = daemon_factory(jobs=OUTPUT_JOBS)
    with d.client() as c:
        jid = c.submit("flood", {"lines": 200})
        assert c.wait(jid, timeout=30).status == "succeeded"
        text = c.logs(jid)
    assert len(text.encode()) == 1000  # flood's max_output
    assert text.endswith(f"line {199:06d} " + "x" * 88 + "\n")
    assert "line 000000" not in text
    # The daemon's log has every line, each tagged with the job.
    logged = [line for line in d.log.read_text().splitlines() if f"[job {jid} " in line]
    assert len([line for line in logged if " line 0" in line]) == 200


def test_daemon_log_tags_each_line_with_the_job(daemon_factory):
    d = daemon_factory(jobs=OUTPUT_JOBS)
    with d.client() as c:
        jid = c.submit("talk")
        job = c.wait(jid, timeout=30)
    pid = job.worker["pid"]
    log = d.log.read_text()
    for line in LINES:
        if line.startswith("WARNING"):
            expect = f"WARNING tests.handlers_output: [job {jid} talk attempt 1 pid {pid}] three"
        else:
            expect = f"INFO jobsup.output: [job {jid} talk attempt 1 pid {pid}] {line}"
        assert expect in log, f"{expect!r} not in the daemon log:\n{log[-3000:]}"


def test_logs_follow_prints_lines_as_they_come_and_ends_with_the_job(daemon_factory, tmp_path):
    d = daemon_factory(jobs=OUTPUT_JOBS)
    go = tmp_path / "go"
    with d.client() as c:
        jid = c.submit("drip", {"go": str(go)})
        wait_for(lambda: c.get(jid).status == "running", 20, what="drip to start")
    proc = subprocess.Popen([sys.executable, "-m", "supervisord", "-c", str(d.config), "logs",
                             jid, "--follow"], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        # The job cannot end before ``go`` exists: this line came from a running job.
        wait_for(lambda: "first line\n" in lines, 20, what="the first line while it runs")
        assert proc.poll() is None
        go.write_text("")
        assert proc.wait(20) == 0
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert lines == ["first line\n", "second line\n"]
    with d.client() as c:
        assert c.get(jid).status == "succeeded"
        assert c.logs(jid) == "first line\nsecond line\n"


def test_logs_of_an_unknown_job_is_a_clear_error(daemon_factory):
    d = daemon_factory(jobs=OUTPUT_JOBS)
    out = d.cli("logs", "doesnotexist0")
    assert out.returncode == 2
    assert "no job doesnotexist0" in out.stderr


def test_json_log_format_one_object_a_line_with_the_job_fields(daemon_factory):
    d = daemon_factory(jobs=OUTPUT_JOBS, daemon={"log_format": "json"})
    with d.client() as c:
        jid = c.submit("talk")
        job = c.wait(jid, timeout=30)
    d.signal(15)
    assert d.wait_exit(30) == 0
    records = []
    for n, line in enumerate(d.log.read_text().splitlines()):
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {n + 1} of the daemon log is not JSON: {line!r}")
    assert records and all({"time", "level", "logger", "message", "node"} <= r.keys()
                           for r in records)
    assert all(r["node"] == "test-node" for r in records)
    printed = [r for r in records if r["message"] == "one: to stdout"]
    assert printed == [{**printed[0], "job_id": jid, "job_type": "talk", "attempt": 1,
                        "worker_pid": job.worker["pid"], "level": "info",
                        "logger": "jobsup.output"}]
    logged = [r for r in records if r["message"] == "three: a logging record"]
    assert logged[0]["level"] == "warning" and logged[0]["logger"] == "tests.handlers_output"
    assert logged[0]["job_id"] == jid


def test_max_output_zero_keeps_nothing_but_still_logs(daemon_factory):
    jobs = {**OUTPUT_JOBS, "talk": {**OUTPUT_JOBS["talk"], "max_output": 0}}
    d = daemon_factory(jobs=jobs)
    with d.client() as c:
        jid = c.submit("talk")
        assert c.wait(jid, timeout=30).status == "succeeded"
        assert c.logs(jid) == ""
    assert f"[job {jid} talk attempt 1" in d.log.read_text()


def test_the_master_holds_at_most_max_output_per_job_and_writes_the_last_bytes():
    """Pure: what the master buffers for one job is bounded, whatever the worker sends."""
    cfg = validate({"jobs": {"t": {"handler": "a:b", "max_output": 100}}})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    try:
        out = Output(Settings.build(cfg), Batch(), Publisher(sock), up=lambda: True)
        job = Reserved(pool="default", id="j1", token="n|1", type="t", payload=b"",
                       attempt=1, max_attempts=1, timeout=10.0, crashes=0, priority=0,
                       created_at=0.0, run_at=0.0, rate_limited=0)
        run = Running(job=job, worker=None, started=0.0, deadline=None)  # type: ignore[arg-type]
        for n in range(10):
            out.data(run, 123, (f"{n}" * 49 + "\n").encode())
            assert len(out.buffers["n|1"].pending) <= 100
        out.finish(run, 123)
        (op,) = out.batch.ops
        assert (op.kind, op.id, op.token) == ("output", "j1", "n|1")
        assert op.args.data == ("8" * 49 + "\n" + "9" * 49 + "\n").encode()
        assert (op.args.limit, op.args.at) == (100, 500)
        assert out.buffers == {}
    finally:
        sock.close(0)
        ctx.term()
