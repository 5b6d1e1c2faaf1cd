"""What the output gate costs a room whose state changes: the built-in counter, one writer per room
incrementing in a closed loop (send, wait for `new value: N`), without a store and with `--store`
(each answer then waits for Redis to take the new count). Interleaved rounds; medians.

    taskset -c 1 python3 Benchmarks/durable_gate.py [--rounds 5] [--seconds 3] [--rooms 4]

The server runs on CPU 0 (taskset), this script and redis-server on CPU 1. Prints increments per
second, the round trip's p50 and p99, and the server's CPU per increment (from /proc).
"""
import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / ".build" / "release" / "stateroom-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    for _ in range(1000):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def writer(url: str, until: float, rtts: list[float]) -> None:
    async with websockets.connect(url) as ws:
        while time.monotonic() < until:
            t = time.perf_counter()
            await ws.send("increment")
            await ws.recv()
            rtts.append(time.perf_counter() - t)


async def load(port: int, rooms: int, seconds: float, tag: str) -> list[float]:
    rtts: list[float] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(writer(f"ws://127.0.0.1:{port}/ws/{tag}-{i}", until, rtts) for i in range(rooms)))
    return rtts


def round_of(variant: str, redis_port: int, rooms: int, seconds: float, index: int) -> dict:
    port = free_port()
    args = ["taskset", "-c", "0", str(SERVER), "--host", "127.0.0.1", "--port", str(port), "--service", "counter",
            "--shards", "1", "--no-pin"]
    if variant == "store":
        args += ["--store", f"redis://127.0.0.1:{redis_port}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        asyncio.run(load(port, rooms, 0.5, f"warm{index}"))  # rooms created, leases taken
        before = cpu_seconds(proc.pid)
        rtts = asyncio.run(load(port, rooms, seconds, f"r{index}"))
        cpu = cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(15)
    rtts.sort()
    return {"rate": len(rtts) / seconds, "p50": rtts[len(rtts) // 2] * 1e6, "p99": rtts[int(len(rtts) * 0.99)] * 1e6,
            "cpu_us": cpu / len(rtts) * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rooms", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--dir", tmp, "--appendonly", "yes", "--appendfsync", "everysec"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(redis_port)
            results: dict[str, list[dict]] = {"plain": [], "store": []}
            for i in range(args.rounds):
                for variant in results:
                    results[variant].append(round_of(variant, redis_port, args.rooms, args.seconds, i * 2 + len(results[variant])))
        finally:
            redis.terminate()
            redis.wait(10)
    print(f"counter, {args.rooms} rooms x 1 closed-loop writer, {args.seconds:.0f} s per round, medians of "
          f"{args.rounds} interleaved rounds (redis appendonly, appendfsync everysec)")
    print(f"{'variant':8} {'increments/s':>13} {'rtt p50':>9} {'rtt p99':>9} {'server CPU/increment':>21}")
    med = {}
    for variant, rs in results.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        med[variant] = m
        print(f"{variant:8} {m['rate']:>13,.0f} {m['p50']:>7.0f}µs {m['p99']:>7.0f}µs {m['cpu_us']:>19.1f}µs")
    p, s = med["plain"], med["store"]
    print(f"ratio store / plain: increments/s {s['rate'] / p['rate']:.2f}x, p50 {s['p50'] / p['p50']:.2f}x, "
          f"server CPU per increment {s['cpu_us'] / p['cpu_us']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
