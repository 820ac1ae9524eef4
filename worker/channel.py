"""The link between the master and one worker: msgpack frames over a socketpair.

Each worker gets two Unix socketpairs from the master, inherited at exec (so no
socket or ZeroMQ context crosses a fork): one for jobs and results, one for
heartbeats and cancel requests, served by the worker's heartbeat thread.  A
frame is a 4-byte big-endian length and a msgpack body.

A plain socketpair, not a ZeroMQ ipc socket: a ZeroMQ message passes through
an I/O thread on each side, three wake-ups per direction instead of one, and
on a small VM that was most of a job's round trip (measured in the README).

The worker side blocks; the master side never does: what the socket does not
take at once waits in ``outbox`` until the master's poll says it is writable.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack

_HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 30  # a longer length means the stream is corrupt, not a big result
# The master reads every channel into one buffer: a fresh 64 KiB object per read
# would cost an allocation per message (the master is one thread).
_BUFFER = bytearray(1 << 16)
_VIEW = memoryview(_BUFFER)


class ChannelBroken(Exception):
    """The stream cannot be read any further: its peer closed it."""


class ChannelCorrupt(ChannelBroken):
    """The stream holds something that is not a frame: nothing after it can be trusted."""


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # -- frames ---------------------------------------------------------------
    @staticmethod
    def frame(body: bytes) -> bytes:
        return _HEADER.pack(len(body)) + body

    def _frames(self) -> list[bytes]:
        """Whole frames at the front of ``inbox``, removed from it."""
        frames, at, size = [], 0, len(self.inbox)
        view = memoryview(self.inbox)
        try:
            while size - at >= 4:
                (n,) = _HEADER.unpack_from(view, at)
                if n > MAX_FRAME:
                    raise ChannelCorrupt(f"a frame header announcing {n} bytes")
                if size - at - 4 < n:
                    break
                frames.append(bytes(view[at + 4:at + 4 + n]))
                at += 4 + n
        finally:
            view.release()
        del self.inbox[:at]
        return frames

    # -- the worker's side: blocking ---------------------------------------------
    def send(self, msg: Any) -> None:
        self.send_bytes(pack(msg))

    def send_bytes(self, body: bytes) -> None:
        """Send one frame whose body is already encoded."""
        self.sock.sendall(self.frame(body))

    def recv(self) -> list[bytes]:
        """Block until at least one frame is in; raises ChannelBroken at EOF."""
        while True:
            frames = self._frames()
            if frames:
                return frames
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ChannelBroken("the master closed the channel")
            self.inbox += chunk

    # -- the master's side: never blocks -------------------------------------------
    def post(self, msg: Any) -> None:
        """Queue a message and write what the socket takes now (see ``pending``)."""
        self.post_bytes(pack(msg))

    def post_bytes(self, body: bytes) -> None:
        self.outbox += self.frame(body)
        self.flush()

    def flush(self) -> None:
        try:
            sent = self.sock.send(self.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the worker is gone; its exit is noticed through its pidfd
            self.outbox.clear()
            return
        del self.outbox[:sent]

    @property
    def pending(self) -> bool:
        return bool(self.outbox)

    def read(self) -> list[bytes]:
        """Every whole frame that has arrived; raises ChannelBroken at EOF."""
        while True:
            try:
                n = self.sock.recv_into(_BUFFER)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise ChannelBroken(str(exc)) from None
            if not n:
                frames = self._frames()
                if frames:
                    return frames
                raise ChannelBroken("the worker closed the channel")
            self.inbox += _VIEW[:n]
            if n < len(_BUFFER):
                break
        return self._frames()


def pair() -> tuple[Channel, socket.socket]:
    """A channel for the master (non-blocking) and the socket the worker inherits."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    master_end.setblocking(False)
    worker_end.set_inheritable(True)
    return Channel(master_end), worker_end
