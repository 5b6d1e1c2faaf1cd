"""Fault injection for durable rooms: nothing answered is ever lost or served stale.

Three stateroom-server nodes behind HAProxy, one persistent redis-server (every write fsynced
before it is acknowledged), several counter rooms. In each room one writer increments and waits
for each answer (`new value: N`), and observers record every value they are sent. A nemesis
driven by a seeded random generator, one fault at a time, pauses a node past its lease
(SIGSTOP/SIGCONT), stops a node with SIGTERM and starts it again, restarts Redis, pauses Redis
(past its command timeout at times) and, with --kill, SIGKILLs a node and starts it again.

Checked at the end, for every room:
  - the writer's answers never repeat or go back (no two live owners, no stale copy served);
  - the count never grew by more than the writer's increments: between two answers by one plus
    at most the increments still in doubt (sent, then the connection was lost before an answer;
    one may be applied late) — nothing counted that nobody sent;
  - every observer's values only grow, across its reconnections;
  - after the faults have healed, the stored count is at least the last answer (nothing answered
    was lost) and at most the answered increments plus those in doubt.
It prints rounds, faults of each kind, answered increments, lost updates (must be 0) and the seed;
the fault schedule is reproducible from the seed.

    python3 Tests/e2e/nemesis.py --seed 7 --duration 600 [--kill] [--io uring|epoll]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import websockets

REPO = Path(__file__).resolve().parents[2]
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
LEASE = 1.0
LISTEN = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
VALUE = re.compile(r"new value: (-?\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode})")
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


class Process:
    """A child process with stop, kill, pause and resume."""

    proc: subprocess.Popen | None = None

    def send(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if not self.proc:
            return None
        self.send(signal.SIGCONT)
        self.send(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.proc = None
        return rc


class RedisServer(Process):
    def __init__(self, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--dir", str(self.directory), "--appendonly", "yes",
                                      "--appendfsync", "always", "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "redis-server")


class Node(Process):
    def __init__(self, binary: Path, name: str, redis_port: int, io: str, workdir: Path):
        self.binary, self.name, self.io = binary, name, io
        self.redis_port = redis_port
        self.port = free_port()
        self.log = workdir / f"{name}.log"
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        out = open(self.log, "ab")
        out.write(f"--- start {self.starts}\n".encode())
        out.flush()
        self.proc = subprocess.Popen(
            [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port), "--io", self.io,
             "--service", "counter", "--shards", "2", "--node-id", f"{self.name}.{self.starts}",
             "--store", f"redis://127.0.0.1:{self.redis_port}", "--lease-duration", str(LEASE),
             "--snapshot-interval", "0.5"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=str(REPO))
        out.close()
        wait_port(self.port, self.proc, f"node {self.name}")


class Proxy(Process):
    def __init__(self, nodes: list[Node], workdir: Path):
        self.port = free_port()
        servers = "\n".join(f'    server {n.name} 127.0.0.1:{n.port} check inter 300ms fall 2 rise 1' for n in nodes)
        self.config = workdir / "haproxy.cfg"
        # The backend of deploy/haproxy.cfg, with three nodes and faster health checks.
        self.config.write_text(f"""global
    maxconn 2000
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-request 10s
frontend rooms
    bind 127.0.0.1:{self.port}
    default_backend stateroom
