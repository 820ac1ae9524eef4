"""supervisord.zmtp: the client's own ZMTP 3 DEALER against libzmq sockets and
against a hostile fake peer."""

from __future__ import annotations

import contextlib
import queue
import random
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from supervisord.client import Client
from supervisord.errors import JobsupError
from supervisord.zmtp import _COMMAND, _GREETING, _LONG, _MORE, Dealer, ZmtpError, _command, _frame
from tests.conftest import Daemon

_READY = _command(b"READY", b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"ROUTER")
HANDSHAKE = _GREETING + _READY  # what a libzmq ROUTER sends a DEALER


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def router(ctx: zmq.Context, endpoint: str, kind: int = zmq.ROUTER) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock


class FakePeer:
    """A unix-socket server whose every connection plays one script of steps:
    bytes are sent, a float is a pause, ``"hang"`` keeps the connection open
    (reading and dropping what the client sends) until the client closes it;
    after the last step the server closes its end."""

    def __init__(self, path: Path) -> None:
        self.endpoint = f"ipc://{path}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(64)
        self.listener.settimeout(0.05)
        self.scripts: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.threads[0].start()

    def play(self, *steps: bytes | float | str) -> str:
        self.scripts.put(steps)
        return self.endpoint

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)
        self.listener.close()
        assert not any(t.is_alive() for t in self.threads), "a fake peer thread hung"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:  # the accept timed out
                continue
            try:
                steps = self.scripts.get_nowait()
            except queue.Empty:
                steps = ()
            thread = threading.Thread(target=self._play, args=(conn, steps), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _play(self, conn: socket.socket, steps: tuple) -> None:
        with conn, contextlib.suppress(OSError):  # the client may give up first
            conn.settimeout(0.05)
            for step in steps:
                if self.stopping.is_set():
                    return
                if isinstance(step, bytes):
                    conn.sendall(step)
                elif step == "hang":
                    while not self.stopping.is_set():
                        try:
                            if not conn.recv(65536):
                                return
                        except TimeoutError:
                            continue
                else:
                    time.sleep(step)
            conn.setblocking(False)
            while conn.recv(65536):  # read what the client sent, so that closing
                pass  # is a clean end of stream rather than a reset


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[FakePeer]:
    fake = FakePeer(tmp_path / "fake.sock")
    yield fake
    fake.stop()


def trickle(data: bytes, pause: float) -> list[bytes | float]:
    steps: list[bytes | float] = []
    for i in range(len(data)):
        steps += [data[i:i + 1], pause]
    return steps


# -- against libzmq ---------------------------------------------------------------

@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", [0, 1, 255, 256, 70_000, 3_000_000])
def test_request_and_reply_of_any_size_over_ipc(ctx, tmp_path: Path, size: int):
    endpoint = f"ipc://{tmp_path}/r.sock"
    server = router(ctx, endpoint)
    dealer = Dealer(endpoint, timeout=5)
    try:
        body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        dealer.send(body)
        identity, got = server.recv_multipart()
        assert got == body
        server.send_multipart([identity, body[::-1]])
        assert dealer.poll(5000)
        assert dealer.recv() == body[::-1]
    finally:
        dealer.close()


class PyzmqDealer:
    """pyzmq's DEALER, set up as ``Client`` sets it up, for side-by-side checks."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


@pytest.fixture(params=["zmtp", "pyzmq"])
def dealer_and_router(request, ctx) -> Iterator[tuple]:
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    dealer = Dealer(endpoint, timeout=5) if request.param == "zmtp" else PyzmqDealer(ctx,
                                                                                    endpoint)
    yield dealer, server
    dealer.close()
    server.close(linger=0)


@pytest.mark.timeout(20)
def test_a_multipart_reply_comes_whole_as_from_pyzmq(dealer_and_router):
    dealer, server = dealer_and_router
    dealer.send(b"hello")
    identity, got = server.recv_multipart()
    assert got == b"hello"
    big = b"b" * 100_000
    server.send_multipart([identity, b"first", b"", big, b"last"])
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"first", b"", big, b"last"]
    assert not dealer.poll(50)  # nothing more: a timeout, not an error
    server.send_multipart([identity, b"one", b"two", b"three"])
    assert dealer.poll(5000)
    assert dealer.recv() == b"one"  # recv takes a frame at a time, as pyzmq's does
    assert dealer.poll(0)
    assert dealer.recv_multipart() == [b"two", b"three"]  # the rest of that message
    server.send_multipart([identity, b"single"])
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"single"]


def _serve_one(server: zmq.Socket, extra: list[bytes]) -> None:
    if server.poll(5000):
        identity, frame = server.recv_multipart()
        rid = msgpack.unpackb(frame, raw=False)["rid"]
        reply = msgpack.packb({"v": 1, "rid": rid, "ok": True, "result": {"pong": 1}})
        server.send_multipart([identity, reply, *extra])


@pytest.mark.timeout(20)
@pytest.mark.parametrize("transport", ["auto", "zmq"])
def test_the_client_rejects_a_reply_of_several_frames(ctx, tmp_path: Path, transport: str):
    endpoint = f"ipc://{tmp_path}/r.sock"
    server = router(ctx, endpoint)
    with Client(endpoint, timeout=5, transport=transport) as c:
        for extra, expect_error in (([], False), ([b"junk"], True), ([], False)):
            thread = threading.Thread(target=_serve_one, args=(server, extra))
            thread.start()
            try:
                if expect_error:
                    with pytest.raises(JobsupError, match="with 2 frames, not one"):
                        c.ping()
                else:
                    assert c.ping() == {"pong": 1}
            finally:
                thread.join(10)
        assert isinstance(c._sock, Dealer) == (transport == "auto")
    server.close(linger=0)


@pytest.mark.timeout(20)
def test_a_message_over_the_cap_is_refused_and_closes_the_connection(ctx, tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/r.sock"
    server = router(ctx, endpoint)
    cap = 1 << 20
    for frames, fits in (([b"x" * cap], True),
                         ([b"x" * (cap + 1)], False),
                         ([b"x" * (cap // 2)] * 3, False)):  # the frames together count
        dealer = Dealer(endpoint, timeout=5, max_message=cap)
        try:
            dealer.send(b"hello")
            identity, _ = server.recv_multipart()
            server.send_multipart([identity, *frames])
            if fits:
                assert dealer.poll(5000) and dealer.recv_multipart() == frames
                continue
            with pytest.raises(ZmtpError, match=r"over this client's cap of 1 MiB"):
                dealer.poll(5000)
            assert dealer.closed
            with pytest.raises(ZmtpError, match="closed"):
                dealer.send(b"again")
        finally:
            dealer.close()
    server.close(linger=0)


@pytest.mark.timeout(20)
def test_a_closed_router_is_noticed_before_the_next_request(ctx, tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/r.sock"
    server = router(ctx, endpoint)
    dealer = Dealer(endpoint, timeout=5)
    dealer.send(b"one")
    server.recv_multipart()
    server.close(linger=0)
    with pytest.raises(ZmtpError, match="closed the connection"):
        for _ in range(100):  # the close reaches the dealer's socket within moments
            dealer.send(b"two")
            dealer.poll(20)
    dealer.close()


@pytest.mark.timeout(20)
def test_wrong_peer_and_no_peer_are_clear_errors(ctx, tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/pub.sock"
    pub = router(ctx, endpoint, zmq.PUB)
    with pytest.raises(ZmtpError, match="PUB socket, not a jobsup daemon's ROUTER"):
        Dealer(endpoint, timeout=5)
    pub.close(linger=0)
    with pytest.raises(OSError):
        Dealer(f"ipc://{tmp_path}/nobody.sock", timeout=1)


@pytest.mark.timeout(20)
def test_a_curve_daemon_asks_for_keys(ctx, tmp_path: Path):
    server = ctx.socket(zmq.ROUTER)
    server.curve_server = True
    server.curve_secretkey = zmq.curve_keypair()[1]
    endpoint = f"ipc://{tmp_path}/curve.sock"
    server.bind(endpoint)
    with pytest.raises(ZmtpError, match="CurveZMQ"):
        Dealer(endpoint, timeout=5)
    server.close(linger=0)


@pytest.mark.timeout(20)
def test_heartbeat_pings_are_answered(ctx, tmp_path: Path):
    """A ROUTER with ZMTP heartbeats closes a peer that stops answering its PINGs."""
    endpoint = f"ipc://{tmp_path}/hb.sock"
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    server.setsockopt(zmq.HEARTBEAT_IVL, 50)
    server.setsockopt(zmq.HEARTBEAT_TIMEOUT, 150)
    server.bind(endpoint)
    dealer = Dealer(endpoint, timeout=5)
    try:
        dealer.send(b"hello")
        identity, _ = server.recv_multipart()
        assert not dealer.poll(1000)  # idle for many heartbeat intervals, answering PINGs
        server.send_multipart([identity, b"still connected"])
        assert dealer.poll(5000)
        assert dealer.recv() == b"still connected"
    finally:
        dealer.close()
        server.close(linger=0)


@pytest.mark.timeout(20)
def test_a_poll_of_zero_is_a_timeout_not_an_error(ctx, tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/r.sock"
    server = router(ctx, endpoint)
    dealer = Dealer(endpoint, timeout=5)
    try:
        assert not dealer.poll(0)
        dealer.send(b"ping")
        identity, _ = server.recv_multipart()
        server.send_multipart([identity, b"pong"])
        assert dealer.poll(5000) and dealer.recv() == b"pong"
        assert not dealer.poll(0)
        dealer.send(b"x" * 3_000_000)  # a poll of 0 leaves the socket non-blocking:
        assert server.recv_multipart()[1] == b"x" * 3_000_000  # a big send still goes whole
    finally:
        dealer.close()
        server.close(linger=0)


# -- against a fake peer ----------------------------------------------------------

@pytest.mark.timeout(20)
def test_one_deadline_spans_the_reads_of_a_poll(peer: FakePeer):
    """A peer that sends a byte every 20 ms cannot make poll(200 ms) last longer."""
    body = bytes(range(60))
    endpoint = peer.play(HANDSHAKE, *trickle(_frame(0, body), 0.02), "hang")
    dealer = Dealer(endpoint, timeout=5)
    try:
        t0 = time.monotonic()
        assert not dealer.poll(200)
        assert time.monotonic() - t0 < 0.45  # not the 1.2 s the whole frame takes
        deadline = time.monotonic() + 10
        while not dealer.poll(200):  # what came so far is kept, not lost
            assert time.monotonic() < deadline
        assert dealer.recv_multipart() == [body]
    finally:
        dealer.close()


@pytest.mark.timeout(20)
def test_one_deadline_spans_the_handshake(peer: FakePeer):
    endpoint = peer.play(*trickle(HANDSHAKE, 0.02), "hang")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="handshake"):
        Dealer(endpoint, timeout=0.3)
    assert time.monotonic() - t0 < 0.6  # not the 1.8 s the handshake takes


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("error", "reason"), [(_command(b"ERROR", b"\x06denied"), "denied"),
                                               (_command(b"ERROR"), "(none given)"),
                                               (_command(b"ERROR", b"\xff"), "")])
def test_an_error_command_in_the_handshake_is_a_clear_error(peer: FakePeer, error: bytes,
                                                              reason: str):
    endpoint = peer.play(_GREETING + error, "hang")
    with pytest.raises(ZmtpError, match=rf"refused the connection: {re.escape(reason)}$"):
        Dealer(endpoint, timeout=5)


@pytest.mark.timeout(20)
def test_an_error_command_after_the_handshake_closes_the_connection(peer: FakePeer):
    dealer = Dealer(peer.play(HANDSHAKE, _command(b"ERROR", b"\x04gone"), "hang"), timeout=5)
    with pytest.raises(ZmtpError, match="the daemon sent a ZMTP ERROR: gone"):
        dealer.poll(5000)
    assert dealer.closed


@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", [2**64 - 1, 2**63, 2**40, 257 * 2**20])
def test_a_huge_frame_length_is_refused_before_any_allocation(peer: FakePeer, size: int):
    endpoint = peer.play(HANDSHAKE, bytes((_LONG,)) + size.to_bytes(8, "big") + b"abc", "hang")
    dealer = Dealer(endpoint, timeout=5)  # with the default cap, 256 MiB
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(ZmtpError, match="over this client's cap of 256 MiB"):
            dealer.poll(5000)
        assert time.monotonic() - t0 < 1
        assert tracemalloc.get_traced_memory()[1] < 4 << 20
    finally:
        tracemalloc.stop()
        dealer.close()


@pytest.mark.timeout(20)
def test_a_claimed_length_under_the_cap_is_not_allocated_up_front(peer: FakePeer):
    """A frame that claims 200 MiB and brings 10 bytes costs 10 bytes, not 200 MiB."""
    header = bytes((_LONG,)) + (200 << 20).to_bytes(8, "big")
    endpoint = peer.play(HANDSHAKE, header + b"0123456789", "hang")
    dealer = Dealer(endpoint, timeout=5)
    tracemalloc.start()
    try:
        assert not dealer.poll(200)
        assert tracemalloc.get_traced_memory()[1] < 4 << 20
    finally:
        tracemalloc.stop()
        dealer.close()


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _random_frames(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randint(1, 6)):
        flags = rng.choice([0, _MORE, _COMMAND, _LONG, rng.randrange(256)])
        body = rng.randbytes(rng.choice([0, 1, 5, 300, 2000]))
        head = bytes((flags,))
        if flags & _LONG:
            head += len(body).to_bytes(8, "big")
        else:
            body = body[:255]
            head += bytes((len(body),))
        out += head + body
    return out


def _fuzz_case(rng: random.Random, cap: int) -> tuple[str, list]:
    reply = _frame(_MORE, b"a") + _frame(0, rng.randbytes(rng.choice([3, 300, 5000])))
    kind = rng.choice(["random bytes", "mutated greeting", "cut handshake", "cut frames",
                       "huge length", "random frames", "random junk", "mutated ready",
                       "valid"])
    if kind == "random bytes":
        data = rng.randbytes(rng.randint(0, 300))
    elif kind == "mutated greeting":
        data = _mutate(_GREETING, rng) + _READY + reply
    elif kind == "cut handshake":
        data = HANDSHAKE[:rng.randrange(len(HANDSHAKE))]
    elif kind == "cut frames":
        data = HANDSHAKE + reply[:rng.randrange(len(reply))]
    elif kind == "huge length":
        size = rng.choice([2**64 - 1, 2**63, cap + 1, rng.getrandbits(64)])
        data = HANDSHAKE + bytes((rng.choice([0, _MORE, _COMMAND]) | _LONG,)) + \
            size.to_bytes(8, "big") + rng.randbytes(rng.randint(0, 50))
    elif kind == "random frames":
        data = HANDSHAKE + _random_frames(rng)
    elif kind == "random junk":
        data = HANDSHAKE + rng.randbytes(rng.randint(1, 3000))
    elif kind == "mutated ready":
        data = _GREETING + _mutate(_READY, rng) + reply
    else:
        data = HANDSHAKE + reply
    steps: list = [data]
    if rng.random() < 0.15:  # some in pieces, with pauses
        cuts = sorted(rng.sample(range(len(data) + 1), min(3, len(data) + 1)))
        steps = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        steps = [s for part in steps for s in (part, 0.005)]
    if kind == "valid" or rng.random() < 0.1:
        steps.append("hang")
    return kind, steps


@pytest.mark.timeout(60)
def test_framing_fuzz_never_hangs_balloons_or_raises_the_unexpected(peer: FakePeer):
    """Whatever the peer sends, a Dealer raises ZmtpError, another ConnectionError
    or TimeoutError, or times out its poll; within its deadline, in bounded memory."""
    rng = random.Random(20240611)
    cap = 1 << 20
    outcomes: dict[str, int] = {}
    tracemalloc.start()
    try:
        for case in range(200):
            kind, steps = _fuzz_case(rng, cap)
            peer.play(*steps)
            t0 = time.monotonic()
            try:
                dealer = Dealer(peer.endpoint, timeout=0.2, max_message=cap)
                try:
                    dealer.send(b"request")
                    for _ in range(2):
                        if dealer.poll(50):
                            dealer.recv_multipart()
                    outcome = "no error"
                finally:
                    dealer.close()
            except ZmtpError:
                outcome = "ZmtpError"
            except (ConnectionError, TimeoutError) as exc:
                outcome = type(exc).__name__
            except Exception as exc:
                pytest.fail(f"case {case} ({kind}, {steps!r:.300}) raised {exc!r}")
            elapsed = time.monotonic() - t0
            assert elapsed < 1.0, f"case {case} ({kind}) took {elapsed:.2f}s"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"the fuzz peaked at {peak / 2**20:.0f} MiB"
    assert outcomes.get("ZmtpError", 0) > 50, outcomes
    assert outcomes.get("no error", 0) > 10, outcomes
    print(outcomes)


# -- against a real daemon --------------------------------------------------------

@pytest.mark.timeout(60)
def test_both_transports_against_a_real_daemon(shared: Daemon):
    for transport, kind in (("auto", Dealer), ("zmq", zmq.Socket)):
        with shared.client(transport=transport) as c:
            assert c.ping()["version"]
            assert c.run("echo", {"x": "y" * 100_000}, wait_timeout=20).result == {
                "x": "y" * 100_000}
            assert isinstance(c._sock, kind)
    with pytest.raises(ValueError, match="transport"):
        Client(shared.endpoint, transport="zmtp")
