"""Redis reads the loop never waits for: run on one thread, finished in the loop.

The loop's writes go through ``RedisPipe`` without blocking.  Its reads
(a job's record, a listing, status, the once-a-second checks) are many
different shapes of command and several round trips each; rather than turn
every one into a non-blocking state machine, the loop hands the Redis part
of a read to this thread and gets the answer back through a pipe fd it polls.
Only the Redis calls run here: the part that touches the loop's state runs in
the loop when the answer is back, so no part is shared between threads.

Every read has a deadline: one that waited longer than the Redis socket
timeout behind others (a frozen Redis) fails without being sent, and the
redis-py socket timeout bounds the one being sent.  The number waiting is
bounded, so a client that floods reads gets ``Unavailable``, not memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from supervisord.errors import Unavailable

log = logging.getLogger("jobsup.reads")

Done = Callable[[Any], None]  # called in the loop with the result or the exception


class Reads:
    def __init__(self, timeout: float, limit: int = 2000) -> None:
        self.timeout = timeout
        self.limit = limit
        self.pending = 0  # submitted, not yet finished in the loop (the loop's count)
        self._todo: deque[tuple[Callable[[], Any], Done, float]] = deque()
        self._done: deque[tuple[Done, Any]] = deque()
        self._ready = threading.Condition()
        self._stop = False
        self.fd, self._wake = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._wake, False)
        self._thread = threading.Thread(target=self._serve, name="redis-reads", daemon=True)
        self._thread.start()

    def submit(self, read: Callable[[], Any], done: Done) -> None:
        """Run ``read`` (Redis calls only) off the loop; ``done`` gets its result, or the
        exception it raised, in the loop (``finish``)."""
        if self.pending >= self.limit:
            raise Unavailable(f"{self.pending} reads are waiting for Redis (limit "
                              f"{self.limit}); Redis is slow or the daemon is flooded, "
                              "try again shortly")
        self.pending += 1
        with self._ready:
            self._todo.append((read, done, time.monotonic() + self.timeout))
            self._ready.notify()

    def finish(self) -> int:
        """In the loop, when ``fd`` is readable: hand each finished read its result."""
        try:
            os.read(self.fd, 4096)
        except BlockingIOError:
            pass
        n = 0
        while self._done:
            done, result = self._done.popleft()
            self.pending -= 1
            n += 1
            try:
                done(result)
            except Exception:
                log.exception("finishing a Redis read failed")
        return n

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._todo and not self._stop:
                    self._ready.wait()
                if self._stop:
                    return
                read, done, deadline = self._todo.popleft()
            if time.monotonic() > deadline:
                result: Any = redis.TimeoutError(
                    f"the read waited over {self.timeout:g}s behind others for Redis")
            else:
                try:
                    result = read()
                except Exception as exc:
                    result = exc
            self._done.append((done, result))
            try:
                os.write(self._wake, b"r")
            except OSError:
                pass  # the loop has wake-ups unread already (or has closed: exiting)

    def close(self) -> None:
        with self._ready:
            self._stop = True
            self._ready.notify()
        self._thread.join(timeout=self.timeout + 1.0)
        for fd in (self.fd, self._wake):
            os.close(fd)
