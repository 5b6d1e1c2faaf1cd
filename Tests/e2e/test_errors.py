"""Malformed input over raw sockets: HTTP errors (exact status, then the connection is closed)
and protocol violations (exact close code from the server's close frame, then TCP closed).

After every bad client a good client still works - in another room and, for frame errors, in
the bad client's own room - and the server never dies (the fixture fails the test on a crash).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

import pytest

import wsraw
from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, RSV1, RSV2, RSV3,
                   RawWebSocket, counter_roundtrip, encode_frame, expect, run, ws_connect)


def assert_healthy(server, room: str = "healthy", service: str = "counter") -> None:
    """/status is ok and a fresh WebSocket client works (counter round trip, or a relay echo)."""
    server.assert_alive()
    resp = wsraw.http_get(server.host, server.port, "/status")
    assert resp.status == 200 and resp.body.strip() == b"ok", f"/status after the bad client: {resp!r}"
    if service == "counter":
        run(counter_roundtrip(server.ws_url(room)))
    else:
        async def relay_roundtrip():
            async with ws_connect(server.ws_url(room)) as ws:
                await ws.send("ping?")
                await expect(ws, "ping?")
        run(relay_roundtrip())


# --------------------------------------------------------------------------------------------
# HTTP errors
# --------------------------------------------------------------------------------------------

KEY15 = base64.b64encode(b"x" * 15).decode()
KEY17 = base64.b64encode(b"x" * 17).decode()

HTTP_CASES = {
    # name: (raw request bytes, accepted statuses)
    "malformed_request_line": (b"GARBAGE\r\n\r\n", {400}),
    "missing_http_version": (b"GET /status\r\nHost: x\r\n\r\n", {400}),
    "header_without_colon": (b"GET /status HTTP/1.1\r\nHost x\r\n\r\n", {400}),
    "binary_garbage": (bytes(range(1, 256)) + b"\r\n\r\n", {400}),
    "unknown_path": (wsraw.http_request_bytes("GET", "/nope"), {404}),
    "unknown_path_with_upgrade": (wsraw.upgrade_request("/nope"), {404}),
    "post_on_ws": (wsraw.upgrade_request("/ws", method="POST"), {405}),
    "put_on_ws_room": (wsraw.upgrade_request("/ws/room", method="PUT"), {405}),
    "missing_key": (wsraw.upgrade_request("/ws", omit=("Sec-WebSocket-Key",)), {400}),
    "key_not_base64": (wsraw.upgrade_request("/ws", key="not base64 !!"), {400}),
    "key_15_bytes": (wsraw.upgrade_request("/ws", key=KEY15), {400}),
    "key_17_bytes": (wsraw.upgrade_request("/ws", key=KEY17), {400}),
    "empty_key": (wsraw.upgrade_request("/ws", key=""), {400}),
    "room_129_chars": (wsraw.upgrade_request("/ws/" + "r" * 129), {400}),
    "room_bad_char_space": (wsraw.upgrade_request("/ws/a%20b"), {400}),
    "room_bad_char_slash_encoded": (wsraw.upgrade_request("/ws/a%2Fb"), {400}),
    "room_bad_escape": (wsraw.upgrade_request("/ws/%zz"), {400}),
    "room_truncated_escape": (wsraw.upgrade_request("/ws/ab%4"), {400}),
    # 129 bytes only after decoding: still too long
    "room_129_after_decoding": (wsraw.upgrade_request("/ws/" + "%41" * 129), {400}),
    # "/ws/a/b": the room id would contain '/', which is not an allowed character (400), but a
    # server may equally treat it as an unknown route (404) - both are accepted.
    "room_with_slash": (wsraw.upgrade_request("/ws/a/b"), {400, 404}),
    # "/ws/": an empty room id (400), or not a route at all (404) - both are accepted.
    "room_empty": (wsraw.upgrade_request("/ws/"), {400, 404}),
}


@pytest.mark.parametrize("name", list(HTTP_CASES))
def test_http_error_status_then_connection_closed(server, name):
    raw, statuses = HTTP_CASES[name]
    ex = wsraw.http_exchange(server.host, server.port, raw)
    assert ex.response.status in statuses, f"{name}: {ex.response!r}"
    assert ex.closed, f"{name}: connection still open 3 s after the {ex.response.status} response"
    assert_healthy(server)


@pytest.mark.parametrize("framing", [
    b"Content-Length: 5\r\n\r\nhello",
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
], ids=["content_length", "chunked"])
def test_request_body_is_never_parsed_as_the_next_request(server, framing):
    """(Beyond the route list, plain HTTP/1.1 framing.) A GET with a body on a keep-alive
    connection: the server may skip the body, or answer and close, or reject it - but the body
    bytes must never be taken for the start of the next request (request desync/smuggling)."""
    raw = b"GET /status HTTP/1.1\r\nHost: x\r\n" + framing + wsraw.http_request_bytes("GET", "/status")
    bs = wsraw.BufferedSocket(wsraw.open_socket(server.host, server.port))
    try:
        bs.send(raw)
        deadline = time.monotonic() + 5
        first = wsraw.read_http_response(bs, deadline)
        if first.status != 200:  # rejected the body: must close then
            assert first.status in (400, 411, 413, 501), first
            assert bs.wait_closed(3), f"connection still open after {first.status}"
            return
        try:
            second = wsraw.read_http_response(bs, deadline)
        except wsraw.PeerClosed:
            return  # answered the first request and closed: fine
        assert second.status == 200 and second.body.strip() == b"ok", (
            f"the request body was parsed as the start of the next request: second response {second!r}")
    finally:
        bs.close()


@pytest.mark.parametrize("value", ["abc", "-1", "5, 6", "1e3"])
def test_invalid_content_length_is_400(server, value):
    """(Beyond the route list: RFC 9112 6.3.) An invalid Content-Length is unrecoverable framing."""
    raw = wsraw.http_request_bytes("GET", "/status", headers=[("Content-Length", value)])
    ex = wsraw.http_exchange(server.host, server.port, raw)
    assert ex.response.status == 400, ex.response
    assert ex.closed


@pytest.mark.parametrize("version", ["12", "8", "14", ""], ids=["v12", "v8", "v14", "empty"])
def test_wrong_websocket_version_is_426(server, version):
    ex = wsraw.http_exchange(server.host, server.port, wsraw.upgrade_request("/ws", version=version))
    assert ex.response.status == 426, ex.response
    assert ex.response.header("Sec-WebSocket-Version") == "13", ex.response
    assert ex.closed, "connection still open after 426"
    assert_healthy(server)


def test_request_head_over_8k_is_431(server):
    raw = wsraw.http_request_bytes("GET", "/status", headers=[("X-Pad", "a" * 9000)])
    ex = wsraw.http_exchange(server.host, server.port, raw)
    assert ex.response.status == 431, ex.response
    assert ex.closed, "connection still open after 431"
    assert_healthy(server)


def test_request_head_just_under_8k_is_fine(server):
    base = wsraw.http_request_bytes("GET", "/status", headers=[("X-Pad", "")])
    raw = wsraw.http_request_bytes("GET", "/status", headers=[("X-Pad", "a" * (7 * 1024 - len(base)))])
    resp = wsraw.http_exchange(server.host, server.port, raw, expect_close=False).response
    assert resp.status == 200, resp


def test_room_id_of_128_chars_is_accepted(server):
    room = "r" * 127 + "~"
    # plus the same 128-byte room reached percent-encoded (more than 128 bytes on the wire)
    with RawWebSocket.connect(server.host, server.port, "/ws/" + room) as plain, \
            RawWebSocket.connect(server.host, server.port, "/ws/" + "%72" * 127 + "%7E") as encoded:
        plain.send_text("increment")
        assert plain.recv_message(5) == (OP_TEXT, b"new value: 1")
        assert encoded.recv_message(5) == (OP_TEXT, b"new value: 1")


# --------------------------------------------------------------------------------------------
# protocol violations -> close codes
# --------------------------------------------------------------------------------------------


def _close_frame(code: int, reason: bytes = b"") -> bytes:
    return encode_frame(OP_CLOSE, wsraw.close_payload(code, reason))


FRAME_CASES = {
    # name: (bytes sent after the handshake, expected close code)
    "unmasked_text": (encode_frame(OP_TEXT, b"increment", mask=False), 1002),
    "rsv1_without_extension": (encode_frame(OP_TEXT, b"increment", rsv=RSV1), 1002),
    "rsv2": (encode_frame(OP_BINARY, b"x", rsv=RSV2), 1002),
    "rsv3_on_ping": (encode_frame(OP_PING, b"x", rsv=RSV3), 1002),
    "opcode_3": (encode_frame(0x3, b"x"), 1002),
    "opcode_7": (encode_frame(0x7, b""), 1002),
    "opcode_0xB": (encode_frame(0xB, b""), 1002),
    "ping_126_bytes": (encode_frame(OP_PING, b"p" * 126), 1002),
    "fragmented_ping": (encode_frame(OP_PING, b"a", fin=False) + encode_frame(OP_CONT, b"b"), 1002),
    "fragmented_close": (encode_frame(OP_CLOSE, wsraw.close_payload(1000), fin=False), 1002),
    "continuation_first": (encode_frame(OP_CONT, b"increment"), 1002),
    "continuation_first_not_fin": (encode_frame(OP_CONT, b"inc", fin=False), 1002),
    "new_text_inside_fragmented_message": (
        encode_frame(OP_TEXT, b"inc", fin=False) + encode_frame(OP_TEXT, b"rement"), 1002),
    "length_64bit_msb_set": (
        encode_frame(OP_BINARY, b"", length=1 << 63, length_form="64"), (1002, 1009)),
    "invalid_utf8_text": (encode_frame(OP_TEXT, b"ab\xff\xfecd"), 1007),
    "overlong_utf8": (encode_frame(OP_TEXT, b"\xc0\xaf"), 1007),
    "utf16_surrogate": (encode_frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
    "above_u10ffff": (encode_frame(OP_TEXT, b"\xf4\x90\x80\x80"), 1007),
    "truncated_utf8_at_end": (encode_frame(OP_TEXT, b"ab\xf0\x9f\x98"), 1007),
    "invalid_utf8_split_across_fragments": (
        encode_frame(OP_TEXT, b"ab\xf0\x9f", fin=False) + encode_frame(OP_CONT, b"Acd"), 1007),
    "invalid_utf8_in_first_fragment": (
        encode_frame(OP_TEXT, b"\xff", fin=False) + encode_frame(OP_CONT, b"ok"), 1007),
    "close_1_byte_payload": (encode_frame(OP_CLOSE, b"\x03"), 1002),
    "close_code_1005": (_close_frame(1005), 1002),
    "close_code_1006": (_close_frame(1006), 1002),
    "close_code_1004": (_close_frame(1004), 1002),
    "close_code_1015": (_close_frame(1015), 1002),
    "close_code_999": (_close_frame(999), 1002),
    "close_code_0": (_close_frame(0), 1002),
    "close_code_2999": (_close_frame(2999), 1002),
    "close_code_5000": (_close_frame(5000), 1002),
    "close_invalid_utf8_reason": (_close_frame(1000, b"bye\xff"), 1007),
    "close_too_long": (encode_frame(OP_CLOSE, wsraw.close_payload(1000, b"r" * 124)), 1002),
}


@pytest.mark.parametrize("name", list(FRAME_CASES))
def test_bad_frame_gets_close_code(server, name):
    data, want = FRAME_CASES[name]
    want = want if isinstance(want, tuple) else (want,)

    async def main():
        # a good client already in the bad client's room, and one in another room
        async with ws_connect(server.ws_url("victim")) as same_room:
            raw = await asyncio.to_thread(RawWebSocket.connect, server.host, server.port, "/ws/victim")
            with raw:
                raw.send_raw(data)
                frames, code = await asyncio.to_thread(raw.read_until_close, 5)
                close = raw.close_frame
                assert close is not None, (
                    f"{name}: no close frame from the server (TCP closed: {raw.tcp_closed}, "
                    f"reset: {raw.bs.reset}); frames: {frames}")
                assert not close.masked, close
                assert code in want, f"{name}: close code {code}, want {want}; frame {close!r}"
                # the reason (if any) must be valid UTF-8
                close.close_reason.decode("utf-8")
                data_frames = [f for f in frames if f.opcode in (OP_TEXT, OP_BINARY, OP_CONT)]
                assert not data_frames, f"{name}: the bad input produced data: {data_frames}"
                assert raw.tcp_closed, f"{name}: TCP still open 3 s after the close exchange"
            # the room and the server carry on
            await same_room.send("increment")
            await expect(same_room, "new value: 1")
        await counter_roundtrip(server.ws_url("elsewhere"))

    run(main())
    server.assert_alive()


def test_valid_4_byte_char_split_across_fragments_is_accepted(server_factory):
    server = server_factory(service="relay")
    emoji = "\U0001F600".encode()  # f0 9f 98 80
    with RawWebSocket.connect(server.host, server.port, "/ws/utf8") as raw:
        raw.send_frame(OP_TEXT, b"x" + emoji[:1], fin=False)
        raw.send_frame(OP_CONT, emoji[1:3], fin=False)
        raw.send_frame(OP_CONT, emoji[3:] + b"y" + emoji[:2], fin=False)
        raw.send_frame(OP_CONT, emoji[2:], fin=True)
        assert raw.recv_message(5) == (OP_TEXT, b"x" + emoji + b"y" + emoji)
    assert_healthy(server, service="relay")


# --------------------------------------------------------------------------------------------
# message size limit
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_limit_server(server_factory):
    return server_factory("--max-message-size", "1024", service="relay")


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_message_at_limit_is_accepted(small_limit_server, opcode):
    server = small_limit_server
    with RawWebSocket.connect(server.host, server.port, "/ws/limit") as raw:
        raw.send_frame(opcode, b"a" * 1024)
        assert raw.recv_message(5) == (opcode, b"a" * 1024)
        raw.send_frame(opcode, b"b" * 500, fin=False)
        raw.send_frame(OP_CONT, b"c" * 524, fin=True)
        assert raw.recv_message(5) == (opcode, b"b" * 500 + b"c" * 524)


@pytest.mark.parametrize("shape", ["single_frame", "fragments", "fragments_binary", "ping_between"])
def test_message_over_limit_is_1009(small_limit_server, shape):
    server = small_limit_server
    if shape == "single_frame":
        data = encode_frame(OP_TEXT, b"a" * 2000)
    elif shape == "fragments":
        data = (encode_frame(OP_TEXT, b"a" * 500, fin=False) + encode_frame(OP_CONT, b"b" * 500, fin=False)
                + encode_frame(OP_CONT, b"c" * 500, fin=False) + encode_frame(OP_CONT, b"d" * 500))
    elif shape == "fragments_binary":
        data = b"".join(encode_frame(OP_BINARY if i == 0 else OP_CONT, os.urandom(200), fin=(i == 9))
                        for i in range(10))
    else:
        data = (encode_frame(OP_BINARY, b"a" * 1000, fin=False) + encode_frame(OP_PING, b"p")
                + encode_frame(OP_CONT, b"b" * 1000))

    async def main():
        async with ws_connect(server.ws_url("big")) as same_room:
            raw = await asyncio.to_thread(RawWebSocket.connect, server.host, server.port, "/ws/big")
            with raw:
                raw.send_raw(data)
                frames, code = await asyncio.to_thread(raw.read_until_close, 5)
                assert code == 1009, f"{shape}: close code {code}; frames {frames}"
                assert not [f for f in frames if f.opcode in (OP_TEXT, OP_BINARY, OP_CONT)], frames
                assert raw.tcp_closed, "TCP still open after the close exchange"
            # nothing of the oversized message reached the room
            await same_room.send("still here")
            await expect(same_room, "still here")
    run(main())
    server.assert_alive()


# --------------------------------------------------------------------------------------------
# clients vanishing at awkward moments
# --------------------------------------------------------------------------------------------


def _reset(sock) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN."""
    import socket
    import struct as _struct
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("moment", ["mid_request_head", "mid_frame_header", "mid_payload",
                                    "mid_fragmented_message", "after_close_sent"])
