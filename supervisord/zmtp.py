"""The client's request socket: a ZeroMQ DEALER that speaks ZMTP 3 on a plain socket.

libzmq passes every message through an I/O thread, so each request and each
reply crosses two threads in the client before it reaches the wire.  A client
that sends one request and waits for its reply gains nothing from that thread
and pays a thread wake-up each way: about 0.1 ms of a 1 ms round trip on a
small VM.  This peer writes and reads the socket itself.  The daemon keeps its
libzmq ROUTER, so any ZeroMQ client in any language can still talk to it.

Only the NULL mechanism is spoken (ipc:// and tcp:// endpoints without
CurveZMQ); ``Client`` uses pyzmq for everything else.  See ZeroMQ RFC 23
(ZMTP 3.0) for the wire format.
"""

from __future__ import annotations

import select
import socket
import time

_GREETING = (b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
             + b"\x00" + bytes(31))
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04


class ZmtpError(ConnectionError):
    """The daemon's end does not speak what this peer expects, or went away."""


def supported(endpoint: str) -> bool:
    return endpoint.startswith(("ipc://", "tcp://"))


def _open(endpoint: str, timeout: float) -> socket.socket:
    scheme, _, address = endpoint.partition("://")
    if scheme == "ipc":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _frame(flags: int, body: bytes) -> bytes:
    if len(body) < 256:
        return bytes((flags, len(body))) + body
    return bytes((flags | _LONG,)) + len(body).to_bytes(8, "big") + body


def _command(name: bytes, data: bytes = b"") -> bytes:
    return _frame(_COMMAND, bytes((len(name),)) + name + data)


def _properties(data: bytes) -> dict[str, bytes]:
    props, at = {}, 0
    while at < len(data):
        n = data[at]
        name = data[at + 1:at + 1 + n].decode("ascii", "replace")
        at += 1 + n
        size = int.from_bytes(data[at:at + 4], "big")
        props[name.lower()] = data[at + 4:at + 4 + size]
        at += 4 + size
    return props


class Dealer:
    """One connection to a ROUTER, with pyzmq's ``send``/``poll``/``recv``/``close``.

    Not thread-safe, like a zmq socket.  A broken connection raises ``ZmtpError``;
    the caller opens a new one.
    """

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.sock = _open(endpoint, timeout)
        self.buf = bytearray()
        self.ready: list[bytes] | None = None  # a whole message read by poll()
        self._parts: list[bytes] = []
        try:
            self.sock.sendall(_GREETING)
            try:
                greeting = self._take(64, timeout)
            except ZmtpError:
                if len(self.buf) < 32:  # libzmq hangs up on a mechanism it does not use
                    raise ZmtpError(f"{endpoint} closed the connection during the ZMTP "
                                    "handshake; if the daemon uses CurveZMQ, give the client "
                                    "its keys") from None
                greeting = bytes(self.buf[:64]).ljust(64, b"\x00")
            if greeting[0] != 0xFF or greeting[9] & 0x01 != 0x01 or greeting[10] < 3:
                raise ZmtpError(f"{endpoint} does not speak ZMTP 3 (is it a jobsup daemon?)")
            mechanism = bytes(greeting[12:32]).rstrip(b"\x00").decode("ascii", "replace")
            if mechanism != "NULL":
                raise ZmtpError(f"{endpoint} wants the {mechanism} security mechanism; "
                                "give the client the daemon's CurveZMQ keys")
            self.sock.sendall(_command(b"READY", b"\x0bSocket-Type" + (6).to_bytes(4, "big")
                                       + b"DEALER"))
            name, data = self._read_command(timeout)
            if name == b"ERROR":
                raise ZmtpError(f"{endpoint} refused the connection: "
                                f"{data[1:1 + data[0]].decode(errors='replace')}")
            kind = _properties(data).get("socket-type", b"")
            if name != b"READY" or kind != b"ROUTER":
                raise ZmtpError(f"{endpoint} is a {kind.decode(errors='replace') or '?'} "
                                "socket, not a jobsup daemon's ROUTER")
        except (OSError, IndexError):
            self.close()
            raise

    # -- pyzmq's surface ----------------------------------------------------------
    def send(self, body: bytes) -> None:
        if self._stale():
            raise ZmtpError("the daemon closed the connection")
        self.sock.sendall(_frame(0, body))

    def poll(self, timeout_ms: float | None = None) -> bool:
        """Wait up to ``timeout_ms`` for a whole message (None: for ever)."""
        if self.ready is None:
            self.ready = self._message(None if timeout_ms is None else timeout_ms / 1000)
        return self.ready is not None

    def recv(self) -> bytes:
        if not self.poll(None):
            raise ZmtpError("no message")
        message, self.ready = self.ready, None
        return message[-1]

    def close(self, linger: int = 0) -> None:
        self.sock.close()

    # -- framing ------------------------------------------------------------------
    def _stale(self) -> bool:
        """A daemon that restarted since the last request has closed this connection;
        a request written to it now would be lost, so open a new one first."""
        if self.buf or self.ready is not None:
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if not poller.poll(0):
            return False
        try:
            data = self.sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        self.buf += data  # a late reply to a request that timed out
        return not data

    def _fill(self, n: int, timeout: float | None) -> bool:
        """Read until ``n`` bytes are buffered; False if ``timeout`` passes first."""
        while len(self.buf) < n:
            if timeout != self.sock.gettimeout():
                self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(max(65536, n - len(self.buf)))
            except (TimeoutError, BlockingIOError):  # a timeout of 0 makes the socket non-blocking
                return False
            if not data:
                raise ZmtpError("the daemon closed the connection")
            self.buf += data
        return True

    def _take(self, n: int, timeout: float | None) -> bytes:
        if not self._fill(n, timeout):
            raise TimeoutError("the daemon did not complete the ZMTP handshake")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _next_frame(self, timeout: float | None) -> tuple[int, bytes] | None:
        if not self._fill(2, timeout):
            return None
        flags = self.buf[0]
        if flags & _LONG:
            if not self._fill(9, timeout):
                return None
            size, head = int.from_bytes(self.buf[1:9], "big"), 9
        else:
            size, head = self.buf[1], 2
        if not self._fill(head + size, timeout):
            return None
        body = bytes(self.buf[head:head + size])
        del self.buf[:head + size]
        return flags, body

    def _read_command(self, timeout: float) -> tuple[bytes, bytes]:
        got = self._next_frame(timeout)
        if got is None:
            raise TimeoutError("the daemon did not complete the ZMTP handshake")
        flags, body = got
        if not flags & _COMMAND:
            raise ZmtpError("expected a ZMTP command during the handshake")
        n = body[0]
        return body[1:1 + n], body[1 + n:]

    def _message(self, timeout: float | None) -> list[bytes] | None:
        """The next whole message, or None if ``timeout`` passes (a partial one is kept)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            got = self._next_frame(left)
            if got is None:
                return None
            flags, body = got
            if flags & _COMMAND:
                if body[1:5] == b"PING":  # heartbeats, should the daemon ever turn them on
                    self.sock.sendall(_command(b"PONG", body[7:]))
                continue
            self._parts.append(body)
            if not flags & _MORE:
                parts, self._parts = self._parts, []
                return parts
