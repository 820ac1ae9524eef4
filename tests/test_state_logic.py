"""The parts' state logic, unit-tested with a fake clock: no process, socket or Redis.

These complement the end-to-end tests (which run the real thing): the worker
and phase state machines, restart intensity, the watchdog's deadline table,
the scheduler's hot-type marks, and the waiters' bounds.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from supervisord.clock import FakeClock
from supervisord.config import validate
from supervisord.errors import InvalidTransition, Unavailable
from supervisord.phase import PhaseMachine
from supervisord.pool.watchdog import Watchdog
from supervisord.pool.workers import Running, WorkerHandle, Workers
from supervisord.redis.store import Reserved
from supervisord.scheduler import Scheduler
from supervisord.settings import Settings
from supervisord.states import KillReason, Phase, WorkerState
from supervisord.waiters import Waiters


class NoPoller:
    """The pool's view of the poller, for workers that have no fds."""

    def add(self, fd: int) -> None: ...

    def want_write(self, fd: int, on: bool) -> None: ...

    def remove(self, fd: int) -> None: ...


def settings(**daemon) -> Settings:
    return Settings.build(validate({
        "daemon": {"node_id": "n1", **daemon},
        "pools": [{"name": "cpu", "workers": 2, "max_restarts": 2, "restart_window": 10}],
        "jobs": {"a": {"handler": "examples.demo:noop", "pool": "cpu"},
                 "b": {"handler": "examples.demo:noop", "pool": "cpu"}},
    }))


def handle(workers: Workers, wid: int, clock: FakeClock) -> WorkerHandle:
    w = WorkerHandle(wid=wid, pool="cpu", slot=wid, child=SimpleNamespace(pid=1000 + wid),
                     gpu=None, generation=0, chan=None, control=None,
                     spawned=clock.monotonic(), last_beat=clock.monotonic())
    workers.pools["cpu"].workers[wid] = w
    workers.by_wid[wid] = w
    return w