def test_client_vanishes_abruptly(server_factory, moment):
    server = server_factory(service="relay")

    async def main():
        async with ws_connect(server.ws_url("vanish")) as same_room:
            if moment == "mid_request_head":
                sock = wsraw.open_socket(server.host, server.port)
                sock.sendall(wsraw.upgrade_request("/ws/vanish")[:40])
            else:
                raw = await asyncio.to_thread(RawWebSocket.connect, server.host, server.port, "/ws/vanish")
                sock = raw.bs.sock
                if moment == "mid_frame_header":
                    raw.send_raw(encode_frame(OP_BINARY, b"x" * 70000)[:3])
                elif moment == "mid_payload":
                    raw.send_raw(encode_frame(OP_BINARY, b"x" * 70000)[:30000])
                elif moment == "mid_fragmented_message":
                    raw.send_frame(OP_TEXT, b"part one", fin=False)
                else:
                    raw.send_close(1000)
            await asyncio.sleep(0.05)
            _reset(sock)
            await asyncio.sleep(0.05)
            await same_room.send("still fine")
            await expect(same_room, "still fine")
        async with ws_connect(server.ws_url("vanish")) as fresh:
            await fresh.send(b"\x00\x01")
            await expect(fresh, b"\x00\x01")

    run(main())
    assert_healthy(server, service="relay")


def test_oversized_length_rejected_from_the_header(small_limit_server):
    """A frame *declaring* 2000 bytes (limit 1024) is refused with 1009 as soon as its header is
    read - the server must not wait for (and buffer) a payload it is going to reject anyway.
    Only the header, the mask and 10 payload bytes are sent."""
    server = small_limit_server
    with RawWebSocket.connect(server.host, server.port, "/ws/early") as raw:
        raw.send_raw(encode_frame(OP_BINARY, b"x" * 2000)[:8 + 10])
        frames, code = raw.read_until_close(5)
        assert code == 1009, f"close code {code}; frames {frames}; TCP closed: {raw.tcp_closed}"
