"""What a config asks of this box beyond Python: NVML for GPU limits, cgroup v2 for caps.

``jobsup config check`` and ``jobsup run`` both ask here, so that a limit the box
cannot enforce is refused at once (exit 2, every problem listed) instead of being
silently ignored for months: ``memory_limit_kind = "cgroup"`` without a writable
delegated cgroup v2 subtree, or ``max_gpu_memory`` where NVML cannot be read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from supervisord.config import Config
from supervisord.errors import ConfigError
from supervisord.pool import cgroups
from supervisord.pool.gpus import Gpus

log = logging.getLogger("jobsup.host")


@dataclass
class Host:
    gpus: Gpus
    cgroup_base: Path | None  # the delegated cgroup, where a pool asks for cgroup caps


def check(cfg: Config, gpus: Gpus | None = None) -> Host:
    """Raise one ConfigError naming every pool whose limits this box cannot enforce."""
    opened = gpus is None
    gpus = Gpus.open() if gpus is None else gpus
    errors: list[dict] = []
    base = None
    try:
        base = cgroups.require([(p.name, p.memory_limit_kind) for p in cfg.pools])
    except ConfigError as exc:
        errors += exc.errors
    if not gpus.available:
        errors += [{"loc": f"pools.{p.name}.max_gpu_memory",
                    "msg": f"max_gpu_memory cannot be enforced without NVML ({gpus.why}); "
                           "install the NVIDIA driver and nvidia-ml-py, or remove the key"}
                   for p in cfg.pools if p.max_gpu_memory]
    if errors:
        if opened:
            gpus.close()
        raise ConfigError("this box cannot enforce what the config asks", errors=errors)
    return Host(gpus, base)


def announce(cfg: Config, host: Host) -> None:
    """Say what ``gpus = "auto"`` found, where a pool asks for it."""
    asks = any(p.gpus == "auto" or p.max_gpu_memory for p in cfg.pools)
    (log.info if asks else log.debug)("gpus: %s", host.gpus.describe())
