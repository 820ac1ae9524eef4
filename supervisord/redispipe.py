"""The master's Redis writes, read when their socket is readable; bulk reads.

The master sends a pass's writes and goes on polling its sockets; the
replies are read when the Redis connection's fd shows up in the same poll.
While the pipe is full, new transitions gather in the next batch, so the
batches grow exactly as fast as Redis falls behind.
"""

from __future__ import annotations

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
    """

    def __init__(self, client: redis.Redis, depth: int = 2) -> None:
        self.pool = client.connection_pool
        self.conn: Connection | None = None
        self.depth = depth
        self.inflight: deque[tuple[int, Any]] = deque()  # (replies expected, context)

    @property
    def busy(self) -> bool:
        """A write is in flight."""
        return bool(self.inflight)

    @property
    def full(self) -> bool:
        return len(self.inflight) >= self.depth

    @property
    def context(self) -> Any:
        """The context of the oldest write in flight: the one ``receive`` reads next."""
        return self.inflight[0][1]

    def contexts(self) -> list[Any]:
        return [context for _, context in self.inflight]

    def fileno(self) -> int | None:
        sock = getattr(self.conn, "_sock", None)
        return sock.fileno() if sock is not None else None

    def send(self, commands: list[tuple], context: Any) -> None:
        """Write the commands; raises redis.RedisError if the connection fails."""
        if self.conn is None:
            self.conn = self.pool.get_connection()
        try:
            self.conn.send_packed_command([pack_commands(commands)], check_health=False)
        except redis.RedisError:
            self.disconnect()
            raise
        self.inflight.append((len(commands), context))

    def receive(self) -> tuple[list[Any], Any]:
        """The oldest write's replies (errors as exception objects, in place); blocks
        until they are complete.  If the connection fails, every write in flight is
        lost: the caller takes them back with ``abandon``."""
        assert self.conn is not None and self.inflight
        expected, _ = self.inflight[0]
        replies: list[Any] = []
        try:
            for _ in range(expected):
                try:
                    replies.append(self.conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except redis.RedisError:
            self.disconnect()
            raise
        return replies, self.inflight.popleft()[1]

    def more(self) -> bool:
        """Whether the next write's replies have (begun to) come in already."""
        return bool(self.inflight) and self.conn is not None and self.conn.can_read(0)

    def abandon(self) -> list[Any]:
        """The contexts of every write still in flight, oldest first; forgets them."""
        contexts = self.contexts()
        self.inflight.clear()
        return contexts

    def disconnect(self) -> None:
        if self.conn is not None:
            self.conn.disconnect()
            self.pool.release(self.conn)
            self.conn = None
