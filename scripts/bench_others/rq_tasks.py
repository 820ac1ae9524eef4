"""RQ job functions for rq_bench.py; the workers import this module by name (``rq_tasks``)."""

from __future__ import annotations

import os
import time

import redis

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def noop() -> None:
    """The throughput/latency job: does nothing, so the queue's own overhead is measured."""
    return None


def long_task(key: str, sleep_s: float) -> None:
    """Kill-test job: record pid and start time (each start), then sleep.

    RQ forks a work horse per job, so a fresh client is made here; the pid written is the
    horse's, which is the process the bench kills.
    """
    r = redis.Redis.from_url(REDIS_URL)
    r.set(f"{key}:pid", os.getpid())
    r.rpush(f"{key}:starts", repr(time.time()))
    time.sleep(sleep_s)
