"""The watchdog: one table of deadlines, checked by the master once per pass.

It finds workers past their job's hard timeout, silent past the heartbeat
timeout, over ``max_rss`` or ``max_gpu_memory``, past a cancel's grace, or past
the SIGKILL deadline of a polite stop.  ``verdicts`` decides from the table and
the time alone, ``memory_verdicts`` from one reading of each worker tree's RSS
and GPU memory (both unit-tested with fakes); ``check`` takes the readings
(psutil, NVML) and carries the verdicts out through the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psutil

from supervisord.config import PoolConfig
from supervisord.pool.gpus import Gpus, GpuSample, tree_gpu_memory
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


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """One look at a worker's process tree."""

    rss: int  # bytes, the worker and its descendants
    gpu: int | None  # bytes of GPU memory the tree holds; None where NVML is not read


def memory_verdicts(workers: Iterable[tuple[WorkerHandle, PoolConfig]],
                    readings: Mapping[int, MemoryReading]) -> list[Verdict]:
    """Which workers are over their pool's ``max_rss`` or ``max_gpu_memory``: pure,
    from readings keyed by worker id.  Over either, a worker is killed at once
    (SIGKILL): memory that grows will not wait for a polite stop."""
    out = []
    for w, cfg in workers:
        got = readings.get(w.wid)
        if got is None or w.kill_reason is not None:
            continue
        if cfg.max_rss and got.rss > cfg.max_rss:
            out.append(Verdict(w, KillReason.MEMORY, False,
                               f"used {got.rss} bytes RSS, over max_rss ({cfg.max_rss} bytes)"))
        elif cfg.max_gpu_memory and got.gpu is not None and got.gpu > cfg.max_gpu_memory:
            out.append(Verdict(w, KillReason.MEMORY, False,
                               f"used {got.gpu} bytes of GPU memory, over max_gpu_memory "
                               f"({cfg.max_gpu_memory} bytes)"))
    return out


class Watchdog:
    def __init__(self, settings: Settings, workers: Workers, rss_gauge,
                 gpus: Gpus | None = None, gpu_gauges: Any = None) -> None:
        self.settings = settings
        self.workers = workers
        self.rss_gauge = rss_gauge
        self.gpus = gpus or Gpus(why="not looked for")
        self.gpu_gauges = gpu_gauges  # .worker, .used, .utilization (web.metrics)
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
        if self.sampling():
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
        if now >= self._next_rss and self.sampling():
            self._next_rss = now + self.settings.cfg.daemon.rss_check_interval
            self.sample_memory()

    def sampling(self) -> bool:
        """Memory is read when a pool caps it, or when there are GPUs to show."""
        return bool(self.gpus.devices) or any(
            p.cfg.max_rss or p.cfg.max_gpu_memory for p in self.workers.pools.values())

    def sample_memory(self) -> None:
        """Read each worker tree's RSS (psutil) and GPU memory (NVML), set the gauges,
        and kill those over their pool's limits."""
        gpu = self.gpus.sample() if self.gpus.devices else None
        if gpu is not None:
            self.set_device_gauges(gpu)
        watched, readings = [], {}
        for pool in self.workers.pools.values():
            if not (pool.cfg.max_rss or pool.cfg.max_gpu_memory or gpu is not None):
                continue
            for w in list(pool.workers.values()):
                if w.kill_reason is not None:
                    continue
                readings[w.wid] = got = self.read(w, gpu)
                watched.append((w, pool.cfg))
                if self.rss_gauge is not None:
                    self.rss_gauge.labels(pool.name, str(w.wid)).set(got.rss)
                if got.gpu is not None and self.gpu_gauges is not None:
                    self.gpu_gauges.worker.labels(pool.name, str(w.wid)).set(got.gpu)
        for v in memory_verdicts(watched, readings):
            log.error("worker %d pid %d %s; killing it", v.worker.wid, v.worker.pid, v.why)
            v.worker.kill_why = v.why
            self.workers.kill(v.worker, KillReason.MEMORY)

    def read(self, w: WorkerHandle, gpu: GpuSample | None) -> MemoryReading:
        proc = self._procs.get(w.pid)
        try:
            if proc is None:
                proc = self._procs[w.pid] = psutil.Process(w.pid)
            tree = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            self._procs.pop(w.pid, None)
            return MemoryReading(0, None)
        rss = 0
        for p in tree:
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                pass  # a descendant that exits while we look is not counted
        used = tree_gpu_memory((p.pid for p in tree), gpu) if gpu is not None else None
        w.gpu_memory = used
        return MemoryReading(rss, used)

    def set_device_gauges(self, sample: GpuSample) -> None:
        if self.gpu_gauges is None:
            return
        for d in sample.devices:
            self.gpu_gauges.used.labels(str(d.index)).set(d.used)
            if d.utilization is not None:
                self.gpu_gauges.utilization.labels(str(d.index)).set(d.utilization)

    def forget(self, pid: int) -> None:
        self._procs.pop(pid, None)