backend stateroom
    balance uri
    hash-type consistent
    option httpchk GET /status
    http-check expect string ok
{servers}
""")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "haproxy")
        time.sleep(1.0)  # every node up in the health checks

    def url(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{room}"


@dataclass
class RoomLog:
    name: str
    answers: list[tuple[float, float, int]] = field(default_factory=list)  # sent, answered, value
    in_doubt: list[float] = field(default_factory=list)  # when each unanswered increment was sent
    observed: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    final: int | None = None


async def writer(url: str, log: RoomLog, stop: asyncio.Event, rng: random.Random) -> None:
    """Increments, one at a time, each waited for (2 s at most: then it is in doubt and the writer
    reconnects, which is what moves rooms between nodes while one is frozen). Now and then it
    leaves and comes back, so rooms empty, hibernate and wake on whichever node HAProxy picks."""
    ws = None
    while not stop.is_set():
        if ws is not None and rng.random() < 0.01:
            await ws.close()
            ws = None
            await asyncio.sleep(rng.random() * 0.3)
        if ws is None:
            try:
                ws = await websockets.connect(url, open_timeout=3, close_timeout=1, max_queue=None)
            except Exception:
                await asyncio.sleep(0.1 + rng.random() * 0.2)
                continue
        sent = time.monotonic()
        try:
            await ws.send("increment")
            while True:
                text = await asyncio.wait_for(ws.recv(), 2)
                m = VALUE.fullmatch(text)
                if m:
                    log.answers.append((sent, time.monotonic(), int(m.group(1))))
                    break
        except Exception:
            log.in_doubt.append(sent)
            try:
                await asyncio.wait_for(ws.close(), 1)
            except Exception:
                pass
            ws = None
            continue
        await asyncio.sleep(0.005)
    if ws is not None:
        await ws.close()


async def observer(url: str, log: RoomLog, index: int, stop: asyncio.Event, rng: random.Random) -> None:
    """Records every value it is sent; reconnects every 1 to 4 s (and whenever it is closed)."""
    seen = log.observed.setdefault(index, [])
    while not stop.is_set():
        try:
            async with websockets.connect(url, open_timeout=3, close_timeout=1, max_queue=None) as ws:
                until = time.monotonic() + 1 + rng.random() * 3
                while not stop.is_set() and time.monotonic() < until:
                    try:
                        text = await asyncio.wait_for(ws.recv(), 0.5)
                    except asyncio.TimeoutError:
                        continue
                    m = VALUE.fullmatch(text)
                    if m:
                        seen.append((time.monotonic(), int(m.group(1))))
        except Exception:
            await asyncio.sleep(0.1 + rng.random() * 0.2)


@dataclass
class Faults:
    counts: dict[str, int] = field(default_factory=dict)
    schedule: list[str] = field(default_factory=list)

    def add(self, kind: str, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.schedule.append(f"{kind} {detail}")


async def nemesis(rng: random.Random, nodes: list[Node], redis: RedisServer, faults: Faults, until: float,
                  kill: bool) -> None:
    kinds = ["pause node", "pause node", "restart node", "restart redis", "pause redis"]
    if kill:
        kinds += ["kill node", "kill node"]
    while time.monotonic() < until:
        await asyncio.sleep(0.5 + rng.random() * 1.5)  # quiet: clients make progress
        if time.monotonic() >= until:
            break
        kind = rng.choice(kinds)
        if kind == "pause node":
            node, length = rng.choice(nodes), LEASE + 0.2 + rng.random() * 1.8
            faults.add(kind, f"{node.name} {length:.2f}s")
            node.send(signal.SIGSTOP)
            await asyncio.sleep(length)
            node.send(signal.SIGCONT)
        elif kind == "restart node":
            node = rng.choice(nodes)
            faults.add(kind, node.name)
            await asyncio.to_thread(node.stop, signal.SIGTERM)
            await asyncio.to_thread(node.start)
        elif kind == "kill node":
            node = rng.choice(nodes)
            faults.add(kind, node.name)
            await asyncio.to_thread(node.stop, signal.SIGKILL)
            await asyncio.to_thread(node.start)
        elif kind == "restart redis":
            faults.add(kind, "")
            await asyncio.to_thread(redis.stop, signal.SIGTERM)
            await asyncio.sleep(rng.random() * 0.5)
            await asyncio.to_thread(redis.start)
        elif kind == "pause redis":
            length = 0.3 + rng.random() * 2.7
            faults.add(kind, f"{length:.2f}s")
            redis.send(signal.SIGSTOP)
            await asyncio.sleep(length)
            redis.send(signal.SIGCONT)


async def final_count(url: str) -> int:
    """The room's stored count, read by one more increment once everything has healed."""
    last_error = None
    for _ in range(60):
        try:
            async with websockets.connect(url, open_timeout=5, close_timeout=1) as ws:
                await ws.send("increment")
                text = await asyncio.wait_for(ws.recv(), 10)
                return int(VALUE.fullmatch(text).group(1)) - 1
        except Exception as e:  # a node may still be handing the room over
            last_error = e
            await asyncio.sleep(0.5)
    raise RuntimeError(f"cannot read the final count of {url}: {last_error!r}")