def reserved(job_id: str, timeout: float = 0.0) -> Reserved:
    return Reserved(pool="cpu", id=job_id, token=f"n1|{job_id}", type="a", payload=b"",
                    attempt=1, max_attempts=3, timeout=timeout, crashes=0, priority=0,
                    created_at=0.0, run_at=0.0, rate_limited=0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def workers(clock: FakeClock) -> Workers:
    changes: list = []
    ws = Workers(settings(), NoPoller(), lambda w, old, why: changes.append((old, w.state)),
                 clock=clock)
    ws.changes = changes
    return ws


# -- the worker state machine -------------------------------------------------------------

def test_worker_moves_through_its_states_and_reports_each(workers, clock):
    w = handle(workers, 1, clock)
    workers.ready(w)
    run = Running(job=reserved("j1"), worker=w, started=0.0, deadline=None)
    workers.take(w, run)
    assert w.state is WorkerState.BUSY and workers.pools["cpu"].idle() == []
    assert workers.free(w) is None
    assert w.state is WorkerState.IDLE and workers.pools["cpu"].idle() == [w]
    assert workers.changes == [(WorkerState.STARTING, WorkerState.IDLE),
                               (WorkerState.IDLE, WorkerState.BUSY),
                               (WorkerState.BUSY, WorkerState.IDLE)]


def test_worker_refuses_a_move_the_table_does_not_allow(workers, clock):
    w = handle(workers, 1, clock)
    with pytest.raises(InvalidTransition):
        workers.take(w, Running(job=reserved("j1"), worker=w, started=0.0, deadline=None))
    w.state = WorkerState.STOPPING
    with pytest.raises(InvalidTransition):
        workers.ready(w)


def test_a_worker_due_to_leave_is_never_idle(workers, clock):
    w = handle(workers, 1, clock)
    workers.ready(w)
    workers.take(w, Running(job=reserved("j1"), worker=w, started=0.0, deadline=None))
    w.leave = KillReason.RETIRE
    w.chan = SimpleNamespace(pending=False, post_bytes=lambda body: None, fileno=lambda: -1)
    assert workers.free(w) is None
    assert w.state is WorkerState.STOPPING and w.kill_reason is KillReason.RETIRE
    assert w.kill_at == clock.monotonic() + workers.settings.cfg.daemon.kill_grace
    assert workers.pools["cpu"].idle() == []


def test_recycled_after_max_jobs(clock):
    s = Settings.build(validate({"pools": [{"name": "cpu", "workers": 1,
                                            "max_jobs_per_worker": 2}],
                                 "jobs": {"a": {"handler": "examples.demo:noop",
                                                "pool": "cpu"}}}))
    ws = Workers(s, NoPoller(), clock=clock)
    w = handle(ws, 1, clock)
    w.chan = SimpleNamespace(pending=False, post_bytes=lambda body: None, fileno=lambda: -1)
    ws.ready(w)
    for n in (1, 2):
        ws.take(w, Running(job=reserved(f"j{n}"), worker=w, started=0.0, deadline=None))
        ws.free(w)
    assert w.state is WorkerState.STOPPING and w.kill_reason is KillReason.RECYCLE


# -- restart intensity ----------------------------------------------------------------------

def test_restart_backoff_grows_then_calms(workers, clock):
    pool = workers.pools["cpu"]
    delays = []
    for _ in range(5):
        delays.append(pool.note_death(clock.monotonic()))
        clock.advance(0.1)
    assert delays == [0.0, 0.0, 0.5, 1.0, 2.0]
    assert pool.degraded(clock.monotonic())
    clock.advance(11)
    assert not pool.degraded(clock.monotonic())
    assert pool.note_death(clock.monotonic()) == 0.0  # calm again: starts small


# -- the phase machine ------------------------------------------------------------------------

def test_phase_moves_down_only():
    seen: list = []
    p = PhaseMachine(on_change=lambda old, new, why: seen.append((old, new, why)))
    assert p.running
    p.to(Phase.DRAINING, "SIGTERM")
    with pytest.raises(InvalidTransition):
        p.to(Phase.RUNNING, "no way back")
    p.to(Phase.STOPPING, "drained")
    p.to(Phase.DONE, "stopped")
    assert p.done
    assert seen[0] == (Phase.RUNNING, Phase.DRAINING, "SIGTERM") and len(seen) == 3
    with pytest.raises(InvalidTransition):
        p.to(Phase.STOPPING, "after done")


# -- the watchdog's deadline table --------------------------------------------------------------

def test_watchdog_verdicts_follow_the_clock(workers, clock):
    dog = Watchdog(workers.settings, workers, rss_gauge=None)
    w1, w2, w3 = (handle(workers, n, clock) for n in (1, 2, 3))
    for w in (w1, w2, w3):
        workers.ready(w)
    workers.take(w1, Running(job=reserved("slow", timeout=5), worker=w1, started=0.0,
                             deadline=clock.monotonic() + 5))
    workers.take(w2, Running(job=reserved("cancelled"), worker=w2, started=0.0,
                             deadline=None, cancel_at=clock.monotonic() + 2))
    assert dog.verdicts(clock.monotonic()) == []
    assert dog.next_deadline() == clock.monotonic() + 2
    clock.advance(2.5)
    assert [(v.worker, v.reason) for v in dog.verdicts(clock.monotonic())] == [
        (w2, KillReason.CANCEL)]
    clock.advance(3)
    assert {(v.worker.wid, v.reason) for v in dog.verdicts(clock.monotonic())} == {
        (1, KillReason.TIMEOUT), (2, KillReason.CANCEL)}
    # Silent past heartbeat_timeout (30 s by default): the idle worker too.
    clock.advance(30)
    w1.last_beat = w2.last_beat = clock.monotonic()
    assert [(v.worker, v.reason) for v in dog.verdicts(clock.monotonic())][-1] == (
        w3, KillReason.HEARTBEAT)


def test_watchdog_escalates_an_ignored_sigterm(workers, clock):
    dog = Watchdog(workers.settings, workers, rss_gauge=None)
    w = handle(workers, 1, clock)
    workers.change(w, WorkerState.STOPPING, "test")
    w.kill_reason, w.kill_at = KillReason.TIMEOUT, clock.monotonic() + 5
    assert dog.verdicts(clock.monotonic()) == []
    clock.advance(5)
    [v] = dog.verdicts(clock.monotonic())
    assert v.reason is None and not v.polite


# -- the scheduler's hot types --------------------------------------------------------------------

def test_a_type_marked_after_a_short_reservation_was_sent_stays_hot(workers, clock):
    """A submit written behind a reservation that came back short must still be looked
    for at once, not at the next discovery tick (the 200 ms stall)."""
    sched = Scheduler(workers.settings, workers, jobs=None)
    w = handle(workers, 1, clock)
    workers.ready(w)
    sched.may_have_work("a")
    wants = sched.wants()
    assert wants == {"cpu": (wants["cpu"][0], ["a"])}
    sched.may_have_work("a")  # a submit of "a" after the reservation went
    sched.take_reserved(wants, [], [], accepting=True)
    assert "a" in sched.queue("cpu").hot
    wants = sched.wants()
    sched.take_reserved(wants, [], [], accepting=True)  # short, nothing marked since
    assert sched.queue("cpu").hot == {}
    assert sched.want(workers.pools["cpu"]) == 0


def test_held_jobs_count_as_waiting(workers, clock):
    sched = Scheduler(workers.settings, workers, jobs=None)
    sched.queue("cpu").buffer.extend([reserved("j1"), reserved("j2")])
    w = handle(workers, 1, clock)
    w.ahead.append(Running(job=reserved("j3"), worker=w, started=0.0, deadline=None))
    assert sched.held("cpu") == 3


# -- waiters ------------------------------------------------------------------------------------

def test_waiters_are_bounded_per_client_and_dropped_when_it_goes():
    answered: list = []
    waiters = Waiters(store=None, reads=None, reply=lambda *a: answered.append(a),
                      fail=lambda *a: answered.append(a), per_client=3, in_all=5)
    for n in range(3):
        waiters.wait(b"c1", n, [f"j{n}"], ["running"], "records", None)
    with pytest.raises(Unavailable, match="too many waits"):
        waiters.wait(b"c1", 9, ["j9"], ["running"], "records", None)
    waiters.wait(b"c2", 1, ["j0"], ["queued"], "records", None)
    assert len(waiters) == 4
    assert waiters.gone(b"c1") == 3
    assert len(waiters) == 1 and set(waiters.by_job) == {"j0"}
    waiters.finished("j0")
    assert [w.identity for w in waiters.ready] == [b"c2"] and len(waiters) == 0


def test_waiters_expire_on_the_given_clock():
    failed: list = []
    waiters = Waiters(store=None, reads=None, reply=lambda *a: None,
                      fail=lambda *a: failed.append(a))
    waiters.wait(b"c1", 1, ["j1", "j2"], ["running", "queued"], "records", deadline=10.0)
    waiters.expire(9.9)
    assert failed == []
    waiters.expire(10.0)
    assert failed[0][:2] == (b"c1", 1) and len(waiters) == 0 and waiters.by_job == {}


class _Pending:
    """The reader's interface, recording what the waiters hand it (no Redis here)."""

    def __init__(self) -> None:
        self.reads: list = []

    def submit(self, read, done) -> None:
        self.reads.append((read, done))


def test_a_job_that_finished_while_its_status_was_read_is_not_waited_for():
    """A wait's statuses are read off the loop; the job may finish meanwhile, and then
    the status read says running though its waiters' wake-up has passed."""
    reads = _Pending()
    waiters = Waiters(store=None, reads=reads, reply=lambda *a: None, fail=lambda *a: None)
    since = waiters.mark()  # the status read goes out
    waiters.finished("j1")  # the job's end commits before the read is back
    waiters.wait(b"c1", 1, ["j1"], ["running"], "records", None, since)
    assert len(waiters) == 0 and len(reads.reads) == 1  # answered: its record is read
    # A job that finished before the read went out reads as final; one that has not
    # finished is waited for.
    since = waiters.mark()
    waiters.wait(b"c1", 2, ["j2"], ["running"], "records", None, since)
    assert len(waiters) == 1 and set(waiters.by_job) == {"j2"}


def test_a_closed_connection_drops_the_waits_of_every_client_seen_on_it():
    waiters = Waiters(store=None, reads=None, reply=lambda *a: None, fail=lambda *a: None)
    for identity, fd in ((b"c1", 7), (b"c2", 7), (b"c3", 8)):
        waiters.note_source(identity, fd)
        waiters.wait(identity, 1, ["j1"], ["running"], "records", None)
    assert waiters.disconnected(7) == 2
    assert len(waiters) == 1 and waiters.disconnected(7) == 0


# -- lifecycle and shutdown, with the clock and a batch instead of Redis -----------------

def lifecycle_parts(workers, clock):
    from supervisord.events import Publisher
    from supervisord.lifecycle import Lifecycle
    from supervisord.web.metrics import Metrics
    from supervisord.writer import Batch

    queued, due = [], []
    sent: list = []
    jobs = Lifecycle(workers.settings, Batch(), workers, Publisher(None), Metrics(),
                     Waiters(store=None, reads=None, reply=lambda *a: None, fail=lambda *a: None),
                     queued=queued.append, due=due.append, clock=clock)
    return jobs, queued, due, sent


def channel(sent: list) -> SimpleNamespace:
    return SimpleNamespace(pending=False, post_bytes=sent.append, fileno=lambda: -1)


def started(workers, clock, jobs, sent, wid: int = 1, job_id: str = "j1") -> WorkerHandle:
    """A ready worker of the pool that has just been handed ``job_id``."""
    w = handle(workers, wid, clock)
    w.chan = w.control = channel(sent)
    workers.ready(w)
    jobs.start(w, reserved(job_id))
    return w


def test_a_short_job_writes_start_and_success_as_one_op(workers, clock):
    jobs, _, _, sent = lifecycle_parts(workers, clock)
    w = started(workers, clock, jobs, sent)
    assert len(sent) == 1 and jobs.running["j1"].worker is w
    clock.advance(0.001)
    jobs.record_due_starts(clock.time())  # 1 ms: too early to write the start alone
    assert jobs.batch.ops == []
    jobs.succeed(jobs.running["j1"], b"\xc0")
    [op] = jobs.batch.ops
    assert op.kind == "ran" and op.args.result == b"\xc0" and op.args.worker == "n1:1001"


def test_a_long_job_writes_its_start_after_the_delay(workers, clock):
    jobs, _, _, sent = lifecycle_parts(workers, clock)
    started(workers, clock, jobs, sent)
    clock.advance(0.006)
    jobs.record_due_starts(clock.time())
    assert [op.kind for op in jobs.batch.ops] == ["start"]
    assert jobs.next_start_write is None


def test_a_failed_attempt_is_retried_after_backoff_on_the_clock(workers, clock):
    from supervisord.states import FailureKind

    jobs, queued, due, sent = lifecycle_parts(workers, clock)
    started(workers, clock, jobs, sent)
    jobs.fail(jobs.running["j1"], FailureKind.EXCEPTION, "boom")
    kinds = [op.kind for op in jobs.batch.ops]
    assert kinds == ["start", "retry"]
    retry = jobs.batch.ops[1].args
    assert clock.time() <= retry.run_at <= clock.time() + 1.0  # backoff base 1 s, jitter
    assert due == [retry.run_at] or (retry.run_at == 0.0 and queued == ["a"])


def test_cancel_of_a_running_job_reaches_its_worker_then_the_grace_runs_out(workers, clock):
    jobs, _, _, sent = lifecycle_parts(workers, clock)
    dog = Watchdog(workers.settings, workers, rss_gauge=None)
    started(workers, clock, jobs, sent)
    assert jobs.request_cancel("j1") is True
    assert len(sent) == 2  # the run, then the cancel on the control channel
    clock.advance(workers.settings.policy("a").cancel_grace + 0.1)
    assert [v.reason for v in dog.verdicts(clock.monotonic())] == [KillReason.CANCEL]


def test_graceful_shutdown_retires_idle_workers_and_gives_buffered_jobs_back(workers, clock):
    from supervisord.shutdown import Shutdown
    from supervisord.writer import Writer

    jobs, _, _, sent = lifecycle_parts(workers, clock)
    sched = Scheduler(workers.settings, workers, jobs)
    sched.queue("cpu").buffer.extend([reserved("b1"), reserved("b2")])
    idle, busy = handle(workers, 1, clock), handle(workers, 2, clock)
    for w in (idle, busy):
        w.chan = w.control = channel(sent)
        workers.ready(w)
    jobs.start(busy, reserved("r1"))
    phase = PhaseMachine()
    writer = Writer(store=None, pipe=SimpleNamespace(busy=False), settings=workers.settings,
                    watch_fd=lambda fd: None, wake=-1, clock=clock)
    writer.batch = jobs.batch
    down = Shutdown(phase, workers.settings, workers, jobs, sched, writer, clock=clock)
    down.begin(fast=False, why="test")
    assert phase.now is Phase.DRAINING
    assert [op.kind for op in jobs.batch.ops] == ["requeue", "requeue"]  # b1, b2 given back
    down.step(clock.monotonic())
    assert idle.state is WorkerState.STOPPING and idle.kill_reason is KillReason.SHUTDOWN
    assert busy.state is WorkerState.BUSY and busy.leave is KillReason.SHUTDOWN
    assert phase.now is Phase.DRAINING  # the running job has shutdown_grace to finish
    jobs.succeed(jobs.running["r1"], b"\xc0")
    jobs.finished_run(busy)
    assert busy.state is WorkerState.STOPPING  # done: it leaves instead of idling


def test_a_stalled_master_does_not_judge_heartbeats(workers, clock):
    """After a pass that blocked, heartbeats may sit unread in the channels: silence is
    then not the workers' fault."""
    dog = Watchdog(workers.settings, workers, rss_gauge=None)
    w = handle(workers, 1, clock)
    workers.ready(w)
    clock.advance(workers.settings.cfg.daemon.heartbeat_timeout + 1)
    assert dog.verdicts(clock.monotonic(), heartbeats=False) == []
    assert [v.reason for v in dog.verdicts(clock.monotonic())] == [KillReason.HEARTBEAT]


# -- memory limits: RSS and GPU readings, decided without a process or NVML -----------------

def pool_cfg(**limits):
    from supervisord.config import PoolConfig

    return PoolConfig(name="cpu", workers=1, **limits)


def test_memory_verdicts_kill_over_max_gpu_memory_and_name_it(workers, clock):
    from supervisord.pool.watchdog import MemoryReading, memory_verdicts

    w1, w2, w3, w4 = (handle(workers, n, clock) for n in (1, 2, 3, 4))
    cfg = pool_cfg(max_rss="1GiB", max_gpu_memory="2GiB")
    readings = {
        1: MemoryReading(rss=100, gpu=3 * 1024**3),  # over max_gpu_memory
        2: MemoryReading(rss=100, gpu=2 * 1024**3),  # at the limit is not over it
        3: MemoryReading(rss=2 * 1024**3, gpu=0),  # over max_rss
        4: MemoryReading(rss=100, gpu=None),  # no NVML reading: GPU memory is not judged
    }
    got = memory_verdicts([(w, cfg) for w in (w1, w2, w3, w4)], readings)
    assert [(v.worker.wid, v.reason, v.polite) for v in got] == [
        (1, KillReason.MEMORY, False), (3, KillReason.MEMORY, False)]
    assert "GPU memory" in got[0].why and "max_gpu_memory (2147483648 bytes)" in got[0].why
    assert "RSS" in got[1].why and "max_rss" in got[1].why
    # Without limits, or for a worker already being ended, nothing is decided.
    assert memory_verdicts([(w1, pool_cfg())], readings) == []
    w1.kill_reason = KillReason.TIMEOUT
    assert memory_verdicts([(w1, cfg)], readings) == []


def test_tree_gpu_memory_sums_a_worker_and_its_descendants_once():
    from supervisord.pool.gpus import GpuSample, tree_gpu_memory

    sample = GpuSample(processes={10: 1000, 11: 500, 99: 7000})
    assert tree_gpu_memory([10, 11, 11, 12], sample) == 1500  # 99 is not of this tree
    assert tree_gpu_memory([], sample) == 0


def test_a_gpu_memory_kill_fails_the_job_with_kind_memory_naming_gpu_memory(workers, clock):
    from supervisord.states import FailureKind

    jobs, _, _, sent = lifecycle_parts(workers, clock)
    w = started(workers, clock, jobs, sent)
    w.kill_reason = KillReason.MEMORY
    w.kill_why = "used 3221225472 bytes of GPU memory, over max_gpu_memory (2147483648 bytes)"
    jobs.lost_worker(jobs.running["j1"], w, KillReason.MEMORY, "killed by signal SIGKILL")
    failed = [op for op in jobs.batch.ops if op.kind != "start"]
    assert failed, jobs.batch.ops
    args = failed[-1].args
    text = repr(args)
    assert FailureKind.MEMORY.value in text and "GPU memory" in text, text
