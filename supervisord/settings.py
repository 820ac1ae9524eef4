"""One snapshot of the config and everything derived from it, swapped whole on reload.

Parts never derive routes, breaker sets or schemas themselves: the loop builds
a ``Settings`` once at start and once per successful reload, and hands the new
snapshot to every part that keeps one.  A part therefore never sees half of a
reload, and no derived value is computed in two places.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supervisord.config import Config, JobTypeConfig, PoolConfig
from supervisord.policies import fallback
from supervisord.redis.store import Route
from supervisord.schemas import resolve_schemas

_MISSING = JobTypeConfig(handler="missing:handler")


@dataclass(frozen=True)
class Settings:
    cfg: Config
    schemas: dict[str, Any]
    routes: tuple[Route, ...]  # where a type goes while its circuit is open
    breakers: frozenset[str]  # types with a circuit breaker
    types_of: dict[str, tuple[str, ...]]  # pool -> the job types it runs
    pools: dict[str, PoolConfig]

    @classmethod
    def build(cls, cfg: Config) -> Settings:
        """Derive everything once; raises ConfigError if a schema cannot be imported."""
        jobs = cfg.jobs
        return cls(
            cfg=cfg,
            schemas=resolve_schemas(cfg),
            routes=fallback.routes(cfg),
            breakers=frozenset(n for n, jt in jobs.items() if jt.circuit_breaker),
            types_of={p.name: tuple(n for n in jobs if cfg.pool_of(n) == p.name)
                      for p in cfg.pools},
            pools={p.name: p for p in cfg.pools},
        )

    @property
    def node(self) -> str:
        return self.cfg.daemon.node_id

    def policy(self, job_type: str) -> JobTypeConfig:
        """A type's policy; a type removed by a reload keeps the defaults."""
        return self.cfg.jobs.get(job_type, _MISSING)

    def pool_of(self, job_type: str) -> str | None:
        return self.cfg.pool_of(job_type) if job_type in self.cfg.jobs else None
