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

What the peer sends is not trusted: a frame header whose length would take a
message over ``max_message`` bytes raises ``ZmtpError`` (and closes the
connection) before anything is allocated for it, the bytes buffered never run
ahead of the bytes received, and one deadline bounds every read of a ``poll``
or of the handshake, however slowly the bytes come.
"""

from __future__ import annotations

import select
import socket
import time

_GREETING = (b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
             + b"\x00" + bytes(31))
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04

DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024
"""The largest message (all its frames together) a ``Dealer`` takes by default."""

_MAX_COMMAND = 64 * 1024  # READY, PING, ERROR: libzmq's are well under 1 KiB
_FRAME_COST = 64  # what Python holds per frame beyond its body, counted against the cap
_CHUNK, _MAX_CHUNK = 65536, 1 << 20  # one recv asks for at least / at most this much
_LATE_BYTES = 4 << 20  # past the deadline, read on only while bytes are already there


class ZmtpError(ConnectionError):
    """The daemon's end does not speak what this peer expects, or went away."""


class _Closed(ZmtpError):
    """The peer closed the connection."""


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


def _reason(data: bytes) -> str:
    """The reason of an ERROR command: a length byte, then the text."""
    return data[1:1 + data[0]].decode(errors="replace") if data else "(none given)"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    power = min((n.bit_length() - 1) // 10, 6)
    return f"{n / 1024 ** power:.4g} {'-KMGTPE'[power]}iB"


class Dealer:
    """One connection to a ROUTER, with pyzmq's ``send``/``poll``/``recv``/
    ``recv_multipart``/``close``.

    ``timeout`` bounds the connect and the whole handshake, and how long a write
    may stall.  ``max_message`` caps what one incoming message may hold, all its
    frames together: a peer that announces more gets a ``ZmtpError`` and the
    connection is closed.  Not thread-safe, like a zmq socket.  A broken
    connection raises ``ZmtpError`` (or another ``ConnectionError``); the caller
    opens a new one.
    """

    def __init__(self, endpoint: str, timeout: float, *,
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        deadline = time.monotonic() + timeout
        self.endpoint = endpoint
        self.max_message = max_message
        self.stall = timeout
        self.sock = _open(endpoint, timeout)
        self.sock.setblocking(False)  # every wait is a poll, bounded by its deadline
        self._readable, self._writable = select.poll(), select.poll()
        self._readable.register(self.sock, select.POLLIN)
        self._writable.register(self.sock, select.POLLOUT)
        self.buf = bytearray()
        self.ready: list[bytes] | None = None  # a whole message read by poll()
        self._parts: list[bytes] = []  # the frames of a message still arriving
        self._held = 0  # what _parts holds, as counted against max_message
        self._late = 0  # bytes read past the deadline of this poll
        try:
            self._write(_GREETING)
            greeting = self._greeting(deadline)
            mechanism = bytes(greeting[12:32]).rstrip(b"\x00").decode("ascii", "replace")
            if mechanism != "NULL":
                shown = mechanism if mechanism.isalnum() else repr(mechanism)
                raise ZmtpError(f"{endpoint} wants the {shown} security mechanism; "
                                "give the client the daemon's CurveZMQ keys")
            self._write(_command(b"READY", b"\x0bSocket-Type" + (6).to_bytes(4, "big")
                                 + b"DEALER"))
            got = self._next_frame(deadline)
            if got is None:
                raise TimeoutError(f"{endpoint} did not complete the ZMTP handshake "
                                   f"within {timeout:g}s")
            flags, body = got
            if not flags & _COMMAND:
                raise ZmtpError(f"{endpoint} sent a message before its READY command "
                                "(is it a jobsup daemon?)")
            name, data = self._split_command(body)
            if name == b"ERROR":
                raise ZmtpError(f"{endpoint} refused the connection: {_reason(data)}")
            kind = _properties(data).get("socket-type", b"") if name == b"READY" else b""
            if kind != b"ROUTER":
                raise ZmtpError(f"{endpoint} is a {kind.decode(errors='replace') or '?'} "
                                "socket, not a jobsup daemon's ROUTER")
        except OSError:
            self.close()
            raise

    # -- pyzmq's surface ----------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def send(self, body: bytes) -> None:
        if self.closed:
            raise ZmtpError("this connection to the daemon is closed")
        if self._stale():
            raise ZmtpError("the daemon closed the connection")
        self._write(_frame(0, body))

    def poll(self, timeout_ms: float | None = None) -> bool:
        """Wait up to ``timeout_ms`` for a whole message (None or negative: for ever).

        One deadline covers every read, so a peer that sends its bytes slowly cannot
        stretch the wait; a partial message is kept for the next call.
        """
        if self.ready is None:
            if self.closed:
                raise ZmtpError("this connection to the daemon is closed")
            forever = timeout_ms is None or timeout_ms < 0
            self.ready = self._message(None if forever else timeout_ms / 1000)
        return self.ready is not None

    def recv(self) -> bytes:
        """The next frame, as pyzmq's ``recv``: a message of several frames gives one
        per call.  Blocks until there is one."""
        if not self.poll(None):
            raise ZmtpError("no message")
        parts = self.ready
        frame = parts.pop(0)
        if not parts:
            self.ready = None
        return frame

    def recv_multipart(self) -> list[bytes]:
        """The next message (or what ``recv`` left of it) as its list of frames."""
        if not self.poll(None):
            raise ZmtpError("no message")
        parts, self.ready = self.ready, None
        return parts

    def close(self, linger: int = 0) -> None:
        self.sock.close()

    # -- I/O ----------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        """Write all of ``data``; a peer that takes no byte for ``stall`` seconds is
        given up on (a frame written in part leaves the stream unusable)."""
        view = memoryview(data)
        while True:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                sent = 0
            if sent == len(view):
                return
            view = view[sent:]
            if not self._writable.poll(self.stall * 1000):
                raise self._broken(f"the daemon took no bytes for {self.stall:g}s")

    def _broken(self, why: str) -> ZmtpError:
        self.close()
        return ZmtpError(f"{self.endpoint}: {why}; closed the connection")

    def _stale(self) -> bool:
        """A daemon that restarted since the last request has closed this connection;
        a request written to it now would be lost, so open a new one first."""
        if self.buf or self.ready is not None or self._parts:
            return False
        if not self._readable.poll(0):
            return False
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            return True
        self.buf += data  # a late reply to a request that timed out
        return not data

    def _fill(self, n: int, deadline: float | None) -> bool:
        """Read until ``n`` bytes are buffered; False if ``deadline`` passes first.

        Past the deadline it still takes bytes that are already there (a poll of 0
        sees a reply that has arrived), up to ``_LATE_BYTES`` per poll."""
        buf = self.buf
        while len(buf) < n:
            late, wait_ms = False, None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self._late > _LATE_BYTES:
                        return False
                    late, left = True, 0.0
                wait_ms = left * 1000
            if not self._readable.poll(wait_ms):
                return False
            try:
                data = self.sock.recv(min(max(_CHUNK, n - len(buf)), _MAX_CHUNK))
            except BlockingIOError:
                continue
            if not data:
                raise _Closed("the daemon closed the connection")
            if late:
                self._late += len(data)
            buf += data
        return True

    # -- framing ------------------------------------------------------------------
    def _greeting(self, deadline: float) -> bytes:
        """The peer's 64-byte greeting, checked a piece at a time as it comes, so that
        something that is not ZMTP 3 is told at once rather than at the deadline."""
        buf, endpoint = self.buf, self.endpoint
        try:
            for need in (10, 11, 64):
                if not self._fill(need, deadline):
                    raise TimeoutError(f"{endpoint} did not complete the ZMTP handshake")
                if buf[0] != 0xFF or buf[9] & 0x01 != 0x01 or (need > 10 and buf[10] < 3):
                    raise ZmtpError(f"{endpoint} does not speak ZMTP 3 "
                                    "(is it a jobsup daemon?)")
        except _Closed:
            if len(buf) < 32:  # libzmq hangs up on a mechanism it does not use
                raise ZmtpError(f"{endpoint} closed the connection during the ZMTP "
                                "handshake; if the daemon uses CurveZMQ, give the client "
                                "its keys") from None
            buf.extend(bytes(64 - len(buf)))
        greeting = bytes(buf[:64])
        del buf[:64]
        return greeting

    def _next_frame(self, deadline: float | None) -> tuple[int, bytes] | None:
        """One frame, or None if ``deadline`` passes first (what came is kept)."""
        buf = self.buf
        if len(buf) < 2 and not self._fill(2, deadline):
            return None
        flags = buf[0]
        if flags & 0xF8 or flags & (_COMMAND | _MORE) == _COMMAND | _MORE:
            raise self._broken(f"a ZMTP frame with flags {flags:#04x} (not ZMTP 3)")
        if flags & _LONG:
            if len(buf) < 9 and not self._fill(9, deadline):
                return None
            size, head = int.from_bytes(buf[1:9], "big"), 9
        else:
            size, head = buf[1], 2
        if flags & _COMMAND:
            if size > _MAX_COMMAND:
                raise self._broken(f"a ZMTP command of {_size(size)}, over the "
                                   f"{_size(_MAX_COMMAND)} a command may hold")
        elif self._held + size > self.max_message:
            raise self._broken(f"a reply frame of {_size(size)} takes the message over "
                               f"this client's cap of {_size(self.max_message)} "
                               "(max_message)")
        end = head + size
        if len(buf) < end and not self._fill(end, deadline):
            return None
        body = bytes(buf[head:end])
        del buf[:end]
        return flags, body

    def _split_command(self, body: bytes) -> tuple[bytes, bytes]:
        if not body or body[0] + 1 > len(body):
            raise self._broken("a malformed ZMTP command")
        n = body[0]
        return body[1:1 + n], body[1 + n:]

    def _message(self, timeout: float | None) -> list[bytes] | None:
        """The next whole message, or None if ``timeout`` passes (a partial one is kept)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._late = 0
        while True:
            got = self._next_frame(deadline)
            if got is None:
                return None
            flags, body = got
            if flags & _COMMAND:
                name, data = self._split_command(body)
                if name == b"PING":  # heartbeats, should the daemon ever turn them on
                    self._write(_command(b"PONG", data[2:18]))
                elif name == b"ERROR":
                    raise self._broken(f"the daemon sent a ZMTP ERROR: {_reason(data)}")
                continue
            self._parts.append(body)
            self._held += len(body) + _FRAME_COST
            if not flags & _MORE:
                parts, self._parts, self._held = self._parts, [], 0
                return parts
