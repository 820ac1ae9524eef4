"""Job events on the PUB side: state changes, progress and output.

Each message is two frames: the job id (so ``watch ID`` can subscribe to one
job) and a msgpack map with at least ``event``, ``job`` and ``t``.  The socket
is an XPUB, so the master knows which topics have subscribers and skips
encoding events that nobody would receive (most events, most of the time).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import zmq

from supervisord.wire.api import encode


class Publisher:
    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.topics: Counter[bytes] = Counter()

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
        try:
            self.sock.send_multipart((job_id.encode(), encode(fields)), zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow subscriber drops events rather than stalling the master

    def state(self, job_id: str, status: str, **fields: Any) -> None:
        self.publish(job_id, "state", status=status, **fields)
