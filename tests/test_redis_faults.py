"""Redis faults and bad requests: what the daemon owes its clients when Redis stalls,
when a request is malformed, and when a client that waits goes away.

- A frozen Redis (SIGSTOP, not a closed socket) costs a submit at most about
  ``redis.socket_timeout``: it fails with ``Unavailable`` instead of hanging
  for the freeze, the API keeps answering, and once Redis runs again every
  acknowledged job ends ``succeeded`` exactly once, without help.
- A malformed request (a bad ``jobs`` cursor) is the client's error, not a Redis
  outage: the next submits go through at once.
- Waits are bounded per client, and dropped when their client goes away
  (``Client.status()["waiters"]``: the waits the daemon holds).

Real redis-server (the fixture's, so the test can SIGSTOP it), real daemons.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import msgpack
import pytest
import zmq

from supervisord.errors import BadRequest, JobsupError, Timeout, Unavailable, ValidationError
from tests.conftest import ROOT, Daemon, wait_for

SOCKET_TIMEOUT = 1.0
FREEZE = 10.0
MARGIN = 1.5  # a fresh submit during the freeze fails within SOCKET_TIMEOUT + MARGIN


# -- 3. a frozen Redis ------------------------------------------------------------------------
class Load(threading.Thread):
    """Submit-and-wait (``Client.run``: one request, no extra read) of ``add`` jobs, one
    after the other, until stopped."""

    def __init__(self, d: Daemon) -> None:
        super().__init__(daemon=True)
        self.d = d
        self.stop = threading.Event()
        self.acked: dict[str, int] = {}  # id -> n, for every submit that returned an id
        self.refused = 0
        self.other: list[str] = []

    def run(self) -> None:
        n = 0
        with self.d.client(timeout=30) as c:
            while not self.stop.is_set():
                n += 1
                try:
                    job = c.run("add", {"a": n, "b": 1}, wait_timeout=20)
                except Unavailable:
                    self.refused += 1
                    time.sleep(0.01)
                    continue
                except JobsupError as exc:
                    self.other.append(f"run: {type(exc).__name__}: {exc}")
                    time.sleep(0.01)
                    continue
                self.acked[job.id] = n


class Probe(threading.Thread):
    """One fresh client's submit, timed."""

    def __init__(self, d: Daemon) -> None:
        super().__init__(daemon=True)
        self.d = d
        self.outcome: Any = None
        self.elapsed: float | None = None

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            with self.d.client(timeout=30) as c:
                self.outcome = c.submit("add", {"a": -1, "b": 1})
        except Exception as exc:
            self.outcome = exc
        self.elapsed = time.monotonic() - t0


def _timed(fn) -> tuple[float, Any]:
    t0 = time.monotonic()
    try:
        value = fn()
    except Exception as exc:
        value = exc
    return time.monotonic() - t0, value


def _slow(samples: list[tuple[float, float, Any]], bound: float) -> list[tuple]:
    """(at s, took s, outcome) of the calls that failed or took over ``bound`` seconds."""
    return [(round(t, 2), round(e, 2), v if isinstance(v, Exception) else "ok")
            for t, e, v in samples if isinstance(v, Exception) or e > bound]


