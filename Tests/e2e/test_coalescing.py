"""Send coalescing (`--coalesce-ms`) and the gathering of small frames into one send.

A client whose previous send carried four or more frames is busy: its next frames wait up to the
window so they leave together. A client that receives one frame at a time, or that has itself sent
something within the window, is never held. Either way nothing is lost or reordered.
"""
from __future__ import annotations

import time

from wsraw import OP_TEXT, RawWebSocket, encode_frame

HELD = ("stateroom_sends_held_total",)
SENDS = ("stateroom_sends_submitted_total",)
FRAMES = ("stateroom_frames_queued_total",)


def text(i: int, size: int = 6) -> bytes:
    return f"m{i:05d}".encode().ljust(size, b".")


def burst(ws: RawWebSocket, start: int, count: int, size: int = 6) -> None:
    """`count` text messages in one TCP write, so the server reads them in one go."""
    ws.send_raw(b"".join(encode_frame(OP_TEXT, text(i, size)) for i in range(start, start + count)))


def expect_messages(ws: RawWebSocket, start: int, count: int, who: str, size: int = 6) -> None:
    for i in range(start, start + count):
        op, payload = ws.recv_message(timeout=10)
        assert (op, payload) == (OP_TEXT, text(i, size)), f"{who}: message {i} was {payload[:20]!r}"


def test_busy_clients_are_held_and_get_everything_in_order(server_factory):
    server = server_factory("--coalesce-ms", "300", service="relay", shards=1)
    clients = [RawWebSocket.connect(server.host, server.port, "/ws/coalesce") for _ in range(3)]
    sender = clients[0]  # the relay sends to everyone, the sender included
    try:
        time.sleep(0.4)  # the receivers' last words (their upgrade requests) are now older than the window
        # First burst: every client gets a send of many frames, which marks it busy.
        burst(sender, 0, 200)
        for n, ws in enumerate(clients):
            expect_messages(ws, 0, 200, f"client {n}")
        held_before = server.metric(*HELD) or 0
        # Smaller bursts within the window (fewer frames than fill a send): held, then sent
        # together, still complete and in order.
        for start in (200, 220, 240):
            burst(sender, start, 20)
            for n, ws in enumerate(clients):
                expect_messages(ws, start, 20, f"client {n}")
        held = server.metric(*HELD)
        sends, frames = server.metric(*SENDS), server.metric(*FRAMES)
        assert held is not None and held > held_before, f"no send was held (held {held_before} -> {held})"
        assert sends is not None and frames is not None and sends < frames / 4, \
            f"{sends} sends for {frames} frames: frames were not gathered"
    finally:
        for ws in clients:
            ws.close()


def test_a_client_receiving_one_frame_at_a_time_is_never_held(server_factory):
    server = server_factory("--coalesce-ms", "1000", service="relay", shards=1)
    a = RawWebSocket.connect(server.host, server.port, "/ws/quiet")
    b = RawWebSocket.connect(server.host, server.port, "/ws/quiet")
    try:
        for i in range(20):
            # One message at a time, each answered before the next: nothing to gather.
            a.send_text(f"m{i:05d}")
            expect_messages(a, i, 1, "sender")
            expect_messages(b, i, 1, "receiver")
        assert server.metric(*HELD) == 0
    finally:
        a.close()
        b.close()


def test_a_client_that_talks_is_not_held(server_factory):
    server = server_factory("--coalesce-ms", "500", service="relay", shards=1)
    a, b, c = (RawWebSocket.connect(server.host, server.port, "/ws/talk") for _ in range(3))
    try:
        time.sleep(0.6)  # all three silent for longer than the window
        burst(b, 0, 100)  # every client gets a send of many frames: all three are busy now
        for n, ws in enumerate((a, b, c)):
            expect_messages(ws, 0, 100, f"client {n}")
        held_before = server.metric(*HELD) or 0
        # a talks, then its own message comes back: a and b (which sent the burst) have spoken
        # within the window and get it at once; only silent c is held.
        a.send_text("m00100")
        for n, ws in enumerate((a, b, c)):
            expect_messages(ws, 100, 1, f"client {n}")
        assert (server.metric(*HELD) or 0) - held_before == 1
    finally:
        for ws in (a, b, c):
            ws.close()


