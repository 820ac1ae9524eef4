"""Binding the daemon's sockets: ipc paths created 0600, clear errors when busy."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import zmq

from supervisord.errors import Unavailable


def bind(sock: zmq.Socket, endpoint: str) -> None:
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


def short_ipc_path(state: Path, name: str) -> Path:
    """Unix socket paths are limited to 107 bytes; fall back to /tmp when too long."""
    path = state / name
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(state).encode()).hexdigest()[:12]
    return Path("/tmp") / f"jobsup-{digest}-{name}"
