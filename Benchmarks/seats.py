#!/usr/bin/env python3
"""Seats (docs/seats.md) measured: memory per held seat, the resume time, and a reconnect storm.

* **held**: `--held` seated clients (rooms of 100, one broadcast per room so each room's log
  holds a frame) drop without a close; the server's RSS is read at half and at all of them
  dropped, and the slope is the memory per held seat (a dropped connection's own memory is
  reused by the next, so the slope is what a held seat keeps).
* **resume**: one seated client drops, another client of its room sends it `--missed` messages
  of 64 bytes, and it resumes: the time from starting the reconnect (TCP connect) to having read
  the last missed message; median of `--resume-rounds`.
* **storm**: `--storm` seated clients (rooms of 100) on a node with a store (a private
  redis-server on 127.0.0.1); the node stops gracefully (SIGTERM: rooms and seats stored, clients
  get 1012) and starts again on the same port; then every client resumes at once (at most
  `--window` connects in flight): the time from the first reconnect to the last
  `"recovered": true`, and the server's CPU time meanwhile. Plain and TLS.

    python3 Benchmarks/seats.py                       # all three, plain and TLS storms
    python3 Benchmarks/seats.py --only storm --storm 10000

Clients are Python asyncio streams on CPU 1, the server (one shard) on CPU 0: in the storm the
client side, not the server, sets the pace (the server's CPU time is reported beside it).
Only 127.0.0.1. Results: Benchmarks/results/seats.txt.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from idle_rss import rss_bytes, settle  # same folder: RSS readings as idle_rss.py takes them

REPO = Path(__file__).resolve().parents[1]
LISTEN_RE = re.compile(rb"listening on https?://[^\s:/]+:(\d+)")
KEY = base64.b64encode(os.urandom(16)).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, *extra: str, port: int = 0) -> tuple[subprocess.Popen, int]:
    cmd = ["taskset", "-c", "0", args.server, "--host", "127.0.0.1", "--port", str(port), "--shards", "1",
           "--log-level", "warning", "--heartbeat-interval", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = LISTEN_RE.search(line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit(f"server did not start: {cmd}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def masked(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload), 0, 0, 0, 0]) + payload


class Client:
    """A seated client over asyncio streams: the upgrade, the seat message, frames."""

    def __init__(self, reader, writer, hello: dict):
        self.reader, self.writer, self.hello = reader, writer, hello
        self.received = 0

    @classmethod
    async def open(cls, port: int, path: str, tls: ssl.SSLContext | None) -> "Client":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                       server_hostname="localhost" if tls else None)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(head[:80])
        c = cls(reader, writer, {})
        c.hello = json.loads(await c.frame())
        return c

    async def frame(self) -> bytes:
        b0, b1 = await self.reader.readexactly(2)
        self.opcode = b0 & 0x0F
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return await self.reader.readexactly(n)

    async def until_closed(self) -> None:
        """Reads until the server's close frame, then hangs up (no close of our own)."""
        try:
            while True:
                await self.frame()
                if self.opcode == 0x8:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.abort()

    def abort(self) -> None:
        self.writer.transport.abort()


async def open_many(port: int, paths: list[str], tls, window: int) -> list[Client]:
    gate = asyncio.Semaphore(window)

    async def one(path):
        async with gate:
            return await Client.open(port, path, tls)
    return list(await asyncio.gather(*(one(p) for p in paths)))


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))


# -- held ------------------------------------------------------------------------------------

