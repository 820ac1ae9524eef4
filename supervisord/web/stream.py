"""The event stream (``/api/events``): the master's events as Server-Sent Events.

One SUB socket on the master's events endpoint feeds every HTTP client.  It
subscribes only while someone is watching (and a minute after the last one
left, so that a browser reconnecting finds its events held): the master
encodes no event that nobody would receive, so an idle status page costs it
nothing.

Each event gets an id here, ``BOOT-N``: BOOT is drawn at each start of the
web process and N counts up, so an id from an earlier web process (or one
this process never gave) is never taken for one of its own.  The last
``web.replay`` events are held for ``Last-Event-ID``; when the id asked for
is not held (too old, another boot, or the subscription lapsed since), the
first message is ``event: reset`` and the client refetches.

Every client has a bounded queue; a client whose queue fills (it does not
read) is dropped and its connection closed, so no client can make this
process grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from typing import Any

import msgpack
import msgspec
import zmq
import zmq.auth

log = logging.getLogger("jobsup.web.stream")

_LINGER = 60.0  # seconds the subscription outlives the last client
_SETTLE = 0.1  # seconds for a new subscription to reach the master before answering
_BATCH = 200  # events read at a time before the writers run; below any stream_queue
_GATHER = 0.02  # seconds events gather before they are read: fewer, larger writes


# msgspec's JSON encoder: a tenth of json.dumps's time per event, which is most of
# what this process spends on a busy daemon.  Anything JSON has no type for is
# written as its str().
to_json = msgspec.json.Encoder(enc_hook=str).encode
_names: dict[str, bytes] = {}  # event name -> its SSE "event:" line, made safe once
# Plain ints: pyzmq's flags are IntFlag members, whose operators run in Python.
_POLLIN, _EVENTS, _NOBLOCK, _RCVMORE = (int(zmq.POLLIN), int(zmq.EVENTS), int(zmq.NOBLOCK),
                                        int(zmq.RCVMORE))


def _name_line(name: Any) -> bytes:
    line = _names.get(name) if isinstance(name, str) else None
    if line is None:
        safe = "".join(ch for ch in str(name) if ch.isalnum() or ch in "_-") or "message"
        line = f"event: {safe}\n".encode()
        if isinstance(name, str) and len(_names) < 256:
            _names[name] = line
    return line


def message(event_id: str, name: Any, data: Any) -> bytes:
    """One SSE message; the data is one line of JSON (JSON strings escape newlines)."""
    return b"".join((b"id: ", event_id.encode(), b"\n", _name_line(name), b"data: ",
                     to_json(data), b"\n\n"))


class Watcher:
    """One HTTP client of the stream: what it wants and what is queued for it."""

    def __init__(self, job: str | None, size: int) -> None:
        self.job = job
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.dropped = False
        self.abort: Any = None  # () -> None: closes its connection

    def offer(self, msg: bytes) -> bool:
        """Queue ``msg``; False if the queue is full (the caller drops this watcher)."""
        try:
            self.queue.put_nowait(msg)
            return True
        except asyncio.QueueFull:
            return False

    def drop(self) -> None:
        self.dropped = True
        while not self.queue.empty():  # free what it held now, not when it is collected
            self.queue.get_nowait()
        self.queue.put_nowait(None)
        if self.abort is not None:
            self.abort()


class Hub:
    def __init__(self, settings: dict) -> None:
        web = settings["web"]
        self.max_streams: int = web["max_streams"]
        self.queue_size: int = web["stream_queue"]
        self.heartbeat: float = web["heartbeat"]
        self.boot = secrets.token_hex(4)
        self.seq = 0
        self.ring: deque[tuple[int, str, bytes]] = deque(maxlen=web["replay"])
        self.watchers: set[Watcher] = set()
        self.subscribed = False
        self.left_at = time.monotonic()  # when the last watcher left
        self.dropped = 0  # watchers dropped for not reading, since start
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._more = False  # a read is scheduled (and the fd not watched meanwhile)
        self._fd = -1
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 20_000)  # bounds what waits for this process
        if settings["curve_server_key"]:
            server_public, _ = zmq.auth.load_certificate(settings["curve_server_key"])
            public, secret = zmq.auth.load_certificate(settings["curve_client_cert"])
            self.sub.curve_serverkey = server_public
            self.sub.curve_publickey = public
            self.sub.curve_secretkey = secret
        self.sub.connect(settings["events"])

    @property
    def last_id(self) -> str:
        return f"{self.boot}-{self.seq}"

    # -- the master's side ----------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read events in the event loop: the socket's notification fd wakes it, and each
        wake-up reads what there is with plain socket calls (far cheaper per event than
        an awaited receive)."""
        self._loop = loop
        self._fd = self.sub.getsockopt(zmq.FD)
        self._readable()
        self._tick(loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._maybe_unsubscribe()
        self._wake()  # a wake-up can be missed while the fd is edge-triggered
        self._timer = loop.call_later(1.0, self._tick, loop)

    def _wake(self) -> None:
        """The fd fired (or the timer): stop watching it and read _GATHER seconds later,
        so that a busy daemon's events are read, and written on, in batches rather than
        one wake-up each."""
        if self._more or self._loop is None:
            return
        self._more = True
        self._loop.remove_reader(self._fd)
        self._loop.call_later(_GATHER, self._readable)

    def _readable(self) -> None:
        """Up to _BATCH events, then the writers run before the next batch is read (a
        burst such as a bulk submit must not fill the queue of a client that reads);
        once the socket is empty, watch its fd again."""
        assert self._loop is not None
        self._more = False
        sub = self.sub
        recv, opt = sub.recv, sub.getsockopt
        try:
            for _ in range(_BATCH):
                if not opt(_EVENTS) & _POLLIN:
                    break
                frames = [recv(_NOBLOCK)]
                while opt(_RCVMORE):
                    frames.append(recv(_NOBLOCK))
                if self.subscribed and len(frames) == 2:
                    self.publish(frames[0].decode(errors="replace"), frames[1])
            else:
                self._more = True
                self._loop.call_soon(self._readable)
                return
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            log.warning("event socket: %s", exc)
        self._loop.add_reader(self._fd, self._wake)

    def publish(self, job: str, body: bytes) -> None:
        try:
            event = msgpack.unpackb(body, raw=False)
        except Exception as exc:
            log.warning("an event that is not msgpack was skipped (%s)", exc)
            return
        if not isinstance(event, dict):
            return
        self.seq += 1
        msg = message(self.last_id, event.get("event", "message"), event)
        self.ring.append((self.seq, job, msg))
        for w in [w for w in self.watchers if w.job is None or w.job == job]:
            if not w.offer(msg):
                self._drop(w)

    def _drop(self, w: Watcher) -> None:
        self.dropped += 1
        log.warning("dropped an event-stream client that did not read (%d events queued); "
                    "it may reconnect with Last-Event-ID", self.queue_size)
        self.leave(w)
        w.drop()

    def _subscribe(self) -> bool:
        """Subscribe unless subscribed; True if this call did (the caller then gives the
        subscription _SETTLE seconds to reach the master)."""
        if self.subscribed:
            return False
        # What came while unsubscribed was never seen: skip a number, so that an id
        # given before cannot resume across the gap (it gets a reset instead).
        if self.seq:
            self.seq += 1
        self.ring.clear()
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.subscribed = True
        return True

    def _maybe_unsubscribe(self) -> None:
        if self.subscribed and not self.watchers and time.monotonic() - self.left_at > _LINGER:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, b"")
            self.subscribed = False

    # -- the HTTP side ----------------------------------------------------------------
    def full(self) -> bool:
        return len(self.watchers) >= self.max_streams

    async def join(self, job: str | None, last_id: str | None) -> tuple[Watcher, list[bytes]]:
        """A new watcher and what to send it first: the replay after ``last_id``, or a
        reset when that id is not held.  Joined and replayed in one step (no await in
        between), so that nothing is missed or sent twice, and counted at once against
        max_streams."""
        new = self._subscribe()
        w = Watcher(job, self.queue_size)
        self.watchers.add(w)
        first: list[bytes] = []
        if last_id is not None:
            held = self.after(last_id, job)
            first = held if held is not None else [message(self.last_id, "reset", {
                "reason": f"event {last_id[:80]} is no longer held here (the stream "
                          "restarted or moved on); refetch the current state",
                "last_id": self.last_id})]
        if new:
            await asyncio.sleep(_SETTLE)
        return w, first

    def after(self, last_id: str, job: str | None) -> list[bytes] | None:
        boot, _, n = last_id.strip().rpartition("-")
        if boot != self.boot or not n.isdigit():
            return None
        seen = int(n)
        first = self.ring[0][0] if self.ring else self.seq + 1
        if seen > self.seq or seen < first - 1:
            return None
        return [msg for seq, j, msg in self.ring if seq > seen and (job is None or j == job)]

    def leave(self, w: Watcher) -> None:
        if w in self.watchers:
            self.watchers.discard(w)
            if not self.watchers:
                self.left_at = time.monotonic()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._fd)
        for w in list(self.watchers):
            self.leave(w)
            with contextlib.suppress(asyncio.QueueFull):
                w.queue.put_nowait(None)
        self.sub.close(linger=0)
        self.ctx.term()
