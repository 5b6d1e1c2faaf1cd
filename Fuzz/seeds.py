#!/usr/bin/env python3
"""Writes the seed corpora under Fuzz/corpus/ (small, committed; run again after editing).

Each seed is a hand-picked input that reaches a path of its parser; libFuzzer grows its own
corpus from them in the scratch directory (.build-fuzz/corpus/<target>), which is not committed.
Regression seeds (inputs that once failed) live beside them as regress-*; this script leaves
them alone.
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data, keep=False):
    """Writes a seed; with `keep`, an existing file is left alone (seeds that differ each run)."""
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, name)
    if keep and os.path.exists(path):
        return
    with open(path, "wb") as f:
        f.write(data)


# --- http: request heads --------------------------------------------------------------------
CRLF = b"\r\n"
http = {
    "upgrade-room": b"GET /ws/room-1 HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n"
                    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n",
    "upgrade-version-12": b"GET /ws HTTP/1.1\r\nHost: x\r\nupgrade: WebSocket\r\nconnection: upgrade\r\n"
                          b"sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\nsec-websocket-version: 12\r\n\r\n",
    "status-pipelined": b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
    "head-file": b"HEAD /static/%E2%82%AC/index.html?x=1#frag HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "absolute-form": b"GET http://example.com/ws/%41b~c_d.e?q HTTP/1.1\r\n\r\n",
    "post-body": b"\r\nPOST /metrics HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
    "dotdot": b"GET /a/../b HTTP/1.1\r\nX:\t v \t\r\nContent-Length: 00\r\n\r\n",
    "asterisk": b"GET * HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n folded\r\n\r\n",
}
for name, data in http.items():
    write("http", name, data)


# --- ws_frames / ws_roundtrip: first byte = role (bit 0: 0 server, 1 client) and limit ---------
def frame(opcode, payload, fin=True, mask=b"\x37\xfa\x21\x3d", rsv=0, length_form=None):
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mbit = 0x80 if mask is not None else 0
    if length_form == 64 or (length_form is None and n > 0xFFFF):
        head = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    elif length_form == 16 or (length_form is None and n > 125):
        head = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mbit | n])
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server(limit_index):  # config byte: server role (reads masked frames)
    return bytes([limit_index << 1])


def client(limit_index):  # config byte: client role (reads unmasked frames)
    return bytes([(limit_index << 1) | 1])


LIMIT_65536 = 7
LIMIT_200 = 5
frames = {
    "hello-masked": server(LIMIT_65536) + frame(1, b"Hello"),
    "hello-unmasked": client(LIMIT_65536) + frame(1, b"Hello", mask=None),
    "fragments-ping": server(LIMIT_65536) + frame(1, b"Hel", fin=False) + frame(9, b"p")
                      + frame(0, b"lo") + frame(2, bytes(range(200)), length_form=16),
    "utf8-split": server(LIMIT_65536) + frame(1, b"a\xf0\x9f", fin=False) + frame(0, b"", fin=False)
                  + frame(0, b"\x98\x80b"),
    "close-reason": client(LIMIT_65536) + frame(10, b"") + frame(8, b"\x03\xe8done", mask=None),
    "too-big": server(LIMIT_200) + frame(2, b"x" * 201, length_form=16),
    "len64": client(LIMIT_65536) + frame(2, b"abc", mask=None, length_form=64),
    "bad-utf8": server(LIMIT_65536) + frame(1, b"ok\xc3", fin=False) + frame(0, b"("),
    "bad-close": server(LIMIT_65536) + frame(8, b"\x03\xed"),
    "rsv": client(LIMIT_65536) + frame(1, b"x", mask=None, rsv=0x40),
    # config bit 4: permessage-deflate agreed (RSV1 on a message's first frame)
    "compressed": bytes([server(LIMIT_65536)[0] | 0x10]) + frame(1, b"\xf2\x48\xcd", fin=False, rsv=0x40)
                  + frame(9, b"") + frame(0, b"\xc9\xc9\x07\x00") + frame(2, b"\x00", rsv=0x40),
    "compressed-rsv1-continuation": bytes([client(LIMIT_65536)[0] | 0x10]) + frame(2, b"a", fin=False, mask=None, rsv=0x40)
                                    + frame(0, b"b", mask=None, rsv=0x40),
}
for name, data in frames.items():
    write("ws_frames", name, data)

# ws_roundtrip reads a script (see FuzzRoundTrip.swift); these are just varied byte strings.
roundtrip = {
    "small": bytes([0x00, 0x00, 5]) + b"hello" + bytes([0x41, 3, 9]) + b"fragmented text",
    "controls": bytes([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]) + "héllo wörld €".encode(),
    "big": bytes([0x10, 0x80, 0xff, 0xff]) + bytes(range(256)) * 2,
}
for name, data in roundtrip.items():
    write("ws_roundtrip", name, data)

# --- utf8 -----------------------------------------------------------------------------------
utf8 = {
    "ascii-long": b"The quick brown fox jumps over the lazy dog, 0123456789." * 2,
    "mixed": "aé€😀\U0010FFFF".encode() * 3,
    "overlong": b"\xc0\xaf\xe0\x80\xaf",
    "surrogate": b"abc\xed\xa0\x80",
    "above-max": b"\xf4\x90\x80\x80",
    "cut": "€".encode()[:2],
    "stray": b"0123456789abcdef0123456789abcde\x80",
}
for name, data in utf8.items():
    write("utf8", name, data)


# --- abi: bincode MessageToProcess / MessageFromProcess -----------------------------------
def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def payload(kind, data):
    return u32(kind) + u64(len(data)) + data


abi = {
    "to-init": u32(0),
    "to-connect": u32(1) + u32(7),
    "to-message-text": u32(3) + u32(2) + payload(1, "héllo".encode()),
    "to-message-binary-trailing": u32(3) + u32(9) + payload(0, b"\x00\x01\x02") + b"extra",
    "from-broadcast": u32(0) + u32(0) + payload(1, b"new value: 1"),
    "from-client": u32(0) + u32(1) + u32(4) + payload(0, b"\xff"),
    "from-except": u32(0) + u32(2) + u32(4) + payload(1, b""),
    "from-timer": u32(1) + u32(250),
    "truncated-length": u32(3) + u32(1) + u32(1) + u64(1 << 40) + b"ab",
    "bad-variant": u32(0) + u32(3),
    # The identity extension (Sources/StateroomWasm/IDENTITY.md): ClientIdentity { 7, "bob" }.
    "to-client-identity": u32(5) + u32(7) + u64(3) + b"bob",
}
for name, data in abi.items():
    write("abi", name, data)


# --- deflate: [window bits 0-2 | no context takeover bit 3 | mode bits 4-5] ...
def deflate_raw(data, wbits=15, level=6):
    import zlib
    c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


LIMIT_100, LIMIT_4096 = 2, 3
deflate = {
    "inflate-hello": bytes([0x07, LIMIT_4096]) + bytes.fromhex("f248cdc9c90700"),      # RFC 7692 §7.2.3.1
    "inflate-bomb": bytes([0x0F, LIMIT_100]) + deflate_raw(b"\0" * 100000),
    "inflate-window9": bytes([0x01, LIMIT_4096]) + deflate_raw(b"abcabcabc" * 50, wbits=9),
    "inflate-truncated": bytes([0x07, LIMIT_4096]) + deflate_raw(b"truncated message " * 9)[:-3],
    "inflate-bfinal": bytes([0x07, LIMIT_4096]) + bytes.fromhex("f248cdc9c907000000ffff") + bytes.fromhex("f248cdc9c90700"),
    "roundtrip": bytes([0x27, 5]) + b"hello" + bytes([11]) + b"hello again" + bytes([0]) + bytes([200]) + bytes(range(200)),
    "roundtrip-no-takeover": bytes([0x2F, 30]) + b"permessage-deflate round trip!",
    "negotiate": bytes([0x37]) + b"permessage-deflate; client_max_window_bits, permessage-deflate"
                 + b"\0x-webkit-deflate-frame\0permessage-deflate; server_max_window_bits=10; client_no_context_takeover",
    "negotiate-quoted": bytes([0x3C]) + b'foo; bar="baz", permessage-deflate; client_max_window_bits="12"',
    "negotiate-bad": bytes([0x37]) + b"permessage-deflate; server_max_window_bits=08; ;,",
}
for name, data in deflate.items():
    write("deflate", name, data)


# --- jwt: first byte even = a token as sent, odd = header JSON NUL payload JSON, signed by the target
def jwt_seeds():
    import base64
    import hashlib
    import hmac

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    def hs256(header, payload, secret=b"fuzz-secret-0123456789"):  # the target's secret
        signing_input = b64(header) + b"." + b64(payload)
        return signing_input + b"." + b64(hmac.new(secret, signing_input, hashlib.sha256).digest())

    header = b'{"alg":"HS256","typ":"JWT"}'
    claims = b'{"sub":"alice","rooms":["lobby"],"exp":2000003600,"nbf":1999999000}'
    jwt = {
        "token-valid": b"\x00" + hs256(header, claims),
        "token-wrong-secret": b"\x00" + hs256(header, claims, b"other"),
        "token-none": b"\x00" + b64(b'{"alg":"none"}') + b"." + b64(b'{"sub":"a"}') + b".",
        "token-rs256": b"\x02" + b64(b'{"alg":"RS256"}') + b"." + b64(b'{"sub":"a"}') + b"." + b64(bytes(256)),
        "token-es256": b"\x02" + b64(b'{"alg":"ES256"}') + b"." + b64(b'{"sub":"a"}') + b"." + b64(bytes(range(64))),
        "token-padded": b"\x00" + hs256(header, claims) + b"=",
        "signed-claims": b"\x01" + claims,
        "signed-expired": b"\x01" + b'{"sub":"a","exp":1999999000}',
        "signed-types": b"\x01" + b'{"sub":7,"rooms":"x","exp":"soon","nbf":null}',
        "signed-duplicate": b"\x01" + b'{"sub":"a","\\u0073ub":"b"}',
        "signed-header": b"\x01" + b'{"alg":"HS256","crit":["b64"],"typ":"at+jwt"}\x00{"sub":"a"}',
        "signed-deep": b"\x01" + b'{"sub":"a","x":' + b"[" * 600 + b"]" * 600 + b"}",
    }
    for name, data in jwt.items():
        write("jwt", name, data)


jwt_seeds()


# --- tls: first byte even = raw client bytes, odd = piped real client -------------------------
def client_hello(**kw):
    """A real ClientHello from Python's ssl module over memory BIOs (random each run)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    ctx.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        s.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def tls_seeds():
    import ssl
    tls = {
        # piped: [flags: bit0 = 1, bit1 flip, bit2 TLS 1.2] [flip offset u16] [flip mask] data
        "piped-13": b"\x01\x00\x00\x00hello over TLS 1.3",
        "piped-12": b"\x05\x00\x00\x00hello over TLS 1.2",
        "piped-flip": b"\x03\x00\x30\x40corrupted handshake byte",
        "piped-flip-appdata": b"\x07\x03\x00\x01" + b"x" * 300,
        "raw-hello-13": b"\x00" + client_hello(minimum_version=ssl.TLSVersion.TLSv1_3),
        "raw-hello-12": b"\x00" + client_hello(maximum_version=ssl.TLSVersion.TLSv1_2),
        "raw-http": b"\x00GET / HTTP/1.1\r\n\r\n",
    }
    for name, data in tls.items():
        write("tls", name, data, keep=name.startswith("raw-hello"))


tls_seeds()
