"""systemd: the notify protocol spoken by a real daemon, and the packaged unit.

The tests bind their own unix datagram socket and hand it to ``jobsup run`` as
``NOTIFY_SOCKET``, as systemd does; the daemon is a real process, stopped and
continued with real signals.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisord.notify import Notifier, Systemd, take_environment
from tests.conftest import ROOT, Daemon, wait_for

UNIT = ROOT / "etc" / "systemd" / "jobsup.service"
STATUS_LINE = re.compile(r"^STATUS=(\d+) running, (\d+|\?) queued, (\d+)/(\d+) workers, "
                         r"redis (up|DOWN)$")


class Listener:
    """The service manager's end: records every datagram with the time it came."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode().split("\n")))

    def snapshot(self) -> list[tuple[float, list[str]]]:
        with self._lock:
            return list(self.messages)

    def wait(self, pred: Callable[[list[str]], bool], after: int = 0, timeout: float = 20.0,
             what: str = "a notify message") -> int:
        """The index of the first message from ``after`` on that ``pred`` accepts."""
        def found() -> int | None:
            for i, (_, fields) in enumerate(self.snapshot()[after:], after):
                if pred(fields):
                    return i + 1  # +1 so that index 0 is truthy for wait_for
            return None
        return wait_for(found, timeout, 0.01, what) - 1

    def pings(self, start: float, end: float) -> list[float]:
        return [t for t, fields in self.snapshot() if "WATCHDOG=1" in fields and start <= t <= end]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def has(field: str) -> Callable[[list[str]], bool]:
    return lambda fields: field in fields


@pytest.fixture
def listener(tmp_path: Path):
    lst = Listener(str(tmp_path / "notify.sock"))
    yield lst
    lst.close()


def start_notified(daemon_factory, monkeypatch, listener: Listener, watchdog_usec: int,
                   **overrides) -> Daemon:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", str(watchdog_usec))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    d = daemon_factory(start=False, **overrides)
    return d.start(wait=False)


@pytest.mark.timeout(120)
def test_notify_ready_watchdog_stop_reload_and_stopping(daemon_factory, monkeypatch,
                                                         listener):
    d = start_notified(daemon_factory, monkeypatch, listener, 600_000, pools=[{
        "name": "default", "workers": 2, "init": "tests.handlers_systemd:slow_init",
        "env": {"JOBSUP_TEST_INIT_DELAY": "1.5"}}])

    # READY=1 only once the API answers and both workers finished their slow init.
    ready = listener.wait(has("READY=1"), what="READY=1")
    with d.client(connect_timeout=2, timeout=5) as c:
        st = c.status()
    assert [w["state"] for w in st["workers"]] == ["idle", "idle"], st["workers"]
    assert st["redis"]["up"]
    fields = listener.snapshot()[ready][1]
    status = [f for f in fields if f.startswith("STATUS=")]
    assert status and STATUS_LINE.match(status[0]), fields
    assert STATUS_LINE.match(status[0]).group(3, 4) == ("2", "2")
    first_ping = listener.wait(has("WATCHDOG=1"), what="the first WATCHDOG=1")
    assert all("READY=1" not in f for _, f in listener.snapshot()[ready + 1:first_ping])

    # Pings at half of WATCHDOG_USEC (0.3 s): never faster, and they keep coming.
    t0 = listener.snapshot()[first_ping][0]
    time.sleep(3.0)
    pings = listener.pings(t0, t0 + 3.0)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 4, pings
    assert min(gaps) >= 0.25, gaps

    # A STATUS= line every few seconds, with real queue numbers by then.
    later = listener.wait(lambda f: any(x.startswith("STATUS=") for x in f) and
                          "READY=1" not in f, after=ready + 1, timeout=10, what="a STATUS=")
    line = next(x for x in listener.snapshot()[later][1] if x.startswith("STATUS="))
    assert STATUS_LINE.match(line) and "? queued" not in line, line

    # A stopped master stops pinging; continued, it pings again.
    os.kill(d.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        time.sleep(1.5)
    finally:
        os.kill(d.pid, signal.SIGCONT)
    continued = time.monotonic()
    assert listener.pings(stopped + 0.2, continued) == []
    wait_for(lambda: listener.pings(continued, time.monotonic()), 10,
             what="WATCHDOG=1 after SIGCONT")

    # SIGHUP: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, the same on both
    # sides), then READY=1 once the reload is done.
    mark = len(listener.snapshot())
    d.signal(signal.SIGHUP)
    reloading = listener.wait(has("RELOADING=1"), after=mark, what="RELOADING=1")
    t_recv, fields = listener.snapshot()[reloading]
    usec = [f for f in fields if f.startswith("MONOTONIC_USEC=")]
    assert usec, fields
    sent = int(usec[0].split("=", 1)[1]) / 1e6
    assert t_recv - 5.0 < sent <= t_recv + 0.01
    listener.wait(has("READY=1"), after=reloading + 1, what="READY=1 after the reload")

    # SIGTERM: STOPPING=1 when shutdown starts, then a clean exit that leaves no
    # socket files behind.
    mark = len(listener.snapshot())
    d.signal(signal.SIGTERM)
    listener.wait(has("STOPPING=1"), after=mark, what="STOPPING=1")
    assert d.wait_exit(30) == 0
    for endpoint in (d.endpoint, d.events):
        assert not Path(endpoint.removeprefix("ipc://")).exists(), endpoint


@pytest.mark.timeout(90)
def test_a_pool_whose_init_fails_does_not_hold_ready(daemon_factory, monkeypatch, listener):
    d = start_notified(daemon_factory, monkeypatch, listener, 2_000_000, pools=[
        {"name": "default", "workers": 1},
        {"name": "broken", "workers": 1, "init": "tests.handlers:boom"}])
    listener.wait(has("READY=1"), timeout=30, what="READY=1 despite the broken pool")
    with d.client(connect_timeout=2, timeout=5) as c:
        pools = {p["name"]: p for p in c.status()["pools"]}
        assert pools["default"]["idle"] == 1 and pools["broken"]["idle"] == 0
        assert c.wait(c.submit("add", {"a": 1, "b": 2}), timeout=20).result == 3
    assert "could not start" in d.log.read_text()


def test_notifier_abstract_socket_and_watchdog_pid(tmp_path: Path):
    name = f"@jobsup-test-{os.getpid()}-{time.monotonic_ns()}"
    lst = Listener(name)
    try:
        n = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000"}, pid=123)
        assert n.watchdog_every == 2.0
        assert n.send("READY=1", "STATUS=hello")
        wait_for(lambda: lst.snapshot(), 5, what="the datagram")
        assert lst.snapshot()[0][1] == ["READY=1", "STATUS=hello"]
        n.close()
    finally:
        lst.close()
    # The watchdog is meant for another process: this one must not ping.
    other = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"},
                     pid=123)
    assert other.watchdog_every is None
    assert Notifier({}, pid=123).send("READY=1") is False
    # Workers and the embedded redis-server must not inherit the variables.
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "HOME": "/h"}
    assert take_environment(env) == {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1",
                                     "WATCHDOG_PID": "2"}
    assert env == {"HOME": "/h"}


