"""Limits a worker puts on itself before any handler code is imported.

RLIMIT_DATA is the default memory cap because RLIMIT_AS breaks CUDA: the CUDA
driver reserves virtual address space of about twice the GPU memory, which
counts against RLIMIT_AS but not against RLIMIT_DATA (the reservations are
PROT_NONE, not private writable memory).
"""

from __future__ import annotations

import os
import resource
import signal

from supervisord.pool.deathsig import set_parent_death_signal

_KINDS = {"data": resource.RLIMIT_DATA, "as": resource.RLIMIT_AS}


def apply(spec: dict) -> None:
    set_parent_death_signal(signal.SIGKILL, spec.get("master_pid"))
    if spec.get("cgroup"):
        # memory_limit_kind = "cgroup": the master made this cgroup with its caps; enter
        # it before any import (the master also moves us, in case this is late).
        try:
            with open(os.path.join(spec["cgroup"], "cgroup.procs"), "w") as fh:
                fh.write("0")
        except PermissionError:
            pass  # a pool that runs as another user: the master's move must do
        return
    limit = spec.get("memory_limit")
    if limit:
        which = _KINDS[spec.get("memory_limit_kind") or "data"]
        resource.setrlimit(which, (int(limit), int(limit)))
