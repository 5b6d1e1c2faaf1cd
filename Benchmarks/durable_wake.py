#!/usr/bin/env python3
"""Hibernate and wake a durable wasm room: what a client waits for when its room comes back.

Starts a private redis-server and stateroom-server (--wasm MODULE --store ...), both on
127.0.0.1, then, ROUNDS times, interleaved:
  wake  - connect to a room that hibernated (saved to Redis and dropped from memory), send
          `increment`, time until the reply (restore: lease + snapshot read, fresh instance,
          memory image written);
  fresh - the same on a room that never existed (lease + empty read, new instance, Init);
  warm  - the same on a room that is open (another client is connected).
Prints medians in ms. Benchmark only: asserts nothing about speed.

  python3 Benchmarks/durable_wake.py [--module Examples/SharedCounter/dist/counter.wasm] [--rounds 50]
"""
import argparse
import asyncio
import re
import socket
import statistics
import subprocess
import time
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port: int, name: str) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    m = re.search(rf"^{name} (\S+)$", data.decode(), re.M)
    return float(m.group(1)) if m else 0.0


async def timed_increment(url: str) -> tuple[float, str]:
    t = time.perf_counter()
    async with websockets.connect(url, compression=None) as ws:
        await ws.send("increment")
        reply = await ws.recv()
    return (time.perf_counter() - t) * 1000, reply


async def main(args) -> None:
    rport, sport = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    server = subprocess.Popen([str(ROOT / ".build/release/stateroom-server"), "--host", "127.0.0.1", "--port",
                               str(sport), "--shards", "1", "--no-pin", "--wasm", args.module,
                               "--store", f"redis://127.0.0.1:{rport}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(1.0)
        base = f"ws://127.0.0.1:{sport}/ws/"
        wake, fresh, warm = [], [], []
        await timed_increment(base + "sleeper")
        async with websockets.connect(base + "open", compression=None) as keeper:
            await keeper.send("increment")
            await keeper.recv()
            for i in range(args.rounds):
                hibernated = metric(sport, "stateroom_rooms_hibernated_total")
                deadline = time.monotonic() + 5
                while metric(sport, "stateroom_rooms_active") > 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                ms, reply = await timed_increment(base + "sleeper")
                assert reply == f"new value: {i + 2}", reply
                wake.append(ms)
                fresh.append((await timed_increment(base + f"new{i}"))[0])
                warm.append((await timed_increment(base + "open"))[0])
                await keeper.recv()  # the keeper hears the warm room's broadcast
        print(f"{args.rounds} rounds, medians (p10-p90), module {args.module}:")
        for name, xs in (("wake (restore from Redis)", wake), ("fresh room", fresh), ("warm room", warm)):
            q = statistics.quantiles(xs, n=10)
            print(f"  {name:26} {statistics.median(xs):6.2f} ms  ({q[0]:.2f}-{q[-1]:.2f})")
        print(f"  rooms hibernated {metric(sport, 'stateroom_rooms_hibernated_total'):.0f}, "
              f"restored {metric(sport, 'stateroom_rooms_restored_total'):.0f}")
    finally:
        server.terminate()
        server.wait(10)
        redis.kill()
        redis.wait(10)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--module", default=str(ROOT / "Examples/SharedCounter/dist/counter.wasm"))
    p.add_argument("--rounds", type=int, default=50)
    asyncio.run(main(p.parse_args()))
