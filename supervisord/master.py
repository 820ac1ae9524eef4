"""The master: one process, one event loop, read top to bottom in ``run``.

Each pass polls every socket, pidfd and the signal pipe at once, handles what
arrived, lets the watchdog act on deadlines, hands queued jobs to idle
workers, and writes the pass's transitions to Redis in one pipeline; replies,
events and waiters follow the commit.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import time
from collections import deque
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
import zmq

from supervisord import config as config_mod
from supervisord import protocol
from supervisord.api import Api
from supervisord.batch import Batch
from supervisord.config import Config
from supervisord.embedded import EmbeddedRedis
from supervisord.errors import ConfigError, Unavailable
from supervisord.events import Publisher
from supervisord.ids import IdGenerator
from supervisord.lifecycle import CIRCUIT_GAUGE, Lifecycle
from supervisord.logs import Logs
from supervisord.metrics import Metrics
from supervisord.node import NodeRegistry
from supervisord.process import describe_exit
from supervisord.redispipe import RedisPipe
from supervisord.security import secure_api
from supervisord.signals import SignalReceiver
from supervisord.states import FailureKind, KillReason, WorkerState
from supervisord.store import Reserved, Store, pack, unpack
from supervisord.watchdog import Watchdog
from supervisord.workers import Pool, Running, WorkerHandle, Workers

log = logging.getLogger("jobsup.master")

_PROGRESS_EVERY = 0.2  # seconds between progress writes to Redis for one job
_DISCOVER_EVERY = 0.2  # look for jobs other nodes queued, when a pool has idle workers
_SLOW_EVERY = 1.0


class Phase(StrEnum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"
    DONE = "done"


class Master:
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
        self._pipe_fd: int | None = None
        self._errors: list[float] = []
        self.pools_changed = True
        self._redis_seen = False
        self._resync = False
        self.schemas: dict[str, Any] = {}
        self.embedded: EmbeddedRedis | None = None
        self.workers = Workers(cfg, "", self.node)
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
        self.read_redis(ready)
        self.read_api(ready)
        self.read_workers(ready)
        self.read_subscriptions(ready)
        self.reap(ready)
        self.handle_signals(ready)
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
        if not self.pipe.busy and (self.batch or any(
                p.want() for p in self.workers.pools.values())):
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
        _become_subreaper()
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
        _bind(self.api_sock, self.cfg.api.endpoint)
        _bind(self.events_sock, self.cfg.api.events)
        self.events = Publisher(self.events_sock)
        self.worker_sock = self.zmq.socket(zmq.ROUTER)
        self.worker_sock.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{_short_ipc_path(state, 'workers.sock')}"
        _bind(self.worker_sock, endpoint)
        self.workers = Workers(self.cfg, endpoint, self.node)
        self.watchdog = Watchdog(self.cfg, self.workers, self.metrics)
        self.metrics.serve(self.cfg.metrics.listen)
        self.poller = zmq.Poller()
        for sock in (self.api_sock, self.worker_sock, self.events_sock):
            self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self.signals.rfd, zmq.POLLIN)
        self.reconcile()
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

    def read_subscriptions(self, ready: dict) -> None:
        if self.events_sock in ready:
            self.events.read_subscriptions()

    def read_workers(self, ready: dict) -> None:
        if self.worker_sock not in ready:
            return
        for _ in range(2000):
            try:
                identity, frame = self.worker_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            w = self.workers.by_identity.get(b"w" + identity[1:])
            if w is None:
                continue
            w.last_beat = time.monotonic()
            if identity[:1] == b"w":
                self.on_worker_message(w, unpack(frame))

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
        self.worker_sock.send_multipart((w.identity, pack(("stop",))))

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
            _reap_orphans({w.pid for w in self.workers.all()} |
                      ({self.embedded.proc.pid} if self.embedded and self.embedded.proc else set()))

    def on_exit(self, w: WorkerHandle, status: int) -> None:
        self.pools_changed = True  # replace it now, not at the next reconcile tick
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

    def tick(self) -> None:
        """Timers: cheap when nothing is due, since it runs once per pass."""
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
                self.poller.register(w.child.pidfd, zmq.POLLIN)

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

    def make_way(self, pool_name: str, priority: int) -> None:
        """Higher-priority work arrived: give back prefetched jobs that rank below it."""
        pool = self.workers.pools.get(pool_name)
        if pool is None or not pool.buffer or pool.buffer[-1].priority >= priority:
            return
        keep = [job for job in pool.buffer if job.priority >= priority]
        for job in pool.buffer:
            if job.priority < priority:
                self.jobs.requeue(job, "")  # never started: no history entry
        pool.buffer = deque(keep)

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

    # -- the Redis write of a pass ------------------------------------------------------
    def flush(self) -> None:
        """Send the pass's writes to Redis, unless a write is still in flight."""
        if self.pipe.busy:
            return
        now = time.time()
        for pending in self.batch.submits:
            first = pending.jobs[0]
            if first.status == "queued":
                self.may_have_work(first.type)
                self.make_way(first.pool, first.priority)
        promote = 500 if self.next_due and now >= self.next_due else 0
        wants = ({p.name: (n, sorted(p.hot)) for p in self.workers.pools.values()
                  if (n := p.want())} if self.phase is Phase.RUNNING and self.redis_up else {})
        if not (self.batch or wants or promote):
            return
        if not self.redis_up and time.monotonic() < self.redis_retry_at:
            return
        taken = self.batch.take()
        jobs = [job for pending in taken.submits for job in pending.jobs]
        try:
            self.pipe.send(self.store.write_commands(jobs, taken.ops, wants, promote, now,
                                                     self.routes, self.breakers),
                           (taken, wants, bool(jobs)))
        except redis.RedisError as exc:
            self.write_failed(taken, exc)
            return
        fd = self.pipe.fileno()
        if fd != self._pipe_fd:
            if self._pipe_fd is not None:
                self.poller.unregister(self._pipe_fd)
            self.poller.register(fd, zmq.POLLIN)
            self._pipe_fd = fd

    def read_redis(self, ready: dict, block: bool = False) -> None:
        """The in-flight write's replies: commit its effects, or keep it for a retry."""
        if not self.pipe.busy or not (block or self._pipe_fd in ready):
            return
        taken, wants, had_submits = self.pipe.context
        try:
            replies, _ = self.pipe.receive()
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self.store.load_scripts()  # Redis restarted empty-handed: send again
                self.batch.put_back(taken, submits=True)
                return
            created, applied = self.store.parse_write(replies, had_submits)
        except redis.RedisError as exc:
            self._pipe_fd = None
            self.write_failed(taken, exc)
            return
        self.committed(taken, wants, created, applied)

    def write_failed(self, taken: Batch, exc: Exception) -> None:
        self.redis_failed(exc)
        for pending in taken.submits:
            self.api.fail(pending.identity, pending.rid, Unavailable(
                f"Redis write failed ({exc}); the job was NOT accepted. Resubmit; an "
                "idempotency key makes resubmitting safe"))
        self.batch.put_back(taken)
        self._resync = True  # replies were lost: jobs may be held that we never heard of

    def committed(self, taken: Batch, wants: dict[str, tuple[int, list[str]]], created: list,
                  applied: Any) -> None:
        self.redis_ok()
        self.acknowledge(taken.submits, created)
        for effect, applied_flag in zip(taken.effects, applied.flags, strict=True):
            if effect is not None:
                try:
                    effect(applied_flag)
                except Exception:
                    log.exception("after-commit effect failed")
        self.take_reserved(wants, applied.reserved, applied.promoted)
        self.next_due = applied.next_due
        for job_type, state in applied.circuit_changes:
            self.jobs.circuit_changed(job_type, state)
        try:
            if self._resync:
                self._resync = False
                known = tuple(self.running) + tuple(
                    j.id for p in self.workers.pools.values() for j in p.buffer)
                n = self.store.recover(self.node, "resync", keep=known)
                if n:
                    log.warning("requeued %d job(s) whose hand-over reply Redis lost", n)
            if self.done_waiters:
                done, self.done_waiters = self.done_waiters, []
                self.api.answer(done, applied.records)
        except redis.RedisError as exc:
            self.redis_failed(exc)
        self.dispatch()

    def settle_writes(self, timeout: float = 10.0) -> None:
        """At exit: finish the write in flight and send what is left, synchronously."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and hasattr(self, "pipe"):
            if self.pipe.busy:
                self.read_redis({}, block=True)
            elif self.batch and self.redis_up:
                self.flush()
            else:
                return
            if not self.redis_up:
                return

    def acknowledge(self, submits: list, created: list[tuple[str, bool]]) -> None:
        at = 0
        for pending in submits:
            rows = created[at:at + len(pending.jobs)]
            at += len(pending.jobs)
            for job, (job_id, new) in zip(pending.jobs, rows, strict=True):
                if new:
                    self.metrics.submitted.labels(job.type).inc()
                    self.events.state(job_id, job.status, attempt=1, type=job.type)
                    if job.status == "scheduled":
                        self.next_due = min(self.next_due or job.run_at, job.run_at)
            ids = [job_id for job_id, _ in rows]
            self.api.reply(pending.identity, protocol.ok(
                pending.rid, ids if pending.many else {"id": ids[0], "new": rows[0][1]}))

    def take_reserved(self, wants: dict[str, tuple[int, list[str]]], reserved: list[Reserved],
                      promoted: list[str]) -> None:
        got: dict[str, int] = {}
        for job in reserved:
            pool = self.workers.pools.get(job.pool)
            if pool is None or self.phase is not Phase.RUNNING:
                self.jobs.requeue(job, "pool no longer on this node")
                continue
            pool.buffer.append(job)
            got[job.pool] = got.get(job.pool, 0) + 1
        for name in got:  # keep each buffer in queue order: priority, then id
            pool = self.workers.pools[name]
            pool.buffer = deque(sorted(pool.buffer, key=lambda j: (-j.priority, j.id)))
        for name, (n, _) in wants.items():
            if got.get(name, 0) < n:
                self.workers.pools[name].hot.clear()  # those queues are empty (or held)
        for job_type in promoted:
            self.may_have_work(job_type)

    def redis_failed(self, exc: Exception) -> None:
        if self.redis_up and isinstance(exc, redis.ResponseError):
            log.critical("Redis rejected a jobsup script (a bug; please report it): %s; "
                         "holding %d transition(s) and retrying", exc, len(self.batch.ops))
        elif self.redis_up:
            log.error("Redis is unreachable (%s); holding %d transition(s) and refusing "
                      "submits until it is back", exc, len(self.batch.ops))
        self.redis_up = False
        self.metrics.redis_up.set(0)
        self.redis_retry_at = time.monotonic() + self.cfg.redis.retry_interval

    def redis_ok(self) -> None:
        if not self.redis_up:
            if self._redis_seen:
                log.warning("Redis is reachable again")
            self._redis_seen = True
            self.redis_up = True
            self.metrics.redis_up.set(1)

    # -- shutdown, reload, resize ------------------------------------------------------
    def begin_shutdown(self, fast: bool, why: str) -> None:
        if self.phase is Phase.DONE or (self.phase is not Phase.RUNNING and not fast):
            return
        log.warning("%s: %s shutdown", why, "fast" if fast else "graceful")
        self.accepting = False
        if self.phase is Phase.RUNNING:
            self.phase = Phase.DRAINING
            self.drain_deadline = time.monotonic() + self.cfg.daemon.shutdown_grace
            for pool in self.workers.pools.values():
                while pool.buffer:
                    self.jobs.requeue(pool.buffer.popleft(), "node shutting down")
        if fast:
            self.drain_deadline = 0.0
            self.drain_step(time.monotonic())
            for w in self.workers.all():
                self.workers.kill(w, KillReason.SHUTDOWN)

    def drain_step(self, now: float) -> None:
        if self.phase is Phase.DRAINING:
            busy = [w for w in self.workers.all() if w.job is not None]
            for w in self.workers.all():
                if w.job is None and w.kill_reason is None:
                    self.retire(w, KillReason.SHUTDOWN)
            if busy and now < self.drain_deadline:
                return
            for w in busy:
                if w.job is not None:
                    self.jobs.requeue(w.job, "still running at the end of shutdown_grace")
                self.workers.stop(w, KillReason.SHUTDOWN)
            self.phase = Phase.STOPPING
            self.stop_deadline = now + self.cfg.daemon.kill_grace + 5.0
        if self.phase is Phase.STOPPING:
            if not self.workers.all() and not self.batch and not self.pipe.busy:
                self.phase = Phase.DONE
            elif now > self.stop_deadline:
                for w in self.workers.all():
                    self.workers.kill(w, KillReason.SHUTDOWN)
                if now > self.stop_deadline + 5.0 or not self.workers.all():
                    self.phase = Phase.DONE

    def reload(self) -> list[dict]:
        """Re-read the config file; an invalid one keeps the running config."""
        self.pools_changed = True
        if not self.config_path:
            log.warning("reload: running on built-in defaults, no config file to re-read")
            return []
        try:
            new = config_mod.load(self.config_path)
            schemas = resolve_schemas(new)
        except ConfigError as exc:
            for err in exc.errors:
                log.error("reload: %s: %s: %s", self.config_path, err["loc"], err["msg"])
            log.error("reload: %s is invalid; keeping the running config", self.config_path)
            return exc.errors
        kept = {"redis": self.cfg.redis, "api": self.cfg.api, "metrics": self.cfg.metrics,
                "daemon": new.daemon.model_copy(update={
                    "node_id": self.cfg.daemon.node_id, "state_dir": self.cfg.daemon.state_dir})}
        for name in ("redis", "api", "metrics"):
            if getattr(new, name) != getattr(self.cfg, name):
                log.warning("reload: [%s] changed; that takes a restart", name)
        new = new.model_copy(update=kept)
        for pcfg in new.pools:
            pool = self.workers.pools.get(pcfg.name)
            if pool is None:
                self.workers.pools[pcfg.name] = Pool(cfg=pcfg, target=pcfg.workers)
                continue
            before = self.workers.spec(pool, 0, None)
            pool.cfg, pool.target = pcfg, pcfg.workers
            self.workers.cfg = new
            if self.workers.spec(pool, 0, None) != before:
                pool.generation += 1
        for name, pool in self.workers.pools.items():
            if name not in {p.name for p in new.pools}:
                pool.target = 0
        self.cfg = self.workers.cfg = self.watchdog.cfg = new
        self.schemas = schemas
        self.routes = self.jobs.routes()
        self.breakers = {n for n, jt in new.jobs.items() if jt.circuit_breaker}
        self.logs.level = getattr(logging, new.daemon.log_level.upper())
        logging.getLogger().setLevel(self.logs.level)
        log.info("reload: config %s applied (%s)", self.config_path,
                 ", ".join(f"{p.name}={p.target}" for p in self.workers.pools.values()))
        return []

    def resize(self, delta: int) -> None:
        self.pools_changed = True
        for pool in self.workers.pools.values():
            pool.target = max(0, pool.target + delta)
        log.info("pool sizes now %s",
                 ", ".join(f"{p.name}={p.target}" for p in self.workers.pools.values()))

    # -- status -------------------------------------------------------------------------
    def describe(self) -> dict:
        from supervisord.status import describe
        return describe(self)


def resolve_schemas(cfg: Config) -> dict[str, Any]:
    from worker.runtime import resolve

    schemas = {}
    for name, jt in cfg.jobs.items():
        if jt.schema_:
            try:
                schemas[name] = resolve(jt.schema_)
            except Exception as exc:
                raise ConfigError(f"jobs.{name}.schema: cannot import {jt.schema_}: {exc}",
                                  errors=[{"loc": f"jobs.{name}.schema",
                                           "msg": f"cannot import {jt.schema_}: {exc}"}]
                                  ) from None
    return schemas


def _bind(sock: zmq.Socket, endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            sock.bind(endpoint)
        finally:
            os.umask(old)
    else:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise Unavailable(f"cannot listen on {endpoint}: {exc} (is another jobsup "
                              "daemon running there?)") from None


def _short_ipc_path(state: Path, name: str) -> Path:
    """Unix socket paths are limited to 107 bytes; fall back to /tmp when too long."""
    path = state / name
    if len(str(path)) < 100:
        return path
    import hashlib
    digest = hashlib.sha1(str(state).encode()).hexdigest()[:12]
    return Path("/tmp") / f"jobsup-{digest}-{name}"


def _safe_url(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


def _become_subreaper() -> None:
    """Orphans of a worker's children come to us, so that we can end them too."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap_orphans(known: set[int]) -> None:
    """Kill and reap processes re-parented to us whose worker is gone."""
    import psutil

    try:
        children = psutil.Process().children()
    except psutil.Error:
        return
    for child in children:
        if child.pid in known:
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                child.kill()
            os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


def hostname() -> str:
    return socket.gethostname()
