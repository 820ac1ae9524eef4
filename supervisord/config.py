"""The one typed config object: every key, its default and its unit.

Sizes accept ``"24GiB"``-style strings or byte counts; durations are seconds.
Unknown keys are errors so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from supervisord.errors import ConfigError
from supervisord.policies.circuit import CircuitBreaker
from supervisord.policies.retry import Backoff
from supervisord.redis import sentinel
from supervisord.states import FailureKind

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int | None:
    """Turn ``"1.5GiB"``, ``"512MB"`` or ``1024`` into bytes."""
    if value is None or isinstance(value, bool):
        if value is None:
            return None
        raise ValueError("a size must be a number of bytes or a string like '2GiB'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    match = _SIZE.match(str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a size; write bytes or e.g. '512MiB', '24GiB'")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


Size = Annotated[int, BeforeValidator(parse_size)]
OptSize = Annotated[int | None, BeforeValidator(parse_size)]
Seconds = Annotated[float, Field(ge=0)]
ImportPath = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/jobsup"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "jobsup")


class DaemonConfig(_Model):
    node_id: str = Field(default_factory=socket.gethostname, pattern=r"^[\w.\-]+$")
    state_dir: str = Field(default_factory=_default_state_dir)
    shutdown_grace: Seconds = 30.0
    kill_grace: Seconds = 5.0
    heartbeat_interval: Annotated[float, Field(gt=0)] = 1.0
    heartbeat_timeout: Annotated[float, Field(gt=0)] = 30.0
    rss_check_interval: Annotated[float, Field(gt=0)] = 0.25
    node_ttl: Annotated[float, Field(gt=0)] = 15.0
    log_file: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _heartbeats(self) -> DaemonConfig:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")
        return self


class RedisConfig(_Model):
    url: str = "embedded"
    prefix: str = Field(default="jobsup", pattern=r"^[\w.\-]+$")
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    persist: bool = True  # embedded only: false = no AOF, an empty Redis at every start
    server_binary: str | None = None
    socket_timeout: Annotated[float, Field(gt=0)] = 5.0
    retry_interval: Annotated[float, Field(gt=0)] = 0.5
    # Transitions held while Redis is away; past it, progress is coalesced and no
    # further held job is started until Redis is back.
    outage_buffer: Annotated[int, Field(ge=100)] = 50_000
    # Replicas that must have each write before it is acknowledged (WAIT), and how
    # long a write may wait for them before it fails as Unavailable.
    min_replicas: Annotated[int, Field(ge=0, le=100)] = 0
    replica_timeout: Annotated[float, Field(gt=0)] = 1.0

    @model_validator(mode="after")
    def _scheme(self) -> RedisConfig:
        if self.url != "embedded" and not self.url.startswith(
            ("redis://", "rediss://", "unix://", *sentinel.SCHEMES)
        ):
            raise ValueError("url must be 'embedded' or start with redis://, rediss://, "
                             "unix://, redis+sentinel:// or rediss+sentinel://")
        if sentinel.is_sentinel(self.url):
            try:
                sentinel.parse(self.url)
            except ValueError as exc:
                raise ValueError(f"url: {exc}") from None
        if self.min_replicas and self.url == "embedded":
            raise ValueError("min_replicas: the embedded Redis has no replicas; set "
                             "min_replicas = 0, or point redis.url at a Redis with replicas "
                             "(redis+sentinel://...)")
        if self.min_replicas and self.replica_timeout >= self.socket_timeout:
            raise ValueError(f"replica_timeout ({self.replica_timeout:g}s) must be "
                             f"shorter than socket_timeout ({self.socket_timeout:g}s): "
                             "a write waiting for replicas would count as Redis not answering")
        if not self.persist and self.url != "embedded":
            raise ValueError("persist = false applies to the embedded Redis only; an external "
                             "Redis keeps its own persistence settings: remove persist or set "
                             "url = \"embedded\"")
        return self


def parse_mode(value: Any) -> int:
    """A file mode: ``"0660"`` (a string, read as octal) or ``0o660`` (a TOML octal)."""
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value.strip()):
        return int(value, 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
        return value
    raise ValueError(f"{value!r} is not a file mode; write it as a string such as \"0660\" "
                     "or as a TOML octal number such as 0o660")


class ApiConfig(_Model):
    endpoint: str = "tcp://127.0.0.1:7700"
    events: str = "tcp://127.0.0.1:7701"
    insecure: bool = False
    curve_secret_key: str | None = None
    curve_allowed_clients: str | None = None
    max_message: Size = 64 * 1024 * 1024
    # ipc:// socket files: who may connect.  0600 = the daemon's own user only.
    socket_mode: Annotated[int, BeforeValidator(parse_mode)] = 0o600
    # A group name or gid; looked up when the daemon binds (the group need not exist
    # where the file is only checked), with a clear error if this host lacks it.
    socket_group: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.\-]*\$?$|^\d+$")] | None = None

    @model_validator(mode="after")
    def _security(self) -> ApiConfig:
        for name in ("endpoint", "events"):
            value = getattr(self, name)
            if not value.startswith(("tcp://", "ipc://")):
                raise ValueError(f"{name} must be a tcp:// or ipc:// address")
            if value.startswith("ipc://@"):
                raise ValueError(
                    f"{name} {value} is an abstract unix socket: it has no file and so "
                    "no permissions, and any local user could connect; use a path such as "
                    "ipc:///run/jobsup/api.sock (with socket_mode and socket_group)")
            if _public(value) and not self.insecure and not self.curve_secret_key:
                raise ValueError(
                    f"{name} {value} is not loopback: set curve_secret_key and "
                    "curve_allowed_clients, or insecure = true to accept anyone"
                )
        if self.curve_secret_key and not self.curve_allowed_clients:
            raise ValueError("curve_secret_key needs curve_allowed_clients (a directory of keys)")
        if self.socket_mode & 0o007 and not self.insecure:
            raise ValueError(
                f"socket_mode {self.socket_mode:04o} lets every local user connect "
                "(submit, read results, purge, shut down); use 0660 with socket_group, or "
                "set insecure = true to accept that")
        return self


def _public(endpoint: str) -> bool:
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127.")


class MetricsConfig(_Model):
    listen: str = "127.0.0.1:9700"

    @model_validator(mode="after")
    def _address(self) -> MetricsConfig:
        if self.listen and not re.match(r"^[\w.\-\[\]:]+:\d+$", self.listen):
            raise ValueError("listen must be HOST:PORT, or '' to turn metrics off")
        return self


class WebConfig(_Model):
    """The HTTP side on ``metrics.listen`` (status page, JSON, event stream)."""

    actions: bool = False  # cancel, dead-letter retry and purge over HTTP
    token: str = ""  # what POSTs must carry in X-Jobsup-Token when actions is true
    max_streams: Annotated[int, Field(ge=1, le=100_000)] = 256  # /api/events clients at once
    replay: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000  # events held for Last-Event-ID
    stream_queue: Annotated[int, Field(ge=1, le=1_000_000)] = 1_000  # per client, then dropped
    heartbeat: Annotated[float, Field(gt=0, le=300)] = 15.0  # seconds between ": ping"

    @model_validator(mode="after")
    def _token(self) -> WebConfig:
        if self.actions and not self.token:
            raise ValueError("actions = true needs a token (POSTs must send it in "
                             "X-Jobsup-Token); generate a long random one with "
                             "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return self


class PoolConfig(_Model):
    name: str = Field(pattern=r"^[\w.\-]+$")
    workers: Annotated[int, Field(ge=0, le=1024)] = Field(
        default_factory=lambda: os.cpu_count() or 1)
    gpus: list[Annotated[int, Field(ge=0)]] | Literal["auto"] | None = None
    memory_limit: OptSize = None
    memory_limit_kind: Literal["data", "as", "cgroup"] = "data"
    max_rss: OptSize = None
    max_gpu_memory: OptSize = None
    max_jobs_per_worker: Annotated[int, Field(ge=1)] | None = None
    init: ImportPath | None = None
    prefetch: Annotated[int, Field(ge=0, le=1000)] | None = None
    max_restarts: Annotated[int, Field(ge=1)] = 10
    restart_window: Annotated[float, Field(gt=0)] = 60.0
    user: str | None = None
    group: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cgroup_needs_a_limit(self) -> PoolConfig:
        if self.memory_limit_kind == "cgroup" and not self.memory_limit:
            raise ValueError("memory_limit_kind = 'cgroup' needs memory_limit (the cgroup's "
                             "memory.max), e.g. memory_limit = '24GiB'")
        return self


_DEFAULT_RETRY_ON = (
    FailureKind.EXCEPTION, FailureKind.TRANSIENT, FailureKind.TIMEOUT, FailureKind.CRASH,
)


class JobTypeConfig(_Model):
    handler: ImportPath
    pool: str | None = None
    timeout: Annotated[float, Field(gt=0)] | None = 3600.0
    soft_timeout: Annotated[float, Field(gt=0)] | None = None
    max_output: Size = 256 * 1024
    max_attempts: Annotated[int, Field(ge=1)] = 3
    max_crashes: Annotated[int, Field(ge=1)] = 2
    retry_on: list[FailureKind] = Field(default_factory=lambda: list(_DEFAULT_RETRY_ON))
    backoff: Backoff = Backoff()
    timeout_growth: Annotated[float, Field(ge=1)] = 1.0
    max_payload: Size = 1024 * 1024
    priority: int = 0
    cancel_grace: Seconds = 10.0
    result_ttl: Seconds = 86400.0
    failure_ttl: Seconds = 7 * 86400.0
    key_ttl: Seconds = 86400.0
    circuit_breaker: CircuitBreaker | None = None
    fallback: str | None = None
    retry_budget: Annotated[int, Field(ge=0)] | None = None
    max_rate_limited: Annotated[int, Field(ge=0)] = 100
    schema_: ImportPath | None = Field(default=None, alias="schema")
    max_age: Annotated[float, Field(gt=0)] | None = None
    cost: Annotated[float, Field(ge=0)] = 0.0

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _soft_before_hard(self) -> JobTypeConfig:
        if self.soft_timeout is not None and self.timeout is not None \
                and self.soft_timeout >= self.timeout:
            raise ValueError(f"soft_timeout ({self.soft_timeout:g}s) must be shorter than "
                             f"timeout ({self.timeout:g}s): the hard timeout kills the worker, "
                             "so a later soft one would never be seen")
        return self


def _demo_jobs() -> dict[str, JobTypeConfig]:
    return {
        name: JobTypeConfig(handler=f"examples.demo:{name}", **extra)
        for name, extra in {
            "noop": {"timeout": 60},
            "echo": {"timeout": 60},
            "sleep": {"timeout": 600},
            "add": {"timeout": 60},
            "flaky": {"timeout": 60, "backoff": {"base": 0.2, "max": 2.0}, "max_attempts": 5},
            "fail": {"timeout": 60, "max_attempts": 2, "backoff": {"base": 0.1}},
            "crash": {"timeout": 60},
            "spawn": {"timeout": 600},
            "hog": {"timeout": 60},
        }.items()
    }


class Config(_Model):
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    redis: RedisConfig = RedisConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    web: WebConfig = WebConfig()
    pools: list[PoolConfig] = Field(default_factory=lambda: [PoolConfig(name="default")])
    jobs: dict[str, JobTypeConfig] = Field(default_factory=_demo_jobs)

    @model_validator(mode="after")
    def _references(self) -> Config:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        if not self.pools:
            raise ValueError("at least one [[pools]] entry is needed")
        for job_name, job in self.jobs.items():
            if not re.match(r"^[\w.\-]+$", job_name):
                raise ValueError(f"job type name {job_name!r} may use letters, digits, _ . - only")
            if job.pool is not None and job.pool not in names:
                raise ValueError(f"jobs.{job_name}.pool: no pool named {job.pool!r} (have {names})")
            if job.fallback is not None and job.fallback not in self.jobs:
                raise ValueError(f"jobs.{job_name}.fallback: no job type named {job.fallback!r}")
        for job_name in self.jobs:
            chain, at = [job_name], self.jobs[job_name].fallback
            while at is not None:
                if at in chain:
                    raise ValueError(f"jobs.{job_name}.fallback: fallbacks form a cycle "
                                     f"({' -> '.join([*chain, at])})")
                chain.append(at)
                at = self.jobs[at].fallback
        return self

    def pool_of(self, job_type: str) -> str:
        """The pool that runs a job type: its own ``pool`` or the first pool."""
        return self.jobs[job_type].pool or self.pools[0].name

    @property
    def state_path(self) -> Path:
        return Path(self.daemon.state_dir)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


# A cross-reference check names the key it is about: "jobs.x.pool: no pool named ...".
_KEYED_MSG = re.compile(r"^((?:jobs|pools|daemon|redis|api|metrics|web)[\w.\-\[\]]*): (.+)$",
                        re.DOTALL)


def _error(e: dict) -> dict:
    loc, msg = _loc(tuple(e["loc"])), e["msg"].removeprefix("Value error, ")
    keyed = _KEYED_MSG.match(msg)
    if keyed and loc == "(top level)":
        loc, msg = keyed.group(1), keyed.group(2)
    return {"loc": loc, "msg": msg}


def validate(data: dict) -> Config:
    """Build a Config, turning pydantic's errors into one ConfigError with key paths."""
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = [_error(e) for e in exc.errors()]
        raise ConfigError("invalid config", errors=errors) from None


def load(path: str | os.PathLike | None) -> Config:
    """Read a TOML config file; ``None`` gives the built-in defaults."""
    if path is None:
        return validate({})
    return validate(read(path))


def read(path: str | os.PathLike) -> dict:
    """A config file's TOML data, not yet validated."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist",
            errors=[{"loc": str(path), "msg": "file not found"}],
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML",
            errors=[{"loc": str(path), "msg": str(exc)}],
        ) from None
    return data
