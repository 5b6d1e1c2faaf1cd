#!/usr/bin/env python3
"""Server memory per idle WebSocket: resident set size (VmRSS) against open connections.

Starts a server on 127.0.0.1 (stateroom-server by default, or the socketify relay with
`--peer socketify`), opens `--connections` WebSockets in rooms of `--room-size`, and reads the
server's VmRSS from /proc at half and at all of them. The figure per connection is the slope
between the two readings, (RSS(N) - RSS(N/2)) / (N/2), so what a server allocates once (pools,
first rooms, thread arenas) is not spread over the connections; the total over N is printed too.

With `--touch`, after every connection is open each room receives one broadcast (every client
gets a frame, as in a room that has been used), then the clients fall silent again: memory a
connection keeps after its first send is counted as well.

    python3 Benchmarks/idle_rss.py                           # 15,000 in rooms of 100, --shards 2
    python3 Benchmarks/idle_rss.py --server /path/to/other/stateroom-server --rounds 3
    python3 Benchmarks/idle_rss.py --peer socketify          # uWebSockets (pip install socketify)

Only 127.0.0.1; the connection count must stay below the hard open-file limit (20,000 here).
Results: Benchmarks/results/idle-rss.txt.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LISTEN_RE = re.compile(rb"listening on http://[^\s:/]+:(\d+)")


def start_server(args) -> tuple[subprocess.Popen, int]:
    if args.peer == "socketify":
        cmd = [sys.executable, str(REPO / "Benchmarks" / "socketify_relay.py"), "--port", "0"]
    else:
        cmd = [args.server, "--host", "127.0.0.1", "--port", "0", "--shards", str(args.shards),
               "--io", args.io, "--service", "relay", "--log-level", "warning",
               "--heartbeat-interval", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    seen = b""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        m = LISTEN_RE.search(line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit(f"server did not start: {cmd}\n{seen.decode(errors='replace')}")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_batch(port: int, rooms: list[str], prefix: str, batch: int = 256, seats: bool = False) -> list[socket.socket]:
    """Opens one WebSocket per entry of `rooms`, `batch` handshakes at a time (with `seats`, each
    opts in to a seat and its seat message is read)."""
    out: list[socket.socket] = []
    key = base64.b64encode(os.urandom(16)).decode()
    for start in range(0, len(rooms), batch):
        group = []
        for room in rooms[start:start + batch]:
            s = socket.create_connection(("127.0.0.1", port))
            query = "?seat=new" if seats else ""
            s.sendall((f"GET /ws/{prefix}{room}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            group.append(s)
        for s in group:
            s.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    raise SystemExit("server closed a connection during the handshake")
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"upgrade refused: {head[:80]!r}")
            if seats:
                rest = head.split(b"\r\n\r\n", 1)[1]
                while len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F):
                    rest += s.recv(4096)
                if b'"type":"seat"' not in rest:
                    raise SystemExit(f"no seat message: {rest[:80]!r}")
        out.extend(group)
    return out


def touch_rooms(socks: list[socket.socket], room_size: int) -> None:
    """One masked text frame from the first client of every room; every client reads its copy."""
    frame = bytes([0x81, 0x80 | 5]) + b"\x00\x00\x00\x00" + b"hello"
    for i in range(0, len(socks), room_size):
        socks[i].sendall(frame)
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    waiting = set(socks)
    deadline = time.monotonic() + 60
    while waiting and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            data = s.recv(4096)
            if data and s in waiting:
                waiting.discard(s)
                sel.unregister(s)
    sel.close()
    if waiting:
        raise SystemExit(f"{len(waiting)} clients never got the broadcast")


def settle(pid: int) -> int:
    """RSS once it stops moving (the server may still be finishing hand-offs)."""
    last = rss_bytes(pid)
    for _ in range(20):
        time.sleep(0.25)
        now = rss_bytes(pid)
        if now == last:
            return now
        last = now
    return last


def one_round(args, n: int) -> dict:
    proc, port = start_server(args)
    socks: list[socket.socket] = []
    try:
        # Warm up: a few connections in a throwaway room, closed again.
        for s in open_batch(port, ["0"] * 8, "warm", seats=args.seats):
            s.close()
        time.sleep(0.3)
        base = settle(proc.pid)
        rooms = [str(i // args.room_size) for i in range(n)]
        half = n // 2
        socks += open_batch(port, rooms[:half], "r", seats=args.seats)
        if args.touch:
            touch_rooms(socks, args.room_size)
        mid = settle(proc.pid)
        socks += open_batch(port, rooms[half:], "r", seats=args.seats)
        if args.touch:
            touch_rooms(socks[half:], args.room_size)
        full = settle(proc.pid)
        return {"base": base, "half": mid, "full": full,
                "slope": (full - mid) / (n - half), "perConnection": (full - base) / n}
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=str(REPO / ".build" / "release" / "stateroom-server"))
    ap.add_argument("--peer", choices=["stateroom", "socketify"], default="stateroom")
    ap.add_argument("--connections", type=int, default=15_000)
    ap.add_argument("--room-size", type=int, default=100)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--io", default="uring")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--touch", action="store_true", help="one broadcast per room once all are open")
    ap.add_argument("--seats", action="store_true", help="every client opts in to a seat (?seat=new)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.connections < 2 or args.connections > 19_000:
        raise SystemExit("--connections must be 2..19000 (the open-file limit here is 20,000)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))

    results = [one_round(args, args.connections) for _ in range(args.rounds)]
    slope = statistics.median(r["slope"] for r in results)
    per = statistics.median(r["perConnection"] for r in results)
    if args.json:
        print(json.dumps({"peer": args.peer, "server": args.server, "connections": args.connections,
                          "roomSize": args.room_size, "shards": args.shards, "io": args.io,
                          "touch": args.touch, "rounds": results,
                          "medianSlope": slope, "medianPerConnection": per}, indent=2))
        return
    who = "socketify (uWebSockets)" if args.peer == "socketify" else f"{args.server} --shards {args.shards} --io {args.io}"
    print(f"{who}: {args.connections} idle WebSockets in rooms of {args.room_size}"
          f"{', one broadcast per room' if args.touch else ''}{', every client seated' if args.seats else ''}")
    for i, r in enumerate(results):
        print(f"  round {i + 1}: RSS {r['base'] / 1e6:.1f} -> {r['half'] / 1e6:.1f} -> {r['full'] / 1e6:.1f} MB;"
              f" {r['slope']:.0f} B per connection (slope), {r['perConnection']:.0f} B (total / N)")
    print(f"median: {slope:.0f} B per idle WebSocket (slope), {per:.0f} B (total / N)")


if __name__ == "__main__":
    main()
