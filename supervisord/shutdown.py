"""Graceful and fast shutdown: what SIGTERM, SIGINT, SIGQUIT and ``stop`` do.

Signal handlers only record; the loop calls ``begin`` (the same code as the
API's ``shutdown``) and ``step`` once per pass until the phase is done.
Graceful: stop taking submits, give buffered jobs back, let running jobs
finish for ``shutdown_grace``, then requeue what still runs and stop the
workers.  Fast: the same at once.
"""

from __future__ import annotations

import logging

from supervisord.clock import SYSTEM, Clock
from supervisord.lifecycle import Lifecycle
from supervisord.phase import PhaseMachine
from supervisord.pool.workers import Workers
from supervisord.redis.reader import Reads
from supervisord.scheduler import Scheduler
from supervisord.settings import Settings
from supervisord.states import KillReason, Phase
from supervisord.writer import Writer

log = logging.getLogger("jobsup.master")


class Shutdown:
    def __init__(self, phase: PhaseMachine, settings: Settings, workers: Workers,
                 jobs: Lifecycle, scheduler: Scheduler, writer: Writer,
                 reads: Reads | None = None, clock: Clock = SYSTEM) -> None:
        self.phase = phase
        self.settings = settings
        self.workers = workers
        self.jobs = jobs
        self.scheduler = scheduler
        self.writer = writer
        self.reads = reads  # answers still to come back from Redis
        self.clock = clock
        self.drain_deadline = 0.0
        self.stop_deadline = 0.0

    def configure(self, settings: Settings) -> None:
        self.settings = settings

    def begin(self, fast: bool, why: str) -> None:
        if self.phase.done or (not self.phase.running and not fast):
            return
        log.warning("%s: %s shutdown", why, "fast" if fast else "graceful")
        if self.phase.running:
            self.phase.to(Phase.DRAINING, why)
            self.drain_deadline = (self.clock.monotonic()
                                   + self.settings.cfg.daemon.shutdown_grace)
            self.scheduler.give_back("node shutting down")
        if fast:
            self.drain_deadline = 0.0
            self.step(self.clock.monotonic())
            for w in self.workers.all():
                self.workers.kill(w, KillReason.SHUTDOWN)

    def step(self, now: float) -> None:
        if self.phase.now is Phase.DRAINING:
            self._drain(now)
        if self.phase.now is Phase.STOPPING:
            self._stop(now)

    def _drain(self, now: float) -> None:
        busy = [w for w in self.workers.all() if w.job is not None]
        for w in self.workers.all():
            if w.job is None and w.staying:
                self.workers.retire(w, KillReason.SHUTDOWN)
            elif w.job is not None:
                w.leave = KillReason.SHUTDOWN
        if busy and now < self.drain_deadline:
            return
        for w in busy:
            if w.job is not None:
                self.jobs.requeue(w.job, "still running at the end of shutdown_grace")
            self.workers.stop(w, KillReason.SHUTDOWN)
        self.phase.to(Phase.STOPPING, "drained")
        self.stop_deadline = now + self.settings.cfg.daemon.kill_grace + 5.0

    def _stop(self, now: float) -> None:
        reading = self.reads is not None and self.reads.pending
        if not (self.workers.all() or self.writer.batch or self.writer.busy or reading):
            self.phase.to(Phase.DONE, "workers stopped, writes and reads settled")
        elif now > self.stop_deadline:
            for w in self.workers.all():
                self.workers.kill(w, KillReason.SHUTDOWN)
            if now > self.stop_deadline + 5.0 or not self.workers.all():
                self.phase.to(Phase.DONE, "stop deadline passed")
