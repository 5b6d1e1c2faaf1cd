#!/usr/bin/env python3
"""What seats cost the server: CPU per delivery with every client opted in (`stateroom-bench
--seats`) against the same run with none, interleaved (the order swaps every round), medians.

    python3 Benchmarks/seats_cost.py                      # fanout-8 and rooms10-2000, 5 rounds
    python3 Benchmarks/seats_cost.py --scenarios fanout-8 --rounds 7

The server (relay, one shard) runs on CPU 0, the bench on CPU 1. Results: Benchmarks/results/seats.txt.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one(args, scenario: str, seats: bool) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = ["taskset", "-c", "1", str(REPO / ".build/release/stateroom-bench"), "--scenario", scenario,
               "--spawn", f"taskset -c 0 {args.server} --port {{port}} --service relay --shards 1 --log-level warning",
               "--quiet", "--json-file", out.name, *(["--seats"] if seats else [])]
        if args.duration:
            cmd += ["--duration", str(args.duration)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=str(REPO / ".build/release/stateroom-server"))
    ap.add_argument("--scenarios", default="fanout-8,rooms10-2000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float)
    args = ap.parse_args()
    for scenario in args.scenarios.split(","):
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(args.rounds):
            for seats in ((False, True) if r % 2 == 0 else (True, False)):
                d = one(args, scenario, seats)
                if not d["passed"]:
                    raise SystemExit(f"{scenario} seats={seats}: {d['failures']}")
                runs[seats].append(d)
                print(f"  {scenario} round {r + 1} {'seats' if seats else 'plain'}: "
                      f"{d['serverCPUMicrosecondsPerDelivery']:.4f} µs/delivery, {d['deliveriesPerSecond'] / 1e6:.2f}M/s, "
                      f"p50 {d['latency']['p50Micros'] / 1e3:.2f} ms", flush=True)
        cpu = {k: statistics.median(x["serverCPUMicrosecondsPerDelivery"] for x in v) for k, v in runs.items()}
        rate = {k: statistics.median(x["deliveriesPerSecond"] for x in v) for k, v in runs.items()}
        ratios = [s["serverCPUMicrosecondsPerDelivery"] / p["serverCPUMicrosecondsPerDelivery"]
                  for p, s in zip(runs[False], runs[True])]
        print(f"{scenario}: server CPU per delivery, median of {args.rounds}: plain {cpu[False]:.4f} µs, "
              f"every client seated {cpu[True]:.4f} µs = {cpu[True] / cpu[False]:.3f}x "
              f"(per-round ratios {', '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f}); "
              f"deliveries/s {rate[False] / 1e6:.2f}M vs {rate[True] / 1e6:.2f}M", flush=True)


if __name__ == "__main__":
    main()
