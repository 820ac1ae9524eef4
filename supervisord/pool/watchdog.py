"""The watchdog: one table of deadlines, checked by the master once per pass.

It finds workers past their job's hard timeout, silent past the heartbeat
timeout, over ``max_rss``, past a cancel's grace, or past the SIGKILL
deadline of a polite stop.  ``verdicts`` decides from the table and the time
alone (unit-tested with a fake clock); ``check`` carries them out through the
pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil

from supervisord.pool.process import tree_rss
from supervisord.pool.workers import WorkerHandle, Workers
from supervisord.settings import Settings
from supervisord.states import KillReason, WorkerState

log = logging.getLogger("jobsup.watchdog")


@dataclass(frozen=True, slots=True)
class Verdict:
    worker: WorkerHandle
    reason: KillReason | None  # None: escalate a polite stop to SIGKILL
    polite: bool  # SIGTERM first (a timeout, a cancel), or SIGKILL at once
    why: str


class Watchdog:
    def __init__(self, settings: Settings, workers: Workers, rss_gauge) -> None:
        self.settings = settings
        self.workers = workers
        self.rss_gauge = rss_gauge
        self._next_rss = 0.0
        self._procs: dict[int, psutil.Process] = {}

    def configure(self, settings: Settings) -> None:
        self.settings = settings

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

    def verdicts(self, now: float, heartbeats: bool = True) -> list[Verdict]:
        """What is overdue at ``now``: pure, from the deadline table.  With
        ``heartbeats`` False (the master itself was stalled, so heartbeats may be unread)
        silence is not judged."""
        hb_timeout = self.settings.cfg.daemon.heartbeat_timeout
        out = []
        for w in self.workers.all():
            if w.kill_at is not None and now >= w.kill_at:
                out.append(Verdict(w, None, False, "ignored SIGTERM"))
                continue
            if w.kill_reason is not None:
                continue
            job = w.job
            if job is not None and job.deadline is not None and now >= job.deadline:
                out.append(Verdict(w, KillReason.TIMEOUT, True,
                                   f"job {job.job.id} exceeded its timeout of "
                                   f"{job.job.timeout:.1f}s"))
            elif job is not None and job.cancel_at is not None and now >= job.cancel_at:
                out.append(Verdict(w, KillReason.CANCEL, True,
                                   f"job {job.job.id} did not stop within cancel_grace"))
            elif not heartbeats:
                continue
            elif w.state is not WorkerState.STARTING and now - w.last_beat > hb_timeout:
                out.append(Verdict(w, KillReason.HEARTBEAT, False,
                                   f"no heartbeat for {now - w.last_beat:.1f}s (hung or "
                                   "stopped)"))
            elif w.state is WorkerState.STARTING and now - w.spawned > max(hb_timeout, 60.0):
                out.append(Verdict(w, KillReason.HEARTBEAT, False, "not ready in time"))
        return out

    def check(self, now: float, heartbeats: bool = True) -> None:
        for v in self.verdicts(now, heartbeats):
            w = v.worker
            log.warning("worker %d pid %d: %s; %s", w.wid, w.pid, v.why,
                        "SIGTERM" if v.polite else "SIGKILL")
            if v.polite:
                self.workers.stop(w, v.reason)
            else:
                self.workers.kill(w, v.reason)
        if now >= self._next_rss:
            self._next_rss = now + self.settings.cfg.daemon.rss_check_interval
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
                self.rss_gauge.labels(pool.name, str(w.wid)).set(rss)
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
