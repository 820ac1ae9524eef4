"""Dramatiq broker and actors for dramatiq_bench.py; imported by the client and the workers.

The broker uses Dramatiq's defaults. Two env vars exist only to explore the kill test:
BENCH_DRAMATIQ_HEARTBEAT_MS (RedisBroker heartbeat_timeout, default 60000) and
BENCH_DRAMATIQ_MAINTENANCE_CHANCE (per million commands, default 1000); a message held by a
dead worker is requeued only by that maintenance, once the worker's heartbeat has expired.
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import (
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAINTENANCE_CHANCE,
    RedisBroker,
)
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
HEARTBEAT_MS = int(os.environ.get("BENCH_DRAMATIQ_HEARTBEAT_MS", DEFAULT_HEARTBEAT_TIMEOUT))
MAINTENANCE_CHANCE = int(
    os.environ.get("BENCH_DRAMATIQ_MAINTENANCE_CHANCE", DEFAULT_MAINTENANCE_CHANCE)
)

backend = RedisBackend(url=REDIS_URL)
broker = RedisBroker(
    url=REDIS_URL, heartbeat_timeout=HEARTBEAT_MS, maintenance_chance=MAINTENANCE_CHANCE
)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)

_bookkeeping: redis.Redis | None = None


@dramatiq.actor(store_results=True)
def noop() -> None:
    """The throughput/latency job: does nothing, so the queue's own overhead is measured."""
    return None


@dramatiq.actor(max_retries=0)
def long_task(key: str, sleep_s: float) -> None:
    """Kill-test job: record pid and start time (each start), then sleep."""
    global _bookkeeping
    if _bookkeeping is None:
        _bookkeeping = redis.Redis.from_url(REDIS_URL)
    _bookkeeping.set(f"{key}:pid", os.getpid())
    _bookkeeping.rpush(f"{key}:starts", repr(time.time()))
    time.sleep(sleep_s)
