"""supervisord.redis.store.Store against a real redis-server (no daemon).

Each test builds NewJob objects directly, the way the API does, and drives the
Lua transitions through the Store's public methods.
"""

from __future__ import annotations

import time

import pytest

from supervisord.ids import IdGenerator
from supervisord.redis.scripts import Requeue
from supervisord.redis.store import NewJob, Op, Store, history_entry, pack, unpack

NODE = "node-a"
POOL = "p"
PREFIX = "t"


@pytest.fixture
def store(redis_server):
    client = redis_server.client()
    yield Store(client, PREFIX, NODE)
    client.close()


@pytest.fixture
def ids():
    return IdGenerator()


def new_job(ids: IdGenerator, *, type: str = "echo", pool: str = POOL, payload=None,
            priority: int = 0, delay: float = 0.0, now: float | None = None,
            created_at: float | None = None, tags: dict[str, str] | None = None,
            key: str = "", max_attempts: int = 3, timeout: float = 30.0) -> NewJob:
    now = now or time.time()
    status = "scheduled" if delay > 0 else "queued"
    return NewJob(
        id=ids.next(), type=type, pool=pool, payload=pack(payload), priority=priority,
        status=status, run_at=now + delay if delay > 0 else now, max_attempts=max_attempts,
        timeout=timeout, created_at=created_at if created_at is not None else now,
        tags=tags or {}, key=key, key_ttl=3600.0,
        history=history_entry(status, 1, NODE, "submitted", now=now))


def submit(store: Store, *jobs: NewJob) -> list[str]:
    created = store.submit(list(jobs))
    assert all(new for _, new in created)
    return [job_id for job_id, _ in created]


TYPES = ["echo", "add", "resize"]


def reserve(store: Store, n: int = 1, pool: str = POOL, types: list[str] = TYPES, **kw):
    """Take up to ``n`` jobs of ``types`` for ``pool`` (what the master asks each pass)."""
    return store.apply([], {pool: (n, list(types))}, **kw).reserved


def start_op(res, pid: int = 4242, now: float | None = None) -> Op:
    now = now or time.time()
    hist = history_entry("running", res.attempt, NODE, "started", pid=pid, now=now)
    return Op("start", res.id, res.token, (f"{NODE}:{pid}", hist, now))


def finish_op(res, status: str = "succeeded", value=None, ttl: float = 3600.0) -> Op:
    blob = pack(value if status == "succeeded" else
                {"kind": "exception", "message": str(value), "traceback": None})
    hist = history_entry(status, res.attempt, NODE, "done")
    return Op("finish", res.id, res.token, (status, blob, hist, ttl, ""))


def retry_op(res, run_at: float, flags: str = "a", new_timeout: str | float = "",
             kind: str = "exception") -> Op:
    err = pack({"kind": kind, "message": "boom", "traceback": None})
    hist = history_entry("queued", res.attempt, NODE, "retry", kind=kind)
    final = history_entry("failed", res.attempt, NODE, "retry budget spent", kind=kind)
    # error, history, run_at, flags, timeout, circuit, budget (-1: none), final history, ttl
    return Op("retry", res.id, res.token, (err, hist, run_at, flags, new_timeout, "", -1,
                                           final, 3600.0))


def requeue_op(res) -> Op:
    return Op("requeue", res.id, res.token, Requeue(
        history_entry("queued", res.attempt, NODE, "node shut down"), 100))


def progress_op(res, pct: float, message: str) -> Op:
    return Op("progress", res.id, res.token, (pct, message))


def zmembers(store: Store, key: str) -> list[str]:
    return [m.decode() for m in store.r.zrange(key, 0, -1)]


def statuses(rec: dict) -> list[str]:
    return [h["status"] for h in rec["history"]]


# -- the basic path ----------------------------------------------------------------------


