"""Old code against new, side by side: the same workloads, interleaved, several rounds.

The machine is shared and noisy, and no single figure says how quiet it is, so a
change is judged by pairs: each round runs the old and the new code one after
the other (which goes first alternates), each in a fresh daemon, and the output
gives each figure's range per side over the rounds.

    scripts/bench --pair 591952e            that revision against the working tree
    scripts/bench --pair A --against B      two revisions

Each revision is checked out into a git worktree under /tmp with its own .venv
(``scripts/setup``); the workloads are this file's copy of ``scripts/bench.py``'s,
run in a child process whose imports come from that checkout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("throughput_bulk_jobs_s", "throughput_jobs_s", "latency_p50_ms", "latency_max_ms",
           "latency_over_20ms", "master_cpu_us_per_job_bulk", "master_cpu_us_per_job_single",
           "master_cpu_us_per_job_roundtrip")

# Run inside the checkout's own interpreter: its supervisord, this file's workloads.
CHILD = r"""
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, {bench_dir!r})
import bench
bench.ROOT = Path.cwd()
from supervisord.client import Client
jobs, latency_jobs = {jobs}, {latency_jobs}
with tempfile.TemporaryDirectory(prefix="jobsup-pair-", dir="/tmp") as tmp:
    d = bench.Daemon(Path(tmp))
    d.start()
    try:
        with Client(d.endpoint, timeout=60) as c:
            c.wait_many(c.submit_many("noop", [None] * 200), timeout=60)
            out = {{}}
            meter = bench.Meter(c.ping()["pid"])
            out["throughput_bulk_jobs_s"] = meter.around(out, "bulk", jobs,
                                                         bench.throughput_bulk, c, jobs)
            out["throughput_jobs_s"] = meter.around(out, "single", jobs,
                                                    bench.throughput_single, c, jobs)
            out.update(meter.around(out, "roundtrip", latency_jobs, bench.latency, c,
                                    latency_jobs))
            out.pop("latency_slow", None)
    finally:
        d.stop()
print("RESULT " + json.dumps(out))
"""


def checkout(rev: str, base: Path) -> Path:
    """A worktree of ``rev`` with its own .venv; the working tree itself for ``.``."""
    if rev == ".":
        subprocess.run([str(ROOT / "scripts" / "setup")], check=True)
        return ROOT
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    where = base / f"jobsup-pair-{sha}"
    if not where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                        str(where), sha], check=True)
    subprocess.run([str(where / "scripts" / "setup")], check=True)
    return where


def run_once(tree: Path, bench_dir: str, jobs: int, latency_jobs: int) -> dict:
    code = CHILD.format(bench_dir=bench_dir, jobs=jobs, latency_jobs=latency_jobs)
    done = subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c", code], cwd=tree,
                          capture_output=True, text=True, timeout=1800)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"a run in {tree} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", help="the revision to compare against")
    parser.add_argument("--against", default=".", help="the new side (default: working tree)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--latency-jobs", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.gettempdir())
    sides = {"old": checkout(args.old, base), "new": checkout(args.against, base)}
    with tempfile.TemporaryDirectory(prefix="jobsup-pair-bench-") as tmp:
        # The workloads as this checkout has them, the same for both sides.
        (Path(tmp) / "bench.py").write_text((ROOT / "scripts" / "bench.py").read_text())
        results: dict[str, list[dict]] = {"old": [], "new": []}
        for n in range(args.rounds):
            order = ("old", "new") if n % 2 == 0 else ("new", "old")
            for side in order:
                r = run_once(sides[side], tmp, args.jobs, args.latency_jobs)
                results[side].append(r)
                print(f"round {n + 1} {side}: " + ", ".join(
                    f"{k}={r[k]:.1f}" for k in FIGURES if k in r), file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'figure':34} {'old (' + args.old + ')':>22} {'new (' + args.against + ')':>22}")
    for key in FIGURES:
        cells = []
        for side in ("old", "new"):
            values = [r[key] for r in results[side] if key in r]
            cells.append(f"{min(values):,.1f} to {max(values):,.1f}" if values else "-")
        print(f"{key:34} {cells[0]:>22} {cells[1]:>22}")


if __name__ == "__main__":
    main()