def check(log: RoomLog) -> tuple[list[str], int]:
    """Violations found in one room's history, and its lost updates."""
    problems, lost = [], 0
    doubt = sorted(log.in_doubt)
    prev = 0
    skipped = 0  # values the writer was never answered with: increments in doubt, applied
    for sent, got, value in log.answers:
        # An increment in doubt may be applied late (its room waited for its lease), and its
        # broadcast then reaches the writer's next connection: any earlier one may fill a gap.
        unanswered = sum(1 for t in doubt if t < sent) - skipped
        if value <= prev:
            # The count went back (or repeated): the increments between were lost.
            problems.append(f"{log.name}: answer {value} after {prev} (repeat or went back)")
            lost += prev - value + 1
        elif value - prev - 1 > unanswered:
            problems.append(f"{log.name}: {value} after {prev} with only {unanswered} increment(s) in doubt")
        else:
            skipped += value - prev - 1
        prev = value
    for index, seen in log.observed.items():
        for (_, a), (_, b) in zip(seen, seen[1:]):
            if b <= a:
                problems.append(f"{log.name}: observer {index} saw {b} after {a}")
                break
    last = log.answers[-1][2] if log.answers else 0
    if log.final is None:
        problems.append(f"{log.name}: no final count")
    else:
        if log.final < last:
            problems.append(f"{log.name}: stored count {log.final} is below the answered {last}")
            lost += last - log.final
        if log.final > len(log.answers) + len(log.in_doubt):
            problems.append(f"{log.name}: stored count {log.final} > {len(log.answers)} answered + {len(log.in_doubt)} in doubt")
    return problems, lost


async def run(seed: int, duration: float, kill: bool, io: str, rooms: int, binary: Path, workdir: Path) -> dict:
    rng = random.Random(seed)
    redis = RedisServer(workdir)
    nodes = [Node(binary, f"n{i + 1}", redis.port, io, workdir) for i in range(3)]
    proxy = Proxy(nodes, workdir)
    faults = Faults()
    logs = [RoomLog(f"s{seed}-room{i}") for i in range(rooms)]
    try:
        stop = asyncio.Event()
        clients = []
        for log in logs:
            url = proxy.url(log.name)
            clients.append(asyncio.create_task(writer(url, log, stop, random.Random(rng.random()))))
            for k in range(2):
                clients.append(asyncio.create_task(observer(url, log, k, stop, random.Random(rng.random()))))
        start = time.monotonic()
        await nemesis(rng, nodes, redis, faults, start + duration, kill)
        await asyncio.sleep(1.0)  # the last fault healed: clients go on a little
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), 30)
        elapsed = time.monotonic() - start
        for log in logs:
            log.final = await final_count(proxy.url(log.name))
        crashed = [n.name for n in nodes if n.proc and n.proc.poll() is not None]
    finally:
        proxy.stop()
        codes = {n.name: n.stop() for n in nodes}
        redis.stop()
    problems, lost = [], 0
    for log in logs:
        p, l = check(log)
        problems += p
        lost += l
    for name, rc in codes.items():
        if rc not in (0, None):
            problems.append(f"node {name} exited with {rc} at the end")
    problems += [f"node {name} had died" for name in crashed]
    return {
        "seed": seed, "duration": elapsed, "rounds": len(faults.schedule), "faults": faults.counts,
        "schedule": faults.schedule, "answered": sum(len(l.answers) for l in logs),
        "in_doubt": sum(len(l.in_doubt) for l in logs), "observed": sum(len(s) for l in logs for s in l.observed.values()),
        "lost": lost, "problems": problems, "rooms": rooms, "io": io, "kill": kill,
        "finals": {l.name: l.final for l in logs},
    }


def report(result: dict) -> str:
    faults = ", ".join(f"{k} {v}" for k, v in sorted(result["faults"].items())) or "none"
    lines = [
        f"seed {result['seed']} · io {result['io']} · {result['rooms']} rooms · {result['duration']:.0f} s"
        + (" · with SIGKILL" if result["kill"] else ""),
        f"rounds {result['rounds']}: {faults}",
        f"answered increments {result['answered']} · in doubt {result['in_doubt']} · values observed {result['observed']}",
        f"lost updates {result['lost']} · violations {len(result['problems'])}",
    ]
    lines += [f"  ! {p}" for p in result["problems"][:12]]
    if len(result["problems"]) > 12:
        lines.append(f"  ! ... and {len(result['problems']) - 12} more")
    return "\n".join(lines)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import server_binary
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--rooms", type=int, default=6)
    ap.add_argument("--kill", action="store_true", help="also SIGKILL nodes")
    ap.add_argument("--io", default="uring")
    ap.add_argument("--schedule", action="store_true", help="print every fault")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nemesis-") as tmp:
        result = asyncio.run(run(args.seed, args.duration, args.kill, args.io, args.rooms, server_binary(), Path(tmp)))
        print(report(result))
        if args.schedule:
            print("\n".join(result["schedule"]))
        if result["problems"] or result["lost"]:
            for log in sorted(Path(tmp).glob("n*.log")):
                print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-3000:]}")
    return 1 if result["problems"] or result["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
