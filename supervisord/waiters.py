"""Who waits for which job, answered after the write that finished it commits.

Jobs that run on this node wake their waiters directly (``finished``, from a
transition's after-commit effect); jobs run by other nodes sharing Redis are
found by a slow poll over a rotating slice.  Waits are bounded per client
connection and in all, so clients that wait forever and go away cannot make
the daemon grow without limit.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisord.errors import JobsupError, Timeout, Unavailable
from supervisord.redis.reader import Reads
from supervisord.redis.store import Store
from supervisord.states import TERMINAL, JobStatus

Reply = Callable[[bytes, Any, Any], None]  # identity, rid, result
Fail = Callable[[bytes, Any, JobsupError], None]

PER_CLIENT = 10_000  # waits one client connection may hold
IN_ALL = 200_000
RECENT = 50_000  # finished jobs remembered for waits whose status read was out


@dataclass(eq=False)
class Waiter:
    identity: bytes
    rid: Any
    ids: list[str]
    remaining: set[str]
    view: str  # wire.api.Wait.view
    deadline: float | None


class Waiters:
    def __init__(self, store: Store, reads: Reads, reply: Reply, fail: Fail,
                 per_client: int = PER_CLIENT, in_all: int = IN_ALL) -> None:
        self.store = store
        self.reads = reads
        self.reply = reply
        self.fail = fail
        self.per_client = per_client
        self.in_all = in_all
        self.by_job: dict[str, list[Waiter]] = {}
        self.timed: set[Waiter] = set()  # waits with a deadline
        self.per_identity: Counter[bytes] = Counter()
        self.count = 0
        self.ready: list[Waiter] = []  # finished, to answer after the commit
        self.on_fd: dict[int, set[bytes]] = {}  # connection fd -> identities that waited
        self._recheck_at = 0
        self._rechecking = False
        self.finishes = 0  # jobs finished so far: ``mark`` and ``wait(since=)``
        self.recent: OrderedDict[str, int] = OrderedDict()  # job id -> its finish number

    def __len__(self) -> int:
        return self.count

    def awaits_alone(self, job_id: str) -> bool:
        """Someone waits for this job and nothing else."""
        return any(len(w.remaining) == 1 for w in self.by_job.get(job_id, ()))

    def mark(self) -> int:
        """Taken before statuses are read from Redis off the loop: jobs that finish while
        the read is out are then known to ``wait(since=)``."""
        return self.finishes

    def wait(self, identity: bytes, rid: Any, ids: list[str], statuses: list[str],
             view: str, deadline: float | None, since: int | None = None) -> None:
        """Answer now if every job is final, else when the last one is."""
        recent = self.recent
        remaining = {i for i, s in zip(ids, statuses, strict=True)
                     if JobStatus(s) not in TERMINAL
                     and (since is None or recent.get(i, -1) <= since)}
        waiter = Waiter(identity, rid, list(ids), remaining, view, deadline)
        if not remaining:
            self.answer([waiter])
            return
        if self.per_identity[identity] >= self.per_client or self.count >= self.in_all:
            raise Unavailable(
                f"too many waits held ({self.per_identity[identity]} from this connection, "
                f"{self.count} in all; limits {self.per_client} and {self.in_all}); wait for "
                "many jobs in one request (wait_many/outcomes) or give waits a timeout")
        self.per_identity[identity] += 1
        self.count += 1
        for job_id in remaining:
            self.by_job.setdefault(job_id, []).append(waiter)
        if deadline is not None:
            self.timed.add(waiter)

    def _release(self, waiter: Waiter) -> None:
        self.count -= 1
        left = self.per_identity[waiter.identity] - 1
        if left > 0:
            self.per_identity[waiter.identity] = left
        else:
            del self.per_identity[waiter.identity]

    def finished(self, job_id: str) -> None:
        """A job reached a final state (committed): its waiters are ready to answer."""
        self.finishes += 1
        recent = self.recent
        recent[job_id] = self.finishes
        if len(recent) > RECENT:
            recent.popitem(last=False)
        for waiter in self.by_job.pop(job_id, ()):
            waiter.remaining.discard(job_id)
            if not waiter.remaining:
                self.ready.append(waiter)
                self.timed.discard(waiter)
                self._release(waiter)

    def answer_ready(self, known: dict[str, dict] | None = None) -> None:
        if self.ready:
            ready, self.ready = self.ready, []
            self.answer(ready, known)

    def answer(self, waiters: list[Waiter], known: dict[str, dict] | None = None) -> None:
        """Reply to finished waiters, one read per view; records the last write returned
        need no read.  A read goes off the loop, and the replies follow it."""
        found: dict[str, dict[str, Any]] = {"records": dict(known or {}), "outcomes": {}}
        need: dict[str, list[str]] = {"records": [], "outcomes": []}
        for w in waiters:
            have = found[w.view]
            need[w.view].extend(i for i in w.ids if i not in have)
        need = {view: sorted(set(ids)) for view, ids in need.items()}
        if not any(need.values()):
            self._answer(waiters, found)
            return
        store = self.store

        def read() -> dict[str, dict[str, Any]]:
            for view, fetch in (("records", store.get_many), ("outcomes", store.outcomes)):
                if need[view]:
                    found[view].update(zip(need[view], fetch(need[view]), strict=True))
            return found

        def done(result: dict | Exception) -> None:
            if isinstance(result, Exception):
                for w in waiters:
                    self.fail(w.identity, w.rid, Unavailable(
                        f"the jobs finished, but reading their results from Redis failed "
                        f"({result}); ask again (get or wait)"))
                return
            self._answer(waiters, result)

        self.reads.submit(read, done)

    def _answer(self, waiters: list[Waiter], found: dict[str, dict[str, Any]]) -> None:
        for w in waiters:
            self.reply(w.identity, w.rid, [found[w.view][i] for i in w.ids])

    def _drop(self, w: Waiter) -> None:
        self.timed.discard(w)
        self._release(w)
        for job_id in w.remaining:
            left = [x for x in self.by_job.get(job_id, ()) if x is not w]
            if left:
                self.by_job[job_id] = left
            else:
                self.by_job.pop(job_id, None)

    def expire(self, now: float) -> None:
        """Answer waits whose timeout passed; only waits with a deadline are looked at."""
        for w in [w for w in self.timed if w.deadline <= now]:
            self._drop(w)
            pending = sorted(w.remaining)
            self.fail(w.identity, w.rid, Timeout(
                f"{len(pending)} job(s) not finished in time: {', '.join(pending[:5])}",
                ids=pending[:100]))

    def note_source(self, identity: bytes, fd: int) -> None:
        """The connection (fd) a waiting client's requests come on."""
        self.on_fd.setdefault(fd, set()).add(identity)

    def disconnected(self, fd: int) -> int:
        """A client connection closed: drop the waits of every client seen on it."""
        return sum(self.gone(identity) for identity in self.on_fd.pop(fd, ()))

    def gone(self, identity: bytes) -> int:
        """A client connection went away: drop its waits; returns how many."""
        if identity not in self.per_identity:
            return 0
        mine = {id(w): w for ws in self.by_job.values() for w in ws if w.identity == identity}
        for w in mine.values():
            self._drop(w)
        return len(mine)

    def recheck(self, local: dict[str, Any], limit: int = 200) -> None:
        """Jobs finished by another node sharing Redis are found by a slow poll.

        Jobs that run here (``local``) wake their waiters directly; the poll only
        looks at a rotating slice of the others, so a wait on 10,000 jobs costs
        Redis ``limit`` reads a second, not 10,000.  One poll is out at a time.
        """
        others = [i for i in self.by_job if i not in local]
        if not others or self._rechecking:
            return
        start = self._recheck_at % len(others)
        ids = (others[start:] + others[:start])[:limit]
        self._recheck_at = start + len(ids)

        def done(statuses: list[str | None] | Exception) -> None:
            self._rechecking = False
            if isinstance(statuses, Exception):
                return  # the next poll asks again
            for job_id, status in zip(ids, statuses, strict=True):
                if status is None or JobStatus(status) in TERMINAL:
                    self.finished(job_id)
            self.answer_ready()

        self._rechecking = True
        self.reads.submit(lambda: self.store.status_of(ids), done)
