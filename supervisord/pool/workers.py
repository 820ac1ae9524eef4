"""Worker pools: who is alive, who is free, and reconciling that with the target.

Each pass compares a pool's target size with the workers alive and starts or
stops the difference.  Deaths are noticed through pidfds in the master's poll.
Restart intensity works as in OTP supervisors: more than ``max_restarts``
abnormal deaths within ``restart_window`` puts the pool into exponential
restart backoff instead of a fork loop.

A worker's life is one state machine (``STARTING → IDLE ⇄ BUSY → STOPPING``),
changed only by ``Workers.change``, which refuses a move the table does not
allow, logs it and tells the hook (events, gauges).  A worker due to leave
after its current job carries ``leave``; an idle worker never does, so "idle"
means exactly ``state is IDLE``.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from supervisord.clock import SYSTEM, Clock
from supervisord.config import PoolConfig
from supervisord.errors import InvalidTransition
from supervisord.pool import process
from supervisord.pool.cgroups import Cgroups
from supervisord.pool.orphans import Ledger
from supervisord.redis.store import Reserved
from supervisord.settings import Settings
from supervisord.states import KillReason, WorkerState
from supervisord.wire import worker as msgs
from worker import channel
from worker.channel import Channel

log = logging.getLogger("jobsup.pool")

_MOVES: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.IDLE, WorkerState.STOPPING}),
    WorkerState.IDLE: frozenset({WorkerState.BUSY, WorkerState.STOPPING}),
    WorkerState.BUSY: frozenset({WorkerState.IDLE, WorkerState.BUSY, WorkerState.STOPPING}),
    WorkerState.STOPPING: frozenset({WorkerState.STOPPING}),
}


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
    doomed: bool = False  # cancelled before it started: stop it the moment it does
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
    spawned: float = 0.0
    state: WorkerState = WorkerState.STARTING
    job: Running | None = None
    ahead: deque[Running] = field(default_factory=deque)  # sent, start after ``job``
    jobs_done: int = 0
    last_beat: float = 0.0
    leave: KillReason | None = None  # stop once the current job is done
    kill_reason: KillReason | None = None  # why it is stopping
    kill_at: float | None = None  # SIGKILL deadline after a SIGTERM
    kill_why: str | None = None  # what a memory kill was about, for the job's error
    gpu_memory: int | None = None  # bytes, the watchdog's last NVML reading of its tree
    cgroup: Path | None = None  # its own cgroup v2 (memory_limit_kind = "cgroup")

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def staying(self) -> bool:
        """Neither stopping nor due to leave: it counts towards the pool's target."""
        return self.state is not WorkerState.STOPPING and self.leave is None

    def channels(self) -> tuple[Channel, Channel]:
        return self.chan, self.control


@dataclass(eq=False)
class Pool:
    cfg: PoolConfig
    target: int
    generation: int = 0
    workers: dict[int, WorkerHandle] = field(default_factory=dict)
    deaths: deque[float] = field(default_factory=deque)
    backoff_level: int = 0
    backoff_until: float = 0.0
    ever_ready: bool = False
    init_failures: int = 0

    @property
    def name(self) -> str:
        return self.cfg.name

    def recent_deaths(self, now: float) -> int:
        """Worker deaths within ``restart_window`` of ``now``."""
        return sum(1 for t in self.deaths if t >= now - self.cfg.restart_window)

    def degraded(self, now: float) -> bool:
        """True while worker deaths within ``restart_window`` exceed ``max_restarts``."""
        return self.recent_deaths(now) > self.cfg.max_restarts

    def idle(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.state is WorkerState.IDLE]

    def busy(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.job is not None]

    def staying(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.staying]

    def note_death(self, now: float) -> float:
        """Count an abnormal death; returns the restart backoff it started (0 if none)."""
        window = self.cfg.restart_window
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - window:
            self.deaths.popleft()
        if len(self.deaths) <= self.cfg.max_restarts:
            self.backoff_level = 0  # calm again: the next crash loop starts small
            return 0.0
        delay = min(30.0, 0.5 * 2 ** self.backoff_level)
        self.backoff_level += 1
        self.backoff_until = now + delay
        log.error("pool %s: %d worker deaths in %.0fs; restart backoff %.1fs (degraded)",
                  self.name, len(self.deaths), window, delay)
        return delay


class Watch(Protocol):
    """The loop's poller, as far as the pool needs it."""

    def add(self, fd: int) -> None: ...

    def want_write(self, fd: int, on: bool) -> None: ...

    def remove(self, fd: int) -> None: ...


