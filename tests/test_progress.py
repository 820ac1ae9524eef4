"""Progress on long commands and the count of ``jobs``, against a real daemon.

On a terminal (a real pseudo-terminal as stderr) the bar is drawn and a summary
line ends it; through a pipe, or with ``--json``, no bar, the same summary and
ids.  ``jobs`` ends with "N of M".
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from supervisord.redis.store import Store
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(90)

BAR = "━"  # what rich draws a progress bar with
# add with one attempt: a payload it cannot add fails at once, for good.
ONE_TRY = {"jobs": {"add": {"handler": "examples.demo:add", "timeout": 30, "max_attempts": 1}}}


def on_terminal(d, args: list[str], out: Path) -> tuple[int, str, str]:
    """Run the CLI with a 120-column pseudo-terminal as stderr and ``out`` as stdout:
    (exit code, what the terminal showed, stdout)."""
    main, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
    env.update(PYTHONPATH=str(ROOT), TERM="xterm-256color")
    with open(out, "wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisord", "-c", str(d.config), *args],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=tty, cwd=ROOT, env=env,
            close_fds=True)
    os.close(tty)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(main)
    return code, seen.decode(errors="replace"), out.read_text()


def jsonl(path: Path, payloads: list) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in payloads))
    return path


def mixed(c, good: int, bad: int) -> list[str]:
    """``good`` jobs that succeed, ``bad`` that fail and one cancelled, all final."""
    ids = c.submit_many("add", [{"a": n, "b": 1} for n in range(good)])
    ids += c.submit_many("add", [{"a": "not a number", "b": 1}] * bad)
    late = c.submit("echo", {"x": 1}, delay=60)
    c.cancel(late)
    return [*ids, late]


def test_submit_file_wait_draws_a_bar_on_a_terminal(daemon_factory, tmp_path):
    d = daemon_factory(**ONE_TRY)
    path = jsonl(tmp_path / "jobs.jsonl",
                 [{"a": n, "b": 1} for n in range(18)] + [{"a": "x", "b": 1}] * 2)
    code, screen, stdout = on_terminal(d, ["submit", "add", "--file", str(path), "--wait"],
                                       tmp_path / "out")
    assert code == 1, (screen, stdout)  # two failed
    assert BAR in screen and "waiting" in screen and "20/20" in screen, screen
    assert "20 jobs: 18 succeeded, 2 failed, 0 cancelled in " in screen, screen
    rows = [ln.split() for ln in stdout.strip().splitlines()[1:]]
    assert len(rows) == 20
    assert sorted(r[1] for r in rows) == ["failed"] * 2 + ["succeeded"] * 18
    assert BAR not in stdout


def test_submit_file_through_a_pipe_and_with_json(daemon_factory, tmp_path):
    d = daemon_factory(**ONE_TRY)
    path = jsonl(tmp_path / "jobs.jsonl", [{"a": n, "b": 2} for n in range(15)])
    res = d.cli("submit", "add", "--file", str(path))
    assert res.returncode == 0, res
    ids = res.stdout.split()
    assert len(set(ids)) == 15
    assert BAR not in res.stderr and "15 job(s) submitted in " in res.stderr

    res = d.cli("submit", "add", "--file", str(path), "--wait", "--json")
    assert res.returncode == 0, res
    records = json.loads(res.stdout)
    assert [r["result"] for r in records] == [n + 2 for n in range(15)]
    assert BAR not in res.stderr
    assert "15 jobs: 15 succeeded, 0 failed, 0 cancelled in " in res.stderr

    # --json on a terminal: still no bar, stdout one JSON document.
    code, screen, stdout = on_terminal(d, ["submit", "add", "--file", str(path), "--json"],
                                       tmp_path / "out")
    assert code == 0 and BAR not in screen, screen
    assert len(json.loads(stdout)) == 15


def test_wait_on_many_ids(daemon_factory, tmp_path):
    d = daemon_factory(**ONE_TRY)
    with d.client() as c:
        ids = mixed(c, 27, 2)
        c.wait_many(ids, timeout=30)
    code, screen, stdout = on_terminal(d, ["wait", *ids], tmp_path / "out")
    assert code == 1, screen
    assert BAR in screen and "30/30" in screen, screen
    assert "30 jobs: 27 succeeded, 2 failed, 1 cancelled in " in screen, screen
    assert [ln.split()[0] for ln in stdout.strip().splitlines()[1:]] == ids

    res = d.cli("wait", *ids, "--json")
    assert res.returncode == 1 and BAR not in res.stderr, res
    assert [r["id"] for r in json.loads(res.stdout)] == ids
    assert "30 jobs: 27 succeeded, 2 failed, 1 cancelled in " in res.stderr

    good = ids[:27]
    res = d.cli("wait", *good)
    assert res.returncode == 0, res
    assert "27 jobs: 27 succeeded, 0 failed, 0 cancelled in " in res.stderr
    # One id: its record, as before.
    res = d.cli("wait", good[0])
    assert res.returncode == 0 and f"job       {good[0]}" in res.stdout, res


def test_wait_on_many_ids_times_out_with_exit_1(daemon_factory):
    d = daemon_factory()
    with d.client() as c:
        done = c.submit("noop")
        slow = c.submit("echo", {"x": 1}, delay=60)
        c.wait(done, timeout=20)
    res = d.cli("wait", done, slow, "--timeout", "0.5")
    assert res.returncode == 1, res
    assert "not known to be finished within 0.5s" in res.stderr and slow in res.stderr


def test_dlq_retry_all_wait(daemon_factory, tmp_path):
    d = daemon_factory()
    with d.client() as c:
        failed = c.wait_many(c.submit_many("fail", [{"how": "permanent"}] * 3), timeout=30)
    assert {j.status for j in failed} == {"failed"}
    code, screen, stdout = on_terminal(d, ["dlq", "retry", "--all", "--wait"], tmp_path / "o")
    assert code == 1, screen
    assert BAR in screen and "requeued 3 job(s)" in screen, screen
    assert "3 jobs: 0 succeeded, 3 failed, 0 cancelled in " in screen, screen
    assert sorted(ln.split()[0] for ln in stdout.strip().splitlines()[1:]) == sorted(
        j.id for j in failed)
    # Without --wait: requeued, said on stdout as before.
    res = d.cli("dlq", "retry", "--all")
    assert res.returncode == 0 and "requeued 3 job(s) in " in res.stdout, res


def test_jobs_says_how_many_match(daemon_factory, redis_server):
    d = daemon_factory(**ONE_TRY)
    with d.client() as c:
        ids = mixed(c, 7, 3)
        c.wait_many(ids, timeout=30)
        page = c.jobs_page(type="add", limit=4)
        assert (len(page.jobs), page.total, page.total_at_most) == (4, 10, 10)
        jobs, cursor = page  # unpacks as before
        assert cursor and len(jobs) == 4

    lines = d.cli("jobs", "--limit", "5").stdout.strip().splitlines()
    assert lines[-1] == "5 of 11"
    assert len(lines) == 1 + 5 + 1
    assert d.cli("jobs", "--type", "add").stdout.strip().splitlines()[-1] == "10 of 10"
    out = d.cli("jobs", "--type", "add", "--status", "failed", "--limit", "2").stdout
    assert out.strip().splitlines()[-1] == "2 of 3"
    out = d.cli("jobs", "--status", "cancelled", "--type", "add").stdout
    assert out.strip().splitlines()[-1] == "0 of 0"
    res = d.cli("jobs", "--type", "add", "--json")
    assert len(json.loads(res.stdout)) == 10  # --json stays a list of records

    # Several filters over more jobs than are counted one by one: a bound, not a count.
    store = Store(redis_server.client(), "jobsup", "test")
    assert store.count("succeeded", "add", scan_limit=3) == (None, 7)
    assert store.count("succeeded", "add") == (7, 7)
    assert store.count("failed", "add", ("nobody", "x")) == (0, 0)
