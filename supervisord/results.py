"""What workers say and what their exits mean, turned into job transitions.

The loop hands over each readable channel and each exited pidfd; this part
decodes the worker's typed messages (``wire.worker``), tells the lifecycle,
and keeps the pool's restart intensity and metrics.
"""

from __future__ import annotations

import logging
import time

from supervisord.clock import SYSTEM, Clock
from supervisord.events import Publisher
from supervisord.lifecycle import Lifecycle
from supervisord.output import Output
from supervisord.pool.process import describe_exit
from supervisord.pool.watchdog import Watchdog
from supervisord.pool.workers import WorkerHandle, Workers
from supervisord.scheduler import Scheduler
from supervisord.states import FailureKind, KillReason, WorkerState
from supervisord.web.metrics import Metrics
from supervisord.wire import worker as msgs
from worker.channel import Channel, ChannelBroken, ChannelCorrupt

log = logging.getLogger("jobsup.master")

_EXPECTED = (KillReason.RECYCLE, KillReason.RETIRE, KillReason.SHUTDOWN)
# Once the watchdog has decided to end a worker for one of these, the attempt's
# outcome is that decision: a handler that returns while being killed (its
# grandchild died of the same SIGTERM) does not turn a timeout into a success.
_DECIDED = frozenset({KillReason.TIMEOUT, KillReason.MEMORY, KillReason.HEARTBEAT,
                      KillReason.CANCEL})


class Results:
    def __init__(self, workers: Workers, jobs: Lifecycle, scheduler: Scheduler,
                 watchdog: Watchdog, events: Publisher, metrics: Metrics, output: Output,
                 clock: Clock = SYSTEM) -> None:
        self.workers = workers
        self.jobs = jobs
        self.scheduler = scheduler
        self.watchdog = watchdog
        self.events = events
        self.metrics = metrics
        self.output = output
        self.clock = clock
        self.changed = True  # a worker came or went: reconcile now, not at the next tick

    def readable(self, w: WorkerHandle, chan: Channel) -> None:
        try:
            frames = chan.read()
        except ChannelBroken as exc:
            # The worker is going; its pidfd tells why.  A corrupt stream cannot be
            # read on, so that worker must go.
            self.workers.watch.remove(chan.fileno())
            if w.kill_reason is None and isinstance(exc, ChannelCorrupt):
                log.error("worker %d pid %d broke its channel (%s); killing it",
                          w.wid, w.pid, exc)
                self.workers.kill(w, None)
            return
        w.last_beat = self.clock.monotonic()
        if chan is w.control:
            return  # heartbeats
        for frame in frames:
            try:
                self.message(w, msgs.decode(frame))
            except (msgs.DecodeError, ValueError) as exc:
                log.warning("worker %d pid %d sent a malformed message (%s: %s); ignored",
                            w.wid, w.pid, type(exc).__name__, exc)

    def message(self, w: WorkerHandle, msg: msgs.FromWorker) -> None:
        if isinstance(msg, msgs.Ready):
            self.workers.ready(w)
            return
        if isinstance(msg, msgs.InitFailed):
            log.error("worker %d of pool %s could not start: %s\n%s", w.wid, w.pool,
                      msg.message, msg.traceback)
            pool = self.workers.pools.get(w.pool)
            if pool is not None:
                pool.init_failures += 1
            return
        run = w.job
        if isinstance(msg, msgs.Output | msgs.Log):
            self.captured(w, msg)
            return
        if run is None or run.job.token != msg.token:
            return  # from an attempt already given up on
        if w.kill_reason in _DECIDED and isinstance(msg, msgs.Done | msgs.Error):
            return  # its exit decides
        if isinstance(msg, msgs.Done | msgs.Error):
            self.output.finish(run, w.pid)  # written before the outcome
        if isinstance(msg, msgs.Done):
            if msg.status == "cancelled":
                self.jobs.settle_cancelled(run, "handler returned after seeing ctx.cancelled")
            else:
                self.jobs.succeed(run, msg.result)
            self.release(w)
        elif isinstance(msg, msgs.Error):
            self.jobs.fail(run, FailureKind(msg.kind), msg.message, msg.traceback,
                           msg.retry_after)
            self.release(w, keep=msg.kind != FailureKind.MEMORY)
        elif isinstance(msg, msgs.Progress):
            run.progress = (msg.pct, msg.message)
            self.events.publish(run.job.id, "progress", progress=msg.pct, message=msg.message)
        else:
            self.events.publish(run.job.id, "output", data=msg.data)

    def captured(self, w: WorkerHandle, msg: msgs.Output | msgs.Log) -> None:
        """Output of the worker's current job, or of none (between jobs, or of an
        attempt already given up on): then it is logged with the worker's pid alone."""
        run = w.job if w.job is not None and w.job.job.token == msg.token else None
        if isinstance(msg, msgs.Output):
            self.output.data(run, w.pid, msg.data)
        else:
            self.output.record(run, w.pid, msg.level, msg.logger, msg.message)

    def release(self, w: WorkerHandle, keep: bool = True) -> None:
        run = w.job
        if run is not None:
            self.scheduler.ran(w.pool, time.time() - run.started)
        self.jobs.finished_run(w, keep)
        if w.state is WorkerState.STOPPING:
            self.changed = True

    def exited(self, w: WorkerHandle) -> None:
        status = w.child.reap()
        if status is None:
            return
        self.changed = True
        self.workers.forget(w)
        self.watchdog.forget(w.pid)
        _, text = describe_exit(status)
        reason = w.kill_reason
        pool = self.workers.pools.get(w.pool)
        run, w.job = w.job, None
        if run is not None:
            self.output.finish(run, w.pid)
            self.jobs.lost_worker(run, w, reason, text)
        while w.ahead:
            self.jobs.requeue(w.ahead.popleft().job, "")  # sent ahead but never started
        label = reason.value if reason else "crash"
        if pool is not None and reason not in _EXPECTED:
            now = self.clock.monotonic()
            pool.note_death(now)
            self.metrics.restarts.labels(w.pool, label).inc()
            self.metrics.degraded.labels(w.pool).set(1 if pool.degraded(now) else 0)
            log.warning("worker %d pid %d of pool %s %s (%s)", w.wid, w.pid, w.pool, text,
                        label)
        elif pool is not None and reason is not KillReason.SHUTDOWN:
            self.metrics.restarts.labels(w.pool, label).inc()
