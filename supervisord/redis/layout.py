"""Rename the keys of jobsup's untagged layout (``prefix:job:ID``) to the tagged one
(``{prefix}:job:ID``), once, at the first start of a version that uses it.

Nothing in a value names a key, so renaming each key is the whole migration;
RENAME keeps a key's type, value and expiry.  It runs under a lock key, so of
several nodes started together one renames and the others wait for it; a
marker key records that it is done, so a later start costs one GET.  A node of
the older version still heartbeating would go on writing untagged keys that no
upgraded node reads: start-up refuses while one does.  The untagged layout
never ran on Redis Cluster (its scripts spanned slots), so the source of a
migration is a single Redis, where RENAME across slots is allowed.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import redis

from supervisord.errors import ConfigError
from supervisord.redis.keys import Keys

log = logging.getLogger("jobsup.redis")

_BATCH = 1000
_LOCK_MS = 60_000


def migrate_untagged(r: redis.Redis, prefix: str, wait: float = 120.0) -> int:
    """Rename every ``prefix:*`` key to ``{prefix}:*``; returns how many were renamed.

    The prefix matches ``[\\w.-]+`` (config), so it holds no ``:`` and no glob
    character: ``prefix:*`` names this prefix's keys and no other prefix's.
    """
    keys = Keys(prefix)
    if r.exists(keys.layout):
        return 0
    me = f"{socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + wait
    while not r.set(keys.layout_lock, me, nx=True, px=_LOCK_MS):
        if r.exists(keys.layout):
            return 0  # another node did it meanwhile
        if time.monotonic() > deadline:
            raise ConfigError(
                f"another jobsup daemon ({(r.get(keys.layout_lock) or b'?').decode()}) has "
                f"been renaming the keys of prefix {prefix!r} for over {wait:g}s; start "
                "again once it is done (or delete the key "
                f"{keys.layout_lock!r} if that daemon is gone)",
                errors=[{"loc": "redis.prefix", "msg": "key migration under way"}])
        time.sleep(0.1)
    try:
        _refuse_live_old_nodes(r, prefix)
        moved, kept = _rename_all(r, prefix, keys)
        r.set(keys.layout, "tagged")
    finally:
        if r.get(keys.layout_lock) == me.encode():
            r.delete(keys.layout_lock)
    if moved:
        log.warning("moved %d key(s) of prefix %r to the cluster-safe layout %s:…",
                    moved, prefix, keys.base)
    if kept:
        log.warning("%d key(s) of prefix %r were not moved: a key of the new name was "
                    "there already (kept it; the old key is left as it was)", kept, prefix)
    return moved


def _refuse_live_old_nodes(r: redis.Redis, prefix: str) -> None:
    live = [k.decode() for k in r.scan_iter(match=f"{prefix}:node:*", count=_BATCH)]
    if live:
        nodes = ", ".join(k.split(":", 2)[2] for k in live)
        raise ConfigError(
            f"a jobsup daemon of an older version still runs on this Redis with prefix "
            f"{prefix!r} (node(s) {nodes} heartbeat under {prefix}:node:…); stop every "
            "older daemon of this prefix and start again (a stopped one's heartbeat "
            "expires within its node_ttl)",
            errors=[{"loc": "redis.prefix", "msg": "in use by an older jobsup"}])


def _rename_all(r: redis.Redis, prefix: str, keys: Keys) -> tuple[int, int]:
    moved = kept = 0
    cut = len(prefix)
    batch: list[bytes] = []

    def flush() -> None:
        nonlocal moved, kept
        pipe = r.pipeline(transaction=False)
        for old in batch:
            pipe.renamenx(old, keys.base.encode() + old[cut:])
        for reply in pipe.execute(raise_on_error=False):
            if reply is True or reply == 1:
                moved += 1
            elif reply is False or reply == 0:
                kept += 1
            # an error: the key expired since the scan found it; nothing to move
        r.pexpire(keys.layout_lock, _LOCK_MS)
        batch.clear()

    for old in r.scan_iter(match=f"{prefix}:*", count=_BATCH):
        batch.append(old)
        if len(batch) >= _BATCH:
            flush()
    if batch:
        flush()
    return moved, kept