def test_submit_reserve_start_finish(store, ids):
    job = new_job(ids, payload={"x": 1}, tags={"user": "u1"})
    [jid] = submit(store, job)
    rec = store.get(jid)
    assert rec["status"] == "queued"
    assert rec["attempt"] == 1
    assert rec["payload"] == {"x": 1}
    assert rec["tags"] == {"user": "u1"}
    assert zmembers(store, store.keys.queue("echo")) == [jid]
    assert zmembers(store, store.keys.index_status("queued")) == [jid]
    assert zmembers(store, store.keys.index_type("echo")) == [jid]
    assert zmembers(store, store.keys.index_tag("user", "u1")) == [jid]

    [res] = reserve(store, 5)
    assert (res.id, res.type, res.pool, res.attempt, res.max_attempts) == (jid, "echo", POOL,
                                                                          1, 3)
    assert unpack(res.payload) == {"x": 1}
    assert res.token.startswith(NODE + "|")
    assert store.r.zcard(store.keys.queue("echo")) == 0
    assert store.r.hget(store.keys.owned(NODE), jid).decode() == res.token
    assert reserve(store, 5) == []  # nothing left to hand out

    t0 = time.time()
    assert store.apply([start_op(res, pid=77, now=t0)]).flags == ["1"]
    rec = store.get(jid)
    assert rec["status"] == "running"
    assert rec["worker"] == {"node": NODE, "pid": 77}
    assert rec["started_at"] == pytest.approx(t0)
    assert zmembers(store, store.keys.index_status("running")) == [jid]
    assert store.r.zcard(store.keys.index_status("queued")) == 0

    assert store.apply([progress_op(res, 40, "almost")]).flags == ["1"]
    rec = store.get(jid)
    assert (rec["progress"], rec["progress_message"]) == (40.0, "almost")

    assert store.apply([finish_op(res, value={"ok": True}, ttl=100)]).flags == ["1"]
    rec = store.get(jid)
    assert rec["status"] == "succeeded"
    assert rec["terminal"] is True
    assert rec["result"] == {"ok": True}
    assert rec["progress"] == 100.0
    assert rec["finished_at"] >= rec["started_at"]
    assert statuses(rec) == ["queued", "running", "succeeded"]
    assert zmembers(store, store.keys.index_status("succeeded")) == [jid]
    assert store.r.zcard(store.keys.index_status("running")) == 0
    assert not store.r.hexists(store.keys.owned(NODE), jid)
    assert store.r.zscore(store.keys.expiry, jid) == pytest.approx(rec["finished_at"] + 100)
    assert store.dead_letter_count() == 0


def test_submit_with_a_lease_is_held_by_its_node_not_queued(store, ids):
    """A job handed straight to a worker: stored as reserved, fenced and recoverable."""
    job = new_job(ids)
    job.lease = f"{NODE}|d{job.id}"
    [jid] = submit(store, job)
    assert store.r.zcard(store.keys.queue("echo")) == 0
    assert reserve(store, 5) == []  # nobody else can take it
    assert store.r.hget(store.keys.owned(NODE), jid).decode() == job.lease
    assert store.get(jid)["status"] == "queued"

    class Held:  # what the master keeps of it: id, token, attempt
        id, token, attempt = jid, job.lease, 1

    assert store.apply([Op("start", jid, "other|1", ("x:1", b"", 1.0))]).flags == ["0"]
    assert store.apply([start_op(Held)]).flags == ["1"]
    assert store.recover(NODE, "interrupted") == 1  # a master crash requeues it
    assert zmembers(store, store.keys.queue("echo")) == [jid]
    rec = store.get(jid)
    assert (rec["status"], rec["attempt"]) == ("queued", 1)
    assert store.apply([finish_op(Held)]).flags == ["0"]  # the old lease is void


def test_a_finish_that_someone_awaits_reads_the_record_back(store, ids):
    [jid, other] = submit(store, new_job(ids, payload={"n": 1}), new_job(ids))
    first, second = reserve(store, 2)
    awaited = finish_op(first, value={"n": 1})
    awaited.record = True
    applied = store.apply([start_op(first), awaited, start_op(second), finish_op(second)])
    assert applied.flags == ["1", "1", "1", "1"]
    assert set(applied.records) == {jid}  # only the awaited one, read after the script
    rec = applied.records[jid]
    assert (rec["status"], rec["result"]) == ("succeeded", {"n": 1})
    assert statuses(rec) == ["queued", "running", "succeeded"]
    assert rec == store.get(jid)
    assert other not in applied.records


def test_failed_finish_lands_in_dead_letters(store, ids):
    [jid] = submit(store, new_job(ids))
    [res] = reserve(store)
    store.apply([start_op(res)])
    assert store.apply([finish_op(res, "failed", "it broke")]).flags == ["1"]
    rec = store.get(jid)
    assert rec["status"] == "failed"
    assert rec["error"]["message"] == "it broke"
    assert rec["result"] is None
    assert zmembers(store, store.keys.dead_letters) == [jid]
    assert store.dead_letter_count() == 1


