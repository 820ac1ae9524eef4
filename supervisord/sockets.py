"""Binding the daemon's sockets: ipc files with the configured mode and group,
clear errors when busy, and the files removed again on a clean stop.

An ipc socket file is the API's only lock on a shared box: whoever can open it
can submit, read payloads and results, purge and shut the daemon down.  It is
created 0600 (umask) and only then opened up to ``api.socket_mode`` and
``api.socket_group``, so there is no moment in which it is wider than asked.
"""

from __future__ import annotations

import grp
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq

from supervisord.config import ApiConfig
from supervisord.errors import ConfigError, Unavailable

log = logging.getLogger("jobsup.master")


@dataclass(frozen=True)
class BoundFile:
    """An ipc socket file this daemon created: removed at stop only if it is still
    the same file (a newer daemon may have bound the path since)."""

    path: Path
    dev: int
    ino: int


def bind(sock: zmq.Socket, endpoint: str, api: ApiConfig | None = None) -> BoundFile | None:
    """Bind ``sock``; for ``ipc://`` also set the file's mode and group."""
    if not endpoint.startswith("ipc://"):
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise Unavailable(f"cannot listen on {endpoint}: {exc} (is another jobsup "
                              "daemon running there?)") from None
        return None
    path = Path(endpoint[len("ipc://"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old)
    if api is not None:
        try:
            _open_up(path, api)
        except BaseException:
            path.unlink(missing_ok=True)  # no socket file left behind by a failed start
            raise
    st = path.stat()
    return BoundFile(path, st.st_dev, st.st_ino)


def group_id(name: str) -> int:
    """``api.socket_group`` as a gid: a number as is, a name looked up on this host."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"no group {name!r} on this host", errors=[{
            "loc": "api.socket_group", "msg": (
                f"this host has no group named {name!r}; create it (groupadd {name}) "
                "and add the daemon's user and the API's users to it, or name an "
                "existing group")}]) from None


def _open_up(path: Path, api: ApiConfig) -> None:
    if api.socket_group is not None:
        gid = group_id(api.socket_group)
        try:
            if path.stat().st_gid != gid:  # no chown call when it is already the group's
                os.chown(path, -1, gid)
        except PermissionError:
            raise ConfigError(
                f"cannot give {path} to group {api.socket_group}",
                errors=[{"loc": "api.socket_group", "msg": (
                    f"this process (uid {os.getuid()}) is not a member of group "
                    f"{api.socket_group} and is not root; add the daemon's user to the "
                    "group, or unset socket_group")}]) from None
        parent = path.parent.stat()
        if (parent.st_gid == gid and not parent.st_mode & stat.S_IXGRP) or (
                parent.st_gid != gid and not parent.st_mode & stat.S_IXOTH):
            log.warning("api socket %s: its directory %s (mode %04o) cannot be entered by "
                        "group %s, so the group cannot reach the socket; give the directory "
                        "to the group with mode 0750", path, path.parent,
                        stat.S_IMODE(parent.st_mode), api.socket_group)
    os.chmod(path, api.socket_mode)


def remove_bound(files: list[BoundFile | None]) -> None:
    """On a clean stop: remove the socket files, so no stale api.sock or
    events.sock is left for a client to find."""
    for f in files:
        if f is None:
            continue
        try:
            st = f.path.stat()
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) == (f.dev, f.ino):
            f.path.unlink(missing_ok=True)


def short_ipc_path(state: Path, name: str) -> Path:
    """Unix socket paths are limited to 107 bytes; fall back to /tmp when too long."""
    path = state / name
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(state).encode()).hexdigest()[:12]
    return Path("/tmp") / f"jobsup-{digest}-{name}"
