"""What ``jobsup status`` shows: pools, workers, queues, circuits, Redis health."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import psutil
import redis

from supervisord.process import tree_rss

if TYPE_CHECKING:
    from supervisord.master import Master

_cpu: dict[int, psutil.Process] = {}


def _worker_usage(pid: int) -> tuple[int, float]:
    try:
        proc = _cpu.get(pid) or _cpu.setdefault(pid, psutil.Process(pid))
        return tree_rss(proc), proc.cpu_percent(None)
    except psutil.Error:
        _cpu.pop(pid, None)
        return 0, 0.0


def describe(m: Master) -> dict:
    now = time.monotonic()
    workers = []
    for w in m.workers.all():
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
    redis_info: dict = {"up": m.redis_up}
    try:
        t0 = time.perf_counter()
        m.store.r.ping()
        redis_info["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        info = m.store.r.info()
        redis_info.update(version=info.get("redis_version"),
                          used_memory=info.get("used_memory"),
                          aof_enabled=bool(info.get("aof_enabled")),
                          embedded=m.embedded is not None)
        depths = m.store.queue_depths({name: m.types_of(name) for name in m.workers.pools})
        dead = m.store.dead_letter_count()
        circuits = m.store.circuits([n for n, jt in m.cfg.jobs.items() if jt.circuit_breaker])
    except redis.RedisError as exc:
        redis_info.update(up=False, error=str(exc))
        dead, circuits = None, []
    pools = [{
        "name": p.name, "target": p.target, "workers": len(p.workers),
        "idle": len(p.idle()), "busy": len(p.busy()), "queued": depths.get(p.name),
        "prefetched": len(p.buffer), "degraded": p.degraded,
    } for p in m.workers.pools.values()]
    return {
        "node": m.node, "pid": os.getpid(), "phase": m.phase.value,
        "uptime": round(time.time() - m.started, 3), "accepting": m.accepting,
        "pools": pools, "workers": workers, "circuits": circuits, "dead_letters": dead,
        "redis": redis_info, "metrics_port": m.metrics.port,
        "subscriptions": sorted(t.hex() for t in m.events.topics),
    }
