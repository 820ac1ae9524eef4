"""The master: builds the parts once, then one event loop, read top to bottom in ``run``.

Each pass sleeps in ``poll`` until a socket, a pidfd, the signal pipe or a
deadline needs it, handles what arrived, lets the watchdog act, hands queued
jobs to idle workers, and writes the pass's transitions to Redis in one
pipeline; replies, events and waiters follow the commit.  While it waits for
Redis it waits on the Redis socket: it never spins.

The parts own their state and get what they need passed in here; none of
them holds the master.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections.abc import Callable

import redis
import zmq
from zmq.utils.monitor import recv_monitor_message

from supervisord import config as config_mod
from supervisord.api import Api, Control
from supervisord.config import Config
from supervisord.errors import ConfigError, Unavailable
from supervisord.events import Publisher
from supervisord.ids import IdGenerator
from supervisord.lifecycle import Lifecycle
from supervisord.logs import Logs
from supervisord.notify import (
    Notifier,
    Systemd,
    pools_started,
    summary,
    take_environment,
    workers_up,
)
from supervisord.output import Output
from supervisord.phase import PhaseMachine
from supervisord.policies import expiry
from supervisord.policies.circuit import GAUGE, Circuits
from supervisord.poller import EVENTS, POLLIN, POLLOUT, RCVMORE, Poller
from supervisord.pool import host, orphans, process
from supervisord.pool.cgroups import Cgroups
from supervisord.pool.watchdog import Watchdog
from supervisord.pool.workers import Workers
from supervisord.redis.connect import connect
from supervisord.redis.embedded import EmbeddedRedis
from supervisord.redis.nodes import NodeRegistry
from supervisord.redis.reader import Reads
from supervisord.redis.replicas import Replicas
from supervisord.redis.store import Store
from supervisord.results import Results
from supervisord.scheduler import Scheduler
from supervisord.security import secure_api
from supervisord.settings import Settings
from supervisord.shutdown import Shutdown
from supervisord.signals import SignalReceiver
from supervisord.sockets import BoundFile, bind, remove_bound
from supervisord.states import Phase, WorkerState
from supervisord.status import Sources, describe, queue_depths, redis_reads
from supervisord.waiters import Waiters
from supervisord.web.metrics import Metrics
from supervisord.web.process import WebProcess
from supervisord.wire.api import SubmitReply
from supervisord.writer import Commit, Failure, Writer

log = logging.getLogger("jobsup.master")

_PROGRESS_EVERY = 0.2  # seconds between progress writes to Redis for one job
_TIMERS = {"watchdog": 0.25, "reconcile": 0.1, "waiters": 0.1, "discover": 0.2, "slow": 1.0,
           "nodes": 1.0}  # nodes: NodeRegistry.every, at most this


class Master:
    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.phase = PhaseMachine()
        self.exit_code = 0
        self.started = time.time()
        self.metrics = Metrics()
        self.logs = Logs(cfg.daemon.log_file, cfg.daemon.log_level, cfg.daemon.log_format,
                         cfg.daemon.node_id)
        self.signals = SignalReceiver()
        self.poller = Poller()
        self.embedded: EmbeddedRedis | None = None
        self.web: WebProcess | None = None
        self.timers: dict[str, float] = {}
        self.next_timer = 0.0  # the earliest of ``timers``
        self._errors: list[float] = []
        self.polled = time.monotonic()  # when the last poll returned
        self._redis_fd: int | None = None
        self._slow_out = self._gauges_out = self._nodes_out = False  # their reads are out
        self.queued: int | None = None  # jobs waiting, as the last gauge update found
        self.bound: list[BoundFile | None] = []  # the ipc socket files this daemon made
        self.systemd = Systemd(Notifier(take_environment()), self.started_up, self.sd_status)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> int:
        try:
            self.open()
            while not self.phase.done:
                try:
                    self.run_pass()
                except Exception:
                    self.survive()
        finally:
            self.close()
        return self.exit_code

    def run_pass(self) -> None:
        ready = self.poller.poll(self.poll_timeout())
        self.polled = time.monotonic()
        self.read_workers(ready)
        self.read_api(ready)
        self.read_subscriptions(ready)
        self.send_writes()  # results and submits go to Redis before older replies are read
        self.read_redis(ready)
        if self.reads.fd in ready:
            self.reads.finish()
        self.reap(ready)
        self.handle_signals(ready)
        self.tick()
        if self.phase.running and not self.writer.saturated():
            self.scheduler.dispatch()
        self.send_writes()
        self.events.flush()
        self.note_slow_pass()
        self.systemd.after_pass()  # only a completed pass pings the systemd watchdog

    def note_slow_pass(self) -> None:
        """A pass that blocked (a Redis call waiting out its timeout) is logged: it
        delays every reply, and the watchdog must not blame workers for it."""
        took = time.monotonic() - self.polled
        if took > 0.25:
            log.warning("a loop pass took %.2fs (Redis up: %s)", took, self.writer.up)

    def survive(self) -> None:
        """A bug in one pass is logged and the daemon keeps serving; one that repeats
        every pass would only spin, so then the daemon stops (jobs are recovered on
        restart) and leaves the restart to systemd."""
        log.exception("unexpected error in the master loop; continuing")
        now = time.monotonic()
        self._errors = [t for t in self._errors if t > now - 10.0] + [now]
        if len(self._errors) > 20:
            log.critical("the master loop failed %d times in 10 s; stopping", len(self._errors))
            self.exit_code = 1
            self.shutdown.begin(fast=True, why="repeated internal errors")
            if not self.phase.done:
                self.phase.to(Phase.DONE, "repeated internal errors")

    def can_write(self) -> bool:
        """There is something to send, and it may go now: then the pass must not sleep."""
        w = self.writer
        if not w.may_send():
            return False
        return bool(w.batch) or self.wants_jobs() or self.promote_due() or w.probe_due()

    def wants_jobs(self) -> bool:
        return (self.phase.running and self.writer.up and not self.writer.reserving()
                and not self.scheduler.paused and self.scheduler.eager())

    def promote_due(self) -> bool:
        due = self.scheduler.next_due
        return (bool(due) and time.time() >= due and not self.writer.reserving()
                and not self.scheduler.paused)

    def poll_timeout(self) -> int:
        """Sleep until the next deadline; 0 only when a write can go now."""
        if self.can_write():
            return 0
        now = time.monotonic()
        wake = [now + 1.0, self.next_timer]
        for deadline in (self.watchdog.next_deadline(), self.writer.deadline(),
                         self.systemd.next_deadline()):
            if deadline is not None:
                wake.append(deadline)
        if not self.writer.up:
            wake.append(self.writer.retry_at)
        for child in (self.embedded, self.web):
            if child is not None and child.restart_at is not None:
                wake.append(child.restart_at)
        wall = [t for t in (self.scheduler.next_due, self.jobs.next_start_write) if t]
        if wall:
            wake.append(now + max(0.0, min(wall) - time.time()))
        if not self.phase.running:
            wake.append(now + 0.01)  # shutdown steps
        return max(0, int((min(wake) - now) * 1000) + 1)

    # -- start and stop -----------------------------------------------------------------
    def open(self) -> None:
        cfg = self.cfg
        cfg.state_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs.setup()
        settings = Settings.build(cfg)
        self.signals.install()
        process.become_subreaper()
        self.host = host.check(cfg)  # before anything is started: cgroups move the master
        host.announce(cfg, self.host)
        self.cgroups = Cgroups.setup(self.host.cgroup_base) if self.host.cgroup_base else None
        orphans.kill_leftovers(cfg.state_path)  # before their jobs are requeued below
        if cfg.metrics.listen:  # bound first: a port in use stops start-up at once
            self.web = WebProcess(cfg, settings.node)
        url = cfg.redis.url
        if url == "embedded":
            self.embedded = EmbeddedRedis(cfg.state_path, cfg.redis.appendfsync,
                                          cfg.redis.server_binary, cfg.redis.persist)
            self.embedded.start()
            self.poller.add(self.embedded.pidfd)
            url = self.embedded.url
        self.store = Store(connect(url, cfg.redis), cfg.redis.prefix, settings.node,
                           Replicas(cfg.redis.min_replicas, cfg.redis.replica_timeout))
        self.store.migrate_layout()  # before any key of this node is written
        self.nodes = NodeRegistry(self.store, cfg.daemon.node_ttl)
        self.nodes.claim()
        recovered = self.store.recover(settings.node, "interrupted")
        if recovered:
            log.warning("requeued %d job(s) this node held when it last stopped", recovered)
        self.build(settings)
        self.expire_queued()
        self.writer.ok()
        self.metrics.redis_up.set(1)
        if self.web is not None:
            self.metrics.port = self.web.port
            self.web.spawn()
            self.poller.add(self.web.pidfd)
        self.workers.reconcile(accepting=True)
        # What start-up built (modules, config, schemas, scripts) lives as long as the
        # daemon: keep the garbage collector from walking it again on every full pass.
        gc.freeze()
        log.info("jobsup node %s pid %d: api %s, events %s, %d pool(s)", settings.node,
                 os.getpid(), cfg.api.endpoint, cfg.api.events, len(self.workers.pools))

    def expire_queued(self) -> None:
        """Queued jobs past their type's max_age end without waiting for a worker."""
        expired = self.store.expire_queued(expiry.sweep(self.settings.cfg))
        if expired:
            log.info("%d queued job(s) expired (max_age)", len(expired))
            self.jobs.expiries.swept(expired)

    def build(self, settings: Settings) -> None:
        """Wire the parts: each gets what it needs, once."""
        cfg, poller, m = settings.cfg, self.poller, self.metrics
        self.zmq = zmq.Context()
        self.api_sock = self.zmq.socket(zmq.ROUTER)
        events_sock = self.zmq.socket(zmq.XPUB)
        events_sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        secure_api(cfg.api, self.zmq, (self.api_sock, events_sock),
                   own_clients=[self.web.curve_public] if self.web else [])
        self.api_sock.setsockopt(zmq.LINGER, 500)
        self.api_sock.setsockopt(zmq.MAXMSGSIZE, cfg.api.max_message)
        events_sock.setsockopt(zmq.SNDHWM, 100_000)
        self.bound = [bind(self.api_sock, cfg.api.endpoint, cfg.api),
                      bind(events_sock, cfg.api.events, cfg.api)]
        # Connections that close: their clients' waits are dropped.
        self.monitor = self.api_sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        poller.add(self.api_sock, always=True)  # replies are sent on it
        poller.add(events_sock, always=True)  # events are published on it
        poller.add(self.monitor)
        poller.add(self.signals.rfd)
        self.events = events = Publisher(events_sock)
        def phase_changed(old: Phase, new: Phase, why: str) -> None:
            self.systemd.begin_stop()  # the phase only ever leaves running
            events.publish("daemon", "phase", phase=new.value, was=old.value, why=why)
        self.phase.on_change = phase_changed
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        poller.add(self.wake_r)
        pipe = self.store.pipe()
        pipe.connect()
        self.writer = Writer(self.store, pipe, settings, self.watch_redis, wake_w)
        self.watch_redis(pipe.fileno())
        self.workers = Workers(settings, poller, self.worker_changed,
                               devices=self.host.gpus.devices,
                               ledger=orphans.Ledger(cfg.state_path), cgroups=self.cgroups)
        self.watchdog = Watchdog(settings, self.workers, m.rss, self.host.gpus, m.gpu)
        self.reads = Reads(cfg.redis.socket_timeout)
        poller.add(self.reads.fd)
        self.waiters = Waiters(self.store, self.reads, self.reply, self.fail)
        self.jobs = Lifecycle(settings, self.writer.batch, self.workers, events, m,
                              self.waiters, queued=lambda t: self.scheduler.may_have_work(t),
                              due=lambda t: self.scheduler.due(t))
        self.scheduler = Scheduler(settings, self.workers, self.jobs)
        self.circuits = Circuits(m.circuit, events.publish, self.scheduler.may_have_work)
        self.output = Output(settings, self.writer.batch, events, lambda: self.writer.up)
        self.results = Results(self.workers, self.jobs, self.scheduler, self.watchdog, events, m,
                               self.output)
        self.shutdown = Shutdown(self.phase, settings, self.workers, self.jobs,
                                 self.scheduler, self.writer, self.reads)
        self.api = Api(self.api_sock, settings, self.store, IdGenerator(), self.phase,
                       self.writer, self.scheduler, self.jobs, self.waiters,
                       Control(self.shutdown.begin, self.reload, self.status_facts,
                               self.describe, m.text), self.reads)
        # A ZeroMQ socket's fd signals only new messages once a read has found it empty:
        # read the monitor empty now, so that its first event wakes the loop.
        self.read_disconnects()
        self.parts = (self.writer, self.workers, self.watchdog, self.jobs, self.scheduler,
                      self.shutdown, self.api, self.output)
        self.settings = settings
        self.status_sources = Sources(
            lambda: self.settings, self.phase, self.workers, self.scheduler, self.store,
            redis_up=lambda: self.writer.up, embedded=self.embedded is not None,
            metrics_port=lambda: m.port, topics=lambda: events.topics,
            waiters=lambda: len(self.waiters), started=self.started, metrics=m)

    def close(self) -> None:
        self.systemd.begin_stop()
        if self.web is not None:
            self.web.stop()  # first: its requests would only fail from here on
        if hasattr(self, "reads"):
            self.reads.close()  # before the node key goes: no heartbeat may follow it
        if hasattr(self, "writer"):
            try:
                self.settle_writes()
                self.nodes.release()
            except redis.RedisError as exc:
                log.warning("could not write the last transitions (%s); the next start "
                            "recovers those jobs", exc)
            for w in self.workers.all():
                self.workers.kill(w)
                w.child.popen.wait()
                self.workers.forget(w)
        if hasattr(self, "events"):
            self.events.flush()  # the last transitions and the phase "done"
        if hasattr(self, "zmq"):
            self.zmq.destroy(linger=200)
            remove_bound(self.bound)
        if self.embedded is not None:
            self.embedded.stop()
        if getattr(self, "cgroups", None) is not None:
            self.cgroups.close()
        if hasattr(self, "host"):
            self.host.gpus.close()
        self.signals.restore()
        log.info("jobsup node %s stopped", self.cfg.daemon.node_id)

    def settle_writes(self, timeout: float = 10.0) -> None:
        """At exit: finish the writes in flight and send what is left, synchronously."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.writer.busy:
                self.read_redis({}, block=True)
            elif self.writer.batch and self.writer.up:
                self.send_writes()
            else:
                return
            if not self.writer.up:
                return

    # -- replies ----------------------------------------------------------------------
    def reply(self, identity: bytes, rid, result) -> None:
        self.api.reply(identity, rid, result)

    def fail(self, identity: bytes, rid, exc) -> None:
        self.api.fail(identity, rid, exc)

    def status_facts(self) -> Callable[[], dict]:
        """Status's Redis reads, to run off the loop."""
        return redis_reads(self.status_sources)

    def describe(self, facts: dict) -> dict:
        return describe(self.status_sources, facts)

    # -- systemd ----------------------------------------------------------------------
    def started_up(self) -> bool:
        """READY=1 when the API is bound (it is, once passes run), Redis answers and
        every pool's workers are started (see notify.pools_started)."""
        return self.phase.running and self.writer.up and pools_started(
            self.workers.pools.values())

    def sd_status(self) -> str:
        up, target = workers_up(self.workers.pools.values())
        queued = self.queued if self.writer.up else None  # not known while Redis is away
        return summary(len(self.jobs.running), queued, up, target, self.writer.up,
                       self.phase.now.value)

    # -- input --------------------------------------------------------------------------
    def read_api(self, ready: dict) -> None:
        if self.monitor in ready:
            self.read_disconnects()
        if self.api_sock not in ready:
            return
        sock = self.api_sock
        for _ in range(2000):
            try:
                identity = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            # The request frame as a zmq.Frame: it knows the fd of its connection (read
            # only for waits); the frames after it, if any, are an error to report.
            body = sock.recv(copy=False) if sock.getsockopt(RCVMORE) else None
            frames = [identity] if body is None else [identity, body.bytes]
            while sock.getsockopt(RCVMORE):
                frames.append(sock.recv())
            self.api.handle(frames, None if body is None else lambda b=body: self.source(b))
            if not self.api_sock.getsockopt(EVENTS) & POLLIN:
                return  # cheaper than the exception of one more recv

    def source(self, frame: zmq.Frame) -> int:
        """The fd of the connection a request came on.  Closes reported before it are
        read first: the fd of a connection that closed is soon another's, and its late
        close event must not drop the new connection's waits."""
        self.read_disconnects()
        return frame.get(zmq.SRCFD)

    def read_disconnects(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                n = self.waiters.disconnected(int(event["value"]))
                if n:
                    log.info("a client connection closed; dropped its %d wait(s)", n)

    def read_subscriptions(self, ready: dict) -> None:
        if self.events.sock in ready:
            self.events.read_subscriptions()

    def read_workers(self, ready: dict) -> None:
        channels = self.workers.by_channel
        for fd, events in ready.items():
            if not isinstance(fd, int) or fd not in channels:
                continue
            w, chan = channels[fd]
            if events & POLLOUT:
                self.workers.writable(chan)
            if events & POLLIN:
                self.results.readable(w, chan)

    def reap(self, ready: dict) -> None:
        for fd in [fd for fd in ready if isinstance(fd, int) and fd in self.workers.by_pidfd]:
            self.results.exited(self.workers.by_pidfd[fd])
        if self.embedded is not None and self.embedded.pidfd in ready:
            self.redis_exited()
        if self.web is not None and self.web.pidfd in ready:
            self.poller.remove(self.web.pidfd)
            self.web.exited(time.monotonic())
        if self.signals.child_exited:
            self.signals.child_exited = False
            known = {w.pid for w in self.workers.all()}
            for child in (self.embedded, self.web):
                if child is not None and child.proc is not None:
                    known.add(child.proc.pid)
            process.reap_orphans(known)

    def handle_signals(self, ready: dict) -> None:
        if self.signals.rfd not in ready:
            return
        for sig in self.signals.drain():
            if sig == signal.SIGTERM:
                self.shutdown.begin(fast=False, why="SIGTERM")
            elif sig == signal.SIGINT:
                self.shutdown.begin(fast=not self.phase.running, why="SIGINT")
            elif sig == signal.SIGQUIT:
                self.shutdown.begin(fast=True, why="SIGQUIT")
            elif sig == signal.SIGHUP:
                self.reload()
            elif sig == signal.SIGUSR1:
                self.logs.reopen()
            elif sig in (signal.SIGTTIN, signal.SIGTTOU):
                self.resize(1 if sig == signal.SIGTTIN else -1)

    def worker_changed(self, w, old: WorkerState, why: str) -> None:
        if not self.events.wanted("worker"):
            return  # twice a job: build nothing nobody would receive
        self.events.publish("worker", "worker", pid=w.pid, pool=w.pool, wid=w.wid,
                            state=w.state.value, was=old.value, why=why)

    # -- Redis ----------------------------------------------------------------------------
    def redis_exited(self) -> None:
        """The embedded redis-server died: reap it, take the replies it sent before it
        died, count what was in flight as lost (kept for a retry), refuse submits until
        the next one answers, and plan its restart."""
        self.poller.remove(self.embedded.pidfd)
        self.embedded.exited(time.monotonic())
        exc = redis.ConnectionError("the embedded redis-server died")
        self.read_redis({}, block=True)
        for failure in self.writer.cut(exc):
            self.write_failed(failure)
        self.redis_failed(exc)

    def restart_redis(self) -> None:
        """Start the embedded Redis again over its AOF; the writer reconnects at once, and
        the first commit after it re-checks which jobs this node holds (resync)."""
        if not self.embedded.restart(time.monotonic()):
            return
        self.poller.add(self.embedded.pidfd)
        self.metrics.redis_restarts.inc()
        self.writer.resync = True
        self.writer.retry_now()

    def watch_redis(self, fd: int | None) -> None:
        if self._redis_fd is not None:
            self.poller.remove(self._redis_fd)
        self._redis_fd = fd
        if fd is not None:
            self.poller.add(fd)

    def send_writes(self) -> None:
        """Send the pass's writes, unless as many as may be are in flight.  A reservation
        (and promotion) goes only when none is in flight, since how many jobs to take
        depends on what the last one brought."""
        if not self.can_write():
            return
        self.scheduler.submitted(self.writer.batch.submits)
        wants = self.scheduler.wants() if self.wants_jobs() else {}
        promote = 500 if self.promote_due() else 0
        if not (self.writer.batch or wants or promote or self.writer.probe_due()):
            return
        for failure in self.writer.send(wants, promote):
            self.write_failed(failure)

    def read_redis(self, ready: dict, block: bool = False) -> None:
        if self.wake_r in ready:
            os.read(self.wake_r, 64)
            self.writer.reconnected()
        for result in self.writer.overdue():
            self.write_failed(result)
        self.writer.maintain()
        if not self.writer.busy or not (block or self._redis_fd in ready):
            return
        for result in self.writer.receive(block):
            if isinstance(result, Commit):
                self.commit(result)
            else:
                self.write_failed(result)

    def write_failed(self, failure: Failure) -> None:
        exc, taken = failure.error, failure.taken
        self.redis_failed(exc)
        self.refuse(taken.submits, exc, unsure=not isinstance(exc, redis.ResponseError))
        # Submits not sent yet would wait for Redis to come back: refuse them now, as
        # new submits are refused while it is away.
        unsent, self.writer.batch.submits = self.writer.batch.submits, []
        self.refuse(unsent, exc)
        self.writer.batch.put_back(taken)
        self.writer.resync = True

    def refuse(self, submits: list, exc: Exception, unsure: bool = False) -> None:
        """Tell the clients of submits that Redis did not confirm.  ``unsure``: the write
        was sent and its reply lost, so Redis may have stored it; say so, rather than
        tell a client its job is not there when it may run."""
        for pending in submits:
            started = [job for job in pending.jobs if job.lease]
            for job in started:  # it went straight to a worker: stop it
                self.jobs.request_cancel(job.id, job.lease)
            stopped = (f" ({len(started)} had already started on a worker and were told to "
                       "stop)" if started else "")
            if unsure:
                text = (f"Redis did not confirm the write ({exc}); the job may or may not be "
                        f"stored{stopped}. Resubmit with the same idempotency key (safe), or "
                        "check with get once Redis is back")
            else:
                text = (f"Redis write failed ({exc}); the job was NOT accepted{stopped}. "
                        "Resubmit; an idempotency key makes resubmitting safe")
            self.api.fail(pending.identity, pending.rid, Unavailable(text))

    def redis_failed(self, exc: Exception) -> None:
        if isinstance(exc, redis.ResponseError) and self.writer.up:
            log.critical("Redis rejected a jobsup script (a bug; please report it): %s", exc)
        self.writer.failed(exc)
        self.metrics.redis_up.set(0)

    def commit(self, c: Commit) -> None:
        """A write is in Redis: acknowledge its submits, run its effects, take the jobs
        it reserved, and answer whoever waited for what it finished."""
        self.writer.ok()
        self.metrics.redis_up.set(1)
        self.acknowledge(c.taken.submits, c.created)
        for effect, flag in zip(c.taken.effects, c.applied.flags, strict=True):
            if effect is not None:
                try:
                    effect(flag)
                except Exception:
                    log.exception("after-commit effect failed")
        self.scheduler.take_reserved(c.wants, c.applied.reserved, c.applied.promoted,
                                     self.phase.running)
        if c.applied.next_due is not None:
            self.scheduler.next_due = c.applied.next_due
        for job_type, state in c.applied.circuit_changes:
            policy = self.settings.policy(job_type)
            self.circuits.changed(job_type, state, policy.circuit_breaker, policy.fallback)
        if self.writer.resync:
            self.resync()
        self.waiters.answer_ready(c.applied.records)
        if self.phase.running:
            self.scheduler.dispatch()

    def resync(self) -> None:
        """Replies were lost with the connection: jobs may be held in Redis that this node
        never heard of.  Requeue all it holds but those it knows, off the loop; until that
        is done it reserves and hands over nothing, since what it took meanwhile would not
        be among those it knows."""
        self.writer.resync = False
        self.scheduler.paused = True
        known = (*self.jobs.running, *self.scheduler.buffered_ids())
        node, store = self.settings.node, self.store

        def done(n: int | Exception) -> None:
            self.scheduler.paused = False
            if isinstance(n, redis.RedisError):
                self.writer.resync = True  # try again after the next write commits
                self.redis_failed(n)
            elif isinstance(n, Exception):
                raise n
            elif n:
                log.warning("requeued %d job(s) whose hand-over reply Redis lost", n)

        self.reads.submit(lambda: store.recover(node, "resync", keep=known), done)

    def acknowledge(self, submits: list, created: list[tuple[str, bool]]) -> None:
        at = 0
        for pending in submits:
            rows = created[at:at + len(pending.jobs)]
            at += len(pending.jobs)
            for job, (job_id, new) in zip(pending.jobs, rows, strict=True):
                if new:
                    self.metrics.submitted.labels(job.type).inc()
                    self.events.state(job_id, job.status, attempt=1, type=job.type,
                                      at=job.created_at)
                    if job.status == "scheduled":
                        self.scheduler.due(job.run_at)
            ids = [job_id for job_id, _ in rows]
            if pending.wait:
                # Submit-and-wait: the job is stored; the reply is its final record.
                job_id, new = rows[0]
                if new:
                    self.api.wait_for(pending.identity, pending.rid, [job_id],
                                      [pending.jobs[0].status], "records", pending.wait_timeout)
                else:  # an earlier job with the same key: its status is in Redis
                    self.api.await_jobs(pending.identity, pending.rid, [job_id], "records",
                                        pending.wait_timeout)
                continue
            self.reply(pending.identity, pending.rid,
                       ids if pending.many else SubmitReply(id=ids[0], new=rows[0][1]))

    # -- timers -----------------------------------------------------------------------------
    def due(self, name: str, now: float, every: float | None = None) -> bool:
        """Whether timer ``name`` is due; if so it is set again, ``every`` seconds on
        (its period in ``_TIMERS`` unless given)."""
        if now < self.timers.get(name, 0.0):
            return False
        self.timers[name] = now + (_TIMERS[name] if every is None else every)
        return True

    def tick(self) -> None:
        """Timers: cheap when nothing is due (a job's round trip takes several passes)."""
        jobs = self.jobs
        if jobs.next_start_write is not None and time.time() >= jobs.next_start_write:
            jobs.record_due_starts(time.time())
        now = time.monotonic()
        if self.embedded is not None and self.embedded.restart_due(now):
            self.restart_redis()
        if self.web is not None and self.web.restart_due(now) and self.web.restart(now):
            self.poller.add(self.web.pidfd)
        deadline = self.watchdog.next_deadline()
        if deadline is not None and now >= deadline:
            # Heartbeats that came while this pass was blocked are not read yet.
            self.watchdog.check(now, heartbeats=now - self.polled < 0.25)
        for run in jobs.running.values():
            if run.progress is not None and now - run.progress_written >= _PROGRESS_EVERY:
                jobs.write_progress(run)
        self.output.flush_due(jobs.running)
        if not self.phase.running:
            self.shutdown.step(now)
        elif self.results.changed:
            self.reconcile()
        if now >= self.next_timer:
            self.timed(now)

    def timed(self, now: float) -> None:
        """The periodic timers, once the earliest of them is due."""
        if self.due("watchdog", now):
            self.watchdog.check(now, heartbeats=now - self.polled < 0.25)
        if self.due("reconcile", now) and self.phase.running:
            self.reconcile()
        if self.due("waiters", now):
            self.waiters.expire(now)
        if self.due("discover", now):
            self.scheduler.discover()
        if self.due("slow", now):
            self.slow_tick(now)
        if self.due("nodes", now, every=self.nodes.every):
            self.node_tick()
        self.next_timer = min(self.timers[name] for name in _TIMERS)

    def reconcile(self) -> None:
        self.results.changed = False
        self.workers.reconcile(accepting=True)
        self.check_startable()

    def slow_tick(self, now: float) -> None:
        """Once a second: gauges, other nodes, retention, remote cancels and waits.  Their
        Redis reads run off the loop, one round of them at a time."""
        self.update_gauges(now)
        if self.writer.suspect() or self._slow_out:
            return  # Redis is down or slow, or the last round is still out
        held = [*self.jobs.running, *self.scheduler.buffered_ids(),
                *(r.job.id for w in self.workers.all() for r in w.ahead)]
        janitor = self.due("janitor", now, every=5.0)
        store = self.store
        sweep = expiry.sweep(self.settings.cfg) if janitor else []

        def read() -> tuple[list[str], list[tuple[str, str, str]]]:
            cancels = store.cancel_requested(held) if held else []
            expired = []
            if janitor:
                store.expire()
                expired = store.expire_queued(sweep)  # queued jobs past max_age
            return cancels, expired

        def done(found: tuple[list[str], list[tuple[str, str, str]]] | Exception) -> None:
            self._slow_out = False
            if isinstance(found, redis.RedisError):
                self.redis_failed(found)
                return
            if isinstance(found, Exception):
                raise found
            cancels, expired = found
            for job_id in cancels:
                self.scheduler.cancel(job_id)
            if expired:
                log.info("%d queued job(s) expired (max_age)", len(expired))
                self.jobs.expiries.swept(expired)
            self.writer.ok()

        self._slow_out = True
        self.reads.submit(read, done)
        self.waiters.recheck(self.jobs.running)

    def node_tick(self) -> None:
        """Heartbeat, and requeue the jobs of nodes whose heartbeat expired: one script
        call, several times per node_ttl (``NodeRegistry.every``), off the loop."""
        if self.writer.suspect() or self._nodes_out:
            return  # Redis is down or slow, or the last beat is still out
        nodes = self.nodes

        def read() -> None:
            nodes.reap(nodes.beat())

        def done(found: Exception | None) -> None:
            self._nodes_out = False
            if isinstance(found, redis.RedisError):
                self.redis_failed(found)
            elif isinstance(found, Exception):
                raise found

        self._nodes_out = True
        self.reads.submit(read, done)

    def update_gauges(self, now: float) -> None:
        m = self.metrics
        for pool in self.workers.pools.values():
            counts = {s: 0 for s in WorkerState}
            for w in pool.workers.values():
                counts[w.state] += 1
            for state, n in counts.items():
                m.workers.labels(pool.name, state.value).set(n)
            m.running.labels(pool.name).set(len(pool.busy()))
            m.degraded.labels(pool.name).set(1 if pool.degraded(now) else 0)
        m.redis_up.set(1 if self.writer.up else 0)
        if self.writer.suspect() or self._gauges_out:
            return

        def done(facts: dict | Exception) -> None:
            self._gauges_out = False
            if isinstance(facts, Exception):
                raise facts
            if not facts["redis"]["up"]:
                return  # keep the last figures; redis_up says why
            depths = queue_depths(facts, self.scheduler)
            for name, depth in depths.items():
                m.queue_depth.labels(name).set(depth)
            self.queued = sum(depths.values())
            for c in facts["circuits"]:
                m.circuit.labels(c["type"]).set(GAUGE[c["state"]])
            m.dead_letters.set(facts["dead"])

        self._gauges_out = True
        self.reads.submit(redis_reads(self.status_sources, health=False), done)

    def check_startable(self) -> None:
        """If no pool can start a single worker, say so and stop instead of spinning."""
        pools = [p for p in self.workers.pools.values() if p.target > 0]
        if pools and all(not p.ever_ready and p.init_failures >= 3 for p in pools):
            log.critical("no worker of any pool could start (see the errors above: usually a "
                         "handler or init module that does not import); exiting")
            self.exit_code = 1
            self.shutdown.begin(fast=True, why="no worker can start")

    # -- control ----------------------------------------------------------------------------
    def reload(self) -> list[dict]:
        """SIGHUP or the API: systemd hears RELOADING=1, then READY=1 once it is done."""
        self.systemd.reloading()
        try:
            return self.apply_config()
        finally:
            self.systemd.reloaded()

    def apply_config(self) -> list[dict]:
        """Re-read the config file; an invalid one keeps the running settings."""
        self.results.changed = True
        if not self.config_path:
            log.warning("reload: running on built-in defaults, no config file to re-read")
            return []
        old = self.settings.cfg
        try:
            new = config_mod.load(self.config_path)
            for name in ("redis", "api", "metrics", "web"):
                if getattr(new, name) != getattr(old, name):
                    log.warning("reload: [%s] changed; that takes a restart", name)
            new = new.model_copy(update={
                "redis": old.redis, "api": old.api, "metrics": old.metrics, "web": old.web,
                "daemon": new.daemon.model_copy(update={
                    "node_id": old.daemon.node_id, "state_dir": old.daemon.state_dir})})
            settings = Settings.build(new)
            if host.check(new, self.host.gpus).cgroup_base and self.cgroups is None:
                raise ConfigError("reload", errors=[{
                    "loc": "pools", "msg": "memory_limit_kind = 'cgroup' was not in use at "
                    "start; switching to it takes a restart"}])
        except ConfigError as exc:
            for err in exc.errors:
                log.error("reload: %s: %s: %s", self.config_path, err["loc"], err["msg"])
            log.error("reload: %s is invalid; keeping the running config", self.config_path)
            return exc.errors
        self.settings = settings
        for part in self.parts:
            part.configure(settings)
        self.logs.level = getattr(logging, new.daemon.log_level.upper())
        logging.getLogger().setLevel(self.logs.level)
        log.info("reload: config %s applied (%s)", self.config_path,
                 ", ".join(f"{p.name}={p.target}" for p in self.workers.pools.values()))
        return []

    def resize(self, delta: int) -> None:
        self.results.changed = True
        self.workers.resize(delta)
        log.info("pool sizes now %s",
                 ", ".join(f"{p.name}={p.target}" for p in self.workers.pools.values()))