def test_idempotency_key_returns_existing_job(store, ids):
    first = new_job(ids, key="req-17")
    second = new_job(ids, key="req-17")
    assert store.submit([first]) == [(first.id, True)]
    assert store.submit([second]) == [(first.id, False)]
    assert store.get(second.id) is None
    assert store.r.zcard(store.keys.index_all) == 1
    # Within one batch as well.
    a, b = new_job(ids, key="k2"), new_job(ids, key="k2")
    assert store.submit([a, b]) == [(a.id, True), (a.id, False)]


# -- fencing --------------------------------------------------------------------------


def _reserve_started(store, ids):
    [jid] = submit(store, new_job(ids))
    [res] = reserve(store)
    assert store.apply([start_op(res)]).flags == ["1"]
    return jid, res


def test_stale_token_is_discarded_after_rereservation(store, ids):
    jid, old = _reserve_started(store, ids)
    assert store.apply([requeue_op(old)]).flags == ["1"]
    [new] = reserve(store)
    assert new.id == jid and new.token != old.token
    assert store.apply([start_op(new, pid=2)]).flags == ["1"]
    before = store.get(jid)

    flags = store.apply([
        finish_op(old, value="stale result"),
        retry_op(old, time.time()),
        progress_op(old, 99, "stale progress"),
        start_op(old, pid=1),
        requeue_op(old),
    ]).flags
    assert flags == ["0"] * 5
    assert store.get(jid) == before  # nothing about the record moved

    assert store.apply([finish_op(new, value="fresh result")]).flags == ["1"]
    assert store.apply([finish_op(old, value="late stale result"),
                        finish_op(new, value="duplicate")]).flags == ["0", "0"]
    rec = store.get(jid)
    assert rec["status"] == "succeeded"
    assert rec["result"] == "fresh result"
    assert statuses(rec).count("succeeded") == 1  # exactly one result


def test_stale_token_is_discarded_after_recover_before_rereservation(store, ids):
    # A node was given up on (its jobs recovered): whatever its attempt sends
    # later is stale, even if no other node has picked the job up yet.
    jid, old = _reserve_started(store, ids)
    assert store.recover(NODE, "lost") == 1
    before = store.get(jid)
    assert before["status"] == "queued"
    assert store.apply([finish_op(old, value="from the lost node")]).flags == ["0"]
    rec = store.get(jid)
    assert rec == before
    assert rec["result"] is None


def test_stale_token_is_discarded_after_retry(store, ids):
    jid, old = _reserve_started(store, ids)
    assert store.apply([retry_op(old, time.time() - 1)]).flags == ["1"]
    before = store.get(jid)
    assert before["status"] == "queued"
    assert store.apply([finish_op(old, value="late")]).flags == ["0"]
    assert store.get(jid) == before


def test_finished_job_never_moves_backwards(store, ids):
    jid, res = _reserve_started(store, ids)
    store.apply([finish_op(res, value=1)])
    before = store.get(jid)
    flags = store.apply([requeue_op(res), retry_op(res, time.time()), start_op(res),
                         progress_op(res, 5, "x")]).flags
    assert flags == ["0"] * 4
    assert store.get(jid) == before
    assert store.recover(NODE, "interrupted") == 0
    assert store.get(jid) == before


# -- requeue, retry, recover -----------------------------------------------------------


def test_requeue_keeps_attempt(store, ids):
    jid, res = _reserve_started(store, ids)
    assert store.apply([requeue_op(res)]).flags == ["1"]
    rec = store.get(jid)
    assert rec["status"] == "queued"
    assert rec["attempt"] == 1
    assert zmembers(store, store.keys.queue("echo")) == [jid]
    assert zmembers(store, store.keys.index_status("queued")) == [jid]
    assert store.r.zcard(store.keys.index_status("running")) == 0
    assert not store.r.hexists(store.keys.owned(NODE), jid)
    [again] = reserve(store)
    assert again.attempt == 1


