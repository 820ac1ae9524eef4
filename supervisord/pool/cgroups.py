"""cgroup v2 memory caps: one child cgroup per worker under the daemon's delegated cgroup.

An rlimit counts what one process maps; a cgroup counts what a whole worker tree
really holds, page cache and pinned host memory of CUDA included.  With
``memory_limit_kind = "cgroup"`` each worker runs in ``<daemon cgroup>/w<wid>`` with
``memory.max`` = the pool's ``memory_limit``, ``memory.swap.max`` = 0 (a capped
worker must not swap the box to death instead) and ``memory.oom.group`` = 1 (the
kernel kills the whole tree, not one grandchild).  A kernel OOM kill shows up in the
cgroup's ``memory.events`` and fails the job with kind ``memory``.

cgroup v2 allows controllers for children only in a cgroup without processes of
its own, so the master first moves itself (and whatever it starts later, such as
the embedded redis-server) into the leaf ``<daemon cgroup>/master``; this is the
layout systemd's ``Delegate=yes`` expects.  Only a cgroup v2 hierarchy mounted at
/sys/fs/cgroup is used; cgroup v1 is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from pathlib import Path

from supervisord.errors import ConfigError

log = logging.getLogger("jobsup.cgroups")

ROOT = Path("/sys/fs/cgroup")


def unavailable(why: str, pools: list[str]) -> ConfigError:
    """The error for pools that ask for cgroup caps on a box that cannot give them."""
    msg = (f"memory_limit_kind = 'cgroup' needs a writable, delegated cgroup v2 subtree, "
           f"but {why}. Run jobsup under systemd with Delegate=yes (the packaged unit "
           "does), or use memory_limit_kind = 'data'")
    return ConfigError("this box cannot give workers cgroup memory caps",
                       errors=[{"loc": f"pools.{name}.memory_limit_kind", "msg": msg}
                               for name in pools])


def own_cgroup(root: Path = ROOT, proc_cgroup: str = "/proc/self/cgroup") -> Path:
    """The daemon's cgroup v2 directory; ValueError says why there is none to use."""
    if not (root / "cgroup.controllers").exists():
        raise ValueError(f"no cgroup v2 hierarchy is mounted at {root} (this box uses "
                         "cgroup v1 or a hybrid layout)")
    with open(proc_cgroup) as fh:
        for line in fh:
            hier, _, rest = line.rstrip("\n").partition(":")
            controllers, _, path = rest.partition(":")
            if hier == "0" and controllers == "":
                base = root / path.lstrip("/")
                break
        else:
            raise ValueError(f"{proc_cgroup} names no cgroup v2 path for this process")
    if base.name == "master" and (base.parent / "cgroup.subtree_control").exists():
        base = base.parent  # an earlier start of this daemon already moved itself there
    return base


def probe(root: Path = ROOT) -> Path:
    """Where worker cgroups would go, checked without changing anything."""
    base = own_cgroup(root)
    if base == root:
        raise ValueError("the daemon runs in the root cgroup, which is not delegated to it")
    controllers = (base / "cgroup.controllers").read_text().split()
    if "memory" not in controllers:
        raise ValueError(f"the memory controller is not enabled for {base} (its parent's "
                         "cgroup.subtree_control lacks 'memory')")
    for name in ("", "cgroup.procs", "cgroup.subtree_control"):
        if not os.access(base / name, os.W_OK):
            raise ValueError(f"{base / name} is not writable by uid {os.geteuid()}")
    return base


def require(pools: list[tuple[str, str]], root: Path = ROOT) -> Path | None:
    """Raise ConfigError when a pool wants cgroup caps and none can be had.

    ``pools`` is ``[(name, memory_limit_kind), ...]``; returns the delegated cgroup,
    or None when no pool asks for one.
    """
    wanting = [name for name, kind in pools if kind == "cgroup"]
    if not wanting:
        return None
    try:
        return probe(root)
    except (ValueError, OSError) as exc:
        raise unavailable(str(exc), wanting) from None


class Cgroups:
    """The delegated subtree of a running daemon: the master's leaf and one per worker."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._pending: set[Path] = set()  # exited workers' cgroups not yet empty

    @classmethod
    def setup(cls, base: Path) -> Cgroups:
        """Move the master into its leaf, enable the memory controller for children,
        and end what an earlier master's workers left in their cgroups."""
        leaf = base / "master"
        try:
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
            (base / "cgroup.subtree_control").write_text("+memory")
        except OSError as exc:
            others = (base / "cgroup.procs").read_text().split()
            why = f"setting up {base} failed ({exc})"
            if exc.errno == errno.EBUSY and others:
                why += (f": other processes ({', '.join(others[:5])}) share the daemon's "
                        "cgroup, so it cannot hand the memory controller to its workers")
            raise unavailable(why, ["*"]) from None
        groups = cls(base)
        for old in base.iterdir():
            if old.is_dir() and old.name.startswith("w") and old.name[1:].isdigit():
                log.warning("cgroup %s was left by an earlier master; killing what is in it",
                            old)
                groups._kill(old)
                groups._remove(old)
        log.info("worker memory caps through cgroup v2 under %s", base)
        return groups

    def path(self, wid: int) -> Path:
        return self.base / f"w{wid}"

    def create(self, wid: int, limit: int) -> Path:
        """A fresh cgroup for a worker, its caps set before anything runs in it."""
        cg = self.path(wid)
        if cg.exists():
            self._kill(cg)
            self._remove(cg)
        cg.mkdir()
        (cg / "memory.max").write_text(str(int(limit)))
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if (cg / name).exists():  # no swap accounting on this kernel: no swap file
                (cg / name).write_text(value)
        return cg

    def enter(self, cg: Path, pid: int) -> None:
        """Move a freshly spawned worker in (it also moves itself before any import)."""
        try:
            (cg / "cgroup.procs").write_text(str(pid))
        except ProcessLookupError:
            pass  # it died already; its exit tells why

    def oom_kills(self, cg: Path) -> int:
        """How many processes the kernel's OOM killer ended in this cgroup."""
        try:
            text = (cg / "memory.events").read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def release(self, cg: Path) -> None:
        """Remove an exited worker's cgroup once its last process is gone."""
        self._pending.add(cg)
        self.sweep()

    def sweep(self) -> None:
        for cg in list(self._pending):
            if self._remove(cg):
                self._pending.discard(cg)

    def close(self) -> None:
        deadline = time.monotonic() + 2.0
        while self._pending and time.monotonic() < deadline:
            for cg in self._pending:
                self._kill(cg)
            self.sweep()
            if self._pending:
                time.sleep(0.02)

    def _kill(self, cg: Path) -> None:
        if (cg / "cgroup.kill").exists():  # Linux 5.14 and later; before, one pid at a time
            with contextlib.suppress(OSError):
                (cg / "cgroup.kill").write_text("1")
            return
        try:
            pids = (cg / "cgroup.procs").read_text().split()
        except OSError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def _remove(self, cg: Path) -> bool:
        try:
            cg.rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("could not remove cgroup %s: %s", cg, exc)
                return True
            return False
        return True