def _freeze(d: Daemon, redis_pid: int, seconds: float, probe_at: tuple[float, ...]
            ) -> tuple[list[tuple[float, Probe]], list, list]:
    """SIGSTOP Redis for ``seconds``: a fresh submit at each of ``probe_at`` (each in its
    own thread and client; one at 0 s lands before the daemon can have seen anything
    wrong), a status after each, pings every 0.25 s throughout."""
    probes: list[tuple[float, Probe]] = []
    pings: list[tuple[float, float, Any]] = []
    statuses: list[tuple[float, float, Any]] = []
    os.kill(redis_pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        with d.client(timeout=30) as c:
            for at in (*probe_at, seconds):
                while time.monotonic() < t0 + at:
                    pings.append((time.monotonic() - t0, *_timed(c.ping)))
                    time.sleep(0.25)
                if at < seconds:
                    probe = Probe(d)
                    probe.start()
                    probes.append((at, probe))
                    statuses.append((time.monotonic() - t0, *_timed(c.status)))
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    return probes, pings, statuses


def _probe_problems(probes: list[tuple[float, Probe]], acked: dict[str, int],
                    seconds: float) -> list[str]:
    problems = []
    for at, probe in probes:
        probe.join(35)
        what = (f"{type(probe.outcome).__name__}: {probe.outcome}"
                if isinstance(probe.outcome, Exception) else f"id {probe.outcome!r}")
        if isinstance(probe.outcome, str):
            acked[probe.outcome] = -1  # acknowledged: it must succeed too
        elapsed = probe.elapsed if probe.elapsed is not None else 99.0
        if not isinstance(probe.outcome, Unavailable) or elapsed > SOCKET_TIMEOUT + MARGIN:
            problems.append(
                f"a fresh submit {at:g} s into a {seconds:g} s freeze took {elapsed:.2f} s "
                f"and ended with {what}; wanted Unavailable within "
                f"{SOCKET_TIMEOUT + MARGIN:g} s (socket_timeout {SOCKET_TIMEOUT:g})")
    return problems


def _back_within(d: Daemon, seconds: float) -> float | None:
    """Seconds until a fresh submit+wait succeeds, or None."""
    t0 = time.monotonic()
    with d.client(timeout=10) as c:
        while time.monotonic() < t0 + seconds:
            try:
                c.wait(c.submit("add", {"a": 0, "b": 0}), timeout=5)
                return time.monotonic() - t0
            except JobsupError:
                time.sleep(0.1)
    return None


def _outcome_problems(d: Daemon, acked: dict[str, int]) -> list[str]:
    """Every acknowledged job ends succeeded, exactly once, none lost."""
    with d.client(timeout=30) as c:
        try:
            jobs = c.wait_many(list(acked), timeout=30)
        except JobsupError as exc:
            return [f"waiting for the {len(acked)} acknowledged jobs failed: "
                    f"{type(exc).__name__}: {exc}"]
    problems = []
    for job in jobs:
        n = acked[job.id]
        done = [h for h in job.history if h.get("status") == "succeeded"]
        if job.status != "succeeded" or len(done) != 1 or job.result != n + 1:
            problems.append(f"acknowledged job {job.id} (n={n}) ended {job.status}, result "
                            f"{job.result!r}, {len(done)} succeeded entries; "
                            f"history {job.history}")
    return problems


@pytest.mark.timeout(120)
def test_frozen_redis_fails_submits_fast_and_recovers_without_loss(daemon_factory,
                                                                   redis_server):
    d = daemon_factory(redis={"socket_timeout": SOCKET_TIMEOUT})
    redis_pid = redis_server.proc.pid
    load = Load(d)
    load.start()
    problems: list[str] = []
    try:
        wait_for(lambda: len(load.acked) >= 20, 20, 0.05, "the load to get going")
        probes, pings, statuses = _freeze(d, redis_pid, FREEZE, (0.0, 0.3, 1.5, 3.0, 6.0))
        problems += _probe_problems(probes, load.acked, FREEZE)
        # The loop keeps serving: a ping needs no Redis; a status may spend one
        # socket_timeout asking Redis how it is, behind at most one other.
        if slow := _slow(pings, SOCKET_TIMEOUT + MARGIN):
            problems.append(f"ping during the freeze was slow or failed "
                            f"(at s, took s, outcome): {slow}; of {len(pings)} pings")
        if slow := _slow(statuses, 2 * SOCKET_TIMEOUT + MARGIN):
            problems.append(f"status during the freeze was slow or failed "
                            f"(at s, took s, outcome): {slow}")
        back = _back_within(d, 10)
        if back is None:
            problems.append("no submit+wait succeeded within 10 s of SIGCONT")
        else:
            # Once more, briefly: a submit that arrives before anything in the daemon has
            # touched the frozen Redis is the case a slow timer can hide.
            n = len(load.acked)
            wait_for(lambda: len(load.acked) >= n + 10, 20, 0.05, "the load to resume")
            probes, _, _ = _freeze(d, redis_pid, 3.0, (0.0,))
            problems += _probe_problems(probes, load.acked, 3.0)
            if _back_within(d, 10) is None:
                problems.append("no submit+wait succeeded within 10 s of the second SIGCONT")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(redis_pid, signal.SIGCONT)
        load.stop.set()
        load.join(40)
    acked = dict(load.acked)
    problems += _outcome_problems(d, acked)
    if load.other:
        problems.append(f"the load saw unexpected errors: {load.other[:5]}")
    assert not problems, "\n".join(
        [f"{len(acked)} submits acknowledged, {load.refused} refused", *problems])


@pytest.mark.timeout(90)
def test_reads_of_a_frozen_redis_do_not_hold_the_loop(daemon_factory, redis_server):
    """A read that Redis does not answer (get, jobs, status, wait) waits off the loop:
    requests that need no Redis are answered meanwhile, and the read fails with
    Unavailable within about socket_timeout."""
    timeout = 3.0
    d = daemon_factory(redis={"socket_timeout": timeout})
    with d.client(timeout=10) as c:
        jid = c.submit("add", {"a": 1, "b": 1})
        c.wait(jid, timeout=10)
    redis_pid = redis_server.proc.pid
    ended: dict[str, tuple[float, Any]] = {}

    def read(name: str, call) -> None:
        with d.client(timeout=30) as rc:
            try:
                out: Any = call(rc)
            except JobsupError as exc:
                out = exc
            ended[name] = (time.monotonic(), out)

    reads = {"get": lambda rc: rc.get(jid), "jobs": lambda rc: rc.jobs(limit=5),
             "status": lambda rc: rc.status()}
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        threads = [threading.Thread(target=read, args=item, daemon=True)
                   for item in reads.items()]
        for t in threads:
            t.start()
        time.sleep(0.3)
        pings = []
        with d.client(timeout=10) as c:
            for _ in range(5):
                t0 = time.monotonic()
                c.ping()
                pings.append(time.monotonic() - t0)
        pinged = time.monotonic()
        for t in threads:
            t.join(4 * timeout + 5)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    problems = []
    if max(pings) > timeout * 0.8:  # the reads hold nothing: far below their timeout
        problems.append(f"pings took {pings} while reads were out (socket_timeout {timeout})")
    for name in reads:
        if name not in ended:
            problems.append(f"{name} never answered")
            continue
        at, out = ended[name]
        if at < pinged:
            problems.append(f"{name} answered before the pings ({out!r}): Redis was frozen")
        if at - began > 3 * timeout + MARGIN:
            problems.append(f"{name} took {at - began:.1f} s (socket_timeout {timeout})")
        if name != "status" and not isinstance(out, Unavailable):
            problems.append(f"{name} during the freeze gave {out!r}, wanted Unavailable")
    with d.client(timeout=10) as c:
        wait_for(lambda: _answers(c, jid), 20, 0.1, "get to work again after SIGCONT")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(60)
def test_an_idle_daemon_finds_redis_back_after_a_failed_read(daemon_factory, redis_server):
    """A read that timed out marks Redis away while nothing is being written: the daemon
    must find out by itself that Redis is back, not wait for a write that it refuses to
    make while Redis is away."""
    d = daemon_factory(redis={"socket_timeout": 1.0, "retry_interval": 0.2})
    with d.client(timeout=10) as c:
        jid = c.submit("add", {"a": 1, "b": 1})
        c.wait(jid, timeout=10)
        time.sleep(0.5)  # nothing in flight: the daemon is idle
        redis_pid = redis_server.proc.pid
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            with pytest.raises(Unavailable):
                c.get(jid)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        time.sleep(1.0)  # a write that was out would have come back by now
        wait_for(lambda: _answers(c, jid), 5, 0.1, "get to work again after SIGCONT")
        assert c.run("add", {"a": 2, "b": 3}, timeout=10).result == 5


def _answers(c, jid: str) -> bool:
    try:
        return c.get(jid).status == "succeeded"
    except Unavailable:
        return False


# -- 4. a bad request is not an outage --------------------------------------------------------
@pytest.mark.timeout(90)
def test_malformed_cursor_is_a_request_error_and_submits_keep_working(daemon_factory):
    d = daemon_factory()
    problems: list[str] = []
    with d.client(timeout=10) as c:
        c.wait(c.submit("add", {"a": 1, "b": 1}), timeout=10)
        # A well-formed cursor whose job is gone is no error: the listing resumes by time.
        assert isinstance(c.jobs(cursor="1700000000.5:zzzz"), list)
        for cursor in ("abc:x", "garbage", "12abc:0000"):
            try:
                c.jobs(cursor=cursor)
                problems.append(f"jobs(cursor={cursor!r}) raised nothing")
            except (BadRequest, ValidationError):
                pass
            except JobsupError as exc:
                problems.append(f"jobs(cursor={cursor!r}) raised {type(exc).__name__}: {exc}; "
                                "wanted BadRequest or ValidationError")
            for n in range(20):
                try:
                    job = c.wait(c.submit("add", {"a": n, "b": 1}), timeout=10)
                except JobsupError as exc:
                    problems.append(f"submit+wait {n + 1}/20 right after jobs(cursor="
                                    f"{cursor!r}) raised {type(exc).__name__}: {exc}")
                    break
                if job.status != "succeeded" or job.result != n + 1:
                    problems.append(f"submit+wait {n + 1}/20 after cursor {cursor!r}: {job}")
                    break
    assert not problems, "\n".join(problems)


# -- 5. waits are bounded per client and dropped when the client goes away --------------------
def _waiters(c) -> int:
    st = c.status()
    assert "waiters" in st, (f"Client.status() has no 'waiters' field (the number of waits "
                             f"the daemon holds); its keys: {sorted(st)}")
    return int(st["waiters"])


def _settle_waiters(c, done, timeout: float, what: str) -> int:
    """Poll ``Client.status()["waiters"]`` until ``done(count)``; fail with the last count."""
    deadline = time.monotonic() + timeout
    while True:
        count = _waiters(c)
        if done(count):
            return count
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; the daemon "
                        f"holds {count} wait(s)")
        time.sleep(0.05)


