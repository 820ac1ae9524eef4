"""Nodes sharing one Redis: each claims its id, heartbeats, and recovers the dead.

A node's heartbeat key expires ``node_ttl`` seconds after its last beat.  Every
live node beats and looks for registered nodes without a heartbeat in one
script call, four times per ``node_ttl`` and at least once a second, so a dead
node's jobs are requeued (kind ``lost``, no attempt burned) within ``node_ttl``
plus a second of its last beat, and a live node beats often enough that its key
never lapses between two beats.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import redis

from supervisord.errors import ConfigError
from supervisord.redis.store import Store

log = logging.getLogger("jobsup.node")


class NodeRegistry:
    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self.me = f"{socket.gethostname()}:{os.getpid()}:{time.time():.3f}"

    def claim(self) -> None:
        """Take the node id, atomically; a dead holder on this host may be replaced."""
        r, keys, node = self.store.r, self.store.keys, self.store.node
        key, ttl = keys.node(node), int(self.ttl * 1000)
        if not r.set(key, self.me, px=ttl, nx=True):
            holder = r.get(key) or b""
            host, _, rest = holder.decode().partition(":")
            pid = rest.partition(":")[0]
            dead = host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
            # Replace only the holder we judged dead, not one that took over meanwhile.
            if not dead or not self._swap(key, holder, ttl):
                raise ConfigError(
                    f"node id {node!r} is in use by another jobsup daemon ({holder.decode()}) "
                    "on this Redis; give each daemon its own daemon.node_id",
                    errors=[{"loc": "daemon.node_id", "msg": "already in use"}])
        r.sadd(keys.nodes, node)

    def _swap(self, key: str, expected: bytes, ttl: int) -> bool:
        with self.store.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) != expected:
                    return False
                pipe.multi()
                pipe.set(key, self.me, px=ttl)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    @property
    def every(self) -> float:
        """Seconds between two heartbeats (and searches for dead nodes)."""
        return min(1.0, self.ttl / 4)

    def beat(self) -> list[str]:
        """Heartbeat; returns the other registered nodes whose heartbeat has expired."""
        store = self.store
        holder, *dead = store.call("heartbeat", [store.prefix, store.node, self.me,
                                                 int(self.ttl * 1000)])
        if holder not in (b"", self.me.encode()):
            log.critical("node id %s was taken by another daemon (%s); two daemons share it, "
                         "give each its own daemon.node_id", store.node, holder.decode())
        return [d.decode() for d in dead]

    def release(self) -> None:
        r, keys = self.store.r, self.store.keys
        if r.get(keys.node(self.store.node)) == self.me.encode():
            r.delete(keys.node(self.store.node))

    def reap(self, dead: list[str]) -> None:
        """Requeue the jobs of nodes found dead (several nodes may find the same one: the
        script does it once, and not at all if the node has beaten again meanwhile)."""
        for node in dead:
            n = self.store.recover(node, "lost")
            if n:
                log.warning("node %s stopped heartbeating; requeued %d of its job(s)", node, n)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
