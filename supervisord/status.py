"""What ``jobsup status`` shows: pools, workers, queues, circuits, Redis health.

Queue depths tell the truth: a pool's ``queued`` counts the jobs in Redis's
queues plus those this node holds ahead of its workers (buffered or sent
ahead to a busy worker), since both are waiting to start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import redis

from supervisord.phase import PhaseMachine
from supervisord.pool.process import tree_rss
from supervisord.pool.workers import Workers
from supervisord.redis.store import Store
from supervisord.scheduler import Scheduler

_cpu: dict[int, psutil.Process] = {}


def _worker_usage(pid: int) -> tuple[int, float]:
    try:
        proc = _cpu.get(pid) or _cpu.setdefault(pid, psutil.Process(pid))
        return tree_rss(proc), proc.cpu_percent(None)
    except psutil.Error:
        _cpu.pop(pid, None)
        return 0, 0.0


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
    metrics: Any = None  # web.metrics.Metrics: its job counters give ``counts``


COUNTED = ("submitted", "started", "succeeded", "failed", "retried")


def job_counts(metrics: Any) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Jobs submitted, attempts started, jobs succeeded, failed and retries since the
    master started, in all and per type: read from the Prometheus counters the master
    keeps anyway, so counting costs the hot path nothing."""
    totals = dict.fromkeys(COUNTED, 0)
    types: dict[str, dict[str, int]] = {}
    if metrics is None:
        return totals, types
    for name in COUNTED:
        for family in getattr(metrics, name).collect():
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue  # the _created timestamps
                n = int(sample.value)
                per_type = types.setdefault(sample.labels["type"], dict.fromkeys(COUNTED, 0))
                per_type[name] += n
                totals[name] += n
    return totals, types


def redis_reads(src: Sources, health: bool = True) -> Callable[[], dict]:
    """Status's Redis part: what to read is settled here, in the loop; the returned
    function reads it off the loop (it touches no loop state)."""
    settings = src.settings()
    types_of = {name: list(settings.types_of.get(name, ())) for name in src.scheduler.queues}
    breakers = sorted(settings.breakers)
    store, up, embedded = src.store, src.redis_up(), src.embedded

    def read() -> dict:
        if not up:
            return unknown("unreachable (the daemon retries by itself)")
        try:
            info = {"up": True, **(store.health() if health else {}), "embedded": embedded}
            return {"redis": info, "depths": store.queue_depths(types_of),
                    "dead": store.dead_letter_count(), "circuits": store.circuits(breakers)}
        except redis.RedisError as exc:
            return unknown(str(exc))

    return read


def unknown(error: str) -> dict:
    """The facts of a status read that Redis did not answer: status still answers."""
    return {"redis": {"up": False, "error": error}, "depths": {}, "dead": None,
            "circuits": []}


def queue_depths(facts: dict, scheduler: Scheduler) -> dict[str, int]:
    """Jobs waiting to start per pool: Redis's queues plus what this node holds."""
    return {name: n + scheduler.held(name) for name, n in facts["depths"].items()}


def describe(src: Sources, facts: dict) -> dict:
    """Status from the loop's own state and the Redis ``facts`` read for it."""
    now = time.monotonic()
    settings = src.settings()
    workers = []
    for w in src.workers.all():
        rss, cpu = _worker_usage(w.pid)
        workers.append({
            "pid": w.pid, "pool": w.pool, "wid": w.wid, "state": w.state.value,
            "job": w.job.job.id if w.job else None, "rss": rss, "cpu": cpu, "gpu": w.gpu,
            "gpu_memory": w.gpu_memory,
            "uptime": round(now - w.spawned, 3), "jobs_done": w.jobs_done,
        })
    live = {w["pid"] for w in workers}
    for pid in [p for p in _cpu if p not in live]:
        _cpu.pop(pid, None)
    depths = queue_depths(facts, src.scheduler)
    counts, types = job_counts(src.metrics)
    pools = [{
        "name": p.name, "target": p.target, "workers": len(p.workers),
        "idle": len(p.idle()), "busy": len(p.busy()), "queued": depths.get(p.name),
        "prefetched": src.scheduler.held(p.name), "degraded": p.degraded(now),
    } for p in src.workers.pools.values()]
    return {
        "node": settings.node, "pid": os.getpid(), "phase": src.phase.now.value,
        "uptime": round(time.time() - src.started, 3), "accepting": src.phase.running,
        "pools": pools, "workers": workers, "circuits": facts["circuits"],
        "dead_letters": facts["dead"], "redis": facts["redis"],
        "metrics_port": src.metrics_port(),
        "subscriptions": sorted(t.hex() for t in src.topics()), "waiters": src.waiters(),
        "counts": counts, "types": types,
    }