def test_retry_increments_attempt_and_schedules(store, ids):
    jid, res = _reserve_started(store, ids)
    run_at = time.time() + 60
    assert store.apply([retry_op(res, run_at, "a")]).flags == ["1"]
    rec = store.get(jid)
    assert rec["status"] == "scheduled"
    assert rec["attempt"] == 2
    assert rec["crashes"] == 0
    assert rec["run_at"] == pytest.approx(run_at)
    assert rec["error"]["kind"] == "exception"
    assert store.r.zscore(store.keys.scheduled, jid) == pytest.approx(run_at)
    assert zmembers(store, store.keys.index_status("scheduled")) == [jid]
    assert store.r.zcard(store.keys.queue("echo")) == 0
    assert not store.r.hexists(store.keys.owned(NODE), jid)
    assert statuses(rec) == ["queued", "running", "queued"]


def test_retry_with_crash_flag_and_timeout_growth_requeues_now(store, ids):
    jid, res = _reserve_started(store, ids)
    assert store.apply([retry_op(res, time.time() - 1, "ac", 60.0, kind="crash")]
                       ).flags == ["1"]
    rec = store.get(jid)
    assert rec["status"] == "queued"
    assert (rec["attempt"], rec["crashes"], rec["timeout"]) == (2, 1, 60.0)
    [res2] = reserve(store)
    assert (res2.attempt, res2.crashes, res2.timeout) == (2, 1, 60.0)


def test_rate_limited_retry_does_not_burn_attempt(store, ids):
    jid, res = _reserve_started(store, ids)
    assert store.apply([retry_op(res, time.time() - 1, "r", kind="rate_limited")]
                       ).flags == ["1"]
    rec = store.get(jid)
    assert (rec["attempt"], rec["rate_limited"], rec["status"]) == (1, 1, "queued")


def test_recover_requeues_owned_jobs_without_burning_attempts(store, ids):
    running_id, _ = _reserve_started(store, ids)
    [held_id] = submit(store, new_job(ids))
    [held] = reserve(store)  # reserved (prefetched), not started
    [other_id] = submit(store, new_job(ids))  # still queued, not owned
    assert store.recover(NODE, "interrupted") == 2
    for jid in (running_id, held_id, other_id):
        rec = store.get(jid)
        assert rec["status"] == "queued", jid
        assert rec["attempt"] == 1
    rec = store.get(running_id)
    assert rec["history"][-1]["reason"] == "interrupted"
    assert "kind" not in rec["history"][-1]
    assert set(zmembers(store, store.keys.queue("echo"))) == {running_id, held_id, other_id}
    assert store.r.zcard(store.keys.index_status("running")) == 0
    assert store.r.hlen(store.keys.owned(NODE)) == 0
    assert store.recover(NODE, "interrupted") == 0  # nothing twice
    assert held.id == held_id


def test_recover_by_another_node_marks_lost(redis_server, store, ids):
    jid, _ = _reserve_started(store, ids)
    other = Store(redis_server.client(), PREFIX, "node-b")
    assert other.recover(NODE, "lost") == 1
    rec = store.get(jid)
    assert rec["status"] == "queued"
    assert rec["attempt"] == 1
    assert rec["history"][-1]["kind"] == "lost"
    assert rec["history"][-1]["node"] == "node-b"
    [res] = reserve(other, pool=POOL)
    assert res.id == jid and res.token.startswith("node-b|")


# -- cancel ------------------------------------------------------------------------------


def test_cancel_queued_job(store, ids):
    [jid] = submit(store, new_job(ids))
    assert store.cancel(jid, ttl=50) == ("cancelled", "")
    rec = store.get(jid)
    assert rec["status"] == "cancelled"
    assert rec["error"]["kind"] == "cancelled"
    assert rec["history"][-1]["status"] == "cancelled"
    assert store.r.zcard(store.keys.queue("echo")) == 0
    assert zmembers(store, store.keys.index_status("cancelled")) == [jid]
    assert store.r.zcard(store.keys.index_status("queued")) == 0
    assert store.r.zscore(store.keys.expiry, jid) == pytest.approx(rec["finished_at"] + 50)
    assert reserve(store) == []
    assert store.cancel(jid, ttl=50) == ("cancelled", "")  # already final: reports status
    assert store.get(jid)["history"][-1]["status"] == "cancelled"
    assert len(store.get(jid)["history"]) == 2


def test_cancel_scheduled_job(store, ids):
    [jid] = submit(store, new_job(ids, delay=60))
    assert store.get(jid)["status"] == "scheduled"
    assert store.cancel(jid, ttl=50)[0] == "cancelled"
    assert store.r.zcard(store.keys.scheduled) == 0
    assert store.get(jid)["status"] == "cancelled"
    later = store.apply([], {POOL: (5, TYPES)}, promote_limit=10, now=time.time() + 120)
    assert later.reserved == []


