"""Does watching slow the daemon?  The same workloads with and without HTTP clients.

Each round runs the workloads of ``scripts/bench.py`` (bulk and single submits,
sequential round trips) in a fresh daemon twice, in alternating order: once
with no HTTP client, once with what an open status page does (GET /api/status
and /api/jobs every second) plus an event-stream client on /api/events
reading every event.  The machine is shared and noisy, so the output gives each
figure's range per side over the rounds, not one number.

    scripts/bench --web [--rounds 3] [--jobs 5000] [--latency-jobs 1000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench

from supervisord.client import Client

FIGURES = ("throughput_bulk_jobs_s", "throughput_jobs_s", "latency_p50_ms", "latency_p99_ms",
           "master_cpu_us_per_job_bulk", "master_cpu_us_per_job_single",
           "master_cpu_us_per_job_roundtrip")


class Page:
    """A status page's traffic: polls every second, and one stream read to the end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.polls = self.events = self.errors = 0
        self.threads = [threading.Thread(target=self.poll, daemon=True),
                        threading.Thread(target=self.stream, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()
        time.sleep(0.5)  # the stream joins (and subscribes) before the workload starts

    def poll(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            for path in ("/api/status", "/api/jobs?limit=50"):
                try:
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    json.loads(resp.read())
                    self.polls += 1
                except (OSError, http.client.HTTPException, ValueError):
                    self.errors += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.stop.wait(1.0)
        conn.close()

    def stream(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: bench\r\n\r\n")
        sock.settimeout(0.5)
        while not self.stop.is_set():
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                self.errors += 1
                return
            self.events += chunk.count(b"\nevent: ")
        sock.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def web_pid(master: int) -> int | None:
    for proc in psutil.Process(master).children(recursive=True):
        try:
            if "supervisord.web.server" in " ".join(proc.cmdline()):
                return proc.pid
        except psutil.Error:
            continue
    return None


def one_run(tmp: Path, watched: bool, args: argparse.Namespace) -> dict:
    d = bench.Daemon(tmp / ("page" if watched else "none"), listen="127.0.0.1:0")
    d.dir.mkdir(parents=True)
    d.start()
    page = None
    try:
        with Client(d.endpoint, timeout=60) as c:
            c.wait_many(c.submit_many("noop", [None] * 200), timeout=60)  # warm up
            port = c.status()["metrics_port"]
            meter = bench.Meter(c.ping()["pid"])
            web = psutil.Process(web_pid(meter.pid))
            web_cpu = sum(web.cpu_times()[:2])
            if watched:
                page = Page(port)
                page.start()
            out: dict = {}
            n, m = args.jobs, args.latency_jobs
            out["throughput_bulk_jobs_s"] = meter.around(out, "bulk", n, bench.throughput_bulk,
                                                         c, n)
            out["throughput_jobs_s"] = meter.around(out, "single", n, bench.throughput_single,
                                                    c, n)
            out.update(meter.around(out, "roundtrip", m, bench.latency, c, m))
            out["web_cpu_us_per_job"] = (sum(web.cpu_times()[:2]) - web_cpu) / (2 * n + m) * 1e6
            if page is not None:
                out["events_read"], out["polls"], out["http_errors"] = (
                    page.events, page.polls, page.errors)
    finally:
        if page is not None:
            page.close()
        d.stop()
    return out


def span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.1f}" if abs(hi - lo) < 0.05 else f"{lo:.1f} .. {hi:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--latency-jobs", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"none": [], "page": []}
    with tempfile.TemporaryDirectory(prefix="jobsup-bench-web-", dir="/tmp") as tmp:
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for watched in order:
                side = "page" if watched else "none"
                found = one_run(Path(tmp) / f"r{r}", watched, args)
                runs[side].append(found)
                print(f"round {r + 1} {side}: " + ", ".join(
                    f"{k}={v:.1f}" for k, v in found.items()
                    if isinstance(v, int | float)), file=sys.stderr)
    if args.json:
        print(json.dumps(runs, indent=2))
        return
    print(f"{args.rounds} rounds, {args.jobs} jobs bulk and single, {args.latency_jobs} "
          f"round trips; noise level {bench.machine_noise():.2f} (see scripts/bench)")
    print(f"{'figure':34} {'no HTTP client':>20} {'page + event stream':>22}")
    for name in (*FIGURES, "web_cpu_us_per_job"):
        print(f"{name:34} {span([x[name] for x in runs['none']]):>20} "
              f"{span([x[name] for x in runs['page']]):>22}")
    page = runs["page"]
    print(f"the stream read {span([x['events_read'] for x in page])} events a run; "
          f"{span([x['polls'] for x in page])} polls; "
          f"{sum(x['http_errors'] for x in page)} HTTP errors")


if __name__ == "__main__":
    main()
