"""Job events on the PUB side: state changes, progress and output.

Each message is two frames: the job id (so ``watch ID`` can subscribe to one
job) and a msgpack map with at least ``event``, ``job`` and ``t``.  The socket
is an XPUB, so the master knows which topics have subscribers and skips
encoding events that nobody would receive (most events, most of the time).

Events are held for the rest of the pass and sent together by ``flush``: a send
to a subscriber's pipe that its reader has emptied wakes libzmq's I/O thread
(a system call in the master, and a wake-up of that thread), so sending each
event as it happens cost a watched daemon about twice the CPU per job.  Sent in
a row, the first wakes the thread and the rest ride along.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import zmq

from supervisord.wire.api import encode

# Plain ints: pyzmq's flags are IntFlag members, whose operators run in Python.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


class Publisher:
    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.topics: Counter[bytes] = Counter()
        self.pending: list[tuple[bytes, bytes]] = []

    def read_subscriptions(self) -> None:
        """Track (un)subscriptions; XPUB delivers them as b'\\x01topic' / b'\\x00topic'."""
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg:
                continue
            topic = msg[1:]
            if msg[0] == 1:
                self.topics[topic] += 1
            elif self.topics[topic] > 1:
                self.topics[topic] -= 1
            else:
                del self.topics[topic]

    def wanted(self, job_id: str) -> bool:
        return bool(self.topics) and (b"" in self.topics or job_id.encode() in self.topics)

    def publish(self, job_id: str, event: str, **fields: Any) -> None:
        if not self.wanted(job_id):
            return
        fields["event"] = event
        fields["job"] = job_id
        fields.setdefault("t", time.time())
        self.pending.append((job_id.encode(), encode(fields)))

    def flush(self) -> None:
        """Send what this pass published (the loop calls it once a pass)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        send = self.sock.send
        for topic, body in pending:
            try:
                send(topic, _MORE)
                send(body, _NOBLOCK)
            except zmq.Again:
                pass  # a slow subscriber drops events rather than stalling the master

    def state(self, job_id: str, status: str, **fields: Any) -> None:
        self.publish(job_id, "state", status=status, **fields)