def test_cancel_of_a_held_job_goes_to_its_node(store, ids):
    """A queued job a node holds may already run there (its start not written yet): the
    cancel is that node's to carry out, and the record ends cancelled only when it does."""
    [jid] = submit(store, new_job(ids))
    [res] = reserve(store)
    assert store.cancel(jid, ttl=50) == ("held", res.token)
    rec = store.get(jid)
    assert rec["status"] == "queued" and rec["cancel_requested"] is True
    assert store.cancel_requested([jid, "nosuchjob"]) == [jid]
    cancelled = Op("finish", jid, res.token, ("cancelled", pack({"kind": "cancelled"}),
                                              b"", 50, ""))
    assert store.apply([cancelled]).flags == ["1"]
    assert store.get(jid)["status"] == "cancelled"
    assert not store.r.hexists(store.keys.owned(NODE), jid)


def test_requeue_of_a_held_job_with_a_cancel_waiting_ends_it_cancelled(store, ids):
    [jid] = submit(store, new_job(ids))
    [res] = reserve(store)
    assert store.cancel(jid, ttl=50)[0] == "held"
    assert store.apply([requeue_op(res)]).flags == ["c"]
    rec = store.get(jid)
    assert rec["status"] == "cancelled" and rec["error"]["kind"] == "cancelled"
    assert not store.r.zscore(store.keys.queue(rec["type"]), jid)
    assert reserve(store) == []


def test_cancel_running_job_sets_flag(store, ids):
    jid, res = _reserve_started(store, ids)
    assert store.cancel(jid, ttl=50) == ("running", res.token)
    rec = store.get(jid)
    assert rec["status"] == "running"
    assert rec["cancel_requested"] is True


def test_cancel_missing_and_finished(store, ids):
    assert store.cancel("nosuchjob", ttl=50)[0] == "missing"
    jid, res = _reserve_started(store, ids)
    store.apply([finish_op(res, value=1)])
    assert store.cancel(jid, ttl=50)[0] == "succeeded"
    assert store.get(jid)["status"] == "succeeded"


# -- janitor -----------------------------------------------------------------------------


def _all_keys(store: Store) -> set[str]:
    return {k.decode() for k in store.r.scan_iter(match="*", count=1000)}


def _mentions(store: Store, key: str, ids: set[str]) -> set[str]:
    """Every id in ``ids`` that ``key`` names, holds as a member/field or as its value."""
    found = {i for i in ids if i in key}
    kind = store.r.type(key).decode()
    if kind == "zset":
        found |= ids & set(zmembers(store, key))
    elif kind == "hash":
        found |= ids & {f.decode() for f in store.r.hkeys(key)}
        found |= ids & {v.decode(errors="replace") for v in store.r.hvals(key)}
    elif kind == "set":
        found |= ids & {m.decode() for m in store.r.smembers(key)}
    elif kind == "list":
        found |= ids & {m.decode(errors="replace") for m in store.r.lrange(key, 0, -1)}
    elif kind == "string":
        found |= ids & {store.r.get(key).decode(errors="replace")}
    return found