def held(args) -> None:
    proc, port = start_server(args, "--service", "relay")
    try:
        base = settle(proc.pid)

        async def main():
            n = args.held
            paths = [f"/ws/h{i // 100}?seat=new" for i in range(n)]
            readings = []
            for part in (paths[:n // 2], paths[n // 2:]):
                for start in range(0, len(part), 500):
                    batch = await open_many(port, part[start:start + 500], None, 500)
                    for i in range(0, len(batch), 100):  # one broadcast per room: a frame in its log
                        batch[i].writer.write(masked("a message every seat of the room was sent"))
                    for c in batch:
                        await c.frame()
                    for c in batch:
                        c.abort()
                await asyncio.sleep(0.5)
                readings.append(settle(proc.pid))
            return readings

        half, full = asyncio.run(main())
        slope = (full - half) / (args.held - args.held // 2)
        print(f"held seats: {args.held} dropped (rooms of 100, one 41-byte broadcast kept per seat): "
              f"RSS {base / 1e6:.1f} -> {half / 1e6:.1f} -> {full / 1e6:.1f} MB; {slope:.0f} B per held seat (slope)",
              flush=True)
    finally:
        stop(proc)


# -- resume ----------------------------------------------------------------------------------

def resume(args) -> None:
    proc, port = start_server(args, "--service", "relay")
    times = []
    try:
        async def main():
            other = await Client.open(port, "/ws/resume?seat=new", None)
            me = await Client.open(port, "/ws/resume?seat=new", None)
            for r in range(args.resume_rounds):
                me.abort()
                await asyncio.sleep(0.02)
                for i in range(args.missed):
                    other.writer.write(masked(f"{r:04d} missed message {i:05d} padding to 64 bytes....."[:64]))
                for _ in range(args.missed):
                    await other.frame()  # the relay's broadcast comes back to the sender too
                await asyncio.sleep(0.02)
                t0 = time.perf_counter()
                me = await Client.open(port, f"/ws/resume?seat={me.hello['seat']}&received={me.received}", None)
                assert me.hello["recovered"], me.hello
                for _ in range(args.missed):
                    await me.frame()
                times.append(time.perf_counter() - t0)
                me.received += args.missed
        asyncio.run(main())
    finally:
        stop(proc)
    print(f"resume: {args.missed} missed 64-byte messages, reconnect (TCP connect, upgrade) to the last one read: "
          f"median {statistics.median(times) * 1e3:.2f} ms, p90 {statistics.quantiles(times, n=10)[-1] * 1e3:.2f} ms "
          f"({len(times)} resumes)", flush=True)


# -- storm -----------------------------------------------------------------------------------

def make_pair(directory: Path) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


def storm(args, use_tls: bool) -> None:
    redis_port = free_port()
    redis = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(redis_port),
                              "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"],
                             stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    tmp = Path(tempfile.mkdtemp())
    extra = ["--service", "counter", "--store", f"redis://127.0.0.1:{redis_port}", "--drain-timeout", "10"]
    tls = None
    if use_tls:
        cert, key = make_pair(tmp)
        extra += ["--tls-cert", cert, "--tls-key", key]
        tls = ssl.create_default_context(cafile=cert)
    port = free_port()
    proc, _ = start_server(args, *extra, port=port)
    n = args.storm
    paths = [f"/ws/s{i // 100}?seat=new" for i in range(n)]

    async def scenario():
        nonlocal proc
        clients = await open_many(port, paths, tls, args.window)
        seats = [(c.hello["seat"], p.split("?")[0]) for c, p in zip(clients, paths)]
        # SIGTERM: rooms and their seats are stored, clients get 1012 and hang up.
        proc.terminate()
        await asyncio.gather(*(c.until_closed() for c in clients))
        await asyncio.to_thread(proc.wait, 30)
        del clients
        proc, _ = await asyncio.to_thread(start_server, args, *extra, port=port)
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        back = await open_many(port, [f"{room}?seat={token}&received=0" for token, room in seats], tls, args.window)
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        recovered = sum(1 for c in back if c.hello["recovered"])
        for c in back:
            c.abort()
        return seconds, recovered, cpu

    try:
        seconds, recovered, cpu = asyncio.run(scenario())
        print(f"storm{' (TLS)' if use_tls else ''}: {n} seats resuming at once after a graceful restart "
              f"(rooms of 100, {args.window} connects in flight): {recovered}/{n} recovered in {seconds:.2f} s "
              f"({n / seconds:.0f}/s); server CPU {cpu:.2f} s ({cpu / n * 1e6:.0f} µs per resume, "
              f"{'TLS handshake included' if use_tls else 'plain'})", flush=True)
    finally:
        stop(proc)
        redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=str(REPO / ".build/release/stateroom-server"))
    ap.add_argument("--only", choices=["held", "resume", "storm"])
    ap.add_argument("--held", type=int, default=10_000)
    ap.add_argument("--missed", type=int, default=100)
    ap.add_argument("--resume-rounds", type=int, default=50)
    ap.add_argument("--storm", type=int, default=10_000)
    ap.add_argument("--window", type=int, default=1000)
    args = ap.parse_args()
    if max(args.held, args.storm) > 18_000:
        raise SystemExit("at most 18,000 clients (the open-file limit here is 20,000)")
    raise_fd_limit(max(args.held, args.storm) + 500)
    if args.only in (None, "held"):
        held(args)
    if args.only in (None, "resume"):
        resume(args)
    if args.only in (None, "storm"):
        storm(args, False)
        storm(args, True)


if __name__ == "__main__":
    main()
