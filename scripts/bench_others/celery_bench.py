"""Celery on jobsup's workloads: prefork pool, concurrency 2, default prefetch, Redis broker.

Run: python scripts/bench_others/celery_bench.py --redis-url unix:///path/redis.sock
Prints one JSON line (see common.result_line); progress and errors go to stderr.
BENCH_CELERY_LOGLEVEL=DEBUG (with --log-dir) shows what the worker did, e.g. in the kill test.

Kill test: the rerun time is bimodal, about 0.1 s or about 5 s: the prefork pool either sees the
child exit at once or only at its periodic maintain_pool (every 5 s); --kill-repeats shows both.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from common import HERE, Adapter, run_bench, start_process, worker_env


class CeleryAdapter(Adapter):
    """One ``celery worker`` process with a prefork pool of ``--workers`` children."""

    system = "celery"
    dist = "celery"

    def start_workers(self) -> None:
        """Start the worker; Celery's defaults are kept apart from the log level."""
        os.environ["BENCH_REDIS_URL"] = self.redis_url  # before celery_tasks is imported
        import celery_tasks

        self.tasks = celery_tasks
        cmd = [
            sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
            "--pool", "prefork", "--concurrency", str(self.args.workers),
            "--loglevel", os.environ.get("BENCH_CELERY_LOGLEVEL", "WARNING"),
            "--hostname", "bench@%h",
        ]  # fmt: skip
        self.procs.append(
            start_process(
                cmd,
                log_path=self.log_dir / "celery-worker.log",
                env=worker_env(self.redis_url),
                cwd=HERE,
            )
        )
        self.notes.append(
            f"prefork concurrency {self.args.workers}, default prefetch (x4), Redis broker and "
            "result backend, client awaits AsyncResult.get() per job; kill test task uses "
            "acks_late=True, reject_on_worker_lost=True (Celery reruns nothing without them); "
            "SIGKILL hits the pool child running the task"
        )

    def submit_noop(self) -> Any:
        return self.tasks.noop.delay()

    def wait(self, handle: Any, timeout_s: float) -> None:
        handle.get(timeout=timeout_s)

    def submit_long(self, key: str, sleep_s: float) -> Any:
        return self.tasks.long_task.delay(key, sleep_s)


if __name__ == "__main__":
    sys.exit(run_bench(CeleryAdapter))