def test_janitor_removes_jobs_and_every_index_entry(store, ids):
    now = time.time()
    keep = new_job(ids, tags={"user": "u1"}, key="keep-key")  # stays queued: never expires
    done = new_job(ids, type="resize", tags={"user": "u1", "batch": "b7"}, key="k-done")
    failed = new_job(ids, type="resize", tags={"user": "u2"}, key="k-failed")
    cancelled = new_job(ids, tags={"user": "u1"}, key="k-cancelled")
    scheduled = new_job(ids, delay=60, tags={"batch": "b7"})
    submit(store, keep, done, failed, cancelled, scheduled)
    # Finish `done` and `failed` (in this order: they are first in the queue after `keep`).
    res = {r.id: r for r in reserve(store, 3)}
    assert set(res) == {keep.id, done.id, failed.id}
    store.apply([requeue_op(res[keep.id]), start_op(res[done.id]), start_op(res[failed.id])])
    store.apply([finish_op(res[done.id], value="ok", ttl=10),
                 finish_op(res[failed.id], "failed", "bad", ttl=20)])
    store.cancel(cancelled.id, ttl=30)
    store.cancel(scheduled.id, ttl=40)
    gone = {done.id, failed.id, cancelled.id, scheduled.id}
    assert store.dead_letter_count() == 1

    assert store.expire(now=now - 10) == 0  # nothing due yet
    assert {r is not None for r in store.get_many(sorted(gone))} == {True}

    assert store.expire(now=now + 3600) == 4
    assert store.get_many(sorted(gone)) == [None] * 4
    leftovers = {key: hit for key in sorted(_all_keys(store))
                 if (hit := _mentions(store, key, gone))}
    assert leftovers == {}, f"index entries outlived their jobs: {leftovers}"
    assert store.dead_letter_count() == 0
    for k in ("k-done", "k-failed", "k-cancelled"):
        assert not store.r.exists(store.keys.idempotency(k))
    # The job that is still live keeps its record and indexes.
    assert store.get(keep.id)["status"] == "queued"
    assert zmembers(store, store.keys.index_all) == [keep.id]
    assert zmembers(store, store.keys.index_tag("user", "u1")) == [keep.id]
    assert store.r.get(store.keys.idempotency("keep-key")).decode() == keep.id
    assert store.expire(now=now + 7200) == 0


def test_janitor_honours_limit_and_per_job_ttl(store, ids):
    jobs = [new_job(ids) for _ in range(5)]
    submit(store, *jobs)
    now = time.time()
    for n, job in enumerate(jobs):
        store.cancel(job.id, ttl=100 * (n + 1))
    assert store.expire(now=now + 250) == 2
    assert [store.get(j.id) is None for j in jobs] == [True, True, False, False, False]
    assert store.expire(now=now + 10_000, limit=2) == 2
    assert store.expire(now=now + 10_000, limit=2) == 1
    assert store.r.zcard(store.keys.index_all) == 0


# -- listing ---------------------------------------------------------------------------


def test_list_ids_newest_first_filters_and_paging(store, ids):
    base = time.time() - 1000
    jobs = []
    for n in range(12):
        jobs.append(new_job(ids, type="echo" if n % 2 == 0 else "add",
                            tags={"user": "u1" if n % 3 == 0 else "u2"},
                            created_at=base + n))
    submit(store, *jobs)
    all_ids = [j.id for j in jobs]
    newest_first = list(reversed(all_ids))
    for j in jobs[:4]:  # the four oldest end cancelled
        store.cancel(j.id, ttl=3600)

    assert store.list_ids(limit=100) == (newest_first, None)
    assert store.list_ids(job_type="echo", limit=100)[0] == newest_first[1::2]
    assert store.list_ids(tag=("user", "u1"), limit=100)[0] == \
        [i for n, i in enumerate(all_ids) if n % 3 == 0][::-1]
    assert store.list_ids(status="cancelled", limit=100)[0] == newest_first[-4:]
    assert store.list_ids(status="queued", job_type="add", tag=("user", "u2"),
                          limit=100)[0] == [all_ids[n] for n in (11, 7, 5)]
    assert store.list_ids(status="running")[0] == []
    assert store.list_ids(tag=("user", "nobody"))[0] == []

    # Paging with the cursor walks the whole list once, in order.
    pages, cursor = [], None
    while True:
        page, cursor = store.list_ids(limit=5, cursor=cursor)
        pages.append(page)
        if cursor is None or not page:
            break
    assert [i for p in pages for i in p] == newest_first
    assert [len(p) for p in pages][:2] == [5, 5]

    page1, cursor = store.list_ids(job_type="echo", limit=2)
    page2, _ = store.list_ids(job_type="echo", limit=2, cursor=cursor)
    assert page1 + page2 == newest_first[1::2][:4]


def test_list_ids_paging_through_one_batch(store, ids):
    # submit_many gives every job of a batch the same created_at: paging must
    # still return each job exactly once.
    now = time.time()
    jobs = [new_job(ids, now=now) for _ in range(7)]
    submit(store, *jobs)
    seen, cursor = [], None
    for _ in range(10):
        page, cursor = store.list_ids(limit=3, cursor=cursor)
        seen += page
        if cursor is None or not page:
            break
    assert seen == [j.id for j in reversed(jobs)]


# -- ordering and scheduling -----------------------------------------------------------


