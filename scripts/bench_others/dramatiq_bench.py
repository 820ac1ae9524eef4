"""Dramatiq on jobsup's workloads: ``dramatiq --processes 2 --threads 1`` on Redis.

Redis is the broker and the results backend.

Run: python scripts/bench_others/dramatiq_bench.py --redis-url unix:///path/redis.sock
Prints one JSON line (see common.result_line); progress and errors go to stderr.

Kill test: Dramatiq's CLI shuts the whole worker group down when one worker process dies
(it expects an external supervisor), so this harness restarts the command when it has exited,
as systemd or supervisord would. The killed process's message then waits for the broker's
maintenance to requeue it once that process's heartbeat is older than ``heartbeat_timeout``
(60 s by default); see dramatiq_tasks.py for the env vars that tune this.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from common import HERE, Adapter, log, run_bench, start_process, stop_process, worker_env

#: Restarts allowed per kill test, so a worker group that cannot start is not retried forever.
MAX_RESTARTS_PER_KILL = 3


class DramatiqAdapter(Adapter):
    """One ``dramatiq`` command with ``--workers`` processes of one thread each."""

    system = "dramatiq"
    dist = "dramatiq"

    def start_workers(self) -> None:
        """Import the actors (client side) and start the worker group."""
        os.environ["BENCH_REDIS_URL"] = self.redis_url
        import dramatiq_tasks

        self.tasks = dramatiq_tasks
        self.restarts = 0
        self._spawn()
        hb = dramatiq_tasks.HEARTBEAT_MS
        mc = dramatiq_tasks.MAINTENANCE_CHANCE
        self.notes.append(
            f"dramatiq --processes {self.args.workers} --threads 1, Redis broker "
            f"(heartbeat_timeout={hb} ms, maintenance_chance={mc}/1e6), Redis results "
            "backend, client awaits Message.get_result(block=True) per job; SIGKILL hits the "
            "worker process running the job; the dramatiq CLI then stops all its workers, and "
            "the harness restarts it like a supervisor would; the dead worker's message is "
            "requeued only after heartbeat_timeout, by random maintenance"
        )

    def _spawn(self) -> None:
        cmd = [
            sys.executable, "-m", "dramatiq", "dramatiq_tasks", "--path", str(HERE),
            "--processes", str(self.args.workers), "--threads", "1",
        ]  # fmt: skip
        log_path = self.log_dir / f"dramatiq-{len(self.procs) + self.restarts}.log"
        self.procs.append(
            start_process(cmd, log_path=log_path, env=worker_env(self.redis_url), cwd=HERE)
        )

    def after_kill_poll(self) -> None:
        """Restart the worker group if the CLI exited after losing a worker process."""
        proc = self.procs[0]
        if proc.poll() is None or self.restarts >= MAX_RESTARTS_PER_KILL * self.args.kill_repeats:
            return
        log(f"dramatiq: worker group exited ({proc.returncode}); restarting it")
        stop_process(proc, grace_s=1.0)
        self.procs.remove(proc)
        self.restarts += 1
        self._spawn()

    def stop_workers(self) -> None:
        """Stop the group; note how often the harness had to restart it."""
        if getattr(self, "restarts", 0):
            self.notes.append(f"harness restarted the dramatiq command {self.restarts}x")
        super().stop_workers()

    def submit_noop(self) -> Any:
        return self.tasks.noop.send()

    def wait(self, handle: Any, timeout_s: float) -> None:
        handle.get_result(backend=self.tasks.backend, block=True, timeout=int(timeout_s * 1000))

    def submit_long(self, key: str, sleep_s: float) -> Any:
        return self.tasks.long_task.send(key, sleep_s)


if __name__ == "__main__":
    sys.exit(run_bench(DramatiqAdapter))
