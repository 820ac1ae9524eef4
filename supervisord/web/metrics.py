"""Prometheus metrics of DESIGN.md section 5, served on ``metrics.listen``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from supervisord import __version__

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


@dataclass(frozen=True, slots=True)
class TypeMetrics:
    """The per-attempt metrics of one job type, looked up once (labels() is not free)."""

    started: Any
    succeeded: Any
    duration: Any
    queue_wait: Any


@dataclass(frozen=True, slots=True)
class GpuGauges:
    """The GPU gauges, set by the watchdog from its NVML readings."""

    worker: Any
    used: Any
    utilization: Any


class Metrics:
    def __init__(self) -> None:
        self._types: dict[str, TypeMetrics] = {}
        r = self.registry = CollectorRegistry()
        self.submitted = Counter("jobsup_jobs_submitted", "Jobs accepted", ["type"], registry=r)
        self.started = Counter("jobsup_jobs_started", "Attempts started", ["type"], registry=r)
        self.succeeded = Counter("jobsup_jobs_succeeded", "Jobs that ended succeeded", ["type"],
                                 registry=r)
        self.failed = Counter("jobsup_jobs_failed", "Jobs that ended failed", ["type", "kind"],
                              registry=r)
        self.retried = Counter("jobsup_jobs_retried", "Retries scheduled", ["type", "kind"],
                               registry=r)
        self.restarts = Counter("jobsup_worker_restarts", "Workers replaced",
                                ["pool", "reason"], registry=r)
        self.duration = Histogram("jobsup_job_duration_seconds", "Attempt run time", ["type"],
                                  buckets=_DURATION_BUCKETS, registry=r)
        self.queue_wait = Histogram("jobsup_job_queue_wait_seconds", "Time from due to start",
                                    ["type"], buckets=_DURATION_BUCKETS, registry=r)
        self.queue_depth = Gauge("jobsup_queue_depth", "Jobs queued", ["pool"], registry=r)
        self.running = Gauge("jobsup_jobs_running", "Jobs running", ["pool"], registry=r)
        self.workers = Gauge("jobsup_workers", "Workers by state", ["pool", "state"],
                             registry=r)
        self.rss = Gauge("jobsup_worker_rss_bytes", "Worker tree RSS", ["pool", "worker"],
                         registry=r)
        self.gpu = GpuGauges(
            worker=Gauge("jobsup_worker_gpu_memory_bytes", "GPU memory of a worker tree (NVML)",
                         ["pool", "worker"], registry=r),
            used=Gauge("jobsup_gpu_memory_used_bytes", "GPU memory in use on a device (NVML)",
                       ["gpu"], registry=r),
            utilization=Gauge("jobsup_gpu_utilization_ratio",
                              "Share of time a device was busy over NVML's last sample period",
                              ["gpu"], registry=r))
        self.circuit = Gauge("jobsup_circuit_state", "0 closed, 1 half-open, 2 open", ["type"],
                             registry=r)
        self.dead_letters = Gauge("jobsup_dead_letter_jobs", "Jobs in the dead-letter set",
                                  registry=r)
        self.redis_up = Gauge("jobsup_redis_up", "1 when Redis answers", registry=r)
        self.redis_restarts = Counter("jobsup_redis_restarts",
                                      "Embedded redis-server restarts after it died",
                                      registry=r)
        self.degraded = Gauge("jobsup_pool_degraded", "1 while a pool is in restart backoff",
                              ["pool"], registry=r)
        # The standard process_* and python_* metrics: the registry is jobsup's own (so
        # tests and several daemons in one process do not share), so add them to it.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(GC_COLLECTOR)
        Info("jobsup_build", "The running jobsup", registry=r).info({"version": __version__})
        self.port: int | None = None

    def of_type(self, job_type: str) -> TypeMetrics:
        found = self._types.get(job_type)
        if found is None:
            found = self._types[job_type] = TypeMetrics(
                self.started.labels(job_type), self.succeeded.labels(job_type),
                self.duration.labels(job_type), self.queue_wait.labels(job_type))
        return found

    def text(self) -> str:
        """The registry in Prometheus text format (the web process serves it)."""
        return generate_latest(self.registry).decode()
