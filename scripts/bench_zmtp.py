"""Round trips with the client's own ZMTP (``supervisord.zmtp``) against pyzmq's
DEALER, side by side on one real daemon.

The daemon is the one ``scripts/bench.py`` starts (embedded Redis, 2 workers).
Each round times ``--n`` calls on each transport, one client each, the two
taking turns call by call, so that a machine that gets noisier part-way
through weighs on both alike.  For each workload it prints p50, p99 and max pooled over
the rounds with their range across rounds, and what pyzmq adds to the p50 as a
percentage of pyzmq's round trip (the issue's rule: the own ZMTP earns its keep
only if pyzmq costs 5 % or more).

    .venv/bin/python scripts/bench_zmtp.py [--rounds 5] [--n 1000] [--tcp]
                                           [--only ping|"run noop"] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Daemon, machine_noise  # bench puts the repo on sys.path

from supervisord.client import Client
from supervisord.zmtp import Dealer

TRANSPORTS = {"own ZMTP": "auto", "pyzmq": "zmq"}
WORKLOADS = {
    "ping": lambda c: c.ping(),  # the master answers: no Redis, no worker
    "run noop": lambda c: c.run("noop", wait_timeout=30),  # submit + wait, via a worker
}


def quantiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50": s[len(s) // 2], "p99": s[min(len(s) - 1, int(len(s) * 0.99))],
            "max": s[-1]}


def time_round(endpoint: str, call, n: int, warm: int) -> dict[str, list[float]]:
    """``n`` calls on each transport, one client each, taking turns call by call (who
    goes first alternates), so that both see the same machine at the same moments."""
    clients = {name: Client(endpoint, timeout=60, transport=transport)
               for name, transport in TRANSPORTS.items()}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    clock = time.perf_counter_ns
    try:
        for name, c in clients.items():
            for _ in range(warm):
                call(c)
            assert isinstance(c._sock, Dealer) == (TRANSPORTS[name] == "auto"), name
        turns = [list(clients.items()), list(clients.items())[::-1]]
        for i in range(n):
            for name, c in turns[i % 2]:
                t0 = clock()
                call(c)
                samples[name].append((clock() - t0) / 1000)  # µs
    finally:
        for c in clients.values():
            c.close()
    return samples


def measure(endpoint: str, rounds: int, n: int, warm: int, only: str | None = None) -> dict:
    out = {}
    for workload, call in WORKLOADS.items():
        if only and workload != only:
            continue
        per_round = {name: [] for name in TRANSPORTS}
        pooled = {name: [] for name in TRANSPORTS}
        for _ in range(rounds):
            for name, samples in time_round(endpoint, call, n, warm).items():
                per_round[name].append(quantiles(samples))
                pooled[name] += samples
        rows = {}
        for name in TRANSPORTS:
            q = quantiles(pooled[name])
            rows[name] = {k: {"pooled": q[k], "rounds": [rq[k] for rq in per_round[name]]}
                          for k in q}
        diffs = [100 * (z["p50"] - o["p50"]) / z["p50"]
                 for o, z in zip(per_round["own ZMTP"], per_round["pyzmq"], strict=True)]
        rows["pyzmq_cost_pct_of_round_trip"] = {
            "pooled": 100 * (rows["pyzmq"]["p50"]["pooled"] - rows["own ZMTP"]["p50"]["pooled"])
            / rows["pyzmq"]["p50"]["pooled"], "rounds": diffs}
        out[workload] = rows
    return out


def report(results: dict, args: argparse.Namespace, noise: list[float]) -> None:
    print(f"# {args.rounds} rounds x {args.n} calls per transport and workload "
          f"({'tcp' if args.tcp else 'ipc'}), µs; [range of the per-round figures]")
    for workload, rows in results.items():
        print(f"\n{workload}")
        for name in TRANSPORTS:
            cells = []
            for k in ("p50", "p99", "max"):
                v = rows[name][k]
                cells.append(f"{k} {v['pooled']:8.1f} [{min(v['rounds']):7.1f} .. "
                             f"{max(v['rounds']):7.1f}]")
            print(f"  {name:9s} " + "   ".join(cells))
        d = rows["pyzmq_cost_pct_of_round_trip"]
        own, zmq_ = rows["own ZMTP"]["p50"]["pooled"], rows["pyzmq"]["p50"]["pooled"]
        print(f"  pyzmq adds {zmq_ - own:+.1f} µs to the p50 = {d['pooled']:+.1f} % of its "
              f"round trip [per round {min(d['rounds']):+.1f} .. {max(d['rounds']):+.1f} %]")
    print(f"\n# control: socketpair ping-pong p50 {noise[0]:.0f} µs before, "
          f"{noise[1]:.0f} µs after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=1000, help="timed calls per round")
    parser.add_argument("--warm", type=int, default=100, help="untimed calls first")
    parser.add_argument("--tcp", action="store_true", help="tcp://127.0.0.1 instead of ipc")
    parser.add_argument("--only", choices=list(WORKLOADS), help="one workload only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    noise = [machine_noise()]
    with tempfile.TemporaryDirectory(prefix="jobsup-bench-zmtp-", dir="/tmp") as tmp:
        d = Daemon(Path(tmp), tcp=args.tcp)
        d.start()
        try:
            results = measure(d.endpoint, args.rounds, args.n, args.warm, args.only)
        finally:
            d.stop()
    noise.append(machine_noise())
    if args.json:
        print(json.dumps({"results": results, "control_pingpong_us": noise}, indent=2))
    else:
        report(results, args, noise)


if __name__ == "__main__":
    main()
