"""The master's Redis writes, read when their socket is readable; bulk reads.

The master sends a pass's writes and goes on polling its sockets; the
replies are read when the Redis connection's fd shows up in the same poll.
While the pipe is full, new transitions gather in the next batch, so the
batches grow exactly as fast as Redis falls behind.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections import deque
from typing import Any

import hiredis
import redis
from redis.connection import Connection


def pack_commands(commands: list[tuple]) -> bytes:
    """hiredis packs str, bytes, int and float itself: no per-argument Python encoding."""
    return b"".join(hiredis.pack_command(command) for command in commands)


def read_pipelined(client: redis.Redis, commands: list[tuple], chunk: int = 4000) -> list[Any]:
    """Send many read commands and return their replies, ``chunk`` per round trip.

    Far cheaper than redis-py's pipeline (which encodes every argument in Python) or a
    Lua script (which copies every reply into Lua and back) for bulk reads.
    """
    replies: list[Any] = []
    conn = client.connection_pool.get_connection()
    try:
        for at in range(0, len(commands), chunk):
            part = commands[at:at + chunk]
            conn.send_packed_command([pack_commands(part)], check_health=False)
            replies.extend(conn.read_response() for _ in part)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        client.connection_pool.release(conn)
    return replies


class RedisPipe:
    """Writes in flight on one connection, their replies read in order.

    Redis runs a connection's commands in the order they arrive, so a second write
    may go before the first one's reply is back: a job's result is then sent while
    its submit is still being stored, instead of one Redis round trip later.  At
    most ``depth`` writes are in flight; beyond that, transitions gather in the
    next batch.

    redis-py opens the connection (auth, TLS, database, protocol); after that the
    pipe writes the socket itself and parses replies with its own hiredis reader,
    which reads all the replies that have arrived with one ``recv`` instead of a
    call stack per reply.
    """

    def __init__(self, client: redis.Redis, depth: int = 2) -> None:
        self.pool = client.connection_pool
        self.conn: Connection | None = None
        self.sock: socket.socket | None = None
        self.depth = depth
        self.inflight: deque[tuple[int, Any]] = deque()  # (replies expected, context)
        self.sent_at: deque[float] = deque()  # monotonic time each write in flight went
        self.replies: deque[Any] = deque()  # parsed, not yet handed out
        self.buf = bytearray(1 << 16)
        self.reader: hiredis.Reader | None = None  # per connection: set by connect()
        self.readable: select.poll | None = None

    @property
    def busy(self) -> bool:
        """A write is in flight."""
        return bool(self.inflight)

    @property
    def full(self) -> bool:
        return len(self.inflight) >= self.depth

    def contexts(self) -> list[Any]:
        return [context for _, context in self.inflight]

    def fileno(self) -> int | None:
        return self.sock.fileno() if self.sock is not None else None

    def connect(self) -> socket.socket:
        self.conn = self.pool.get_connection()
        self.sock = self.conn._sock  # connected, authenticated and set up by redis-py
        self.reader = hiredis.Reader(replyError=_reply_error, notEnoughData=_MORE)
        self.replies.clear()
        self.readable = select.poll()
        self.readable.register(self.sock, select.POLLIN)
        return self.sock

    def send(self, commands: list[tuple], context: Any) -> None:
        """Write the commands; raises redis.RedisError if the connection fails."""
        sock = self.sock or self.connect()
        try:
            sock.sendall(pack_commands(commands))
        except OSError as exc:
            self.disconnect()
            raise redis.ConnectionError(f"writing to Redis: {exc}") from exc
        self.inflight.append((len(commands), context))
        self.sent_at.append(time.monotonic())

    def receive(self) -> tuple[list[Any], Any]:
        """The oldest write's replies (errors as exception objects, in place); blocks
        until they are complete.  If the connection fails, every write in flight is
        lost: the caller takes them back with ``abandon``."""
        assert self.sock is not None and self.inflight
        expected, _ = self.inflight[0]
        while len(self.replies) < expected:
            self._read()
        replies = [self.replies.popleft() for _ in range(expected)]
        self.sent_at.popleft()
        return replies, self.inflight.popleft()[1]

    def overdue(self, timeout: float, now: float) -> bool:
        """The oldest write in flight has waited longer than ``timeout``: Redis is frozen
        or cut off (a socket that never becomes readable never times out by itself)."""
        return bool(self.sent_at) and now - self.sent_at[0] > timeout

    def deadline(self, timeout: float) -> float | None:
        return self.sent_at[0] + timeout if self.sent_at else None

    def _read(self) -> None:
        """One ``recv``: every reply it completes goes to ``replies``."""
        try:
            n = self.sock.recv_into(self.buf)
        except TimeoutError as exc:
            self.disconnect()
            raise redis.TimeoutError("Redis did not answer in time") from exc
        except OSError as exc:
            self.disconnect()
            raise redis.ConnectionError(f"reading from Redis: {exc}") from exc
        if not n:
            self.disconnect()
            raise redis.ConnectionError("Redis closed the connection")
        self.reader.feed(self.buf, 0, n)
        while (reply := self.reader.gets()) is not _MORE:
            self.replies.append(reply)

    def more(self) -> bool:
        """Whether the next write's replies have (begun to) come in already."""
        if not self.inflight or self.sock is None:
            return False
        return bool(self.replies) or bool(self.readable.poll(0)) or (
            isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)

    def abandon(self) -> list[Any]:
        """The contexts of every write still in flight, oldest first; forgets them."""
        contexts = self.contexts()
        self.inflight.clear()
        self.sent_at.clear()
        return contexts

    def disconnect(self) -> None:
        if self.conn is not None:
            self.conn.disconnect()
            self.pool.release(self.conn)
        self.conn = self.sock = None
        self.replies.clear()


_MORE = object()  # hiredis: not enough data for a whole reply yet


def _reply_error(message: str) -> redis.ResponseError:
    if message.startswith("NOSCRIPT"):
        return redis.exceptions.NoScriptError(message)
    return redis.ResponseError(message)