def _never_finishing(c) -> str:
    """A job that stays scheduled for an hour: waits on it are held."""
    jid = c.submit("noop", None, delay=3600)
    assert c.get(jid).status == "scheduled"
    return jid


def _dealer(d: Daemon) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(d.endpoint)
    return ctx, sock


def _wait_request(rid: int, jid: str) -> bytes:
    return msgpack.packb({"v": 1, "op": "wait", "rid": rid, "ids": [jid]})


_CLIENT_SCRIPT = """
import sys, threading
from supervisord import Client
endpoint, jid, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def wait():
    with Client(endpoint) as c:
        c.wait(jid)  # no timeout: held until the job ends
threads = [threading.Thread(target=wait) for _ in range(n)]
for t in threads:
    t.start()
print("waiting", flush=True)
for t in threads:
    t.join()
"""


@pytest.mark.timeout(60)
def test_waits_of_a_killed_client_process_are_dropped(daemon_factory):
    d = daemon_factory()
    with d.client() as c:
        jid = _never_finishing(c)
        base = _waiters(c)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-c", _CLIENT_SCRIPT, d.endpoint, jid, "4"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _settle_waiters(c, lambda n: n >= base + 4, 15,
                            f"the other process's 4 waits to be held (before: {base})")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            _settle_waiters(c, lambda n: n == base, 10,
                            f"the SIGKILLed client's waits to be dropped (back to {base})")
        finally:
            if proc.poll() is None:  # not reaped yet: the pid is still this process's
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.mark.timeout(60)
def test_waits_of_a_closed_client_are_dropped(daemon_factory):
    d = daemon_factory()
    with d.client() as c:
        jid = _never_finishing(c)
        base = _waiters(c)
        ctx, sock = _dealer(d)
        try:
            for rid in range(50):
                sock.send(_wait_request(rid, jid))
            _settle_waiters(c, lambda n: n >= base + 50, 15,
                            f"50 waits to be held (before: {base})")
        finally:
            sock.close(linger=0)
            ctx.term()
        _settle_waiters(c, lambda n: n == base, 10,
                        f"the closed client's waits to be dropped (back to {base})")
        # The daemon still serves waits of other clients.
        assert c.wait(c.submit("add", {"a": 2, "b": 3}), timeout=10).result == 5


