"""The master: one process, one event loop, read top to bottom in ``run``.

Each pass polls every socket, pidfd and the signal pipe at once, handles what
arrived, lets the watchdog act on deadlines, hands queued jobs to idle
workers, and writes the pass's transitions to Redis in one pipeline; replies,
events and waiters follow the commit.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from typing import Any

import redis
import zmq

from supervisord import process
from supervisord.api import Api
from supervisord.batch import Batch
from supervisord.config import Config
from supervisord.control import Control
from supervisord.embedded import EmbeddedRedis
from supervisord.errors import Unavailable
from supervisord.events import Publisher
from supervisord.ids import IdGenerator
from supervisord.lifecycle import CIRCUIT_GAUGE, Lifecycle
from supervisord.logs import Logs
from supervisord.metrics import Metrics
from supervisord.node import NodeRegistry
from supervisord.process import describe_exit
from supervisord.redispipe import RedisPipe
from supervisord.schemas import resolve_schemas
from supervisord.security import secure_api
from supervisord.signals import SignalReceiver
from supervisord.sockets import bind
from supervisord.states import FailureKind, KillReason, Phase, WorkerState
from supervisord.store import Store, unpack
from supervisord.watchdog import Watchdog
from supervisord.workers import Running, WorkerHandle, Workers
from supervisord.writes import Writes
from worker.channel import Channel, ChannelBroken, ChannelCorrupt

log = logging.getLogger("jobsup.master")

_PROGRESS_EVERY = 0.2  # seconds between progress writes to Redis for one job
_DISCOVER_EVERY = 0.2  # look for jobs other nodes queued, when a pool has idle workers
_SLOW_EVERY = 1.0
_TICK_EVERY = 0.001


class Master(Writes, Control):
    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.node = cfg.daemon.node_id
        self.metrics = Metrics()
        self.ids = IdGenerator()
        self.batch = Batch()
        self.api = Api(self)
        self.jobs = Lifecycle(self)
        self.logs = Logs(cfg.daemon.log_file, cfg.daemon.log_level)
        self.signals = SignalReceiver()
        self.phase = Phase.RUNNING
        self.accepting = True
        self.redis_up = False
        self.redis_retry_at = 0.0
        self.exit_code = 0
        self.started = time.time()
        self.running: dict[str, Running] = {}
        self.unstarted: list[Running] = []  # runs whose start is not written yet
        self._next_start_write: float | None = None
        self.done_waiters: list = []
        self.next_due = 0.0
        self.drain_deadline = 0.0
        self.stop_deadline = 0.0
        self._timers: dict[str, float] = {}
        self._next_tick = 0.0
        self._pipe_fd: int | None = None
        self._errors: list[float] = []
        self.pools_changed = True
        self._redis_seen = False
        self._resync = False
        self.schemas: dict[str, Any] = {}
        self.embedded: EmbeddedRedis | None = None
        self.workers = Workers(cfg, self.node)
        self.routes = self.jobs.routes()
        self.breakers = {n for n, jt in cfg.jobs.items() if jt.circuit_breaker}

    # -- the loop ---------------------------------------------------------------
    def run(self) -> int:
        try:
            self.open()
            while self.phase is not Phase.DONE:
                try:
                    self.run_pass()
                except Exception:
                    self.survive()
        finally:
            self.close()
        return self.exit_code

    def run_pass(self) -> None:
        ready = dict(self.poller.poll(self.poll_timeout()))
        self.read_workers(ready)
        self.read_api(ready)
        if self.batch:
            self.flush()  # results and submits go to Redis before older replies are read
        self.read_redis(ready)
        self.read_subscriptions(ready)
        self.reap(ready)
        self.handle_signals(ready)
        if self.timers_due():
            self.tick()
        self.dispatch()
        self.flush()

    def survive(self) -> None:
        """A bug in one pass is logged and the daemon keeps serving; one that repeats
        every pass would only spin, so then the daemon stops (jobs are recovered on
        restart) and leaves the restart to systemd."""
        log.exception("unexpected error in the master loop; continuing")
        now = time.monotonic()
        self._errors = [t for t in self._errors if t > now - 10.0] + [now]
        if len(self._errors) > 20:
            log.critical("the master loop failed %d times in 10 s; stopping",
                         len(self._errors))
            self.exit_code = 1
            self.begin_shutdown(fast=True, why="repeated internal errors")
            self.phase = Phase.DONE

    def poll_timeout(self) -> int:
        if not self.pipe.full and (self.batch or (self.may_reserve() and any(
                p.want() for p in self.workers.pools.values()))):
            return 0
        now = time.monotonic()
        wake = [now + 0.1]
        deadline = self.watchdog.next_deadline()
        if deadline is not None:
            wake.append(deadline)
        if self.next_due:
            wake.append(now + max(0.0, self.next_due - time.time()))
        if self.unstarted and self._next_start_write:
            wake.append(now + max(0.0, self._next_start_write - time.time()))
        return max(0, int((min(wake) - now) * 1000) + 1)

    # -- start and stop ---------------------------------------------------------
    def open(self) -> None:
        state = self.cfg.state_path
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs.setup()
        self.schemas = resolve_schemas(self.cfg)
        self.signals.install()
        process.become_subreaper()
        self.store = Store(self.connect_redis(), self.cfg.redis.prefix, self.node)
        self.nodes = NodeRegistry(self.store, self.cfg.daemon.node_ttl)
        self.nodes.claim()
        recovered = self.store.recover(self.node, "interrupted")
        if recovered:
            log.warning("requeued %d job(s) this node held when it last stopped", recovered)
        self.pipe = RedisPipe(self.store.r)
        self.redis_ok()
        self.zmq = zmq.Context()
        self.api_sock = self.zmq.socket(zmq.ROUTER)
        self.events_sock = self.zmq.socket(zmq.XPUB)
        self.events_sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        secure_api(self.cfg.api, self.zmq, (self.api_sock, self.events_sock))
        self.api_sock.setsockopt(zmq.LINGER, 500)
        self.api_sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.api.max_message)
        self.events_sock.setsockopt(zmq.SNDHWM, 100_000)
        bind(self.api_sock, self.cfg.api.endpoint)
        bind(self.events_sock, self.cfg.api.events)
        self.events = Publisher(self.events_sock)
        self.workers = Workers(self.cfg, self.node)
        self.watchdog = Watchdog(self.cfg, self.workers, self.metrics)
        self.metrics.serve(self.cfg.metrics.listen)
        self.poller = zmq.Poller()
        for sock in (self.api_sock, self.events_sock):
            self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self.signals.rfd, zmq.POLLIN)
        self.reconcile()
        # What start-up built (modules, config, schemas, scripts) lives as long as the
        # daemon: keep the garbage collector from walking it again on every full pass.
        gc.freeze()
        log.info("jobsup node %s pid %d: api %s, events %s, %d pool(s)", self.node, os.getpid(),
                 self.cfg.api.endpoint, self.cfg.api.events, len(self.workers.pools))

    def connect_redis(self) -> redis.Redis:
        rc = self.cfg.redis
        url = rc.url
        if url == "embedded":
            self.embedded = EmbeddedRedis(self.cfg.state_path, rc.appendfsync, rc.server_binary)
            self.embedded.start()
            url = self.embedded.url
        client = redis.Redis.from_url(url, socket_timeout=rc.socket_timeout,
                                      socket_connect_timeout=rc.socket_timeout)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return client
            except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
                raise Unavailable(f"Redis at {_safe_url(url)} refused jobsup's credentials "
                                  f"({exc}); fix the user/password in redis.url") from None
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(f"cannot reach Redis at {_safe_url(url)}: {exc}") from None
                log.warning("waiting for Redis at %s: %s", _safe_url(url), exc)
                time.sleep(1)

    def close(self) -> None:
        try:
            self.settle_writes()
            if hasattr(self, "nodes"):
                self.nodes.release()
        except (redis.RedisError, AttributeError) as exc:
            log.warning("could not write the last transitions (%s); the next start recovers "
                        "those jobs", exc)
        for w in self.workers.all():
            self.workers.kill(w, KillReason.SHUTDOWN)
            w.child.popen.wait()
            self.workers.forget(w)
        if hasattr(self, "zmq"):
            self.zmq.destroy(linger=200)
        if self.embedded is not None:
            self.embedded.stop()
        self.signals.restore()
        log.info("jobsup node %s stopped", self.node)

    # -- input --------------------------------------------------------------------
    def read_api(self, ready: dict) -> None:
        if self.api_sock not in ready:
            return
        for _ in range(2000):
            try:
                frames = self.api_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.api.handle(frames)
            if not self.api_sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return  # cheaper than the exception of one more recv

    def read_subscriptions(self, ready: dict) -> None:
        if self.events_sock in ready:
            self.events.read_subscriptions()

    def read_workers(self, ready: dict) -> None:
        channels = self.workers.by_channel
        for fd, events in ready.items():
            if not isinstance(fd, int) or fd not in channels:
                continue
            w, chan = channels[fd]
            if events & zmq.POLLOUT:
                self.send_pending(chan)
            if not events & zmq.POLLIN:
                continue
            try:
                frames = chan.read()
            except ChannelBroken as exc:
                # The worker is going; its pidfd tells why.  A corrupt stream cannot be
                # read on, so that worker must go.
                self.poller.unregister(fd)
                if w.kill_reason is None and isinstance(exc, ChannelCorrupt):
                    log.error("worker %d pid %d broke its channel (%s); killing it",
                              w.wid, w.pid, exc)
                    self.workers.kill(w)
                continue
            w.last_beat = time.monotonic()
            if chan is w.control:
                continue  # heartbeats
            for frame in frames:
                try:
                    self.on_worker_message(w, unpack(frame))
                except (ValueError, TypeError, IndexError, KeyError) as exc:
                    log.warning("worker %d pid %d sent a malformed message (%s: %s); ignored",
                                w.wid, w.pid, type(exc).__name__, exc)

    def send_worker(self, chan: Channel, msg: tuple) -> None:
        """Post a message to a worker; what its socket cannot take now waits for POLLOUT."""
        was_pending = chan.pending
        chan.post(msg)
        if chan.pending and not was_pending:
            self.poller.modify(chan.fileno(), zmq.POLLIN | zmq.POLLOUT)

    def send_pending(self, chan: Channel) -> None:
        chan.flush()
        if not chan.pending:
            self.poller.modify(chan.fileno(), zmq.POLLIN)

    def on_worker_message(self, w: WorkerHandle, msg: list) -> None:
        kind = msg[0]
        run = w.job
        if kind == "ready":
            w.state = WorkerState.IDLE
            pool = self.workers.pools.get(w.pool)
            if pool is not None:
                pool.ever_ready = True
                pool.init_failures = 0
            return
        if kind == "init_failed":
            log.error("worker %d of pool %s could not start: %s\n%s", w.wid, w.pool, msg[2],
                      msg[3])
            pool = self.workers.pools.get(w.pool)
            if pool is not None:
                pool.init_failures += 1
            return
        if run is None or run.job.token != msg[1]:
            return  # from an attempt already given up on
        if kind == "done":
            if msg[3] == "cancelled":
                self.jobs.settle_cancelled(run, "handler returned after seeing ctx.cancelled")
            else:
                self.jobs.succeed(run, msg[2])
            self.release(w)
        elif kind == "error":
            _, _, fkind, message, tb, retry_after = msg
            self.jobs.fail(run, FailureKind(fkind), message, tb, retry_after)
            self.release(w, keep=fkind != FailureKind.MEMORY)
        elif kind == "progress":
            run.progress = (msg[2], msg[3])
            self.events.publish(run.job.id, "progress", progress=msg[2], message=msg[3])
        elif kind == "emit":
            self.events.publish(run.job.id, "output", data=msg[2])

    def release(self, w: WorkerHandle, keep: bool = True) -> None:
        """A worker finished its job: make it idle, or let it go if it is due to leave."""
        run, w.job = w.job, None
        pool = self.workers.pools.get(w.pool)
        if run is not None:
            self.running.pop(run.job.id, None)
            self.jobs.write_progress(run)
            if pool is not None:
                pool.ran(time.time() - run.started)
        w.jobs_done += 1
        if w.ahead and keep:
            self.jobs.begin(w, w.ahead.popleft())  # already on its way to the worker
            return
        limit = pool.cfg.max_jobs_per_worker if pool else None
        outdated = pool is not None and w.generation != pool.generation
        if not keep or (limit and w.jobs_done >= limit) or outdated:
            self.retire(w, KillReason.RECYCLE)
        elif w.retire:
            self.retire(w, KillReason.RETIRE)
        elif self.phase is not Phase.RUNNING:
            self.retire(w, KillReason.SHUTDOWN)
        else:
            w.state = WorkerState.IDLE

    def retire(self, w: WorkerHandle, reason: KillReason) -> None:
        self.pools_changed = True
        w.kill_reason = reason
        w.state = WorkerState.STOPPING
        w.kill_at = time.monotonic() + self.cfg.daemon.kill_grace
        self.send_worker(w.chan, ("stop",))

    def reap(self, ready: dict) -> None:
        for fd in [fd for fd in ready if isinstance(fd, int) and fd in self.workers.by_pidfd]:
            w = self.workers.by_pidfd[fd]
            status = w.child.reap()
            if status is None:
                continue
            self.poller.unregister(fd)
            self.on_exit(w, status)
        if self.signals.child_exited:
            self.signals.child_exited = False
            process.reap_orphans({w.pid for w in self.workers.all()} |
                      ({self.embedded.proc.pid} if self.embedded and self.embedded.proc else set()))

    def on_exit(self, w: WorkerHandle, status: int) -> None:
        self.pools_changed = True  # replace it now, not at the next reconcile tick
        for chan in w.channels():
            try:
                self.poller.unregister(chan.fileno())
            except KeyError:
                pass  # already unregistered at the channel's EOF
        self.workers.forget(w)
        self.watchdog.forget(w.pid)
        _, text = describe_exit(status)
        reason = w.kill_reason
        pool = self.workers.pools.get(w.pool)
        run, w.job = w.job, None
        if run is not None:
            self.running.pop(run.job.id, None)
            self.jobs.lost_worker(run, w, reason, text)
        while w.ahead:
            self.jobs.requeue(w.ahead.popleft().job, "")  # sent ahead but never started
        expected = reason in (KillReason.RECYCLE, KillReason.RETIRE, KillReason.SHUTDOWN)
        label = reason.value if reason else "crash"
        if pool is not None and not expected:
            pool.note_death(time.monotonic())
            self.metrics.restarts.labels(w.pool, label).inc()
            self.metrics.degraded.labels(w.pool).set(1 if pool.degraded else 0)
            log.warning("worker %d pid %d of pool %s %s (%s)", w.wid, w.pid, w.pool, text,
                        label)
        elif pool is not None and reason is not KillReason.SHUTDOWN:
            self.metrics.restarts.labels(w.pool, label).inc()

    def handle_signals(self, ready: dict) -> None:
        if self.signals.rfd not in ready:
            return
        for sig in self.signals.drain():
            if sig == signal.SIGTERM:
                self.begin_shutdown(fast=False, why="SIGTERM")
            elif sig == signal.SIGINT:
                self.begin_shutdown(fast=self.phase is not Phase.RUNNING, why="SIGINT")
            elif sig == signal.SIGQUIT:
                self.begin_shutdown(fast=True, why="SIGQUIT")
            elif sig == signal.SIGHUP:
                self.reload()
            elif sig == signal.SIGUSR1:
                self.logs.reopen()
            elif sig in (signal.SIGTTIN, signal.SIGTTOU):
                self.resize(1 if sig == signal.SIGTTIN else -1)

    # -- timers -----------------------------------------------------------------------
    def due(self, name: str, every: float, now: float) -> bool:
        if now < self._timers.get(name, 0.0):
            return False
        self._timers[name] = now + every
        return True

    def timers_due(self) -> bool:
        """Timers run at most once a millisecond: a job's round trip takes several loop
        passes, and no timer needs a finer grain.  A pool change (a worker died) is
        acted on at once."""
        now = time.monotonic()
        if now < self._next_tick and not self.pools_changed:
            return False
        self._next_tick = now + _TICK_EVERY
        return True

    def tick(self) -> None:
        """Timers: cheap when nothing is due."""
        if self.unstarted:
            self._next_start_write = self.jobs.record_due_starts(time.time())
        now = time.monotonic()
        deadline = self.watchdog.next_deadline()
        if (deadline is not None and now >= deadline) or self.due("watchdog", 0.25, now):
            self.watchdog.check(now)
        if self.phase is not Phase.RUNNING:
            self.drain_step(now)
        elif self.due("reconcile", 0.1, now) or self.pools_changed:
            self.pools_changed = False
            self.reconcile()
            self.check_startable()
        for run in self.running.values():
            if run.progress is not None and now - run.progress_written >= _PROGRESS_EVERY:
                self.jobs.write_progress(run)
        if self.due("waiters", 0.1, now):
            self.api.expire_waiters(now)
        if self.due("discover", _DISCOVER_EVERY, now):
            for pool in self.workers.pools.values():
                if pool.idle():
                    pool.hot.update(self.types_of(pool.name))
        if self.due("slow", _SLOW_EVERY, now):
            self.slow_tick(now)

    def slow_tick(self, now: float) -> None:
        """Once a second: gauges, other nodes, retention, remote cancels and waits."""
        self.update_gauges()
        if not self.redis_up and now < self.redis_retry_at:
            return
        try:
            self.nodes.beat()
            self.api.recheck_waiters()
            self.jobs.poll_remote_cancels()
            if self.due("janitor", 5.0, now):
                self.store.expire()
            if self.due("lost", self.cfg.daemon.node_ttl / 2, now):
                self.nodes.recover_lost()
            self.redis_ok()
        except redis.RedisError as exc:
            self.redis_failed(exc)

    def update_gauges(self) -> None:
        m = self.metrics
        for pool in self.workers.pools.values():
            counts = {s: 0 for s in WorkerState}
            for w in pool.workers.values():
                counts[w.state] += 1
            for state, n in counts.items():
                m.workers.labels(pool.name, state.value).set(n)
            m.running.labels(pool.name).set(len(pool.busy()))
            m.degraded.labels(pool.name).set(1 if pool.degraded else 0)
        if self.redis_up:
            try:
                types_of = {name: self.types_of(name) for name in self.workers.pools}
                for name, depth in self.store.queue_depths(types_of).items():
                    m.queue_depth.labels(name).set(depth)
                breakers = [n for n, jt in self.cfg.jobs.items() if jt.circuit_breaker]
                for c in self.store.circuits(breakers):
                    m.circuit.labels(c["type"]).set(CIRCUIT_GAUGE[c["state"]])
                m.dead_letters.set(self.store.dead_letter_count())
            except redis.RedisError as exc:
                self.redis_failed(exc)
        m.redis_up.set(1 if self.redis_up else 0)

    def reconcile(self) -> None:
        accepting = self.phase is Phase.RUNNING
        for pool in self.workers.pools.values():
            for w in self.workers.reconcile(pool, accepting):
                for fd in (w.child.pidfd, w.chan.fileno(), w.control.fileno()):
                    self.poller.register(fd, zmq.POLLIN)

    def check_startable(self) -> None:
        """If no pool can start a single worker, say so and stop instead of spinning."""
        pools = [p for p in self.workers.pools.values() if p.target > 0]
        if pools and all(not p.ever_ready and p.init_failures >= 3 for p in pools):
            log.critical("no worker of any pool could start (see the errors above: usually a "
                         "handler or init module that does not import); exiting")
            self.exit_code = 1
            self.begin_shutdown(fast=True, why="no worker can start")

    # -- jobs: start, finish, fail, requeue -----------------------------------------
    def may_have_work(self, job_type: str) -> None:
        """A job of this type was queued: its pool should look in Redis again."""
        pool = self.workers.pools.get(self.cfg.pool_of(job_type)) if (
            job_type in self.cfg.jobs) else None
        if pool is not None:
            pool.hot.add(job_type)

    def types_of(self, pool: str) -> list[str]:
        return [name for name in self.cfg.jobs if self.cfg.pool_of(name) == pool]

    def dispatch(self) -> None:
        if self.phase is not Phase.RUNNING:
            return
        for pool in self.workers.pools.values():
            if not pool.buffer:
                continue
            for w in pool.idle():
                if not pool.buffer:
                    break
                self.jobs.start(w, pool.buffer.popleft())
            depth = pool.pipeline_depth()
            if pool.buffer and depth:
                busy = [w for w in pool.busy() if pool.can_take_more(w, depth)]
                while pool.buffer and busy:  # one each in turn, so that workers share evenly
                    for w in list(busy):
                        if not pool.buffer:
                            break
                        self.jobs.start(w, pool.buffer.popleft())
                        if not pool.can_take_more(w, depth):
                            busy.remove(w)

    # -- status -------------------------------------------------------------------------
    def describe(self) -> dict:
        from supervisord.status import describe
        return describe(self)


def _safe_url(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
