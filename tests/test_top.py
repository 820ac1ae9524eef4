"""``jobsup top`` in a real terminal (tmux on a private socket), ``--once`` as a
subprocess, and the counts in ``status`` that its rates come from."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, wait_for

WIDTH, HEIGHT = 160, 50
ONE_WORKER = {"pools": [{"name": "default", "workers": 1}]}


class Tmux:
    """One tmux server of the test's own (its socket in the test's directory)."""

    def __init__(self, directory: Path) -> None:
        self.sock = directory / "tmux.sock"

    def __call__(self, *args: str) -> str:
        res = subprocess.run(["tmux", "-S", str(self.sock), "-f", "/dev/null", *args],
                             capture_output=True, text=True, timeout=10)
        assert res.returncode == 0, (args, res.stderr)
        return res.stdout

    def start(self, command: str) -> None:
        self("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), "-s", "t", command)
        self("set-option", "-t", "t", "status", "off")

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "t")

    def flag(self, name: str) -> str:
        return self("display-message", "-p", "-t", "t", f"#{{{name}}}").strip()

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", str(self.sock), "kill-server"], capture_output=True,
                       timeout=10)


@pytest.fixture
def tmux(tmp_path: Path):
    server = Tmux(tmp_path)
    yield server
    server.kill()


def top_in_pane(tmux: Tmux, d) -> None:
    """A shell in the pane that marks the screen, runs top, then says how it ended and
    what the terminal's modes are, and stays (so the pane can be read afterwards)."""
    top = shlex.join([sys.executable, "-m", "supervisord", "-c", str(d.config), "top",
                      "--interval", "0.3"])
    tmux.start(f"cd {shlex.quote(str(ROOT))}; export PYTHONPATH={shlex.quote(str(ROOT))}; "
               f"clear; echo before-top; {top}; echo top-exit=$?; stty -a; exec sleep 600")


def pool_row(screen: str, pool: str) -> list[str] | None:
    """The pool's row of POOLS AND QUEUES: name, workers, idle, busy, queued, ..."""
    lines = screen.splitlines()
    at = next((n for n, ln in enumerate(lines) if "POOLS AND QUEUES" in ln), None)
    if at is None:
        return None
    for ln in lines[at:]:
        if ln.split()[:1] == [pool]:
            return ln.split()
    return None


def queued_shown(tmux: Tmux, want: int) -> bool:
    row = pool_row(tmux.screen(), "default")
    return row is not None and row[4] == str(want)


def ended(tmux: Tmux) -> bool:
    """top is no longer a process under the pane's shell."""
    shell = psutil.Process(int(tmux.flag("pane_pid")))
    for proc in shell.children(recursive=True):
        try:
            if "top" in proc.cmdline():
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def restored(tmux: Tmux) -> str:
    screen = wait_for(lambda: "top-exit=" in tmux.screen() and tmux.screen(), 10,
                      what="top to end")
    assert "top-exit=0" in screen, screen
    assert "before-top" in screen, screen  # back on the main screen, as it was
    assert tmux.flag("alternate_on") == "0"
    assert tmux.flag("cursor_flag") == "1"  # the cursor shown again
    modes = screen.split()
    assert "icanon" in modes and "echo" in modes, screen  # cbreak undone
    assert ended(tmux)
    return screen


@pytest.mark.timeout(90)
def test_top_shows_workers_and_queues_updating_and_q_quits(daemon_factory, tmux):
    d = daemon_factory(**ONE_WORKER)
    with d.client() as c:
        running = c.submit("sleep", {"seconds": 60})
        wait_for(lambda: c.get(running).status == "running", 20, what="a job to start")
        c.submit_many("sleep", [{"seconds": 60}] * 3)
        queued = wait_for(lambda: c.status()["pools"][0]["queued"] == 3 and 3, 10,
                          what="three queued")
    pids = [str(w["pid"]) for w in d.workers()]
    top_in_pane(tmux, d)
    screen = wait_for(lambda: "WORKERS" in tmux.screen() and tmux.screen(), 20,
                      what="the first frame")
    assert tmux.flag("alternate_on") == "1"
    for pid in pids:
        assert pid in screen, screen
    assert running in screen, screen
    assert pool_row(screen, "default") is not None, screen
    wait_for(lambda: queued_shown(tmux, queued), 10, what=f"queue depth {queued}")

    with d.client() as c:
        more = c.submit_many("sleep", [{"seconds": 60}] * 2)
    wait_for(lambda: queued_shown(tmux, queued + 2), 10, what="the new depth")
    wait_for(lambda: "last " in tmux.screen(), 10, what="rates over the last seconds")
    with d.client() as c:
        c.cancel(more[0])
    wait_for(lambda: queued_shown(tmux, queued + 1), 10, what="the depth after a cancel")

    tmux("send-keys", "-t", "t", "q")
    restored(tmux)


@pytest.mark.timeout(90)
def test_top_ctrl_c_and_a_daemon_that_goes_away(daemon_factory, tmux):
    d = daemon_factory(**ONE_WORKER)
    top_in_pane(tmux, d)
    wait_for(lambda: "WORKERS" in tmux.screen(), 20, what="the first frame")
    d.kill()
    wait_for(lambda: "daemon unreachable" in tmux.screen(), 15, what="top to see it gone")
    d.start()  # top keeps asking: the new master's workers appear
    pids = [str(w["pid"]) for w in d.workers()]
    wait_for(lambda: all(p in tmux.screen() for p in pids), 20, what="the new workers")
    assert "daemon unreachable" not in tmux.screen()
    tmux("send-keys", "-t", "t", "C-c")
    restored(tmux)


@pytest.mark.timeout(60)
def test_top_once_prints_one_plain_frame(daemon_factory):
    d = daemon_factory(pools=[{"name": "default", "workers": 2},
                              {"name": "batch", "workers": 1}],
                       jobs={"sleep": {"handler": "examples.demo:sleep", "pool": "batch"}})
    with d.client() as c:
        c.wait_many(c.submit_many("add", [{"a": 1, "b": 1}] * 4), timeout=20)
    res = d.cli("top", "--once")
    assert res.returncode == 0, res
    out = res.stdout
    assert "\x1b[" not in out  # plain text off a terminal
    for w in d.workers():
        assert str(w["pid"]) in out
    assert pool_row(out, "default") is not None and pool_row(out, "batch") is not None, out
    add = next(ln.split() for ln in out.splitlines() if ln.split()[:1] == ["add"])
    assert add[-3:] == ["4", "4", "0"], out  # submitted, succeeded, failed since start
    assert "average since start" in out

    d.kill()
    res = d.cli("top", "--once")
    assert res.returncode == 3, res
    assert "daemon unreachable" in res.stdout and "no jobsup daemon answers" in res.stdout


@pytest.mark.timeout(60)
def test_status_counts_since_start(daemon_factory):
    d = daemon_factory()
    with d.client() as c:
        ids = c.submit_many("add", [{"a": 1, "b": 1}] * 3)
        jobs = c.wait_many([*ids, c.submit("fail", {"how": "exception"})], timeout=30)
    assert [j.status for j in jobs] == ["succeeded"] * 3 + ["failed"]
    st = json.loads(d.cli("status", "--json").stdout)
    assert st["counts"] == {"submitted": 4, "started": 5, "succeeded": 3, "failed": 1,
                            "retried": 1}
    assert st["types"]["add"] == {"submitted": 3, "started": 3, "succeeded": 3, "failed": 0,
                                  "retried": 0}
    assert st["types"]["fail"] == {"submitted": 1, "started": 2, "succeeded": 0, "failed": 1,
                                   "retried": 1}
