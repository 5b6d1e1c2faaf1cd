"""Core behaviour of the real server: HTTP routes, the four built-in services, rooms, frames,
close handshake, shards, fan-out, heartbeats.

Assumption used throughout: once a client's opening handshake has completed (101 received),
the server has joined it to its room, so a message sent afterwards by anyone reaches it.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import wsraw
from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWebSocket,
                   expect, recv, run, ws_connect)


# --------------------------------------------------------------------------------------------
# HTTP routes
# --------------------------------------------------------------------------------------------


def test_status_ok(server):
    resp = wsraw.http_get(server.host, server.port, "/status")
    assert resp.status == 200, resp
    # the body is "ok"; a trailing newline would be tolerated
    assert resp.body.strip() == b"ok", resp


def test_status_keep_alive_two_requests_one_connection(server):
    sock = wsraw.BufferedSocket(wsraw.open_socket(server.host, server.port))
    try:
        for i in range(2):
            sock.send(wsraw.http_request_bytes("GET", "/status"))
            resp = wsraw.read_http_response(sock, time.monotonic() + 5)
            assert resp.status == 200, f"request {i + 1} on the connection: {resp!r}"
            assert resp.body.strip() == b"ok", resp
            assert (resp.header("connection") or "").lower() != "close", f"request {i + 1}: {resp!r}"
    finally:
        sock.close()


def test_status_pipelined_requests(server):
    """Two requests in one write: both answered, in order (HTTP/1.1 pipelining)."""
    raw = wsraw.http_request_bytes("GET", "/status") + wsraw.http_request_bytes("GET", "/metrics")
    ex = wsraw.http_exchange(server.host, server.port, raw, count=2, expect_close=False)
    assert ex.responses[0].status == 200 and ex.responses[0].body.strip() == b"ok", ex.responses[0]
    assert ex.responses[1].status == 200, ex.responses[1]


def test_metrics_ok(server):
    resp = wsraw.http_get(server.host, server.port, "/metrics")
    assert resp.status == 200, resp
    ctype = resp.header("content-type") or ""
    assert ctype.startswith("text/plain"), f"Content-Type {ctype!r}"


# --------------------------------------------------------------------------------------------
# counter service and rooms
# --------------------------------------------------------------------------------------------


def test_counter_seed_scenario(server):
    """The seed README: two clients on /ws, increment -> both see 1, decrement -> both see 0."""
    run(wsraw.seed_counter_scenario(server))


def test_rooms_are_isolated(server):
    async def main():
        async with ws_connect(server.ws_url("a")) as a, ws_connect(server.ws_url("b")) as b:
            await a.send("increment")
            await expect(a, "new value: 1")
            await a.send("increment")
            await expect(a, "new value: 2")
            await b.send("increment")
            await expect(b, "new value: 1")
            await b.send("decrement")
            await b.send("decrement")
            await expect(b, "new value: 0")
            await expect(b, "new value: -1")
            await a.send("increment")
            await expect(a, "new value: 3")
    run(main())


@pytest.mark.parametrize("alias,canonical", [("", "1"), ("r%41", "rA"), ("%61%2D%5F%2e%7E", "a-_.~")],
                         ids=["ws_is_room_1", "percent_encoded", "percent_encoded_unreserved"])
def test_room_aliases_are_the_same_room(server, alias, canonical):
    """/ws is room "1"; a percent-encoded id is the same room as its decoded form."""
    async def main():
        alias_url = server.ws_url() if alias == "" else server.ws_url(alias)
        async with ws_connect(alias_url) as a, ws_connect(server.ws_url(canonical)) as b:
            await a.send("increment")
            await expect(a, "new value: 1")
            await expect(b, "new value: 1")
            await b.send("increment")
            await expect(a, "new value: 2")
            await expect(b, "new value: 2")
    run(main())


def test_room_resets_after_last_client_leaves(server):
    async def main():
        async with ws_connect(server.ws_url("reset")) as a, ws_connect(server.ws_url("reset")) as b:
            await a.send("increment")
            await a.send("increment")
            await expect(a, "new value: 1")
            await expect(a, "new value: 2")
            await expect(b, "new value: 1")
            await expect(b, "new value: 2")
        # both closed (close handshake completed): the room is gone
        async with ws_connect(server.ws_url("reset")) as c:
            await c.send("increment")
            await expect(c, "new value: 1")
        # and again, one client only
        async with ws_connect(server.ws_url("reset")) as d:
            await d.send("decrement")
            await expect(d, "new value: -1")
    run(main())


def test_room_resets_with_shards_on_every_cycle(server_factory):
    """Connect / increment / close, ten times per room, rooms spread over 3 shards (so most
    connections are handed over): every cycle starts from a fresh room."""
    server = server_factory(shards=3)

    async def main():
        for cycle in range(10):
            for room in ("cyc-a", "cyc-b", "cyc-c"):
                async with ws_connect(server.ws_url(room)) as ws:
                    await ws.send("increment")
                    await expect(ws, "new value: 1")
    run(main())


@pytest.mark.parametrize("headers", [
    [("upgrade", "WebSocket"), ("connection", "keep-alive, Upgrade")],   # Firefox style
    [("UPGRADE", "websocket"), ("CONNECTION", "upgrade")],
    [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Protocol", "chat"),
     ("Sec-WebSocket-Extensions", "x-webkit-deflate-frame, x-unknown; p=1"),
     ("Origin", "http://example.com"), ("User-Agent", "e2e")],
], ids=["firefox_connection_list", "upper_case_names", "extra_headers"])
def test_handshake_header_variants(server, headers):
    """Header names are case-insensitive, Connection is a token list; unknown extensions and
    subprotocols are simply not accepted (no RSV bits, no Sec-WebSocket-Extensions echoed;
    permessage-deflate is test_compression.py's)."""
    key = wsraw.new_key()
    req = wsraw.http_request_bytes("GET", "/ws/variants", headers=headers + [
        ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")])
    bs = wsraw.BufferedSocket(wsraw.open_socket(server.host, server.port))
    bs.send(req)
    resp = wsraw.read_http_response(bs, time.monotonic() + 5, head_only=True)
    assert resp.status == 101, resp
    assert resp.header("sec-websocket-accept") == wsraw.accept_for(key), resp
    assert resp.header("sec-websocket-extensions") is None, resp
    with RawWebSocket(bs, resp) as raw:
        raw.send_text("increment")
        assert raw.recv_message(5) == (OP_TEXT, b"new value: 1")


# --------------------------------------------------------------------------------------------
# echo, relay, chat services
# --------------------------------------------------------------------------------------------


def test_echo_service_exact_strings(server_factory):
    server = server_factory(service="echo")

    async def main():
        url = server.ws_url("echo")
        async with ws_connect(url) as c1:
            await expect(c1, "User ClientId(1) connected.")
            async with ws_connect(url) as c2:
                await expect(c2, "User ClientId(2) connected.")
                # c1 is not told about c2's arrival: its next message is the broadcast below
                await c1.send(b"\x00binary is ignored")
                await c1.send("hello")
                await expect(c1, "User ClientId(1) sent 'hello'")
                await expect(c2, "User ClientId(1) sent 'hello'")
                await c2.send("h\u00e9 \U0001F30D 'quoted'")
                await expect(c1, "User ClientId(2) sent 'h\u00e9 \U0001F30D 'quoted''")
                await expect(c2, "User ClientId(2) sent 'h\u00e9 \U0001F30D 'quoted''")
            await expect(c1, "User ClientId(2) left.")
            # ids are never reused within the room's life
            async with ws_connect(url) as c3:
                await expect(c3, "User ClientId(3) connected.")
                await c3.send("x")
                await expect(c1, "User ClientId(3) sent 'x'")
                await expect(c3, "User ClientId(3) sent 'x'")
            await expect(c1, "User ClientId(3) left.")
        # the room died with its last client: ids start again at 1
        async with ws_connect(url) as c4:
            await expect(c4, "User ClientId(1) connected.")
    run(main())


RELAY_SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20]


def test_relay_text_and_binary_byte_for_byte(server_factory):
    server = server_factory(service="relay")

    async def main():
        url = server.ws_url("relay")
        async with ws_connect(url) as sender, ws_connect(url) as other:
            for size in RELAY_SIZES:
                data = wsraw.payload_with_all_bytes(size)
                await sender.send(data)
                for who, ws in (("sender", sender), ("other", other)):
                    got = await recv(ws, 10)
                    assert isinstance(got, bytes), f"{who}: binary came back as {type(got)}"
                    assert got == data, f"{who}: binary of {size} bytes differs (got {len(got)} bytes)"
            for size in RELAY_SIZES:
                # multi-byte UTF-8 throughout, cut to the exact byte size with ASCII filler
                unit = "a\u00e9\u20ac\U0001F600"  # 1 + 2 + 3 + 4 bytes
                text = (unit * (size // 10 + 1)).encode()[: size - size % 10].decode() + "z" * (size % 10)
                assert len(text.encode()) == size
                await sender.send(text)
                for who, ws in (("sender", sender), ("other", other)):
                    got = await recv(ws, 10)
                    assert isinstance(got, str), f"{who}: text came back as {type(got)}"
                    assert got == text, f"{who}: text of {size} bytes differs"
    run(main(), 60)


def test_relay_default_limit_16_mib_accepted(server_factory):
    """The default --max-message-size is 16 MiB: a message of exactly 16 MiB goes through, to a
    client that reads it (so it must not trip the 4 MiB default --max-pending-bytes cap)."""
    from websockets.exceptions import ConnectionClosed
    server = server_factory(service="relay")

    async def main():
        async with ws_connect(server.ws_url("huge")) as ws:
            data = os.urandom(16 << 20)
            try:
                await ws.send(data)
                got = await recv(ws, 20)
            except ConnectionClosed as e:
                raise AssertionError(
                    f"a reading client was closed while a 16 MiB message was relayed to it: "
                    f"{e.rcvd.code if e.rcvd else None} {e.rcvd.reason if e.rcvd else ''!r}") from None
            assert got == data, f"16 MiB message came back as {len(got)} bytes"
    run(main(), 40)


def test_chat_service_with_nick(server_factory):
    server = server_factory(service="chat")

    async def main():
        url = server.ws_url("chat")
        async with ws_connect(url) as c1:
            await expect(c1, "Welcome, client1!")
            async with ws_connect(url) as c2:
                await expect(c2, "Welcome, client2!")
                await expect(c1, "client2 has joined the chat")
                await c1.send("/nick alice")
                await expect(c1, "client1 is now known as alice")
                await expect(c2, "client1 is now known as alice")
                await c1.send("hi there")
                await expect(c1, "alice: hi there")
                await expect(c2, "alice: hi there")
                await c2.send("yo")
                await expect(c1, "client2: yo")
                await expect(c2, "client2: yo")
                await c2.send("/nick bob")
                await expect(c1, "client2 is now known as bob")
                await expect(c2, "client2 is now known as bob")
            await expect(c1, "bob has left the chat")
    run(main())


# --------------------------------------------------------------------------------------------
# frames: fragmentation, ping/pong, close handshake
# --------------------------------------------------------------------------------------------


def test_fragmented_message_with_ping_between_is_delivered_whole(server_factory):
    server = server_factory(service="relay")

    async def main():
        async with ws_connect(server.ws_url("frag")) as observer:
            raw = RawWebSocket.connect(server.host, server.port, "/ws/frag")
            with raw:
                raw.send_frame(OP_TEXT, b"Hello, ", fin=False)
                raw.send_frame(OP_CONT, "fr\u00e4g".encode(), fin=False)
                raw.ping(b"in-between")
                raw.send_frame(OP_CONT, b"mented!", fin=True)
                pongs: list = []
                op, payload = await asyncio.to_thread(raw.recv_message, 5, pongs=pongs)
                assert (op, payload) == (OP_TEXT, "Hello, fr\u00e4gmented!".encode())
                if not pongs:  # the pong may come after the relayed message: look for it
                    f = await asyncio.to_thread(raw.recv_frame, 5)
                    pongs.append(f)
                assert pongs[0].opcode == OP_PONG and pongs[0].payload == b"in-between", pongs
                await expect(observer, "Hello, fr\u00e4gmented!")
    run(main())


def test_fragmented_counter_command(server):
    """Fragments are reassembled before the service sees them: 'inc'+'rem'+'ent' is a command."""
    with RawWebSocket.connect(server.host, server.port, "/ws/fragcount") as raw:
        raw.send_frame(OP_TEXT, b"inc", fin=False)
        raw.ping(b"p")
        raw.send_frame(OP_CONT, b"rem", fin=False)
        raw.send_frame(OP_CONT, b"ent", fin=True)
        assert raw.recv_message(5) == (OP_TEXT, b"new value: 1")


@pytest.mark.parametrize("payload", [b"", b"hello-ping", bytes(range(125))], ids=["empty", "short", "125"])
def test_ping_gets_pong_with_same_payload(server, payload):
    with RawWebSocket.connect(server.host, server.port, "/ws/ping") as raw:
        raw.ping(payload)
        f = raw.recv_frame(5)
        assert f.opcode == OP_PONG, f
        assert f.fin and f.rsv == 0 and not f.masked, f
        assert f.payload == payload


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4000, 4999])
def test_close_handshake_echoes_code_then_closes_tcp(server, code):
    with RawWebSocket.connect(server.host, server.port, "/ws/close") as raw:
        raw.send_close(code, b"bye")
        f = raw.recv_frame(5)
        assert f.opcode == OP_CLOSE, f
        assert not f.masked, f
        assert f.close_code == code, f
        assert raw.wait_closed(3), "server did not close TCP within 3 s after the close handshake"


def test_close_without_code_is_answered(server):
    """An empty close frame is legal; the server answers with a close frame and closes TCP."""
    with RawWebSocket.connect(server.host, server.port, "/ws/close0") as raw:
        raw.send_close(None)
        f = raw.recv_frame(5)
        assert f.opcode == OP_CLOSE, f
        assert f.close_code in (wsraw.NO_STATUS, 1000), f
        assert raw.wait_closed(3)


def test_websockets_client_close_is_clean(server):
    async def main():
        ws_cm = ws_connect(server.ws_url("wsclose"))
        ws = await ws_cm
        await ws.close(code=4000, reason="done")
        # the server's close frame came back with the same code
        assert ws.close_code == 4000, (ws.close_code, ws.close_reason)
    run(main())


# --------------------------------------------------------------------------------------------
# shards and fan-out
# --------------------------------------------------------------------------------------------


def test_shards_many_rooms_independent(server_factory):
    server = server_factory(shards=3)
    rooms = [f"shard-room-{i}" for i in range(12)]

    async def one_room(room: str):
        async with ws_connect(server.ws_url(room)) as a, ws_connect(server.ws_url(room)) as b, \
                ws_connect(server.ws_url(room)) as c:
            clients = [a, b, c]
            value = 0
            for step, cmd in enumerate(["increment"] * 3 + ["decrement"] * 4):
                await clients[step % 3].send(cmd)
                value += 1 if cmd == "increment" else -1
                for ws in clients:
                    await expect(ws, f"new value: {value}")
            assert value == -1

    async def main():
        await asyncio.gather(*(one_room(r) for r in rooms))

    run(main())
    # 36 connections on 3 shards: some were accepted on a shard that doesn't own the room
    assert (server.metric("stateroom_handoffs_total") or 0) > 0, "36 connections over 12 rooms on 3 shards, but no handoff counted"


def test_many_clients_receive_all_messages_in_order(server_factory):
    server = server_factory(service="relay")
    n_clients, n_messages = 200, 50

    async def main():
        url = server.ws_url("crowd")
        sem = asyncio.Semaphore(50)

        async def open_one():
            async with sem:
                return await ws_connect(url)

        clients = await asyncio.gather(*(open_one() for _ in range(n_clients)))
        try:
            async def drain(ws):
                return [await recv(ws, 10) for _ in range(n_messages)]

            readers = [asyncio.create_task(drain(ws)) for ws in clients]
            sender = clients[0]
            expected = [f"msg {i:03d}" for i in range(n_messages)]
            for m in expected:
                await sender.send(m)
            results = await asyncio.gather(*readers)
            for i, got in enumerate(results):
                assert got == expected, f"client {i} received {got[:5]}... (not all 50 in order)"
        finally:
            await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)

    run(main(), 60)


# --------------------------------------------------------------------------------------------
# heartbeat
# --------------------------------------------------------------------------------------------


def test_heartbeat_drops_silent_client_keeps_live_one(server_factory):
    server = server_factory("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2")

    def silent_raw_client():
        """Never sends a byte after the handshake; reads whatever comes until TCP closes."""
        start = time.monotonic()
        frames = []
        closed = False
        with RawWebSocket.connect(server.host, server.port, "/ws/hb-raw") as raw:
            deadline = start + 8
            while time.monotonic() < deadline:
                try:
                    frames.append(raw.recv_frame(max(0.01, deadline - time.monotonic())))
                except wsraw.PeerClosed:
                    closed = True
                    break
                except TimeoutError:
                    break
        return frames, closed, time.monotonic() - start

    async def live_client():
        async with ws_connect(server.ws_url("hb-ws")) as ws:
            await asyncio.sleep(4)
            await ws.send("increment")
            await expect(ws, "new value: 1")  # still connected, still works

    async def main():
        raw_task = asyncio.create_task(asyncio.to_thread(silent_raw_client))
        await live_client()
        return await raw_task

    frames, closed, elapsed = run(main())
    print(f"silent client: closed={closed} after {elapsed:.2f}s; frames: {frames}")
    pings = [f for f in frames if f.opcode == OP_PING]
    assert pings, f"no ping frame seen by the silent client in {elapsed:.1f}s; frames: {frames}"
    assert all(not f.masked for f in frames)
    assert closed, f"silent client still connected after {elapsed:.1f}s; frames: {frames}"
    assert elapsed <= 6.5, f"silent client dropped only after {elapsed:.1f}s (timeout 2s)"
    closes = [f for f in frames if f.opcode == OP_CLOSE]
    assert len(closes) == 1, f"expected one close frame before the TCP close, got {closes}; frames: {frames}"
    assert frames[-1].opcode == OP_CLOSE, f"data after the close frame: {frames}"
    assert closes[0].close_code == 1001, f"silent client closed with {closes[0].close_code}, not 1001 (going away)"
    assert closes[0].close_reason == b"heartbeat timeout", f"close reason {closes[0].close_reason!r}"


# --------------------------------------------------------------------------------------------
# byte-stream boundaries: coalesced and dribbled input
# --------------------------------------------------------------------------------------------


def _upgrade_with_first_frame(server, room: str, frame: bytes) -> RawWebSocket:
    """Handshake request and a first frame in ONE write: the frame bytes arrive together with
    the request head (and must survive a handoff to the room's shard)."""
    bs = wsraw.BufferedSocket(wsraw.open_socket(server.host, server.port))
    key = wsraw.new_key()
    bs.send(wsraw.upgrade_request(f"/ws/{room}", key=key) + frame)
    resp = wsraw.read_http_response(bs, time.monotonic() + 5, head_only=True)
    assert resp.status == 101, resp
    assert resp.header("sec-websocket-accept") == wsraw.accept_for(key), resp
    return RawWebSocket(bs, resp)


def test_handshake_and_first_frame_in_one_write_across_shards(server_factory):
    server = server_factory(shards=3)
    for i in range(12):
        room = f"coalesced-{i}"
        first = wsraw.encode_frame(OP_TEXT, b"increment") + wsraw.encode_frame(OP_PING, b"pp")
        with _upgrade_with_first_frame(server, room, first) as raw:
            pongs: list = []
            assert raw.recv_message(5, pongs=pongs) == (OP_TEXT, b"new value: 1"), room
            raw.send_text("increment")
            assert raw.recv_message(5, pongs=pongs) == (OP_TEXT, b"new value: 2"), room
            assert [p.payload for p in pongs] == [b"pp"], pongs
    assert (server.metric("stateroom_handoffs_total") or 0) > 0, "12 rooms on 3 shards, but no handoff counted"


def test_dribbled_handshake_and_frames(server_factory):
    """Request head and frames delivered a few bytes at a time, and a big frame in odd chunks."""
    server = server_factory(service="relay")
    import random
    rnd = random.Random(1234)
    bs = wsraw.BufferedSocket(wsraw.open_socket(server.host, server.port))
    key = wsraw.new_key()
    req = wsraw.upgrade_request("/ws/dribble", key=key)
    for i in range(0, len(req), 7):
        bs.send(req[i:i + 7])
        time.sleep(0.002)
    resp = wsraw.read_http_response(bs, time.monotonic() + 5, head_only=True)
    assert resp.status == 101 and resp.header("sec-websocket-accept") == wsraw.accept_for(key), resp
    with RawWebSocket(bs, resp) as raw:
        small = wsraw.encode_frame(OP_TEXT, "h\u00e9llo \U0001F30D".encode())
        for b in small:
            raw.send_raw(bytes([b]))
            time.sleep(0.002)
        assert raw.recv_message(5) == (OP_TEXT, "h\u00e9llo \U0001F30D".encode())
        payload = wsraw.payload_with_all_bytes(100_000)
        big = wsraw.encode_frame(OP_BINARY, payload)
        pos = 0
        while pos < len(big):
            n = rnd.randint(1, 5000)
            raw.send_raw(big[pos:pos + n])
            pos += n
        assert raw.recv_message(10) == (OP_BINARY, payload)


def test_thousands_of_frames_in_one_write(server_factory):
    """2000 pings then 3000 small messages, each batch in a single write: every pong and every
    message comes back, in order; empty messages and empty fragments are fine."""
    server = server_factory(service="relay")
    with RawWebSocket.connect(server.host, server.port, "/ws/batch") as raw:
        raw.send_raw(b"".join(wsraw.encode_frame(OP_PING, str(i).encode()) for i in range(2000)))
        pongs = [raw.recv_frame(5) for _ in range(2000)]
        assert all(f.opcode == OP_PONG for f in pongs)
        assert [f.payload for f in pongs] == [str(i).encode() for i in range(2000)]
        raw.send_raw(b"".join(wsraw.encode_frame(OP_TEXT, f"m{i}".encode()) for i in range(3000)))
        assert [raw.recv_message(5)[1] for _ in range(3000)] == [f"m{i}".encode() for i in range(3000)]
        raw.send_text(b"")
        assert raw.recv_message(5) == (OP_TEXT, b"")
        raw.send_frame(OP_BINARY, b"", fin=False)
        raw.send_frame(OP_CONT, b"", fin=False)
        raw.send_frame(OP_CONT, b"z", fin=True)
        assert raw.recv_message(5) == (OP_BINARY, b"z")
