"""What ``redis.min_replicas`` costs: the same workloads with 0, 1 and 2 replicas confirming.

Run through ``scripts/bench --replicas``.  A redis-server master with two
replicas on TCP loopback (the binary the daemon embeds), and for each
``min_replicas`` a fresh daemon on ``redis://`` to the master: bulk and
one-by-one throughput, and submit-and-wait round trips.  Every acknowledged
write then ends with ``WAIT``, so the figures show what the replicas' round
trip adds; on one box it is the loopback's, across machines it is the network's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench

from supervisord.client import Client
from supervisord.redis.embedded import find_server


def start_servers(work: Path) -> tuple[int, list[subprocess.Popen]]:
    master, procs = bench._free_port(), []
    for n, replica_of in enumerate((None, master, master)):
        port = master if replica_of is None else bench._free_port()
        data = work / f"redis-{n}"
        data.mkdir()
        extra = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []
        procs.append(subprocess.Popen(
            [find_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
             "--save", "", "--appendonly", "no", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with redis.Redis(port=master) as r:
                if r.info("replication").get("connected_slaves") == 2:
                    return master, procs
        except redis.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the replicas did not connect to the master")


def measure(work: Path, master: int, wanted: int, args: argparse.Namespace) -> dict:
    with redis.Redis(port=master) as r:
        r.flushall()
        r.config_resetstat()
    d = bench.Daemon(work / f"min{wanted}", redis=f'url = "redis://127.0.0.1:{master}/0"\n'
                                            f"min_replicas = {wanted}")
    d.dir.mkdir(parents=True)
    d.start()
    try:
        with Client(d.endpoint, timeout=60) as c:
            c.wait_many(c.submit_many("noop", [None] * 200), timeout=60)  # warm up
            out = {"min_replicas": wanted,
                   "bulk": bench.throughput_bulk(c, args.jobs),
                   "single": bench.throughput_single(c, args.jobs)}
            out.update(bench.latency(c, args.latency_jobs))
    finally:
        d.stop()
    with redis.Redis(port=master) as r:  # the WAITs sent: proof that they were
        out["waits"] = r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--latency-jobs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobsup-bench-replicas-", dir="/tmp") as tmp:
        work = Path(tmp)
        master, procs = start_servers(work)
        try:
            rows = [measure(work, master, wanted, args) for wanted in (0, 1, 2)]
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(10)
    print("min_replicas  bulk jobs/s  1-by-1 jobs/s  p50 ms  p99 ms  WAITs")
    for r in rows:
        print(f"{r['min_replicas']:>12}  {r['bulk']:>11.0f}  {r['single']:>13.0f}  "
              f"{r['latency_p50_ms']:>6.2f}  {r['latency_p99_ms']:>6.2f}  {r['waits']:>5}")
    print("# each daemon: 2 workers, noop jobs; the master and both replicas on this box")


if __name__ == "__main__":
    main()
