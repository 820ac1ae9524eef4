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

from supervisord.errors import ConfigError
from supervisord.store import Store

log = logging.getLogger("jobsup.node")


class NodeRegistry:
    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self.me = f"{socket.gethostname()}:{os.getpid()}:{time.time():.3f}"

    def claim(self) -> None:
        r, keys, node = self.store.r, self.store.keys, self.store.node
        holder = r.get(keys.node(node))
        if holder is not None:
            host, pid, _ = holder.decode().split(":", 2)
            if host != socket.gethostname() or _alive(int(pid)):
                raise ConfigError(
                    f"node id {node!r} is in use by another jobsup daemon ({holder.decode()}) "
                    "on this Redis; give each daemon its own daemon.node_id",
                    errors=[{"loc": "daemon.node_id", "msg": "already in use"}])
        self.beat()
        r.sadd(keys.nodes, node)

    def beat(self) -> None:
        self.store.r.set(self.store.keys.node(self.store.node), self.me,
                         px=int(self.ttl * 1000))

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
