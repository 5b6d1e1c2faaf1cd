#!/usr/bin/env python3
"""Soak and churn: does stateroom-server give back what churning clients took?

Starts `stateroom-server` (127.0.0.1, a free port, `--service relay`, short request and heartbeat
timeouts) and, for `--minutes`, runs against it:

* **churn** (`--workers` processes): new connections at `--rate` per second, at most
  `--max-concurrent` at once, to `--rooms` rooms. Most are *talkers*: they send a few
  sequence-numbered messages (some compressed, with permessage-deflate), check that the echoes of
  their own messages come back in order, and leave — half with a close handshake (they check the
  server echoes 1000 and then closes TCP), half with a reset (`SO_LINGER` {1,0}, close: RST).
  The others misbehave: *stall-frame* (half a frame, then silence: the heartbeat timeout must drop
  them), *stall-head* (half a request head, then silence: the request timeout must drop them),
  *oversize* (a frame over `--max-message-size`: 1009) and *bad-frame* (RSV bits, reserved opcodes,
  unmasked, orphan continuation, long or fragmented control frames: 1002; invalid UTF-8: 1007; an
  over-limit fragmented message or a deflate bomb: 1009).
* **a calm room** (a separate process, the `websockets` library, permessage-deflate offered):
  `--calm-clients` clients in one room send sequence-numbered messages for the whole run; every
  receiver checks every sender's sequence (no loss, no reordering, no duplicate) and that nothing
  closes them.
* **sampling** every `--sample-interval` s: the server's VmRSS (and RssAnon), its open descriptors
  (`/proc/PID/fd`), and from `/metrics` the open connections, WebSockets, rooms and the cumulative
  counters; the clients' own counts. Written to `--csv` as it goes, charted in `--svg`.

After the run the churn stops, the stalled clients are left for the server's timeouts to drop, the
calm room closes, and once the server reports no connection the final descriptor count is taken.
Exit status 1 (reasons in `--summary`) when: descriptors do not return to the count before the
first client (± `--fd-tolerance`), RSS after the warm-up drifts by `--rss-drift-limit` % or more
(median of the last quarter of the load against the first sample after the warm-up), the calm room
saw loss, reordering, a duplicate or an unexpected close, a churn client lost one of its own echoes,
a misbehaving client was not dropped in time or got an unexpected close code, or the server died.

    python3 Benchmarks/soak.py --minutes 10 --server .build-soak/release/stateroom-server \
        --csv Benchmarks/results/soak.csv --svg Benchmarks/results/soak.svg \
        --summary Benchmarks/results/soak.txt

The load side (this script's processes) runs at `--load-nice` (default 5) after the server has
been started at the caller's priority: `nice -n 5` on the load only. Only 127.0.0.1; descriptors
stay far below the 20,000 open-file limit (`--max-concurrent` bounds the churn).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import hashlib
import json
import multiprocessing as mp
import os
import queue
import random
import re
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LISTEN_RE = re.compile(rb"listening on http://[^\s:/]+:(\d+)")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HOST = "127.0.0.1"

KINDS = ("clean", "reset", "stall-frame", "stall-head", "oversize", "bad-frame")


# ---------------------------------------------------------------------------------------------
# The server


def start_server(args) -> tuple[subprocess.Popen, int, list[str]]:
    cmd = [args.server, "--host", HOST, "--port", "0", "--service", "relay",
           "--shards", str(args.shards), "--io", args.io,
           "--request-timeout", str(args.request_timeout),
           "--heartbeat-interval", str(args.heartbeat_interval),
           "--heartbeat-timeout", str(args.heartbeat_timeout),
           "--max-message-size", str(args.max_message_size),
           "--log-level", args.log_level]
    if not args.pin:
        cmd.append("--no-pin")
    cmd += shlex.split(args.server_args)
    env = dict(os.environ)
    for kv in args.server_env:
        k, _, v = kv.partition("=")
        env[k] = v
    log = open(args.server_log, "wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
    deadline = time.monotonic() + 30
    seen = b""
    port = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        log.write(line)
        m = LISTEN_RE.search(line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        log.close()
        raise SystemExit(f"server did not start: {shlex.join(cmd)}\n{seen.decode(errors='replace')}"
                         f"\n(see {args.server_log})")

    def pump():   # keep stdout drained into the log
        for line in proc.stdout:
            log.write(line)
            log.flush()
    threading.Thread(target=pump, daemon=True).start()
    env_prefix = [kv for kv in args.server_env]
    return proc, port, env_prefix + cmd


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    return out


def pool_rss_kb(pid: int, pool_kb: int) -> int:
    """Resident KB of the anonymous mappings the size of one shard's receive-buffer pool (io_uring
    provided buffers, 1024 x 16 KiB by default): memory that grows as the pool's pages are first
    touched and is bounded by the pool's size, told apart from the rest of the heap."""
    total = 0
    size = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                    parts = line.split()
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    named = len(parts) > 5
                    kb = (hi - lo) // 1024
                    size = kb if (not named and pool_kb <= kb <= pool_kb + 64) else None
                elif size is not None and line.startswith("Rss:"):
                    total += int(line.split()[1])
                    size = None
    except OSError:
        return -1
    return total


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fetch_metrics(port: int, timeout: float = 5.0) -> dict[str, float]:
    """The unlabelled (summed) series of /metrics."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    out = {}
    for line in body.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


# ---------------------------------------------------------------------------------------------
# A minimal WebSocket client over asyncio streams (the churn needs to misbehave on purpose)


def mask_bytes(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return data
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, masked: bool = True,
          declared: int | None = None) -> bytes:
    """A client frame; `declared` overrides the length in the header (for truncated frames)."""
    n = len(payload) if declared is None else declared
    b0 = (0x80 if fin else 0) | rsv | opcode
    mbit = 0x80 if masked else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 65536:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if masked:
        key = os.urandom(4)
        return head + key + mask_bytes(payload, key)
    return head + payload


def close_frame(code: int) -> bytes:
    return frame(0x8, struct.pack("!H", code))


class HandshakeError(Exception):
    pass


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deflate: bool):
        self.reader = reader
        self.writer = writer
        self.deflate = deflate
        self.inflater = zlib.decompressobj(-15) if deflate else None

    def send(self, data: bytes):
        self.writer.write(data)

    def send_message(self, text: bytes, compress: bool = False):
        if compress and self.deflate:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH)
            if body.endswith(b"\x00\x00\xff\xff"):
                body = body[:-4]
            self.writer.write(frame(0x1, body, rsv=0x40))
        else:
            self.writer.write(frame(0x1, text))

    async def read_frame(self) -> tuple[int, bytes, bool]:
        """(opcode, payload, compressed) of the next server frame; raises IncompleteReadError at EOF."""
        h = await self.reader.readexactly(2)
        b0, b1 = h[0], h[1]
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        if b1 & 0x80:
            raise ValueError("server frame is masked")
        payload = await self.reader.readexactly(n) if n else b""
        return b0 & 0x0F, payload, bool(b0 & 0x40)

    async def read_message(self) -> tuple[int, bytes]:
        """The next whole message or control frame (continuations joined, compressed ones inflated)."""
        op, payload, comp = await self.read_frame()
        if op in (0x1, 0x2):
            data = payload   # the server sends every message as one frame
            if comp:
                if self.inflater is None:
                    raise ValueError("compressed frame without permessage-deflate")
                data = self.inflater.decompress(data + b"\x00\x00\xff\xff")
            return op, data
        return op, payload

    def reset(self):
        sock = self.writer.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.writer.transport.abort()

    def close(self):
        self.writer.transport.abort()


def request_head(room: str, deflate: bool) -> tuple[bytes, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    ext = "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n" if deflate else ""
    head = (f"GET /ws/{room} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n").encode()
    return head, key


async def ws_connect(port: int, room: str, deflate: bool, timeout: float) -> Conn:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        head, key = request_head(room, deflate)
        writer.write(head)
        resp = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except BaseException:
        writer.transport.abort()
        raise
    lines = resp.decode(errors="replace").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        writer.transport.abort()
        raise HandshakeError(lines[0][:40])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    want = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != want:
        writer.transport.abort()
        raise HandshakeError("bad Sec-WebSocket-Accept")
    agreed = "permessage-deflate" in headers.get("sec-websocket-extensions", "")
    return Conn(reader, writer, deflate and agreed)


# ---------------------------------------------------------------------------------------------
# Churn worker


class ChurnStats:
    def __init__(self):
        self.c: dict[str, float] = {}

    def inc(self, k: str, n: float = 1):
        self.c[k] = self.c.get(k, 0) + n

    def max(self, k: str, v: float):
        if v > self.c.get(k, float("-inf")):
            self.c[k] = v

    def note(self, k: str, text: str, limit: int = 20):
        lst = self.c.setdefault("_notes", {}).setdefault(k, [])
        if len(lst) < limit:
            lst.append(text)


def pick_kind(rng: random.Random, a) -> str:
    r = rng.random()
    for kind, frac in (("stall-frame", a.stall_frame_frac), ("stall-head", a.stall_head_frac),
                       ("oversize", a.oversize_frac), ("bad-frame", a.bad_frame_frac)):
        if r < frac:
            return kind
        r -= frac
    return "clean" if rng.random() < 0.5 else "reset"


BAD_FRAMES = [
    # (name, bytes, expected close code, permessage-deflate: True needs it, False must not have it, None either)
    ("rsv2", lambda lim: frame(0x1, b"x", rsv=0x20), 1002, None),
    ("rsv1-no-deflate", lambda lim: frame(0x1, b"x", rsv=0x40), 1002, False),
    ("reserved-opcode", lambda lim: frame(0x3, b"x"), 1002, None),
    ("unmasked", lambda lim: frame(0x1, b"hello", masked=False), 1002, None),
    ("orphan-continuation", lambda lim: frame(0x0, b"x"), 1002, None),
    ("long-ping", lambda lim: frame(0x9, b"p" * 126), 1002, None),
    ("fragmented-ping", lambda lim: frame(0x9, b"p", fin=False), 1002, None),
    ("bad-utf8", lambda lim: frame(0x1, b"ok\xff\xfe"), 1007, None),
    ("fragments-over-limit", lambda lim: frame(0x1, b"a" * (lim // 2 + 8), fin=False)
     + frame(0x0, b"b" * (lim // 2 + 8)), 1009, None),
    ("corrupt-deflate", lambda lim: frame(0x1, b"\xff\xff\xff", rsv=0x40), 1007, True),
    ("deflate-bomb", None, 1009, True),
]


def deflate_bomb(limit: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = c.compress(b"\x00" * (limit * 4)) + c.flush(zlib.Z_SYNC_FLUSH)
    return frame(0x1, body[:-4], rsv=0x40)


async def read_until_closed(conn: Conn, timeout: float, answer_pings: bool = False) -> tuple[int | None, str]:
    """Reads until the server closes; returns (close code or None, how it ended: 'eof'|'reset'|'timeout')."""
    code = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return code, "timeout"
            op, payload = await asyncio.wait_for(conn.read_message(), left)
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            elif op == 0x9 and answer_pings:
                conn.send(frame(0xA, payload))
    except asyncio.IncompleteReadError:
        return code, "eof"
    except (ConnectionResetError, BrokenPipeError):
        return code, "reset"
    except asyncio.TimeoutError:
        return code, "timeout"


async def churn_conn(cid: int, a, port: int, st: ChurnStats, rng: random.Random):
    kind = pick_kind(rng, a)
    st.inc(f"started.{kind}")
    room = f"churn-{rng.randrange(a.rooms)}"
    deflate = rng.random() < a.deflate_frac
    t0 = time.monotonic()
    drop_bound = a.heartbeat_timeout + a.heartbeat_interval + 1 + a.drop_slack

    if kind == "stall-head":
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), a.op_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            st.inc(f"connect-error.{type(e).__name__}")
            return
        head, _ = request_head(room, False)
        writer.write(head[: rng.randrange(5, len(head) - 4)])
        conn = Conn(reader, writer, False)
        _, how = await read_until_closed(conn, a.request_timeout + a.drop_slack)
        waited = time.monotonic() - t0
        conn.close()
        if how == "timeout":
            st.inc("stall-head.not-dropped")
            st.note("stall-head.not-dropped", f"cid {cid} still open after {waited:.1f}s")
        else:
            st.inc("finished.stall-head")
            st.max("stall-head.max-drop-s", waited)
        return

    try:
        conn = await ws_connect(port, room, deflate, a.op_timeout)
    except HandshakeError as e:
        st.inc("handshake-refused")
        st.note("handshake-refused", str(e))
        return
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        st.inc(f"connect-error.{type(e).__name__}")
        return
    st.inc("websockets")
    if deflate and conn.deflate:
        st.inc("websockets.deflate")

    if kind == "oversize":
        lim = a.max_message_size
        conn.send(frame(0x1, b"z" * 1024, declared=lim + 1 + rng.randrange(1 << 20)))
        code, how = await read_until_closed(conn, a.op_timeout)
        if code != 1009:
            st.inc("oversize.unexpected")
            st.note("oversize.unexpected", f"code {code} ({how})")
        else:
            st.inc("finished.oversize")
        conn.close()
        return

    if kind == "bad-frame":
        choices = [b for b in BAD_FRAMES if b[3] is None or b[3] == conn.deflate]
        name, make, expected, _ = rng.choice(choices)
        data = deflate_bomb(a.max_message_size) if name == "deflate-bomb" else make(a.max_message_size)
        if rng.random() < 0.5:   # sometimes after a good message
            conn.send_message(b"%08x%08x hello" % (cid, 0))
        conn.send(data)
        code, how = await read_until_closed(conn, a.op_timeout)
        st.inc(f"bad-frame.{name}")
        if code != expected:
            st.inc("bad-frame.unexpected")
            st.note("bad-frame.unexpected", f"{name}: code {code} ({how}), expected {expected}")
        else:
            st.inc("finished.bad-frame")
        if rng.random() < 0.5:
            conn.reset()
        else:
            conn.close()
        return

    # Talkers (and stall-frame, which talks first and then stops mid-frame).
    own_prefix = b"%08x" % cid
    sent = 0
    received_own = 0
    last_own = 0
    errors = []
    got_close: list[int | None] = [None]
    ended: list[str] = [""]

    async def reader_task(answer_pings: bool):
        nonlocal received_own, last_own
        try:
            while True:
                op, payload = await conn.read_message()
                if op in (0x1, 0x2):
                    st.inc("messages-received")
                    if payload.startswith(own_prefix):
                        seq = int(payload[8:16], 16)
                        received_own += 1
                        if seq != last_own + 1:
                            errors.append(f"own echo {seq} after {last_own}")
                        last_own = seq
                elif op == 0x9:
                    if answer_pings:
                        conn.send(frame(0xA, payload))
                elif op == 0x8:
                    got_close[0] = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    break
            # After a close frame, the server closes TCP.
            rest = await conn.reader.read()
            while rest:
                rest = await conn.reader.read()
            ended[0] = "eof"
        except asyncio.IncompleteReadError:
            ended[0] = "eof"
        except (ConnectionResetError, BrokenPipeError):
            ended[0] = "reset"
        except Exception as e:   # noqa: BLE001 (reported)
            ended[0] = f"error {type(e).__name__}: {e}"

    stall = kind == "stall-frame"
    rt = asyncio.create_task(reader_task(answer_pings=not stall))
    n_messages = rng.randint(1, a.messages)
    lifetime = rng.uniform(a.min_lifetime, a.max_lifetime)
    gap = lifetime / (n_messages + 1)
    try:
        for _ in range(1 if stall else n_messages):
            await asyncio.sleep(rng.uniform(0.5, 1.5) * gap)
            if rt.done():
                break
            sent += 1
            size = rng.randrange(24, a.message_max)
            body = b"%08x%08x " % (cid, sent)
            body += (b"churn " * (size // 6 + 1))[: max(0, size - len(body))]
            conn.send_message(body, compress=conn.deflate and rng.random() < 0.5)
            st.inc("messages-sent")
        if stall:
            # Half a frame, then silence: the heartbeat timeout must drop us.
            await asyncio.sleep(0.2)
            conn.send(frame(0x1, b"s" * 40, declared=400))
            t_stall = time.monotonic()
            try:
                await asyncio.wait_for(asyncio.shield(rt), drop_bound)
            except asyncio.TimeoutError:
                pass
            waited = time.monotonic() - t_stall
            if not rt.done():
                st.inc("stall-frame.not-dropped")
                st.note("stall-frame.not-dropped", f"cid {cid} open after {waited:.1f}s")
                rt.cancel()
            else:
                st.inc("finished.stall-frame")
                st.max("stall-frame.max-drop-s", waited)
                if got_close[0] != 1001:
                    st.inc("stall-frame.unexpected-code")
                    st.note("stall-frame.unexpected-code", f"code {got_close[0]} ({ended[0]})")
            conn.close()
            return
        if rt.done():
            st.inc("talker.closed-by-server")
            st.note("talker.closed-by-server", f"{kind} code {got_close[0]} ({ended[0]}) after {sent} sent")
            conn.close()
            return
        if kind == "reset":
            await asyncio.sleep(rng.uniform(0, 0.3))
            conn.reset()
            rt.cancel()
            st.inc("finished.reset")
            return
        # Clean: close handshake; every echo of ours must arrive before the server's close frame.
        conn.send(close_frame(1000))
        try:
            await asyncio.wait_for(asyncio.shield(rt), a.op_timeout)
        except asyncio.TimeoutError:
            st.inc("clean.close-timeout")
            st.note("clean.close-timeout", f"cid {cid}: no close/EOF within {a.op_timeout}s")
            rt.cancel()
            conn.close()
            return
        conn.close()
        if got_close[0] != 1000:
            st.inc("clean.unexpected-code")
            st.note("clean.unexpected-code", f"code {got_close[0]} ({ended[0]})")
        if ended[0] != "eof":
            st.inc("clean.no-eof")
            st.note("clean.no-eof", ended[0])
        if received_own != sent or errors:
            st.inc("clean.echo-loss")
            st.note("clean.echo-loss", f"cid {cid}: sent {sent}, own echoes {received_own}, {errors[:3]}")
        st.inc("finished.clean")
    except (ConnectionResetError, BrokenPipeError) as e:
        st.inc(f"talker.{type(e).__name__}")
        rt.cancel()
        conn.close()


async def churn_main(idx: int, a, port: int, stop: mp.Event, out: mp.Queue):
    st = ChurnStats()
    rng = random.Random(a.seed * 1000 + idx)
    rate = a.rate / a.workers
    cap = asyncio.Semaphore(max(1, a.max_concurrent // a.workers))
    tasks: set[asyncio.Task] = set()
    active = [0]
    cid_base = idx << 24
    n = 0
    t_start = time.monotonic()
    last_report = 0.0

    async def run_one(cid):
        active[0] += 1
        st.max("max-active", active[0])
        try:
            await churn_conn(cid, a, port, st, rng)
        except Exception as e:   # noqa: BLE001 (counted, never fatal)
            st.inc(f"exception.{type(e).__name__}")
            st.note("exception", f"{type(e).__name__}: {e}")
        finally:
            active[0] -= 1
            cap.release()

    def report(kind="stats"):
        snap = dict(st.c)
        snap["active"] = active[0]
        snap["connections"] = n
        out.put((kind, idx, snap))

    while not stop.is_set():
        now = time.monotonic()
        due = int((now - t_start) * rate)
        while n < due and not stop.is_set():
            if cap.locked():
                st.inc("deferred-at-cap")
                await cap.acquire()
                # Started late: the schedule moves on from now instead of catching up in a burst.
                t_start = time.monotonic() - n / rate
            else:
                await cap.acquire()
            n += 1
            t = asyncio.create_task(run_one((cid_base | n) & 0xFFFFFFFF))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            if time.monotonic() - now > 0.05:
                break
        if now - last_report >= 1.0:
            report()
            last_report = now
        await asyncio.sleep(0.01)
    # Stop: in-flight clients finish (stalled ones when the server drops them).
    while tasks:
        await asyncio.sleep(0.5)
        report()
    report("final")


def churn_process(idx: int, a, port: int, stop, out):
    # Niceness is inherited from the orchestrator (the load side runs at --load-nice).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(churn_main(idx, a, port, stop, out))


# ---------------------------------------------------------------------------------------------
# The calm room (websockets library, independent of the raw client above)


async def calm_main(a, port: int, stop, out):
    import websockets
    from websockets.exceptions import ConnectionClosed

    n = a.calm_clients
    url = f"ws://{HOST}:{port}/ws/calm-room"
    clients = []
    for _ in range(n):
        clients.append(await websockets.connect(url, ping_interval=None, max_size=None,
                                                close_timeout=10, open_timeout=10))
    res = {"clients": n, "sent": 0, "received": 0, "lost": 0, "reordered": 0, "duplicates": 0,
           "foreign": 0, "unexpected_closes": [], "missing_at_end": 0, "close_codes": [],
           "max_latency_ms": 0.0, "failures": []}
    last = [[0] * n for _ in range(n)]   # last[receiver][sender]
    sent = [0] * n
    stopping = asyncio.Event()
    lat = []

    async def sender(i):
        ws = clients[i]
        pad = "calm " * 30
        while not stopping.is_set():
            sent[i] += 1
            try:
                await ws.send(f"{i}:{sent[i]}:{time.monotonic():.6f}:{pad}")
            except ConnectionClosed as e:
                sent[i] -= 1
                res["unexpected_closes"].append(f"sender {i}: {e}")
                return
            res["sent"] += 1
            await asyncio.sleep(a.calm_interval)

    async def receiver(r):
        ws = clients[r]
        try:
            async for msg in ws:
                parts = msg.split(":", 3)
                try:
                    s, q, ts = int(parts[0]), int(parts[1]), float(parts[2])
                except (ValueError, IndexError):
                    res["foreign"] += 1
                    continue
                res["received"] += 1
                ms = (time.monotonic() - ts) * 1000
                if ms > res["max_latency_ms"]:
                    res["max_latency_ms"] = ms
                lat.append(ms)
                prev = last[r][s]
                if q == prev + 1:
                    pass
                elif q > prev + 1:
                    res["lost"] += q - prev - 1
                    if len(res["failures"]) < 20:
                        res["failures"].append(f"receiver {r}: sender {s} jumped {prev} -> {q}")
                elif q == prev:
                    res["duplicates"] += 1
                else:
                    res["reordered"] += 1
                    if len(res["failures"]) < 20:
                        res["failures"].append(f"receiver {r}: sender {s} went back {prev} -> {q}")
                last[r][s] = max(prev, q)
        except ConnectionClosed as e:
            if not stopping.is_set():
                res["unexpected_closes"].append(f"receiver {r}: {e}")

    recv_tasks = [asyncio.create_task(receiver(r)) for r in range(n)]
    send_tasks = [asyncio.create_task(sender(i)) for i in range(n)]
    t0 = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.2)
        if time.monotonic() - t0 > 5:
            out.put(("calm-progress", -1, {"sent": res["sent"], "received": res["received"],
                                           "lost": res["lost"], "reordered": res["reordered"],
                                           "unexpected": len(res["unexpected_closes"])}))
            t0 = time.monotonic()
    stopping.set()
    await asyncio.gather(*send_tasks)
    # Drain: every receiver must see every sender's last message.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(last[r][s] >= sent[s] for r in range(n) for s in range(n)):
            break
        await asyncio.sleep(0.05)
    res["missing_at_end"] = sum(max(0, sent[s] - last[r][s]) for r in range(n) for s in range(n))
    for ws in clients:
        await ws.close(1000, "done")
        res["close_codes"].append(ws.close_code)
    await asyncio.gather(*recv_tasks, return_exceptions=True)
    if lat:
        lat.sort()
        res["p99_latency_ms"] = lat[int(0.99 * (len(lat) - 1))]
        res["median_latency_ms"] = lat[len(lat) // 2]
    expected_deliveries = sum(sent) * n
    res["expected_deliveries"] = expected_deliveries
    res["ok"] = (res["lost"] == 0 and res["reordered"] == 0 and res["duplicates"] == 0
                 and res["foreign"] == 0 and not res["unexpected_closes"] and res["missing_at_end"] == 0
                 and res["received"] == expected_deliveries
                 and all(c == 1000 for c in res["close_codes"]))
    out.put(("calm-final", -1, res))


def calm_process(a, port: int, stop, out):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(calm_main(a, port, stop, out))
    except Exception as e:   # noqa: BLE001
        out.put(("calm-final", -1, {"ok": False, "failures": [f"calm room crashed: {type(e).__name__}: {e}"]}))


# ---------------------------------------------------------------------------------------------
# Chart


def svg_chart(rows: list[dict], warmup_s: float, load_end_s: float, baseline_rss: float | None) -> str:
    W, H = 820, 560
    left, right = 70, 70
    panels = [("resident memory (MB)", "rss_mb", [("rss_mb", "#1f77b4", 2, "VmRSS"),
                                                  ("rss_anon_mb", "#9ecae1", 1.2, "RssAnon"),
                                                  ("recv_pool_rss_mb", "#ff7f0e", 1.2, "receive-buffer pools")]),
              ("server descriptors", "fds", [("fds", "#d62728", 2, "open fds"),
                                             ("websockets_open", "#ff9896", 1.2, "WebSockets open")])]
    ph = 210
    tops = [50, 50 + ph + 60]
    t_max = max(r["t_s"] for r in rows) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W/2}" y="22" text-anchor="middle" font-size="15">stateroom-server soak: '
           f'resident memory and descriptors under churn</text>']

    def xpos(t):
        return left + (W - left - right) * t / t_max

    for (title, key, series), top in zip(panels, tops):
        vals = [max(0, r[k]) for r in rows for k, *_ in series]
        if key == "rss_mb" and baseline_rss:
            vals += [baseline_rss * 1.05]
        vmax = max(vals) * 1.1 or 1
        vmin = 0

        def ypos(v):
            return top + ph - ph * (v - vmin) / (vmax - vmin)
        out.append(f'<rect x="{left}" y="{top}" width="{W-left-right}" height="{ph}" fill="none" stroke="#888"/>')
        out.append(f'<text x="{left}" y="{top-8}" font-size="13">{title}</text>')
        for i in range(5):
            v = vmin + (vmax - vmin) * i / 4
            y = ypos(v)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{W-right}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{left-6}" y="{y+4:.1f}" text-anchor="end">{v:.0f}</text>')
        for m in range(0, int(t_max // 60) + 1):
            x = xpos(m * 60)
            out.append(f'<line x1="{x:.1f}" y1="{top+ph}" x2="{x:.1f}" y2="{top+ph+4}" stroke="#888"/>')
            out.append(f'<text x="{x:.1f}" y="{top+ph+16}" text-anchor="middle">{m}</text>')
        out.append(f'<text x="{W/2}" y="{top+ph+32}" text-anchor="middle">minutes</text>')
        for t, label in ((warmup_s, "warm-up ends"), (load_end_s, "churn stops")):
            x = xpos(t)
            out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top+ph}" stroke="#555" stroke-dasharray="4 3"/>')
            out.append(f'<text x="{x+3:.1f}" y="{top+ph-6}" fill="#555">{label}</text>')
        if key == "rss_mb" and baseline_rss:
            y1, y2 = ypos(baseline_rss), ypos(baseline_rss * 1.05)
            out.append(f'<rect x="{xpos(warmup_s):.1f}" y="{y2:.1f}" width="{xpos(load_end_s)-xpos(warmup_s):.1f}" '
                       f'height="{y1-y2:.1f}" fill="#2ca02c" fill-opacity="0.15"/>')
            out.append(f'<text x="{W-right+4}" y="{(y1+y2)/2+4:.1f}" fill="#2ca02c">+5%</text>')
        lx = left + 10
        for k, c, width, label in reversed(series):
            pts = " ".join(f"{xpos(r['t_s']):.1f},{ypos(max(0, r[k])):.1f}" for r in rows)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="{width}"/>')
        for k, c, width, label in series:
            out.append(f'<line x1="{lx}" y1="{top+14}" x2="{lx+20}" y2="{top+14}" stroke="{c}" stroke-width="{width}"/>'
                       f'<text x="{lx+24}" y="{top+18}">{label}</text>')
            lx += 40 + 7 * len(label)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Orchestration


FIELDS = ["t_s", "phase", "rss_mb", "rss_anon_mb", "recv_pool_rss_mb", "fds", "threads", "connections_open", "websockets_open",
          "rooms_active", "accepted_total", "rooms_created_total", "messages_received_total",
          "heartbeat_timeouts_total", "protocol_error_closes_total", "http_errors_total",
          "handoffs_total", "accept_errors_total", "inflate_memory_bytes",
          "client_started", "client_active", "client_websockets", "client_messages_sent",
          "client_messages_received", "calm_received"]

METRIC_KEYS = {"connections_open": "stateroom_connections_open", "websockets_open": "stateroom_websockets_open",
               "rooms_active": "stateroom_rooms_active", "accepted_total": "stateroom_connections_accepted_total",
               "rooms_created_total": "stateroom_rooms_created_total",
               "messages_received_total": "stateroom_messages_received_total",
               "heartbeat_timeouts_total": "stateroom_heartbeat_timeouts_total",
               "protocol_error_closes_total": "stateroom_protocol_error_closes_total",
               "http_errors_total": "stateroom_http_errors_total",
               "handoffs_total": "stateroom_handoffs_total",
               "accept_errors_total": "stateroom_accept_errors_total",
               "inflate_memory_bytes": "stateroom_inflate_memory_bytes"}


def sum_stats(worker_stats: dict[int, dict]) -> dict:
    total: dict = {}
    notes: dict = {}
    for s in worker_stats.values():
        for k, v in s.items():
            if k == "_notes":
                for nk, lst in v.items():
                    notes.setdefault(nk, []).extend(lst)
            elif k.startswith("max") or k.endswith("max-drop-s"):
                total[k] = max(total.get(k, 0), v)
            else:
                total[k] = total.get(k, 0) + v
    total["_notes"] = notes
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--server", default=str(REPO / ".build" / "release" / "stateroom-server"))
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--warmup-minutes", type=float, default=1)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--pin", action="store_true", help="let the server pin its shards to cores (default: --no-pin)")
    p.add_argument("--io", default="auto")
    p.add_argument("--request-timeout", type=float, default=3)
    p.add_argument("--heartbeat-interval", type=float, default=2)
    p.add_argument("--heartbeat-timeout", type=float, default=6)
    p.add_argument("--max-message-size", type=int, default=65536)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--server-args", default="", help="more arguments for the server (one string)")
    p.add_argument("--server-env", action="append", default=[], metavar="K=V",
                   help="environment for the server, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    p.add_argument("--server-log", default="/tmp/soak-server.log")
    p.add_argument("--rate", type=float, default=300, help="new churn connections per second")
    p.add_argument("--max-concurrent", type=int, default=2000, help="churn connections open at once, at most")
    p.add_argument("--workers", type=int, default=2, help="churn processes")
    p.add_argument("--rooms", type=int, default=400, help="churn rooms")
    p.add_argument("--messages", type=int, default=6, help="a talker sends 1..N messages")
    p.add_argument("--message-max", type=int, default=600, help="talker messages are 24..N bytes")
    p.add_argument("--min-lifetime", type=float, default=0.5)
    p.add_argument("--max-lifetime", type=float, default=6)
    p.add_argument("--stall-frame-frac", type=float, default=0.03)
    p.add_argument("--stall-head-frac", type=float, default=0.03)
    p.add_argument("--oversize-frac", type=float, default=0.02)
    p.add_argument("--bad-frame-frac", type=float, default=0.04)
    p.add_argument("--deflate-frac", type=float, default=0.3, help="churn clients offering permessage-deflate")
    p.add_argument("--calm-clients", type=int, default=4)
    p.add_argument("--calm-interval", type=float, default=0.05, help="seconds between a calm client's messages")
    p.add_argument("--sample-interval", type=float, default=5)
    p.add_argument("--op-timeout", type=float, default=15, help="client-side bound on one step")
    p.add_argument("--drop-slack", type=float, default=5,
                   help="seconds beyond the server's timeouts a stalled client may wait to be dropped")
    p.add_argument("--settle-timeout", type=float, default=60)
    p.add_argument("--fd-tolerance", type=int, default=3)
    p.add_argument("--rss-drift-limit", type=float, default=5.0, help="percent")
    p.add_argument("--pool-kb", type=int, default=16384,
                   help="size of one shard's receive-buffer pool mapping (KB), reported apart from the rest of RSS")
    p.add_argument("--load-nice", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--csv", default=str(REPO / "Benchmarks" / "results" / "soak.csv"))
    p.add_argument("--svg", default=str(REPO / "Benchmarks" / "results" / "soak.svg"))
    p.add_argument("--summary", default=str(REPO / "Benchmarks" / "results" / "soak.txt"))
    a = p.parse_args()
    invocation = "python3 " + shlex.join([os.path.relpath(sys.argv[0], Path.cwd())] + sys.argv[1:])

    proc, port, server_cmd = start_server(a)
    pid = proc.pid
    print(f"server pid {pid} on port {port}: {shlex.join(server_cmd)}", flush=True)
    if a.load_nice:
        os.nice(a.load_nice)   # the load side only; the server keeps the caller's priority
    time.sleep(0.5)
    fds_start = fd_count(pid)
    st0 = proc_status(pid)
    print(f"start: fds {fds_start}, RSS {st0['VmRSS']/1024:.1f} MB", flush=True)

    ctx = mp.get_context("fork")
    stop_churn = ctx.Event()
    stop_calm = ctx.Event()
    q = ctx.Queue()
    calm = ctx.Process(target=calm_process, args=(a, port, stop_calm, q), daemon=True)
    calm.start()
    workers = [ctx.Process(target=churn_process, args=(i, a, port, stop_churn, q), daemon=True)
               for i in range(a.workers)]
    for w in workers:
        w.start()

    worker_stats: dict[int, dict] = {}
    finals: set[int] = set()
    calm_progress: dict = {}
    calm_final: dict | None = None
    rows: list[dict] = []
    server_died = None
    t0 = time.monotonic()
    load_s = a.minutes * 60
    warmup_s = a.warmup_minutes * 60

    csv_file = open(a.csv, "w", newline="")
    wr = csv.DictWriter(csv_file, fieldnames=FIELDS)
    wr.writeheader()

    def drain_queue(block_s: float = 0):
        nonlocal calm_final, calm_progress
        end = time.monotonic() + block_s
        while True:
            try:
                left = end - time.monotonic()
                kind, idx, data = q.get(timeout=left) if left > 0 else q.get_nowait()
            except queue.Empty:
                return
            if kind in ("stats", "final"):
                worker_stats[idx] = data
                if kind == "final":
                    finals.add(idx)
            elif kind == "calm-progress":
                calm_progress = data
            elif kind == "calm-final":
                calm_final = data

    def sample(phase: str) -> dict | None:
        nonlocal server_died
        if proc.poll() is not None:
            server_died = server_died or f"server exited with status {proc.returncode} during {phase}"
            return None
        try:
            s = proc_status(pid)
            fds = fd_count(pid)
            m = fetch_metrics(port)
        except (OSError, FileNotFoundError) as e:
            if proc.poll() is not None:
                server_died = server_died or f"server exited with status {proc.returncode} during {phase}"
                return None
            print(f"sample failed: {e}", flush=True)
            return None
        tot = sum_stats(worker_stats)
        row = {"t_s": round(time.monotonic() - t0, 1), "phase": phase,
               "rss_mb": round(s["VmRSS"] / 1024, 2), "rss_anon_mb": round(s.get("RssAnon", 0) / 1024, 2),
               "recv_pool_rss_mb": round(pool_rss_kb(pid, a.pool_kb) / 1024, 2),
               "fds": fds, "threads": s.get("Threads", 0)}
        for k, name in METRIC_KEYS.items():
            row[k] = int(m.get(name, -1))
        row.update({"client_started": int(tot.get("connections", 0)), "client_active": int(tot.get("active", 0)),
                    "client_websockets": int(tot.get("websockets", 0)),
                    "client_messages_sent": int(tot.get("messages-sent", 0)),
                    "client_messages_received": int(tot.get("messages-received", 0)),
                    "calm_received": int(calm_progress.get("received", 0))})
        rows.append(row)
        wr.writerow(row)
        csv_file.flush()
        print(f"[{row['t_s']:7.1f}s {phase:7}] RSS {row['rss_mb']:7.1f} MB  fds {fds:5}  conns {row['connections_open']:5}"
              f"  ws {row['websockets_open']:5}  rooms {row['rooms_active']:4}  accepted {row['accepted_total']:8}"
              f"  client active {row['client_active']:5}  calm {row['calm_received']}", flush=True)
        return row

    # Load phase
    next_sample = t0
    while time.monotonic() - t0 < load_s and server_died is None:
        drain_queue(max(0.0, min(0.5, next_sample - time.monotonic())))
        if time.monotonic() >= next_sample:
            el = time.monotonic() - t0
            sample("warmup" if el < warmup_s else "load")
            next_sample += a.sample_interval
    load_end = time.monotonic() - t0
    print("churn stops; waiting for in-flight clients (stalled ones wait for the server's timeouts)", flush=True)
    stop_churn.set()
    drain_deadline = time.monotonic() + a.heartbeat_timeout + a.heartbeat_interval + a.request_timeout \
        + a.op_timeout * 2 + a.drop_slack + 30
    while len(finals) < a.workers and time.monotonic() < drain_deadline and server_died is None:
        drain_queue(0.5)
        if time.monotonic() >= next_sample:
            sample("drain")
            next_sample += a.sample_interval
    workers_done = len(finals) == a.workers
    stop_calm.set()
    calm_deadline = time.monotonic() + 40
    while calm_final is None and time.monotonic() < calm_deadline:
        drain_queue(0.5)
    # Settle: the server's own timeouts and close deadlines clear the rest.
    settle_deadline = time.monotonic() + a.settle_timeout
    settled = False
    while time.monotonic() < settle_deadline and server_died is None:
        r = sample("settle")
        if r and r["connections_open"] <= 1 and r["websockets_open"] == 0 and r["rooms_active"] == 0:
            settled = True
            break
        time.sleep(2)
    # Final descriptors: a few readings (the metrics request of the sample above has closed by then).
    time.sleep(2)
    final_fds = []
    final_row = None
    for _ in range(3):
        if proc.poll() is not None:
            break
        final_fds.append(fd_count(pid))
        time.sleep(1)
    if proc.poll() is None:
        final_row = sample("final")
    fds_end = min(final_fds) if final_fds else -1
    for w in workers:
        w.join(timeout=5)
        if w.is_alive():
            w.kill()
    calm.join(timeout=5)
    if calm.is_alive():
        calm.kill()
    csv_file.close()

    # Server exit
    exit_note = ""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
            exit_note = f"exited with status {rc} after SIGTERM"
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_note = "did not exit within 20 s of SIGTERM (killed)"
    elif server_died is None:
        server_died = f"server exited with status {proc.returncode}"

    # ---- Analysis
    failures: list[str] = []
    if server_died:
        failures.append(server_died)
    after = [r for r in rows if r["phase"] == "load"]
    base = after[0]["rss_mb"] if after else None
    lq = [r["rss_mb"] for r in after if r["t_s"] >= load_end - (load_end - warmup_s) / 4]
    drift = max_drift = None
    if base and lq:
        drift = (statistics.median(lq) - base) / base * 100
        max_drift = (max(r["rss_mb"] for r in after) - base) / base * 100
        if drift >= a.rss_drift_limit:
            failures.append(f"RSS drift after warm-up {drift:.1f}% >= {a.rss_drift_limit}%")
    else:
        failures.append("no samples after the warm-up (run longer than --warmup-minutes)")
    if fds_end < 0 or abs(fds_end - fds_start) > a.fd_tolerance:
        failures.append(f"descriptors did not return to baseline: {fds_start} at start, {fds_end} at the end")
    if not settled:
        failures.append("the server still reported connections, WebSockets or rooms after the settle timeout")
    tot = sum_stats(worker_stats)
    if not workers_done:
        failures.append("churn workers did not finish (clients still waiting on the server)")
    for k in ("clean.echo-loss", "clean.unexpected-code", "clean.close-timeout", "clean.no-eof",
              "stall-frame.not-dropped", "stall-frame.unexpected-code", "stall-head.not-dropped",
              "oversize.unexpected", "bad-frame.unexpected", "talker.closed-by-server"):
        if tot.get(k):
            failures.append(f"churn: {k} x{int(tot[k])}: {tot['_notes'].get(k, [])[:3]}")
    for k, v in tot.items():
        if k.startswith("exception."):
            failures.append(f"churn client exception {k[10:]} x{int(v)}: {tot['_notes'].get('exception', [])[:2]}")
    if calm_final is None:
        failures.append("the calm room did not report")
    elif not calm_final.get("ok"):
        failures.append(f"calm room failed: {json.dumps({k: v for k, v in calm_final.items() if k != 'ok'})}")

    last = final_row or (rows[-1] if rows else {})
    lines = []
    L = lines.append
    L("Soak and churn: stateroom-server")
    L("")
    L(f"command:  {invocation}")
    L(f"server:   {shlex.join(server_cmd)}  (load side at nice +{a.load_nice})")
    L(f"host:     {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    L(f"churn:    {a.rate:g} new connections/s for {a.minutes:g} min, at most {a.max_concurrent} at once, "
      f"{a.rooms} rooms, {a.workers} workers; fractions stall-frame {a.stall_frame_frac}, stall-head "
      f"{a.stall_head_frac}, oversize {a.oversize_frac}, bad-frame {a.bad_frame_frac}, the rest half clean "
      f"close / half reset; {a.deflate_frac:.0%} offer permessage-deflate")
    L(f"timeouts: request {a.request_timeout:g} s, heartbeat every {a.heartbeat_interval:g} s, "
      f"silence limit {a.heartbeat_timeout:g} s; max message {a.max_message_size} B")
    L("")
    L("memory (VmRSS)")
    L(f"  start (no client)               {st0['VmRSS']/1024:8.1f} MB")
    if base:
        L(f"  baseline (first after warm-up)  {base:8.1f} MB   at {after[0]['t_s']:.0f} s")
        L(f"  last quarter median             {statistics.median(lq):8.1f} MB   drift {drift:+.2f}%  (limit {a.rss_drift_limit}%)")
        L(f"  max after warm-up               {max(r['rss_mb'] for r in after):8.1f} MB   drift {max_drift:+.2f}%")
        ex = [r["rss_mb"] - r["recv_pool_rss_mb"] for r in after]
        exq = [r["rss_mb"] - r["recv_pool_rss_mb"] for r in after if r["t_s"] >= load_end - (load_end - warmup_s) / 4]
        L(f"  of which receive-buffer pools   {after[0]['recv_pool_rss_mb']:8.1f} MB -> {statistics.median(r['recv_pool_rss_mb'] for r in after if r['t_s'] >= load_end - (load_end - warmup_s) / 4):.1f} MB"
          f" (bounded by {a.shards} x {a.pool_kb // 1024} MiB)")
        L(f"  RSS without those pools         {ex[0]:8.1f} MB -> {statistics.median(exq):.1f} MB   drift "
          f"{(statistics.median(exq) - ex[0]) / ex[0] * 100:+.2f}%  (for reading only; the limit applies to VmRSS)")
    if last:
        L(f"  after all clients left          {last.get('rss_mb', 0):8.1f} MB   (RssAnon {last.get('rss_anon_mb', 0):.1f} MB)")
    L("")
    L("descriptors")
    L(f"  start {fds_start}, end {fds_end} (readings {final_fds}; tolerance ±{a.fd_tolerance}); "
      f"peak {max((r['fds'] for r in rows), default=0)}")
    L(f"  server at the end: connections_open {last.get('connections_open')}, websockets_open "
      f"{last.get('websockets_open')}, rooms_active {last.get('rooms_active')}")
    L("")
    L("totals")
    L(f"  connections accepted (server)   {last.get('accepted_total')}")
    L(f"  rooms created (server)          {last.get('rooms_created_total')}")
    L(f"  messages received (server)      {last.get('messages_received_total')}")
    L(f"  heartbeat timeouts / protocol-error closes / HTTP errors (server): {last.get('heartbeat_timeouts_total')} / "
      f"{last.get('protocol_error_closes_total')} / {last.get('http_errors_total')}")
    L(f"  churn connections started       {int(tot.get('connections', 0))}  (WebSockets {int(tot.get('websockets', 0))}, "
      f"with deflate {int(tot.get('websockets.deflate', 0))}, max at once in one worker {int(tot.get('max-active', 0))}, "
      f"deferred at cap {int(tot.get('deferred-at-cap', 0))})")
    L("  by kind (started / finished as expected):")
    for k in KINDS:
        L(f"    {k:12} {int(tot.get('started.' + k, 0)):8} / {int(tot.get('finished.' + k, 0))}")
    L(f"  churn messages sent / received  {int(tot.get('messages-sent', 0))} / {int(tot.get('messages-received', 0))}")
    L(f"  stalled clients dropped after at most: mid-frame {tot.get('stall-frame.max-drop-s', 0):.1f} s, "
      f"mid-head {tot.get('stall-head.max-drop-s', 0):.1f} s")
    bad = {k[10:]: int(v) for k, v in tot.items() if k.startswith("bad-frame.") and k != "bad-frame.unexpected"}
    L(f"  bad frames sent: {bad}")
    other = {k: int(v) for k, v in tot.items() if k.startswith(("connect-error.", "handshake-refused", "talker."))}
    if other:
        L(f"  client-side errors: {other}")
    L("")
    L("calm room")
    if calm_final:
        cf = calm_final
        L(f"  {cf.get('clients')} clients, {cf.get('sent')} messages sent, {cf.get('received')} deliveries "
          f"(expected {cf.get('expected_deliveries')}); lost {cf.get('lost')}, reordered {cf.get('reordered')}, "
          f"duplicates {cf.get('duplicates')}, missing at end {cf.get('missing_at_end')}, "
          f"unexpected closes {len(cf.get('unexpected_closes', []))}, close codes {cf.get('close_codes')}")
        if "p99_latency_ms" in cf:
            L(f"  latency median {cf['median_latency_ms']:.2f} ms, p99 {cf['p99_latency_ms']:.2f} ms, "
              f"max {cf['max_latency_ms']:.1f} ms")
        L(f"  verdict: {'PASS' if cf.get('ok') else 'FAIL'}")
    else:
        L("  verdict: FAIL (no report)")
    L("")
    L(f"server: {server_died or exit_note}")
    L("")
    L("RESULT: " + ("PASS" if not failures else "FAIL"))
    for f in failures:
        L(f"  - {f}")
    text = "\n".join(lines) + "\n"
    Path(a.summary).write_text(text)
    if rows:
        Path(a.svg).write_text(svg_chart(rows, warmup_s, load_end, base))
    print(text)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
