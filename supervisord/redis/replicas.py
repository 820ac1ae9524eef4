"""``redis.min_replicas``: a write is acknowledged only once N replicas have it.

Each write the daemon acknowledges ends with ``WAIT N timeout`` on the same
connection, so its reply comes only after the replicas confirmed everything
before it (Redis replicates a connection's commands in order).  A write that
fewer replicas confirmed in time is on the master but could be lost by a
failover: it counts as a write whose reply never came (``ReplicasBehind`` is a
connection error), so its submits are refused as unsure, its transitions are
kept and sent again, and the node re-checks what it holds (the lost-reply path,
``Writer.lose``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis


class ReplicasBehind(redis.ConnectionError):
    """Fewer replicas than ``redis.min_replicas`` confirmed a write in time."""


@dataclass(frozen=True)
class Replicas:
    wanted: int = 0
    timeout: float = 1.0  # seconds

    def command(self) -> tuple | None:
        """The WAIT to end a write with; None when no replica is asked for."""
        if not self.wanted:
            return None
        return ("WAIT", self.wanted, max(1, int(self.timeout * 1000)))

    def confirmed(self, replies: list[Any]) -> list[Any]:
        """The write's own replies, once the WAIT at their end says enough replicas have
        them; raises ReplicasBehind if not."""
        if not self.wanted:
            return replies
        *own, got = replies
        if isinstance(got, Exception):
            raise got
        if int(got) < self.wanted:
            raise ReplicasBehind(
                f"only {int(got)} of the {self.wanted} replica(s) redis.min_replicas asks "
                f"for confirmed the write within redis.replica_timeout "
                f"({self.timeout:g}s); a failover now could lose it")
        return own


NO_REPLICAS = Replicas()
