"""supervisord.zmtp: the client's own ZMTP 3 DEALER against libzmq sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from supervisord.zmtp import Dealer, ZmtpError


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


@pytest.mark.timeout(20)
def test_tcp_and_a_multipart_reply(ctx):
    server = ctx.socket(zmq.ROUTER)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    dealer = Dealer(f"tcp://127.0.0.1:{port}", timeout=5)
    try:
        dealer.send(b"hello")
        identity, got = server.recv_multipart()
        assert got == b"hello"
        server.send_multipart([identity, b"first", b"last"])
        assert dealer.recv() == b"last"  # the reply is the last frame
        assert not dealer.poll(50)  # nothing more: a timeout, not an error
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
    finally:
        dealer.close()
