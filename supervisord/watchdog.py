"""The watchdog: one table of deadlines, checked by the master once per pass.

It finds workers past their job's hard timeout, silent past the heartbeat
timeout, over ``max_rss``, past a cancel's grace, or past the SIGKILL
deadline of a polite stop, and asks the pool to end them.
"""

from __future__ import annotations

import logging

import psutil

from supervisord.config import Config
from supervisord.metrics import Metrics
from supervisord.process import tree_rss
from supervisord.states import KillReason, WorkerState
from supervisord.workers import WorkerHandle, Workers

log = logging.getLogger("jobsup.watchdog")


class Watchdog:
    def __init__(self, cfg: Config, workers: Workers, metrics: Metrics) -> None:
        self.cfg = cfg
        self.workers = workers
        self.metrics = metrics
        self._next_rss = 0.0
        self._procs: dict[int, psutil.Process] = {}

    def next_deadline(self) -> float | None:
        times = []
        for w in self.workers.all():
            if w.kill_at is not None:
                times.append(w.kill_at)
            if w.job is not None and w.kill_reason is None:
                if w.job.deadline is not None:
                    times.append(w.job.deadline)
                if w.job.cancel_at is not None:
                    times.append(w.job.cancel_at)
        if any(p.cfg.max_rss for p in self.workers.pools.values()):
            times.append(self._next_rss)
        return min(times) if times else None

    def check(self, now: float) -> None:
        hb_timeout = self.cfg.daemon.heartbeat_timeout
        for w in self.workers.all():
            if w.kill_at is not None and now >= w.kill_at:
                log.warning("worker %d pid %d ignored SIGTERM; SIGKILL", w.wid, w.pid)
                self.workers.kill(w)
                continue
            if w.kill_reason is not None:
                continue
            job = w.job
            if job is not None and job.deadline is not None and now >= job.deadline:
                log.warning("job %s exceeded its timeout of %.1fs on worker pid %d",
                            job.job.id, job.job.timeout, w.pid)
                self.workers.stop(w, KillReason.TIMEOUT)
            elif job is not None and job.cancel_at is not None and now >= job.cancel_at:
                log.warning("job %s did not stop within cancel_grace; killing pid %d",
                            job.job.id, w.pid)
                self.workers.stop(w, KillReason.CANCEL)
            elif w.state != WorkerState.STARTING and now - w.last_beat > hb_timeout:
                log.error("worker %d pid %d sent no heartbeat for %.1fs (hung or stopped); "
                          "killing it", w.wid, w.pid, now - w.last_beat)
                self.workers.kill(w, KillReason.HEARTBEAT)
            elif w.state == WorkerState.STARTING and now - w.spawned > max(hb_timeout, 60.0):
                log.error("worker %d pid %d did not become ready in time", w.wid, w.pid)
                self.workers.kill(w, KillReason.HEARTBEAT)
        if now >= self._next_rss:
            self._next_rss = now + self.cfg.daemon.rss_check_interval
            self.sample_rss()

    def sample_rss(self) -> None:
        """Sum RSS over each worker's process tree (CUDA allocations show up in RSS too)."""
        for pool in self.workers.pools.values():
            limit = pool.cfg.max_rss
            if not limit:
                continue
            for w in list(pool.workers.values()):
                if w.kill_reason is not None:
                    continue
                rss = self.rss(w)
                self.metrics.rss.labels(pool.name, str(w.wid)).set(rss)
                if rss > limit:
                    log.error("worker %d pid %d uses %d bytes RSS, over max_rss %d; killing it",
                              w.wid, w.pid, rss, limit)
                    self.workers.kill(w, KillReason.MEMORY)

    def rss(self, w: WorkerHandle) -> int:
        proc = self._procs.get(w.pid)
        try:
            if proc is None:
                proc = self._procs[w.pid] = psutil.Process(w.pid)
            return tree_rss(proc)
        except psutil.Error:
            self._procs.pop(w.pid, None)
            return 0

    def forget(self, pid: int) -> None:
        self._procs.pop(pid, None)


