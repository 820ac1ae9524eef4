"""The master's Redis writes, read when their socket is readable; bulk reads.

The master sends a pass's writes and goes on polling its sockets; the
replies are read when the Redis connection's fd shows up in the same poll.
While the pipe is full, new transitions gather in the next batch, so the
batches grow exactly as fast as Redis falls behind.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
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
        self.waiter: select.poll | None = None
        self.timeout = 5.0
        self._connecting: threading.Thread | None = None
        self._fresh: Connection | Exception | None = None

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

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def reconnect(self, wake: int) -> None:
        """Connect again without blocking the caller: a thread waits out the connect (a
        frozen Redis accepts the connection and never answers its handshake), then writes
        a byte to ``wake``; the loop calls ``adopt``.  One attempt at a time."""
        if self._connecting is not None and self._connecting.is_alive():
            return
        self._fresh = None

        def attempt() -> None:
            try:
                conn = self.pool.get_connection()
            except (redis.RedisError, OSError) as exc:
                self._fresh = exc
            else:
                self._fresh = conn
            os.write(wake, b"r")

        self._connecting = threading.Thread(target=attempt, name="redis-reconnect",
                                            daemon=True)
        self._connecting.start()

    def adopt(self) -> Exception | None:
        """Take the connection the last ``reconnect`` made; its error if it failed."""
        fresh, self._fresh = self._fresh, None
        if isinstance(fresh, Exception) or fresh is None:
            return fresh
        self.disconnect()
        self._setup(fresh)
        return None

    def connect(self) -> socket.socket:
        self._setup(self.pool.get_connection())
        return self.sock

    def _setup(self, conn: Connection) -> None:
        self.conn = conn
        self.sock = self.conn._sock  # connected, authenticated and set up by redis-py
        self.reader = hiredis.Reader(replyError=_reply_error, notEnoughData=_MORE)
        self.replies.clear()
        # Non-blocking, with our own deadline: a socket with a timeout makes Python
        # poll before every send and recv, a system call per write and read for nothing.
        self.timeout = self.conn.socket_timeout or 5.0
        self.sock.setblocking(False)
        self.waiter = select.poll()
        self.waiter.register(self.sock, select.POLLIN)

    def _wait(self, events: int) -> None:
        """Block until the socket is ready, at most the connection's socket_timeout."""
        self.waiter.modify(self.sock, events)
        if not self.waiter.poll(self.timeout * 1000):
            self.disconnect()
            raise redis.TimeoutError(f"Redis did not answer within {self.timeout:g}s")

    def send(self, commands: list[tuple], context: Any) -> None:
        """Write the commands; raises redis.RedisError if the connection fails."""
        sock = self.sock or self.connect()
        data = memoryview(pack_commands(commands))
        try:
            while data:
                try:
                    data = data[sock.send(data):]
                except (BlockingIOError, ssl.SSLWantWriteError):
                    self._wait(select.POLLOUT)
                except ssl.SSLWantReadError:
                    self._wait(select.POLLIN)
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
            if not self._read():
                self._wait(select.POLLIN)
        replies = [self.replies.popleft() for _ in range(expected)]
        if any(isinstance(reply, redis.exceptions.ReadOnlyError) for reply in replies):
            # A failover made this server a replica: nothing was written; the next
            # connection asks for the master again (Sentinel) and the write goes again.
            self.disconnect()
            raise redis.ConnectionError("the Redis written to is now a read-only replica "
                                        "(a failover?); connecting to the master again")
        self.sent_at.popleft()
        return replies, self.inflight.popleft()[1]

    def overdue(self, timeout: float, now: float) -> bool:
        """The oldest write in flight has waited longer than ``timeout``: Redis is frozen
        or cut off (a socket that never becomes readable never times out by itself)."""
        return bool(self.sent_at) and now - self.sent_at[0] > timeout

    def deadline(self, timeout: float) -> float | None:
        return self.sent_at[0] + timeout if self.sent_at else None

    def _read(self) -> bool:
        """One ``recv``: every reply it completes goes to ``replies``; False if nothing
        had arrived."""
        try:
            n = self.sock.recv_into(self.buf)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError as exc:
            self.disconnect()
            raise redis.ConnectionError(f"reading from Redis: {exc}") from exc
        if not n:
            self.disconnect()
            raise redis.ConnectionError("Redis closed the connection")
        self.reader.feed(self.buf, 0, n)
        while (reply := self.reader.gets()) is not _MORE:
            self.replies.append(reply)
        return True

    def more(self) -> bool:
        """Whether the next write's replies have (begun to) come in already."""
        if not self.inflight or self.sock is None:
            return False
        if not self.replies:
            self._read()  # non-blocking: reads what has come, or nothing
        return bool(self.replies)

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
    if message.startswith("READONLY"):
        return redis.exceptions.ReadOnlyError(message)
    return redis.ResponseError(message)
