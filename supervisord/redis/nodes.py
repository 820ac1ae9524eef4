"""Nodes sharing one Redis: each claims its id, heartbeats, and recovers the dead.

A node's heartbeat key expires ``node_ttl`` seconds after its last beat.  Any
live node that finds a registered node without a heartbeat requeues the jobs
that node held, as kind ``lost``, without burning an attempt.
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

    def beat(self) -> None:
        key = self.store.keys.node(self.store.node)
        holder = self.store.r.set(key, self.me, px=int(self.ttl * 1000), get=True)
        if holder not in (None, self.me.encode()):
            log.critical("node id %s was taken by another daemon (%s); two daemons share it, "
                         "give each its own daemon.node_id", self.store.node, holder.decode())

    def reassert(self) -> None:
        """After Redis restarted: hold the node id and membership again, whatever the
        restart kept (an ephemeral Redis keeps nothing)."""
        r, keys, node = self.store.r, self.store.keys, self.store.node
        r.set(keys.node(node), self.me, px=int(self.ttl * 1000))
        r.sadd(keys.nodes, node)

    def release(self) -> None:
        r, keys = self.store.r, self.store.keys
        if r.get(keys.node(self.store.node)) == self.me.encode():
            r.delete(keys.node(self.store.node))

    def recover_lost(self) -> None:
        r, keys = self.store.r, self.store.keys
        for raw in r.smembers(keys.nodes):
            node = raw.decode()
            if node == self.store.node or r.exists(keys.node(node)):
                continue
            n = self.store.recover(node, "lost")
            if n:
                log.warning("node %s stopped heartbeating; requeued %d of its job(s)", node, n)
            r.srem(keys.nodes, node)


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
