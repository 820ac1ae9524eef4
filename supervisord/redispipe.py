"""One Redis pipeline in flight, read when its socket is readable.

The master sends a pass's writes and goes on polling its sockets; the
replies are read when the Redis connection's fd shows up in the same poll.
While a write is in flight, new transitions gather in the next batch, so
the batches grow exactly as fast as Redis falls behind.
"""

from __future__ import annotations

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
    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        self.conn: Connection | None = None
        self.expected = 0
        self.context: Any = None

    @property
    def busy(self) -> bool:
        return self.expected > 0

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
            self.reset()
            raise
        self.expected = len(commands)
        self.context = context

    def receive(self) -> tuple[list[Any], Any]:
        """Read every reply (errors as exception objects, in place); blocks until complete."""
        assert self.conn is not None
        replies: list[Any] = []
        try:
            for _ in range(self.expected):
                try:
                    replies.append(self.conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except redis.RedisError:
            self.reset()
            raise
        context, self.context, self.expected = self.context, None, 0
        return replies, context

    def reset(self) -> None:
        if self.conn is not None:
            self.conn.disconnect()
            self.pool.release(self.conn)
            self.conn = None
        self.expected = 0
