"""What ``jobsup status`` shows: pools, workers, queues, circuits, Redis health.

Queue depths tell the truth: a pool's ``queued`` counts the jobs in Redis's
queues plus those this node holds ahead of its workers (buffered or sent
ahead to a busy worker), since both are waiting to start.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import psutil
import redis

from supervisord.phase import PhaseMachine
from supervisord.pool.process import tree_rss
from supervisord.pool.workers import Workers
from supervisord.redis.store import Store
from supervisord.scheduler import Scheduler
from supervisord.settings import Settings

_cpu: dict[int, psutil.Process] = {}


def _worker_usage(pid: int) -> tuple[int, float]:
    try:
        proc = _cpu.get(pid) or _cpu.setdefault(pid, psutil.Process(pid))
        return tree_rss(proc), proc.cpu_percent(None)
    except psutil.Error:
        _cpu.pop(pid, None)
        return 0, 0.0


def queue_depths(store: Store, settings: Settings, scheduler: Scheduler) -> dict[str, int]:
    """Jobs waiting to start per pool: Redis's queues plus what this node holds."""
    types_of = {name: list(settings.types_of.get(name, ())) for name in scheduler.queues}
    found = store.queue_depths(types_of)
    return {name: n + scheduler.held(name) for name, n in found.items()}


@dataclass
class Sources:
    """What status is built from, handed over once by the loop."""

    settings: Any  # () -> Settings: the current snapshot
    phase: PhaseMachine
    workers: Workers
    scheduler: Scheduler
    store: Store
    redis_up: Any  # () -> bool
    embedded: bool
    metrics_port: Any  # () -> int | None
    topics: Any  # () -> iterable of bytes
    waiters: Any  # () -> int
    started: float


def describe(src: Sources) -> dict:
    now = time.monotonic()
    settings = src.settings()
    workers = []
    for w in src.workers.all():
        rss, cpu = _worker_usage(w.pid)
        workers.append({
            "pid": w.pid, "pool": w.pool, "wid": w.wid, "state": w.state.value,
            "job": w.job.job.id if w.job else None, "rss": rss, "cpu": cpu, "gpu": w.gpu,
            "uptime": round(now - w.spawned, 3), "jobs_done": w.jobs_done,
        })
    live = {w["pid"] for w in workers}
    for pid in [p for p in _cpu if p not in live]:
        _cpu.pop(pid, None)
    depths: dict[str, int] = {}
    redis_info: dict = {"up": src.redis_up()}
    store = src.store
    try:
        if not redis_info["up"]:
            raise redis.ConnectionError("unreachable (the daemon retries by itself)")
        redis_info.update(store.health(), embedded=src.embedded)
        depths = queue_depths(store, settings, src.scheduler)
        dead = store.dead_letter_count()
        circuits = store.circuits(sorted(settings.breakers))
    except redis.RedisError as exc:
        redis_info.update(up=False, error=str(exc))
        dead, circuits = None, []
    pools = [{
        "name": p.name, "target": p.target, "workers": len(p.workers),
        "idle": len(p.idle()), "busy": len(p.busy()), "queued": depths.get(p.name),
        "prefetched": src.scheduler.held(p.name), "degraded": p.degraded(now),
    } for p in src.workers.pools.values()]
    return {
        "node": settings.node, "pid": os.getpid(), "phase": src.phase.now.value,
        "uptime": round(time.time() - src.started, 3), "accepting": src.phase.running,
        "pools": pools, "workers": workers, "circuits": circuits, "dead_letters": dead,
        "redis": redis_info, "metrics_port": src.metrics_port(),
        "subscriptions": sorted(t.hex() for t in src.topics()), "waiters": src.waiters(),
    }
