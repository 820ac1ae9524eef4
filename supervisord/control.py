"""Shutdown, reload and resizing: what signals and the API's control operations do.

A mixin of ``Master``.  Signal handlers only record; the loop calls these, the
same code the ``shutdown`` and ``reload`` operations use.
"""

from __future__ import annotations

import logging
import time

from supervisord import config as config_mod
from supervisord.errors import ConfigError
from supervisord.schemas import resolve_schemas
from supervisord.states import KillReason, Phase
from supervisord.workers import Pool

log = logging.getLogger("jobsup.master")


class Control:
    def begin_shutdown(self, fast: bool, why: str) -> None:
        if self.phase is Phase.DONE or (self.phase is not Phase.RUNNING and not fast):
            return
        log.warning("%s: %s shutdown", why, "fast" if fast else "graceful")
        self.accepting = False
        if self.phase is Phase.RUNNING:
            self.phase = Phase.DRAINING
            self.drain_deadline = time.monotonic() + self.cfg.daemon.shutdown_grace
            for pool in self.workers.pools.values():
                while pool.buffer:
                    self.jobs.requeue(pool.buffer.popleft(), "node shutting down")
        if fast:
            self.drain_deadline = 0.0
            self.drain_step(time.monotonic())
            for w in self.workers.all():
                self.workers.kill(w, KillReason.SHUTDOWN)

    def drain_step(self, now: float) -> None:
        if self.phase is Phase.DRAINING:
            busy = [w for w in self.workers.all() if w.job is not None]
            for w in self.workers.all():
                if w.job is None and w.kill_reason is None:
                    self.retire(w, KillReason.SHUTDOWN)
            if busy and now < self.drain_deadline:
                return
            for w in busy:
                if w.job is not None:
                    self.jobs.requeue(w.job, "still running at the end of shutdown_grace")
                self.workers.stop(w, KillReason.SHUTDOWN)
            self.phase = Phase.STOPPING
            self.stop_deadline = now + self.cfg.daemon.kill_grace + 5.0
        if self.phase is Phase.STOPPING:
            if not self.workers.all() and not self.batch and not self.pipe.busy:
                self.phase = Phase.DONE
            elif now > self.stop_deadline:
                for w in self.workers.all():
                    self.workers.kill(w, KillReason.SHUTDOWN)
                if now > self.stop_deadline + 5.0 or not self.workers.all():
                    self.phase = Phase.DONE

    def reload(self) -> list[dict]:
        """Re-read the config file; an invalid one keeps the running config."""
        self.pools_changed = True
        if not self.config_path:
            log.warning("reload: running on built-in defaults, no config file to re-read")
            return []
        try:
            new = config_mod.load(self.config_path)
            schemas = resolve_schemas(new)
        except ConfigError as exc:
            for err in exc.errors:
                log.error("reload: %s: %s: %s", self.config_path, err["loc"], err["msg"])
            log.error("reload: %s is invalid; keeping the running config", self.config_path)
            return exc.errors
        kept = {"redis": self.cfg.redis, "api": self.cfg.api, "metrics": self.cfg.metrics,
                "daemon": new.daemon.model_copy(update={
                    "node_id": self.cfg.daemon.node_id, "state_dir": self.cfg.daemon.state_dir})}
        for name in ("redis", "api", "metrics"):
            if getattr(new, name) != getattr(self.cfg, name):
                log.warning("reload: [%s] changed; that takes a restart", name)
        new = new.model_copy(update=kept)
        for pcfg in new.pools:
            pool = self.workers.pools.get(pcfg.name)
            if pool is None:
                self.workers.pools[pcfg.name] = Pool(cfg=pcfg, target=pcfg.workers)
                continue
            before = self.workers.spec(pool, 0, None)
            pool.cfg, pool.target = pcfg, pcfg.workers
            self.workers.cfg = new
            if self.workers.spec(pool, 0, None) != before:
                pool.generation += 1
        for name, pool in self.workers.pools.items():
            if name not in {p.name for p in new.pools}:
                pool.target = 0
        self.cfg = self.workers.cfg = self.watchdog.cfg = new
        self.schemas = schemas
        self.routes = self.jobs.routes()
        self.breakers = {n for n, jt in new.jobs.items() if jt.circuit_breaker}
        self.logs.level = getattr(logging, new.daemon.log_level.upper())
        logging.getLogger().setLevel(self.logs.level)
        log.info("reload: config %s applied (%s)", self.config_path,
                 ", ".join(f"{p.name}={p.target}" for p in self.workers.pools.values()))
        return []

    def resize(self, delta: int) -> None:
        self.pools_changed = True
        for pool in self.workers.pools.values():
            pool.target = max(0, pool.target + delta)
        log.info("pool sizes now %s",
                 ", ".join(f"{p.name}={p.target}" for p in self.workers.pools.values()))