Hook = Callable[[WorkerHandle, WorkerState, str], None]


class Workers:
    """Starts, stops and tracks the worker processes of every pool."""

    def __init__(self, settings: Settings, watch: Watch, on_change: Hook | None = None,
                 clock: Clock = SYSTEM, devices: list[int] | None = None,
                 ledger: Ledger | None = None, cgroups: Cgroups | None = None) -> None:
        self.settings = settings
        self.devices = list(devices or ())  # what gpus = "auto" means: NVML's devices
        self.ledger = ledger
        self.cgroups = cgroups
        self.watch = watch
        self.on_change = on_change
        self.clock = clock
        self.pools: dict[str, Pool] = {p.name: Pool(cfg=p, target=p.workers)
                                       for p in settings.cfg.pools}
        self.by_wid: dict[int, WorkerHandle] = {}
        self.by_pidfd: dict[int, WorkerHandle] = {}
        self.by_channel: dict[int, tuple[WorkerHandle, Channel]] = {}  # fd -> worker, channel
        self._next_wid = 1

    def all(self) -> list[WorkerHandle]:
        return list(self.by_wid.values())

    # -- the state machine ---------------------------------------------------------
    def change(self, w: WorkerHandle, new: WorkerState, why: str) -> None:
        old = w.state
        if new not in _MOVES[old]:
            raise InvalidTransition(f"worker {w.wid} pid {w.pid}: {old} -> {new} ({why})")
        w.state = new
        if old is not new:
            log.debug("worker %d pid %d: %s -> %s (%s)", w.wid, w.pid, old, new, why)
            if self.on_change is not None:
                self.on_change(w, old, why)

    def ready(self, w: WorkerHandle) -> None:
        self.change(w, WorkerState.IDLE, "ready")
        pool = self.pools.get(w.pool)
        if pool is not None:
            pool.ever_ready = True
            pool.init_failures = 0

    def take(self, w: WorkerHandle, run: Running) -> None:
        """The worker starts ``run`` now."""
        w.job = run
        self.change(w, WorkerState.BUSY, f"job {run.job.id}")

    def free(self, w: WorkerHandle, keep: bool = True) -> Running | None:
        """The worker finished its job: the next one sent ahead, or idle, or it goes.

        Returns the run it starts next (already on its way to it), if any.
        """
        w.job = None
        w.jobs_done += 1
        if w.ahead and keep:
            return w.ahead.popleft()
        pool = self.pools.get(w.pool)
        limit = pool.cfg.max_jobs_per_worker if pool else None
        outdated = pool is not None and w.generation != pool.generation
        if not keep or (limit and w.jobs_done >= limit) or outdated:
            self.retire(w, KillReason.RECYCLE)
        elif w.leave is not None:
            self.retire(w, w.leave)
        else:
            self.change(w, WorkerState.IDLE, "job done")
        return None

    # -- messages ---------------------------------------------------------------------
    def send(self, w: WorkerHandle, msg: msgs.ToWorker, control: bool = False) -> None:
        """Post a message to a worker; what its socket cannot take now waits for POLLOUT."""
        chan = w.control if control else w.chan
        was_pending = chan.pending
        chan.post_bytes(msgs.encode(msg))
        if chan.pending and not was_pending:
            self.watch.want_write(chan.fileno(), True)

    def writable(self, chan: Channel) -> None:
        chan.flush()
        if not chan.pending:
            self.watch.want_write(chan.fileno(), False)

    # -- starting ---------------------------------------------------------------------
    def spec(self, pool: Pool, wid: int, gpu: list[int] | None,
             channels: tuple[int, int] = (-1, -1)) -> dict:
        """What a worker is told at start; ``channels`` are the fds it inherits."""
        cfg = self.settings.cfg
        jobs = {n: cfg.jobs[n] for n in self.settings.types_of.get(pool.name, ())}
        return {
            "wid": wid, "pool": pool.name, "channels": channels, "node": self.settings.node,
            "master_pid": os.getpid(), "cwd": os.getcwd(),
            "handlers": {n: j.handler for n, j in jobs.items()},
            "schemas": {n: j.schema_ for n, j in jobs.items() if j.schema_},
            "init": pool.cfg.init, "gpu": gpu,
            "memory_limit": pool.cfg.memory_limit,
            "memory_limit_kind": pool.cfg.memory_limit_kind,
            "heartbeat_interval": cfg.daemon.heartbeat_interval,
        }

    def start(self, pool: Pool) -> WorkerHandle:
        used = {w.slot for w in pool.workers.values()}
        slot = next(i for i in range(len(used) + 1) if i not in used)
        gpus = self.devices if pool.cfg.gpus == "auto" else pool.cfg.gpus
        gpu = [gpus[slot % len(gpus)]] if gpus else None
        env = dict(pool.cfg.env)
        env["JOBSUP_NODE"] = self.settings.node
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu))
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # number devices as NVML does
        wid = self._next_wid
        self._next_wid += 1
        spec_cgroup = None
        if pool.cfg.memory_limit_kind == "cgroup" and self.cgroups is not None:
            spec_cgroup = self.cgroups.create(wid, pool.cfg.memory_limit or 0)
        (chan, chan_end), (control, control_end) = channel.pair(), channel.pair()
        fds = (chan_end.fileno(), control_end.fileno())
        spec = self.spec(pool, wid, gpu, fds)
        spec["cgroup"] = str(spec_cgroup) if spec_cgroup else None
        try:
            child = process.spawn(spec, env, pool.cfg.user, pool.cfg.group, pass_fds=fds)
        except BaseException:
            chan.close()
            control.close()
            if spec_cgroup is not None and self.cgroups is not None:
                self.cgroups.release(spec_cgroup)
            raise
        finally:
            chan_end.close()
            control_end.close()
        if spec_cgroup is not None and self.cgroups is not None:
            self.cgroups.enter(spec_cgroup, child.pid)
        if self.ledger is not None:
            self.ledger.add(child.pid)
        now = self.clock.monotonic()
        handle = WorkerHandle(wid=wid, pool=pool.name, slot=slot, child=child, gpu=gpu,
                              generation=pool.generation, chan=chan, control=control,
                              spawned=now, last_beat=now, cgroup=spec_cgroup)
        pool.workers[wid] = handle
        self.by_wid[wid] = handle
        self.by_pidfd[child.pidfd] = handle
        for fd in (child.pidfd, chan.fileno(), control.fileno()):
            self.watch.add(fd)
        for ch in handle.channels():
            self.by_channel[ch.fileno()] = (handle, ch)
        log.debug("pool %s: started worker %d pid %d", pool.name, wid, child.pid)
        return handle

    def reconcile(self, accepting: bool) -> None:
        """Start or stop workers so that each pool has its target."""
        now = self.clock.monotonic()
        if self.cgroups is not None:
            self.cgroups.sweep()  # cgroups of exited workers, once their last process is gone
        for pool in self.pools.values():
            alive = pool.staying()
            if accepting and now >= pool.backoff_until:
                for _ in range(pool.target - len(alive)):
                    self.start(pool)
            surplus = len(alive) - pool.target
            if surplus > 0:
                # Idle ones go first; busy ones finish their job, then leave.
                ordered = sorted(alive, key=lambda w: (w.job is not None, -w.wid))
                for w in ordered[:surplus]:
                    if w.job is None:
                        self.stop(w, KillReason.RETIRE)
                    else:
                        w.leave = KillReason.RETIRE
            for w in list(pool.workers.values()):
                if w.generation != pool.generation and w.job is None and w.staying:
                    self.stop(w, KillReason.RECYCLE)

    def configure(self, settings: Settings) -> None:
        """A reload: new pools appear, removed ones shrink to 0, and a pool's workers
        are recycled only if what they were started with changed.

        Growing or shrinking a pool, or a watchdog limit the master applies
        (``max_rss``, ``max_jobs_per_worker``), keeps them; so does a new job type:
        its handler's path is sent to the running workers, which import it when its
        first job arrives.  A changed memory limit, env, user, gpus, ``init``, or a
        changed handler or schema of a type they already run, replaces them (after
        their current job), since a running process cannot take that on.
        """
        old = self.settings
        self.settings = settings
        for pcfg in settings.cfg.pools:
            pool = self.pools.get(pcfg.name)
            if pool is None:
                self.pools[pcfg.name] = Pool(cfg=pcfg, target=pcfg.workers)
                continue
            was_cfg = pool.cfg
            pool.cfg, pool.target = pcfg, pcfg.workers
            before, after = _types(old, pool.name), _types(settings, pool.name)
            kept = {t: p for t, p in after.items() if t in before}
            if (_started_with(was_cfg) != _started_with(pcfg)
                    or old.cfg.daemon.heartbeat_interval != settings.cfg.daemon.heartbeat_interval
                    or any(before[t] != p for t, p in kept.items())):
                pool.generation += 1
                log.info("pool %s: its workers' settings changed; they are replaced as they "
                         "finish their jobs", pool.name)
                continue
            added = {t: p for t, p in after.items() if t not in before}
            if added:
                msg = msgs.Handlers({t: h for t, (h, _) in added.items()},
                                    {t: sch for t, (_, sch) in added.items() if sch})
                for w in pool.workers.values():
                    if w.state is not WorkerState.STOPPING:
                        self.send(w, msg)
                log.info("pool %s: new job type(s) %s, imported by the running workers at "
                         "their first job", pool.name, ", ".join(sorted(added)))
        for name, pool in self.pools.items():
            if name not in settings.pools:
                pool.target = 0

    def resize(self, delta: int) -> None:
        for pool in self.pools.values():
            pool.target = max(0, pool.target + delta)

    # -- stopping ---------------------------------------------------------------------
    def retire(self, w: WorkerHandle, reason: KillReason) -> None:
        """Ask a worker without a job to exit by itself; SIGKILL after kill_grace."""
        self.change(w, WorkerState.STOPPING, reason.value)
        w.kill_reason = w.kill_reason or reason
        w.kill_at = self.clock.monotonic() + self.settings.cfg.daemon.kill_grace
        self.send(w, msgs.Stop())

    def stop(self, w: WorkerHandle, reason: KillReason, grace: float | None = None) -> None:
        """Polite, then firm: SIGTERM the worker's tree now, SIGKILL at the deadline."""
        self.change(w, WorkerState.STOPPING, reason.value)
        w.kill_reason = w.kill_reason or reason
        grace = self.settings.cfg.daemon.kill_grace if grace is None else grace
        if grace <= 0:
            self.kill(w)
            return
        process.signal_tree(w.pid, signal.SIGTERM)
        deadline = self.clock.monotonic() + grace
        w.kill_at = deadline if w.kill_at is None else min(w.kill_at, deadline)

    def kill(self, w: WorkerHandle, reason: KillReason | None = None) -> None:
        self.change(w, WorkerState.STOPPING, (reason or w.kill_reason or "kill").__str__())
        w.kill_reason = w.kill_reason or reason
        process.signal_tree(w.pid, signal.SIGKILL)
        w.kill_at = None

    def forget(self, w: WorkerHandle) -> None:
        """The worker has exited: drop it and everything it started."""
        pool = self.pools.get(w.pool)
        if pool is not None:
            pool.workers.pop(w.wid, None)
        self.by_wid.pop(w.wid, None)
        self.by_pidfd.pop(w.child.pidfd, None)
        for fd in (w.child.pidfd, w.chan.fileno(), w.control.fileno()):
            self.watch.remove(fd)
        for ch in w.channels():
            if self.by_channel.pop(ch.fileno(), None) is not None:
                ch.close()
        w.child.close()
        # Whatever the worker started must not outlive it.
        process.signal_tree(w.pid, signal.SIGKILL, tree=[])
        if self.ledger is not None:
            self.ledger.remove(w.pid)
        if w.cgroup is not None and self.cgroups is not None:
            self.note_oom(w)
            self.cgroups.release(w.cgroup)

    def note_oom(self, w: WorkerHandle) -> None:
        """A worker that the kernel's OOM killer ended in its cgroup failed of memory."""
        assert self.cgroups is not None and w.cgroup is not None
        if w.kill_reason is None and self.cgroups.oom_kills(w.cgroup) > 0:
            pool = self.pools.get(w.pool)
            limit = pool.cfg.memory_limit if pool else None
            w.kill_reason = KillReason.MEMORY
            w.kill_why = (f"ran out of memory in its cgroup, where the kernel's OOM killer "
                          f"ended it (memory.max {limit} bytes, the pool's memory_limit)")
            log.error("worker %d pid %d of pool %s: %s", w.wid, w.pid, w.pool, w.kill_why)


# Pool keys a running worker does not depend on: the master applies them itself.
_MASTER_SIDE = {"workers", "prefetch", "max_restarts", "restart_window", "max_rss",
                "max_gpu_memory", "max_jobs_per_worker"}


def _started_with(cfg: PoolConfig) -> dict:
    """What of a pool's config its workers were started with."""
    return cfg.model_dump(exclude=_MASTER_SIDE)


def _types(settings: Settings, pool: str) -> dict[str, tuple[str, str | None]]:
    """The job types a pool runs: handler and schema paths of each."""
    jobs = settings.cfg.jobs
    return {t: (jobs[t].handler, jobs[t].schema_) for t in settings.types_of.get(pool, ())}
