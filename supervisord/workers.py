"""Worker pools: who is alive, who is free, and reconciling that with the target.

Each pass compares a pool's target size with the workers alive and starts or
stops the difference.  Deaths are noticed through pidfds in the master's poll.
Restart intensity works as in OTP supervisors: more than ``max_restarts``
abnormal deaths within ``restart_window`` puts the pool into exponential
restart backoff instead of a fork loop.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field

from supervisord import process
from supervisord.config import Config, PoolConfig
from supervisord.states import KillReason, WorkerState
from supervisord.store import Reserved
from worker import channel
from worker.channel import Channel

log = logging.getLogger("jobsup.pool")


@dataclass(eq=False)
class Running:
    """A job handed to a worker of this node, and what the watchdog needs of it."""

    job: Reserved
    worker: WorkerHandle
    started: float  # wall clock
    deadline: float | None  # monotonic
    cancel_at: float | None = None
    progress: tuple[float, str] | None = None
    progress_written: float = 0.0
    doomed: bool = False  # cancelled while waiting behind the worker's current job
    start_op: tuple | None = None  # the start transition, until it is written


@dataclass(eq=False)
class WorkerHandle:
    wid: int
    pool: str
    slot: int
    child: process.Child
    gpu: list[int] | None
    generation: int
    chan: Channel  # jobs and results
    control: Channel  # heartbeats and cancels
    spawned: float = field(default_factory=time.monotonic)
    state: WorkerState = WorkerState.STARTING
    job: Running | None = None
    ahead: deque[Running] = field(default_factory=deque)  # sent, start after ``job``
    jobs_done: int = 0
    last_beat: float = field(default_factory=time.monotonic)
    kill_reason: KillReason | None = None
    kill_at: float | None = None  # SIGKILL deadline after a SIGTERM
    retire: bool = False

    @property
    def pid(self) -> int:
        return self.child.pid

    def channels(self) -> tuple[Channel, Channel]:
        return self.chan, self.control


@dataclass(eq=False)
class Pool:
    cfg: PoolConfig
    target: int
    generation: int = 0
    workers: dict[int, WorkerHandle] = field(default_factory=dict)
    buffer: deque[Reserved] = field(default_factory=deque)
    hot: set[str] = field(default_factory=set)  # job types that may have queued work
    deaths: deque[float] = field(default_factory=deque)
    backoff_level: int = 0
    backoff_until: float = 0.0
    ever_ready: bool = False
    avg_run: float = 1.0  # moving average of job run time here, seconds
    init_failures: int = 0

    @property
    def name(self) -> str:
        return self.cfg.name

    def recent_deaths(self, now: float) -> int:
        """Worker deaths within ``restart_window`` of ``now``."""
        return sum(1 for t in self.deaths if t >= now - self.cfg.restart_window)

    @property
    def degraded(self) -> bool:
        """True while worker deaths within ``restart_window`` exceed ``max_restarts``."""
        return self.recent_deaths(time.monotonic()) > self.cfg.max_restarts

    def idle(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values()
                if w.state == WorkerState.IDLE and not w.retire and w.kill_reason is None]

    def busy(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.job is not None]

    def pipeline_depth(self) -> int:
        """Jobs sent ahead to a busy worker, so that it never waits for a round trip to
        the master between short jobs: a few for tiny jobs, none for long ones (which
        must never wait behind another while a worker may be free)."""
        if self.cfg.prefetch == 0 or self.avg_run >= 0.02:
            return 0
        return 4 if self.avg_run < 0.002 else 1

    def can_take_more(self, w: WorkerHandle, depth: int) -> bool:
        limit = self.cfg.max_jobs_per_worker
        return (w.job is not None and len(w.ahead) < depth and w.kill_reason is None
                and not w.retire and w.generation == self.generation
                and not (limit and w.jobs_done + len(w.ahead) + 2 > limit))

    def prefetch(self) -> int:
        """Jobs held ahead of the workers: about 5 ms of work, at least 1, at most 128.

        Short jobs need a deep buffer, or workers wait for Redis between jobs; long
        ones need almost none, and a deep buffer would only delay higher-priority
        jobs submitted later (and keep work from other nodes).
        """
        if self.cfg.prefetch is not None:
            return self.cfg.prefetch
        return max(1, min(128, math.ceil(max(1, self.target) * 0.005 / max(self.avg_run, 1e-5))))

    def ran(self, seconds: float) -> None:
        self.avg_run += 0.1 * (seconds - self.avg_run)

    def want(self) -> int:
        """How many jobs to take from Redis now: enough for idle workers plus prefetch."""
        if not self.hot:
            return 0
        live = [w for w in self.workers.values() if w.kill_reason is None and not w.retire]
        if not live:
            return 0
        return max(0, len(self.idle()) + self.prefetch() - len(self.buffer))

    def note_death(self, now: float) -> None:
        window = self.cfg.restart_window
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - window:
            self.deaths.popleft()
        if len(self.deaths) <= self.cfg.max_restarts:
            self.backoff_level = 0  # calm again: the next crash loop starts small
        else:
            delay = min(30.0, 0.5 * 2 ** self.backoff_level)
            self.backoff_level += 1
            self.backoff_until = now + delay
            log.error("pool %s: %d worker deaths in %.0fs; restart backoff %.1fs (degraded)",
                      self.name, len(self.deaths), window, delay)


class Workers:
    """Starts, stops and tracks the worker processes of every pool."""

    def __init__(self, cfg: Config, node: str) -> None:
        self.cfg = cfg
        self.node = node
        self.pools: dict[str, Pool] = {p.name: Pool(cfg=p, target=p.workers) for p in cfg.pools}
        self.by_wid: dict[int, WorkerHandle] = {}
        self.by_pidfd: dict[int, WorkerHandle] = {}
        self.by_channel: dict[int, tuple[WorkerHandle, Channel]] = {}  # fd -> worker, channel
        self._next_wid = 1

    def all(self) -> list[WorkerHandle]:
        return list(self.by_wid.values())

    def spec(self, pool: Pool, wid: int, gpu: list[int] | None,
             channels: tuple[int, int] = (-1, -1)) -> dict:
        """What a worker is told at start; ``channels`` are the fds it inherits."""
        jobs = {n: j for n, j in self.cfg.jobs.items() if self.cfg.pool_of(n) == pool.name}
        return {
            "wid": wid, "pool": pool.name, "channels": channels, "node": self.node,
            "master_pid": os.getpid(), "cwd": os.getcwd(),
            "handlers": {n: j.handler for n, j in jobs.items()},
            "schemas": {n: j.schema_ for n, j in jobs.items() if j.schema_},
            "init": pool.cfg.init, "gpu": gpu,
            "memory_limit": pool.cfg.memory_limit,
            "memory_limit_kind": pool.cfg.memory_limit_kind,
            "heartbeat_interval": self.cfg.daemon.heartbeat_interval,
        }

    def start(self, pool: Pool) -> WorkerHandle:
        used = {w.slot for w in pool.workers.values()}
        slot = next(i for i in range(len(used) + 1) if i not in used)
        gpus = pool.cfg.gpus
        gpu = [gpus[slot % len(gpus)]] if gpus else None
        env = dict(pool.cfg.env)
        env["JOBSUP_NODE"] = self.node
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu))
        wid = self._next_wid
        self._next_wid += 1
        (chan, chan_end), (control, control_end) = channel.pair(), channel.pair()
        fds = (chan_end.fileno(), control_end.fileno())
        try:
            child = process.spawn(self.spec(pool, wid, gpu, fds), env, pool.cfg.user,
                                  pool.cfg.group, pass_fds=fds)
        except BaseException:
            chan.close()
            control.close()
            raise
        finally:
            chan_end.close()
            control_end.close()
        handle = WorkerHandle(wid=wid, pool=pool.name, slot=slot, child=child, gpu=gpu,
                              generation=pool.generation, chan=chan, control=control)
        pool.workers[wid] = handle
        self.by_wid[wid] = handle
        self.by_pidfd[child.pidfd] = handle
        for ch in handle.channels():
            self.by_channel[ch.fileno()] = (handle, ch)
        log.debug("pool %s: started worker %d pid %d", pool.name, wid, child.pid)
        return handle

    def reconcile(self, pool: Pool, accepting: bool) -> list[WorkerHandle]:
        """Start or stop workers so that the pool has its target; returns those started."""
        started = []
        now = time.monotonic()
        alive = [w for w in pool.workers.values() if w.kill_reason is None and not w.retire]
        if accepting and now >= pool.backoff_until:
            for _ in range(pool.target - len(alive)):
                started.append(self.start(pool))
        surplus = len(alive) - pool.target
        if surplus > 0:
            # Idle ones go first; busy ones finish their job, then leave.
            ordered = sorted(alive, key=lambda w: (w.job is not None, -w.wid))
            for w in ordered[:surplus]:
                w.retire = True
                if w.job is None:
                    self.stop(w, KillReason.RETIRE)
        for w in pool.workers.values():
            if w.generation != pool.generation and w.job is None and w.kill_reason is None:
                self.stop(w, KillReason.RECYCLE)
        return started

    def stop(self, w: WorkerHandle, reason: KillReason, grace: float | None = None) -> None:
        """Polite, then firm: SIGTERM the worker's tree now, SIGKILL at the deadline."""
        if w.kill_reason is None:
            w.kill_reason = reason
        w.state = WorkerState.STOPPING
        grace = self.cfg.daemon.kill_grace if grace is None else grace
        if grace <= 0:
            self.kill(w)
            return
        process.signal_tree(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        w.kill_at = deadline if w.kill_at is None else min(w.kill_at, deadline)

    def kill(self, w: WorkerHandle, reason: KillReason | None = None) -> None:
        if w.kill_reason is None:
            w.kill_reason = reason
        w.state = WorkerState.STOPPING
        process.signal_tree(w.pid, signal.SIGKILL)
        w.kill_at = None

    def forget(self, w: WorkerHandle) -> None:
        pool = self.pools.get(w.pool)
        if pool is not None:
            pool.workers.pop(w.wid, None)
        self.by_wid.pop(w.wid, None)
        self.by_pidfd.pop(w.child.pidfd, None)
        for ch in w.channels():
            if self.by_channel.pop(ch.fileno(), None) is not None:
                ch.close()
        w.child.close()
        # Whatever the worker started must not outlive it.
        process.signal_tree(w.pid, signal.SIGKILL, tree=[])