@pytest.mark.timeout(90)
def test_waits_of_one_client_are_bounded(daemon_factory):
    d = daemon_factory()
    n, most_kept = 20_000, 10_000
    with d.client(timeout=20) as c:
        jid = _never_finishing(c)
        ctx, sock = _dealer(d)
        try:
            for rid in range(n):
                sock.send(_wait_request(rid, jid))
            errors: dict[str, int] = {}
            samples: list[str] = []
            answered, oks = 0, 0
            quiet_until = time.monotonic() + 8  # replies are read until 3 s of quiet
            while time.monotonic() < quiet_until:
                if not sock.poll(200):
                    continue
                reply = msgpack.unpackb(sock.recv(), raw=False)
                answered += 1
                quiet_until = max(quiet_until, time.monotonic() + 3)
                if reply.get("ok"):
                    oks += 1
                    continue
                err = reply.get("error") or {}
                errors[str(err.get("code"))] = errors.get(str(err.get("code")), 0) + 1
                if len(samples) < 3:
                    samples.append(str(err.get("message")))
            assert answered >= n - most_kept, (
                f"one connection sent {n} waits on a job that does not end; the daemon "
                f"answered {answered} of them ({oks} ok, errors by code {errors}); wanted "
                f"at least {n - most_kept} refused with a clear error (at most {most_kept} "
                "waits kept per client)")
            assert oks == 0, f"{oks} waits on an unfinished job were answered ok"
            assert "internal" not in errors and "error" not in errors, (errors, samples)
            assert all(m and m != "None" for m in samples), samples
            kept = _waiters(c)
            assert 0 < kept <= most_kept, f"the daemon holds {kept} waits of one client"
            # Other clients are not refused because of that one.
            with d.client(timeout=10) as other:
                assert other.wait(other.submit("add", {"a": 1, "b": 1}), timeout=10).result == 2
        finally:
            sock.close(linger=0)
            ctx.term()
        _settle_waiters(c, lambda n: n == 0, 10, "the closed flood's waits to be dropped")


@pytest.mark.timeout(90)
def test_a_connection_on_a_reused_fd_keeps_its_waits(daemon_factory):
    """A closed connection's fd is soon another's: the late close event of the first must
    not drop the waits of the second (it did once, right after a daemon restart)."""
    d = daemon_factory()
    with d.client() as c:
        jid = _never_finishing(c)
    stop = threading.Event()

    def keep_busy() -> None:  # a busy loop reads its monitor later: the race is wider
        with d.client(timeout=30) as busy:
            while not stop.is_set():
                busy.submit_many("noop", [None] * 2000)

    loader = threading.Thread(target=keep_busy, daemon=True)
    loader.start()
    try:
        _reuse_fds(d, jid)
    finally:
        stop.set()
        loader.join(30)


def _reuse_fds(d: Daemon, jid: str) -> None:
    for n in range(30):
        with d.client() as first:
            first.call("ping")
        with d.client(timeout=10) as second:
            t0 = time.monotonic()
            with pytest.raises(Timeout):  # the daemon answers the wait when it times out
                second.wait(jid, timeout=0.3)
            assert time.monotonic() - t0 < 5, f"round {n}: the wait was dropped"