def test_holding_never_makes_a_client_look_slow(server_factory):
    """A held client's queue stays under the slow-client cap: it is sent to once it has half."""
    server = server_factory("--coalesce-ms", "500", "--max-pending-bytes", "4096", service="relay", shards=1)
    a, c = (RawWebSocket.connect(server.host, server.port, "/ws/cap") for _ in range(2))
    try:
        time.sleep(0.6)  # c silent for longer than the window
        burst(a, 0, 100)  # c gets one send of many frames: busy
        expect_messages(c, 0, 100, "c")
        burst(a, 100, 5)  # held
        for start in (105, 130):  # two more turns of ~2.7 KB each while c would still be held
            time.sleep(0.05)
            burst(a, start, 25, size=100)
        expect_messages(c, 100, 5, "c")
        expect_messages(c, 105, 50, "c", size=100)
        assert server.metric("stateroom_slow_client_closes_total") == 0
    finally:
        a.close()
        c.close()


def test_with_coalescing_off_nothing_is_held(server_factory):
    server = server_factory("--coalesce-ms", "0", service="relay", shards=1)
    clients = [RawWebSocket.connect(server.host, server.port, "/ws/default") for _ in range(2)]
    try:
        for start in (0, 300):
            burst(clients[0], start, 300)
            for n, ws in enumerate(clients):
                expect_messages(ws, start, 300, f"client {n}")
        assert server.metric(*HELD) == 0
    finally:
        for ws in clients:
            ws.close()


def test_a_client_let_go_early_and_held_again_holds_up_nobody(server_factory):
    """Held clients leave at most one window after they were held, in hold order. b, a and c are
    held in that order; a's queue then reaches half the slow-client cap, so a goes out at once
    and is held again right after, with a later deadline. a's first place in the hold queue,
    which reaches the front once b has gone, must not keep c waiting for a's new deadline."""
    window = 0.4
    server = server_factory("--coalesce-ms", str(int(window * 1000)), "--coalesce-max-ms", "0",
                            "--max-pending-bytes", "4096", service="relay", shards=1)
    pairs = {name: tuple(RawWebSocket.connect(server.host, server.port, f"/ws/early-{name}") for _ in range(2))
             for name in "bac"}
    (sb, b), (sa, a), (sc, c) = pairs["b"], pairs["a"], pairs["c"]
    try:
        time.sleep(window + 0.1)  # a, b and c silent for longer than the window
        for sender, receiver, name in ((sb, b, "b"), (sa, a, "a"), (sc, c, "c")):
            burst(sender, 0, 10)  # one send of many frames: busy
            expect_messages(receiver, 0, 10, name)
        c_busy_at = time.monotonic()  # c's last send went out no later than this
        for sender in (sb, sa, sc):  # held in this order
            sender.send_text(text(10))
            time.sleep(0.02)
        time.sleep(0.15)
        burst(sa, 11, 3, size=1000)  # a's queue passes 2 KB: a goes out at once, 4 frames
        expect_messages(a, 10, 1, "a")
        expect_messages(a, 11, 3, "a", size=1000)
        sa.send_text(text(14))  # a held again, its deadline ~0.2 s after c's
        expect_messages(b, 10, 1, "b")
        expect_messages(c, 10, 1, "c")
        waited = time.monotonic() - c_busy_at
        assert waited < window + 0.12, f"c was held {waited:.3f} s, more than its {window} s window"
        expect_messages(a, 14, 1, "a")
        assert server.metric(*HELD) >= 4
    finally:
        for pair in pairs.values():
            for ws in pair:
                ws.close()
