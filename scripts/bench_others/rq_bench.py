"""RQ on jobsup's workloads: ``--workers`` separate ``rq worker`` processes, Redis only.

RQ's default Worker class forks a work horse per job; Redis is both queue and result store.

Run: python scripts/bench_others/rq_bench.py --redis-url unix:///path/redis.sock
Prints one JSON line (see common.result_line); progress and errors go to stderr.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from common import HERE, Adapter, run_bench, start_process, worker_env

QUEUE = "bench"


class RQAdapter(Adapter):
    """``--workers`` independent ``rq worker`` processes on one queue."""

    system = "rq"
    dist = "rq"

    def start_workers(self) -> None:
        """Start the workers; RQ's defaults are kept apart from the log level."""
        os.environ["BENCH_REDIS_URL"] = self.redis_url
        import redis
        import rq_tasks
        from rq import Queue

        self.tasks = rq_tasks
        self.queue = Queue(QUEUE, connection=redis.Redis.from_url(self.redis_url))
        for i in range(self.args.workers):
            cmd = [
                sys.executable, "-m", "rq.cli", "worker", "--url", self.redis_url,
                "--path", str(HERE), "--logging_level", "WARNING",
                "--name", f"bench-{i}-{os.getpid()}", QUEUE,
            ]  # fmt: skip
            self.procs.append(
                start_process(
                    cmd,
                    log_path=self.log_dir / f"rq-worker-{i}.log",
                    env=worker_env(self.redis_url),
                    cwd=HERE,
                )
            )
        self.notes.append(
            f"{self.args.workers} rq worker processes (default Worker: fork per job), "
            "client awaits Job.latest_result(timeout) per job; kill test job enqueued with "
            "Retry(max=1) (RQ marks a job whose work horse died as failed and reruns it only "
            "with a retry policy); SIGKILL hits the work horse running the job"
        )

    def submit_noop(self) -> Any:
        return self.queue.enqueue(self.tasks.noop)

    def wait(self, handle: Any, timeout_s: float) -> None:
        # latest_result blocks with XREAD on the job's result stream; its timeout is whole s.
        result = handle.latest_result(timeout=max(1, int(timeout_s)))
        if result is None:
            raise TimeoutError(f"rq job {handle.id} has no result after {timeout_s:.1f}s")
        if result.type != result.Type.SUCCESSFUL:
            raise RuntimeError(f"rq job {handle.id} failed: {result.exc_string}")

    def submit_long(self, key: str, sleep_s: float) -> Any:
        from rq import Retry

        return self.queue.enqueue(self.tasks.long_task, key, sleep_s, retry=Retry(max=1))


if __name__ == "__main__":
    sys.exit(run_bench(RQAdapter))