# -- the packaged unit ------------------------------------------------------------------
analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    analyze is None, reason="systemd-analyze is not installed (Debian: apt install systemd)")


@needs_analyze
@pytest.mark.timeout(60)
def test_unit_security_exposure_below_5():
    out = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
                         capture_output=True, text=True, timeout=50)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert found, out.stdout[-2000:] + out.stderr
    assert float(found.group(1)) < 5.0, out.stdout


@needs_analyze
@pytest.mark.timeout(60)
def test_unit_verifies_clean(tmp_path: Path):
    # verify checks that ExecStart's binary exists, so a copy of the unit points at a
    # jobsup that does (the installed path, /usr/local/bin/jobsup, may not on a
    # development box); --man=no keeps verify from looking up man pages.
    binary = shutil.which("jobsup") or str(ROOT / ".venv" / "bin" / "jobsup")
    if not os.path.exists(binary):
        pytest.skip("no jobsup console script to point the unit at (run scripts/setup)")
    text = UNIT.read_text().replace("/usr/local/bin/jobsup", binary)
    unit = tmp_path / "jobsup.service"
    unit.write_text(text)
    out = subprocess.run([analyze, "verify", "--man=no", str(unit)],
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), (
        out.stdout + out.stderr)


def test_systemd_part_with_a_fake_clock(tmp_path: Path):
    """The loop's side, pass by pass: READY once start-up is done and never while
    stopping; pings on schedule; reload messages only after READY."""
    lst = Listener(str(tmp_path / "n.sock"))
    now = [100.0]
    started = [False]
    sd = Systemd(Notifier({"NOTIFY_SOCKET": lst.address, "WATCHDOG_USEC": "2000000"}, pid=1),
                 lambda: started[0], lambda: "0 running, 0 queued, 1/1 workers, redis up",
                 clock=lambda: now[0])
    try:
        sd.reloading()
        sd.reloaded()  # before READY: nothing (READY comes when start-up is done)
        sd.after_pass()  # the first ping is due at once, READY is not
        assert sd.next_deadline() == 101.0
        now[0] = 100.5
        sd.after_pass()  # not started, no ping due yet
        started[0] = True
        now[0] = 101.0
        sd.after_pass()  # READY, and the ping that is due
        sd.after_pass()  # nothing new
        now[0] = 101.5
        sd.reloading()
        sd.reloaded()
        sd.begin_stop()
        sd.begin_stop()
        sd.reloaded()  # while stopping: no READY
        wait_for(lambda: len(lst.snapshot()) >= 6, 5, what="six datagrams")
        time.sleep(0.1)
        got = [fields for _, fields in lst.snapshot()]
        assert [f[0] for f in got] == ["WATCHDOG=1", "READY=1", "WATCHDOG=1", "RELOADING=1",
                                       "READY=1", "STOPPING=1"], got
        assert got[1][1].startswith("STATUS=0 running")
        assert got[3][1].startswith("MONOTONIC_USEC=")
    finally:
        sd.notifier.close()
        lst.close()