def test_reservation_order_priority_then_fifo(store, ids):
    low1, high1, mid, low2, high2 = (new_job(ids, priority=p) for p in (0, 10, 5, 0, 10))
    low3 = new_job(ids, priority=-3)
    submit(store, low1, high1, mid, low2, high2, low3)
    first = reserve(store, 2)
    rest = reserve(store, 10)
    assert [r.id for r in first + rest] == [high1.id, high2.id, mid.id, low1.id, low2.id,
                                            low3.id]
    assert [r.priority for r in first + rest] == [10, 10, 5, 0, 0, -3]


def test_fifo_across_many_submits(store, ids):
    jobs = [new_job(ids) for _ in range(50)]
    for n in range(0, 50, 7):
        submit(store, *jobs[n:n + 7])
    got = [r.id for r in reserve(store, 50)]
    assert got == [j.id for j in jobs]


def test_reservation_merges_a_pools_types_and_skips_others(store, ids):
    # One queue per type; a pool's reservation merges its types by priority, then age.
    e1 = new_job(ids, type="echo")
    a1 = new_job(ids, type="add")
    e2 = new_job(ids, type="echo", priority=2)
    g1 = new_job(ids, type="resize", pool="gpu")
    a2 = new_job(ids, type="add")
    submit(store, e1, a1, e2, g1, a2)
    assert zmembers(store, store.keys.queue("echo")) == [e2.id, e1.id]
    assert zmembers(store, store.keys.queue("add")) == [a1.id, a2.id]
    got = reserve(store, 10, types=["echo", "add"])
    assert [r.id for r in got] == [e2.id, e1.id, a1.id, a2.id]
    assert {r.pool for r in got} == {POOL}
    assert [r.id for r in reserve(store, 10, pool="gpu", types=["resize"])] == [g1.id]


def test_scheduled_promotion(store, ids):
    now = time.time()
    soon = new_job(ids, delay=30, now=now, priority=1)
    later = new_job(ids, delay=90, now=now)
    submit(store, soon, later)
    assert zmembers(store, store.keys.index_status("scheduled")) == [soon.id, later.id]

    applied = store.apply([], {POOL: (5, TYPES)}, promote_limit=100, now=now + 10)
    assert applied.promoted == []
    assert applied.reserved == []
    assert applied.next_due == pytest.approx(now + 30)

    # Without a promote limit, due jobs stay where they are.
    assert store.apply([], {POOL: (5, TYPES)}, promote_limit=0, now=now + 60).reserved == []
    assert store.get(soon.id)["status"] == "scheduled"

    applied = store.apply([], {POOL: (5, TYPES)}, promote_limit=100, now=now + 60)
    assert applied.promoted == ["echo"]  # the types that got due jobs
    assert [r.id for r in applied.reserved] == [soon.id]
    assert applied.next_due == pytest.approx(now + 90)
    rec = store.get(soon.id)
    assert rec["status"] == "queued"
    assert rec["history"][-1]["reason"] == "due"
    assert store.get(later.id)["status"] == "scheduled"

    applied = store.apply([], {}, promote_limit=100, now=now + 100)
    assert applied.promoted == ["echo"]  # the types that got due jobs
    assert applied.next_due == 0.0
    assert store.get(later.id)["status"] == "queued"
    assert store.r.zcard(store.keys.scheduled) == 0
    assert zmembers(store, store.keys.queue("echo")) == [later.id]


def test_promote_limit_bounds_one_pass(store, ids):
    now = time.time()
    jobs = [new_job(ids, delay=5, now=now) for _ in range(6)]
    submit(store, *jobs)
    store.apply([], {}, promote_limit=4, now=now + 10)
    assert store.r.zcard(store.keys.queue("echo")) == 4
    store.apply([], {}, promote_limit=4, now=now + 10)
    assert store.r.zcard(store.keys.queue("echo")) == 6
    assert [r.id for r in reserve(store, 10)] == [j.id for j in jobs]


def test_recovery_of_a_held_job_with_a_cancel_waiting_ends_it_cancelled(store, ids):
    """A node that dies holding a job whose cancel it never saw: the node that recovers
    its jobs ends that one cancelled rather than queueing it to run."""
    [jid] = submit(store, new_job(ids))
    reserve(store)
    assert store.cancel(jid, ttl=50)[0] == "held"
    assert store.recover(NODE, "lost") == 1
    rec = store.get(jid)
    assert rec["status"] == "cancelled" and rec["history"][-1]["reason"] == "cancel requested"
    assert reserve(store) == []
