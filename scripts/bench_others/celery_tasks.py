"""Celery app and tasks for celery_bench.py; imported by the client and by the worker.

Configuration is Celery's defaults except what the comparison needs: the Redis broker and
result backend (unix socket URL from $BENCH_REDIS_URL) and, on the kill-test task only,
``acks_late`` + ``reject_on_worker_lost``, without which Celery never reruns a job whose
worker process died (the message is acked before the task runs).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def celery_redis_url(url: str) -> str:
    """Celery/kombu spell a unix-socket Redis URL ``redis+socket:///path``."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://") :]
    return url


app = Celery(
    "celery_tasks", broker=celery_redis_url(REDIS_URL), backend=celery_redis_url(REDIS_URL)
)
app.conf.update(broker_connection_retry_on_startup=True)

_bookkeeping: redis.Redis | None = None


@app.task
def noop() -> None:
    """The throughput/latency job: does nothing, so the queue's own overhead is measured."""
    return None


@app.task(acks_late=True, reject_on_worker_lost=True)
def long_task(key: str, sleep_s: float) -> None:
    """Kill-test job: record pid and start time (each start), then sleep."""
    global _bookkeeping
    if _bookkeeping is None:
        _bookkeeping = redis.Redis.from_url(REDIS_URL)
    _bookkeeping.set(f"{key}:pid", os.getpid())
    _bookkeeping.rpush(f"{key}:starts", repr(time.time()))
    time.sleep(sleep_s)
