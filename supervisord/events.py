"""Job events on the PUB socket: state changes, progress and output.

Each message is two frames: the job id (so ``watch ID`` can subscribe to one
job) and a msgpack map with at least ``event``, ``job`` and ``t``.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from supervisord.protocol import encode


class Publisher:
    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock

    def publish(self, job_id: str, event: str, **fields: Any) -> None:
        fields["event"] = event
        fields["job"] = job_id
        fields.setdefault("t", time.time())
        try:
            self.sock.send_multipart((job_id.encode(), encode(fields)), zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow subscriber drops events rather than stalling the master

    def state(self, job_id: str, status: str, **fields: Any) -> None:
        self.publish(job_id, "state", status=status, **fields)
