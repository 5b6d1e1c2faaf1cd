"""Backpressure: a client that stops reading is closed with 1008 once its queued outbound bytes
pass ``--max-pending-bytes``, while the room and its other clients carry on.

Sizing: on loopback the kernel autotunes the *server's* socket send buffer up to
``net.ipv4.tcp_wmem[2]`` (4 MiB by default); measured, ~3 MB to a client with a 4 KiB receive
buffer disappear into kernel buffers before a single byte is left queued in user space. So the
test sends 2000 messages whose total is ``2 * tcp_wmem[2] + 1 MiB`` (about 4.7 KiB each with
the default sysctl, at least 1 KiB), which is sure to push the slow client past the 64 KiB cap.
The sender uses a small window (messages sent but not yet received by every good reader, 24 KiB
worth): the server counts bytes in flight as queued, so an unpaced burst bigger than the cap
arriving in one event-loop turn would (legitimately) close the *good* readers too.

Verdict on the slow client (read after the good readers are done, with a deadline):
* it reads a (possibly empty) in-order prefix of the messages, then a close frame: the code
  must be 1008 and nothing may follow it -> pass;
* the TCP connection ends (EOF or RST) without any close frame -> pass only if the server's
  slow-client counter in /metrics went up (the close frame can legitimately be lost when the
  server force-closes after its grace period); if the counter is not exposed -> fail;
* it is still connected and no close frame arrived by the deadline -> fail (no backpressure).
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
import time

import wsraw
from wsraw import OP_BINARY, OP_CLOSE, RawWebSocket, expect, recv, run, ws_connect

MAX_PENDING = 65536
N_MESSAGES = 2000
SLOW_METRIC_NAMES = ("stateroom_slow_client_closes_total",)


def _tcp_wmem_max() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


MSG_SIZE = max(1024, math.ceil((2 * _tcp_wmem_max() + (1 << 20)) / N_MESSAGES))
_FILLER = os.urandom(MSG_SIZE)
#: messages in flight (sent, not yet received by every good reader): 24 KiB at most
WINDOW = max(1, (24 * 1024) // MSG_SIZE)


def message(i: int) -> bytes:
    return struct.pack("!I", i) + _FILLER[4:]


def read_slow_client(slow: RawWebSocket, timeout: float = 15.0) -> tuple[list[wsraw.Frame], str]:
    """Read every frame the slow client can get until a close frame, EOF/RST or the deadline."""
    frames: list[wsraw.Frame] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            f = slow.recv_frame(max(0.01, deadline - time.monotonic()))
        except wsraw.PeerClosed as e:
            return frames, ("reset" if e.reset else "eof")
        except TimeoutError:
            break
        frames.append(f)
        if f.opcode == OP_CLOSE:
            return frames, "close frame"
    return frames, "deadline"


def test_slow_client_closed_with_1008_room_carries_on(server_factory):
    server = server_factory("--max-pending-bytes", str(MAX_PENDING), service="relay")
    url = server.ws_url("bp")
    slow_before = server.metric(*SLOW_METRIC_NAMES)

    received = [0, 0, 0]
    progress = asyncio.Event()

    async def drain(r, ws):
        out = []
        for _ in range(N_MESSAGES):
            out.append(await recv(ws, 15))
            received[r] += 1
            progress.set()
        return out

    async def main(slow: RawWebSocket):
        readers = [await ws_connect(url) for _ in range(3)]
        try:
            # 1. a sender floods the room; the three good readers get everything, in order.
            # Flow control: at most WINDOW messages sent but not yet received by every good
            # reader, so a good reader never has more than WINDOW * MSG_SIZE (< the cap) queued
            # in the server, whatever the scheduling; the slow client's queue grows unbounded.
            tasks = [asyncio.create_task(drain(r, ws)) for r, ws in enumerate(readers)]
            sender = readers[0]  # also a reader: it gets its own messages back
            for i in range(N_MESSAGES):
                while i - min(received) >= WINDOW:
                    progress.clear()
                    try:
                        await asyncio.wait_for(progress.wait(), 15)
                    except asyncio.TimeoutError:
                        raise AssertionError(f"good readers stalled at {received} of {i} sent") from None
                    for t in tasks:  # a reader that failed: surface its error now
                        if t.done() and t.exception():
                            raise t.exception()
                await sender.send(message(i))
            results = await asyncio.gather(*tasks)
            for r, got in enumerate(results):
                for i, m in enumerate(got):
                    if m != message(i):
                        idx = struct.unpack("!I", m[:4])[0] if isinstance(m, bytes) and len(m) >= 4 else None
                        raise AssertionError(f"reader {r}: message {i} wrong (index {idx}, {len(m)} bytes)")

            # 2. the slow client now reads whatever it can get
            frames, ended_by = await asyncio.to_thread(read_slow_client, slow)
            data = [f for f in frames if f.opcode != OP_CLOSE]
            for i, f in enumerate(data):
                assert f.opcode == OP_BINARY and f.fin, f"slow client frame {i}: {f!r}"
                assert f.payload == message(i), (
                    f"slow client frame {i} is not message {i} "
                    f"(index {struct.unpack('!I', f.payload[:4])[0] if len(f.payload) >= 4 else None})")
            summary = (f"slow client read {len(data)} of {N_MESSAGES} messages "
                       f"({sum(len(f.payload) for f in data)} bytes), ended by {ended_by}")
            print(summary)
            assert len(data) < N_MESSAGES, f"no backpressure at all: {summary}"
            if ended_by == "close frame":
                code = frames[-1].close_code
                assert code == 1008, f"{summary}; close code {code}, want 1008"
                try:
                    slow.send_close(1008)  # complete the handshake (the server may be gone already)
                except OSError:
                    pass
            elif ended_by in ("eof", "reset"):
                slow_after = await asyncio.to_thread(server.metric, *SLOW_METRIC_NAMES)
                assert slow_after is not None and slow_before is not None, (
                    f"{summary}: TCP closed without a 1008 close frame, and /metrics exposes no "
                    f"slow-client counter to show it was a backpressure close")
                assert slow_after > slow_before, (
                    f"{summary}: TCP closed without a 1008 close frame and the slow-client counter "
                    f"did not move ({slow_before} -> {slow_after})")
            else:
                raise AssertionError(f"{summary}: still connected after 15 s, no close frame")

            # 3. the room carries on: the good readers still get messages, a newcomer too
            async with ws_connect(url) as newcomer:
                await readers[1].send(b"after")
                for ws in (*readers, newcomer):
                    await expect(ws, b"after")
        finally:
            await asyncio.gather(*(ws.close() for ws in readers), return_exceptions=True)

    # the slow client: small receive buffer (set before connect), handshakes, then never reads
    with RawWebSocket.connect(server.host, server.port, "/ws/bp", rcvbuf=4096) as slow:
        run(main(slow), 60)

    slow_after = server.metric(*SLOW_METRIC_NAMES)
    assert slow_after is not None and slow_before is not None and slow_after >= slow_before + 1, \
        f"slow-client counter {slow_before} -> {slow_after}"
    resp = wsraw.http_get(server.host, server.port, "/status")
    assert resp.status == 200 and resp.body.strip() == b"ok", resp
    server.assert_alive()
