"""permessage-deflate (RFC 7692): negotiation, compressed broadcasts, bounded inflation.

What is checked, against the real binary on 127.0.0.1, once per I/O backend:

* negotiation, through raw HTTP upgrades: a table of offers (one or several, on one or several
  header lines, quoted values, every parameter with and without a value, duplicated and unknown
  parameters, bad window bits, other extensions around it, header grammar errors) and what the
  server answers: an acceptance (its parameters checked against RFC 7692 section 7 and used for a
  compressed round trip), no extension, or 400; the same with ``--compression-client-context``
  and with ``--compression off``;
* round trips through Python ``websockets`` (which offers the extension) next to a client without
  it, text and binary around ``--compression-min-bytes`` and large; a raw client checks RSV1 on
  the frames it gets: a broadcast is compressed once and every agreeing client gets the same bytes,
  short messages, incompressible ones and control frames go plain;
* client to server: compressed messages in fragments (RSV1 on the first frame only), the RFC's
  edge payloads (empty, BFINAL blocks, several blocks, a stored block), RSV1 where it is not
  allowed (1002), a zip bomb (1009 as soon as the limit is passed: no memory spike, a room
  neighbour unaffected), a corrupt stream (1007), text that inflates to invalid UTF-8 (1007);
* ``--compression-client-context``: a raw client that keeps its deflate context across messages
  (zlib, Z_SYNC_FLUSH, tail stripped), the inflater memory gauge while connected and after;
* hand-offs to the room-owning shard, wss, and headless Chromium (``ws.extensions``, the seed's
  counter, a compressed echo).

Raw frames are deflated here with zlib (``wbits=-15``, ``Z_SYNC_FLUSH``, the ``00 00 ff ff``
tail stripped), as RFC 7692 section 7.2.1 describes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import struct
import time
import zlib
from dataclasses import dataclass

import pytest

import wsraw
from browser import browser_log
from wsraw import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RSV1, RSV2, RSV3,
                   RawWebSocket, expect, recv, run, ws_connect)

TAIL = b"\x00\x00\xff\xff"
BROWSER_OFFER = "permessage-deflate; client_max_window_bits"
MIN_BYTES = 128  # the server's default --compression-min-bytes

COUNTERS = (
    "stateroom_messages_compressed_total",
    "stateroom_compressions_skipped_total",
    "stateroom_messages_inflated_total",
    "stateroom_inflate_too_big_closes_total",
    "stateroom_inflate_errors_total",
)
GAUGES = ("stateroom_websockets_deflate", "stateroom_inflate_memory_bytes")


# --------------------------------------------------------------------------------------------
# deflate helpers
# --------------------------------------------------------------------------------------------


def deflate(data: bytes, wbits: int = 15, level: int = 6) -> bytes:
    """One message compressed on its own (no context): raw deflate, sync flush, tail stripped."""
    c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def inflate(payload: bytes, wbits: int = 15) -> bytes:
    """One message decompressed on its own (the tail appended again)."""
    d = zlib.decompressobj(-wbits)
    out = d.decompress(payload + TAIL)
    assert not d.unconsumed_tail
    return out


class ContextDeflater:
    """A client compressor that keeps its context across messages (RFC 7692 7.2.1)."""

    def __init__(self, wbits: int = 15):
        self.c = zlib.compressobj(6, zlib.DEFLATED, -wbits)

    def message(self, data: bytes) -> bytes:
        out = self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(TAIL)
        return out[:-4]


def json_like(i: int, size: int) -> bytes:
    """A chat/game-state message of at least ``size`` bytes: repeated keys, varying numbers."""
    rng = random.Random(i)
    players = []
    while True:
        players.append({"id": f"p-{rng.randrange(10000):04d}", "name": rng.choice(["ada", "bob", "cyd", "dee"]),
                        "x": round(rng.uniform(-500, 500), 2), "y": round(rng.uniform(-500, 500), 2),
                        "hp": rng.randrange(101), "team": rng.choice(["red", "blue"])})
        out = json.dumps({"type": "state", "tick": i, "players": players}, separators=(",", ":")).encode()
        if len(out) >= size:
            return out


def text_of(size: int, seed: int = 0) -> bytes:
    """Exactly ``size`` bytes of ASCII text that compresses well at any size from ~40 bytes."""
    unit = f'{{"seq":{seed},"kind":"update","ok":true}},'.encode()
    return (unit * (size // len(unit) + 1))[:size]


# --------------------------------------------------------------------------------------------
# Sec-WebSocket-Extensions parsing (RFC 6455 section 9.1)
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_extensions(value: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """``extension-list`` -> [(name, [(param, value or None), ...]), ...]; ValueError if malformed
    (quoted values are unescaped and must be tokens)."""
    out: list[tuple[str, list[tuple[str, str | None]]]] = []
    i, n = 0, len(value)

    def ws(i: int) -> int:
        while i < n and value[i] in " \t":
            i += 1
        return i

    def token(i: int) -> tuple[str, int]:
        m = _TOKEN.match(value, i)
        if not m:
            raise ValueError(f"token expected at {i} in {value!r}")
        return m.group(0), m.end()

    while True:
        i = ws(i)
        if i < n and value[i] == ",":  # empty list element
            i += 1
            continue
        if i >= n:
            break
        name, i = token(i)
        params: list[tuple[str, str | None]] = []
        i = ws(i)
        while i < n and value[i] == ";":
            i = ws(i + 1)
            pname, i = token(i)
            i = ws(i)
            pval = None
            if i < n and value[i] == "=":
                i = ws(i + 1)
                if i < n and value[i] == '"':
                    i += 1
                    buf = []
                    while True:
                        if i >= n:
                            raise ValueError(f"unterminated quoted string in {value!r}")
                        ch = value[i]
                        if ch == "\\" and i + 1 < n:
                            buf.append(value[i + 1])
                            i += 2
                            continue
                        if ch == '"':
                            i += 1
                            break
                        buf.append(ch)
                        i += 1
                    pval = "".join(buf)
                    if not _TOKEN.fullmatch(pval):
                        raise ValueError(f"quoted value {pval!r} is not a token in {value!r}")
                else:
                    pval, i = token(i)
            params.append((pname, pval))
            i = ws(i)
        out.append((name, params))
        i = ws(i)
        if i < n:
            if value[i] != ",":
                raise ValueError(f"',' expected at {i} in {value!r}")
            i += 1
    return out


@dataclass
class Agreed:
    """The server's answer to a permessage-deflate offer."""
    header: str
    params: dict[str, str | None]

    @property
    def server_no_context_takeover(self) -> bool:
        return "server_no_context_takeover" in self.params

    @property
    def client_no_context_takeover(self) -> bool:
        return "client_no_context_takeover" in self.params

    @property
    def server_window(self) -> int:
        v = self.params.get("server_max_window_bits")
        return int(v) if v else 15

    @property
    def client_window(self) -> int:
        v = self.params.get("client_max_window_bits")
        return int(v) if v else 15


def agreed_from(header: str | None) -> Agreed | None:
    """The response header checked for shape (one permessage-deflate element, known parameters,
    each at most once, window bits 8..15) and turned into an :class:`Agreed`."""
    if header is None:
        return None
    exts = parse_extensions(header)
    assert len(exts) == 1, f"the response names {len(exts)} extensions: {header!r}"
    name, params = exts[0]
    assert name == "permessage-deflate", f"response extension {name!r}: {header!r}"
    names = [p for p, _ in params]
    assert len(names) == len(set(names)), f"a parameter appears twice in the response: {header!r}"
    known = {"server_no_context_takeover", "client_no_context_takeover",
             "server_max_window_bits", "client_max_window_bits"}
    assert set(names) <= known, f"unknown parameter in the response: {header!r}"
    d = dict(params)
    for p in ("server_no_context_takeover", "client_no_context_takeover"):
        assert d.get(p, None) is None, f"{p} with a value in the response: {header!r}"
    for p in ("server_max_window_bits", "client_max_window_bits"):
        if p in d:
            assert d[p] is not None and re.fullmatch(r"[1-9][0-9]?", d[p]) and 8 <= int(d[p]) <= 15, \
                f"{p} needs a value 8..15 in a response: {header!r}"
    return Agreed(header, d)


# --------------------------------------------------------------------------------------------
# raw clients
# --------------------------------------------------------------------------------------------


def upgrade(server, lines: list[str] | None, path: str = "/ws/neg", timeout: float = 5.0
            ) -> tuple[wsraw.HTTPResponse, wsraw.BufferedSocket, str]:
    """A raw upgrade with one ``Sec-WebSocket-Extensions`` header line per item of ``lines``.
    Returns the response head and the open socket (the caller closes it)."""
    sock = wsraw.open_socket(server.host, server.port, timeout=timeout)
    bs = wsraw.BufferedSocket(sock)
    try:
        key = wsraw.new_key()
        extra = [("Sec-WebSocket-Extensions", v) for v in (lines or [])]
        bs.send(wsraw.upgrade_request(path, key=key, extra=extra))
        resp = wsraw.read_http_response(bs, time.monotonic() + timeout, head_only=True)
    except BaseException:
        bs.close()
        raise
    return resp, bs, key


def extension_headers(resp: wsraw.HTTPResponse) -> list[str]:
    return [v for k, v in resp.headers if k.lower() == "sec-websocket-extensions"]


class DeflateClient(RawWebSocket):
    """A raw WebSocket client that offered permessage-deflate (``agreed`` is None if declined)."""

    agreed: Agreed | None = None

    @classmethod
    def open(cls, server, path: str = "/ws/deflate", offer: str | None = BROWSER_OFFER,
             timeout: float = 5.0) -> "DeflateClient":
        resp, bs, key = upgrade(server, [offer] if offer else None, path, timeout)
        try:
            assert resp.status == 101, f"upgrade of {path} with {offer!r}: {resp!r}"
            assert resp.header("sec-websocket-accept") == wsraw.accept_for(key), resp
            headers = extension_headers(resp)
            assert len(headers) <= 1, f"several Sec-WebSocket-Extensions lines in the response: {resp!r}"
            ws = cls(bs, resp)
            ws.agreed = agreed_from(headers[0] if headers else None)
        except BaseException:
            bs.close()
            raise
        if offer is None:
            assert ws.agreed is None, f"the server answered an extension nobody offered: {resp!r}"
        return ws

    def send_compressed(self, data: bytes, opcode: int = OP_TEXT, **kw) -> None:
        wbits = self.agreed.client_window if self.agreed else 15
        self.send_frame(opcode, deflate(data, wbits=max(wbits, 9)), rsv=RSV1, **kw)

    def recv_data(self, timeout: float = wsraw.DEFAULT_TIMEOUT) -> tuple[int, bool, bytes, bytes]:
        """Next data message: (opcode, compressed?, payload as it came, payload inflated)."""
        deadline = time.monotonic() + timeout
        opcode, rsv, parts = None, 0, []
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f.opcode in (OP_PING, OP_PONG):
                assert f.rsv == 0, f"control frame with RSV bits: {f!r}"
                continue
            if f.opcode == OP_CLOSE:
                raise AssertionError(f"unexpected close {f!r} (code {f.close_code})")
            if opcode is None:
                assert f.opcode in (OP_TEXT, OP_BINARY), f"unexpected frame {f!r}"
                opcode, rsv = f.opcode, f.rsv
            else:
                assert f.opcode == OP_CONT and f.rsv == 0, f"bad continuation {f!r}"
            parts.append(f.payload)
            if f.fin:
                break
        raw = b"".join(parts)
        assert rsv in (0, RSV1), f"RSV bits {rsv:#x} on a data frame"
        compressed = rsv == RSV1
        if compressed:
            assert self.agreed is not None, "RSV1 on a connection that did not agree to permessage-deflate"
            return opcode, True, raw, inflate(raw, self.agreed.server_window)
        return opcode, False, raw, raw


def via_room(receiver: DeflateClient, sender: RawWebSocket, what: str, timeout: float = 5.0):
    """``receiver.recv_data()``; if nothing comes, says what happened to the sender (its close)."""
    try:
        return receiver.recv_data(timeout)
    except TimeoutError:
        frames, code = sender.read_until_close(1.0, reply=False)
        reason = sender.close_frame.close_reason if sender.close_frame is not None else b""
        raise AssertionError(f"{what}: nothing reached the room; the sender got close {code} {reason!r}") from None


def expect_close(ws: RawWebSocket, code: int, what: str, timeout: float = 5.0) -> None:
    frames, got = ws.read_until_close(timeout)
    assert got == code, f"{what}: expected close {code}, got {got} (frames {frames[-3:]})"
    assert ws.close_frame is None or ws.close_frame.rsv == 0, f"{what}: close frame with RSV bits"


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def metrics(server) -> dict[str, float]:
    resp = wsraw.http_get(server.host, server.port, "/metrics")
    assert resp.status == 200, resp
    return wsraw.parse_metrics(resp.body.decode("utf-8", "replace"))


def metric(server, name: str) -> float:
    m = metrics(server)
    assert name in m, f"/metrics has no {name} (has: {sorted(k for k in m if 'deflate' in k or 'flat' in k or 'compress' in k)})"
    return m[name]


def wait_metric(server, name: str, pred, what: str, timeout: float = 3.0) -> float:
    """Polls ``name`` until ``pred(value)`` (counters are published within a few ms)."""
    deadline = time.monotonic() + timeout
    while True:
        v = metric(server, name)
        if pred(v):
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} = {v:g}: {what} (after {timeout} s)")
        time.sleep(0.02)


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


# --------------------------------------------------------------------------------------------
# negotiation table
# --------------------------------------------------------------------------------------------

ACCEPT, DECLINE, BAD = "accept", "decline", "400"


@dataclass
class Case:
    name: str
    lines: list[str] | None
    expect: set[str]
    #: with several offers: the index of the one the server should accept (the first acceptable)
    offer: int | None = None
    #: the response's client_max_window_bits: "absent", or the largest value allowed
    client_bits: str | int | None = None
    #: the response's server_max_window_bits must be present with a value <= this
    server_bits: int | None = None


def C(name, lines, expect, **kw) -> Case:
    if isinstance(lines, str):
        lines = [lines]
    return Case(name, lines, expect if isinstance(expect, set) else {expect}, **kw)


PMD = "permessage-deflate"

#: The default configuration (compression on, clients asked not to keep context).
DEFAULT_TABLE = [
    # -- one offer, accepted --------------------------------------------------------------
    C("no header", None, DECLINE),
    C("bare", PMD, ACCEPT, client_bits="absent"),
    C("client_max_window_bits, no value", f"{PMD}; client_max_window_bits", ACCEPT),
    C("client_max_window_bits=10", f"{PMD}; client_max_window_bits=10", ACCEPT, client_bits=10),
    C("client_max_window_bits=8", f"{PMD}; client_max_window_bits=8", ACCEPT, client_bits=8),
    C("client_max_window_bits=15", f"{PMD}; client_max_window_bits=15", ACCEPT, client_bits=15),
    C("client_max_window_bits quoted", f'{PMD}; client_max_window_bits="10"', ACCEPT, client_bits=10),
    C("server_no_context_takeover", f"{PMD}; server_no_context_takeover", ACCEPT, client_bits="absent"),
    C("client_no_context_takeover", f"{PMD}; client_no_context_takeover", ACCEPT, client_bits="absent"),
    C("server_max_window_bits=15", f"{PMD}; server_max_window_bits=15", ACCEPT, server_bits=15),
    C("server_max_window_bits quoted 15", f'{PMD}; server_max_window_bits="15"', ACCEPT, server_bits=15),
    C("server_max_window_bits=10 (accept with <=10 or decline)", f"{PMD}; server_max_window_bits=10",
      {ACCEPT, DECLINE}, server_bits=10),
    C("server_max_window_bits=8 (accept with 8 or decline)", f"{PMD}; server_max_window_bits=8",
      {ACCEPT, DECLINE}, server_bits=8),
    C("all four parameters", f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
      "server_max_window_bits=15; client_max_window_bits=15", ACCEPT, server_bits=15, client_bits=15),
    C("no spaces", f"{PMD};client_max_window_bits;server_no_context_takeover", ACCEPT),
    C("spaces and tabs around separators", f"{PMD} ;\tclient_max_window_bits=10 ; server_no_context_takeover",
      ACCEPT, client_bits=10),
    C("quoted-pair in a quoted value", f'{PMD}; client_max_window_bits="1\\0"', {ACCEPT, BAD}, client_bits=10),
    # -- several offers / header lines / other extensions -----------------------------------
    C("two offers, first acceptable", f"{PMD}; client_max_window_bits=12, {PMD}", ACCEPT, offer=0, client_bits=12),
    C("bad window bits, then a good offer", f"{PMD}; server_max_window_bits=16, {PMD}; client_max_window_bits",
      ACCEPT, offer=1),
    C("unknown parameter, then a good offer", f"{PMD}; foo, {PMD}", ACCEPT, offer=1, client_bits="absent"),
    C("duplicate parameter, then a good offer",
      f"{PMD}; client_no_context_takeover; client_no_context_takeover, {PMD}; client_max_window_bits=9",
      ACCEPT, offer=1, client_bits=9),
    C("value on a flag, then a good offer", f"{PMD}; server_no_context_takeover=1, {PMD}", ACCEPT, offer=1),
    C("two header lines, bad then good", [f"{PMD}; server_max_window_bits=7", f"{PMD}; client_max_window_bits=11"],
      ACCEPT, offer=1, client_bits=11),
    C("two header lines, other extension first", ["x-webkit-deflate-frame", BROWSER_OFFER], ACCEPT),
    C("other extension first, one line", f"foo, {PMD}", ACCEPT, client_bits="absent"),
    C("other extensions with parameters around it", f'foo; bar=1; baz="qv", {PMD}; client_max_window_bits, mux',
      ACCEPT),
    C("empty list elements", f", {PMD}, , foo", ACCEPT),
    C("trailing comma", f"{PMD},", ACCEPT),
    C("server_max_window_bits=10, then bare", f"{PMD}; server_max_window_bits=10, {PMD}", ACCEPT),
    # -- declined (a valid header whose only deflate offers are unacceptable) -----------------
    C("other extensions only", "foo, bar; baz=1", DECLINE),
    C("x-webkit-deflate-frame", "x-webkit-deflate-frame", DECLINE),
    C("deflate-frame", "deflate-frame", DECLINE),
    C("value on server_no_context_takeover", f"{PMD}; server_no_context_takeover=1", DECLINE),
    C("value on client_no_context_takeover", f"{PMD}; client_no_context_takeover=true", DECLINE),
    C("duplicate client_no_context_takeover", f"{PMD}; client_no_context_takeover; client_no_context_takeover", DECLINE),
    C("duplicate server_max_window_bits", f"{PMD}; server_max_window_bits=15; server_max_window_bits=15", DECLINE),
    C("duplicate client_max_window_bits", f"{PMD}; client_max_window_bits=10; client_max_window_bits", DECLINE),
    C("unknown parameter", f"{PMD}; foo", DECLINE),
    C("unknown parameter with value", f"{PMD}; foo=bar", DECLINE),
    C("server_max_window_bits without value", f"{PMD}; server_max_window_bits", DECLINE),
    C("server_max_window_bits=7", f"{PMD}; server_max_window_bits=7", DECLINE),
    C("server_max_window_bits=16", f"{PMD}; server_max_window_bits=16", DECLINE),
    C("server_max_window_bits=-15", f"{PMD}; server_max_window_bits=-15", DECLINE),
    C("server_max_window_bits=1e1", f"{PMD}; server_max_window_bits=1e1", DECLINE),
    C("client_max_window_bits=7", f"{PMD}; client_max_window_bits=7", DECLINE),
    C("client_max_window_bits=16", f"{PMD}; client_max_window_bits=16", DECLINE),
    C("client_max_window_bits=08 (leading zero)", f"{PMD}; client_max_window_bits=08", DECLINE),
    C("client_max_window_bits=abc", f"{PMD}; client_max_window_bits=abc", DECLINE),
    C("two bad offers", f"{PMD}; foo, {PMD}; server_max_window_bits=99", DECLINE),
    # -- ambiguous in the RFCs: either answer is tolerated, the observed one is in the table --
    C("upper-case extension name", "PERMESSAGE-DEFLATE", {ACCEPT, DECLINE}),
    C("upper-case parameter name", f"{PMD}; CLIENT_MAX_WINDOW_BITS", {ACCEPT, DECLINE}),
    C("empty quoted value", f'{PMD}; client_max_window_bits=""', {DECLINE, BAD}),
    C("quoted value that is not a token", f'{PMD}; client_max_window_bits="1 0"', {DECLINE, BAD}),
    C("empty header value", "", {DECLINE, BAD}),
    # -- not RFC 6455 section 9.1 grammar: 400 ---------------------------------------------
    C("trailing semicolon", f"{PMD};", BAD),
    C("leading semicolon", f";{PMD}", BAD),
    C("missing semicolon", f"{PMD} client_max_window_bits", BAD),
    C("unterminated quoted value", f'{PMD}; client_max_window_bits="10', BAD),
    C("parameter without a name", f"{PMD}; =10", BAD),
    C("space inside a value", f"{PMD}; client_max_window_bits=1 0", BAD),
    C("double equals", f"{PMD}; client_max_window_bits==10", BAD),
    C("quoted extension name", f'"{PMD}"', BAD),
    C("separator in the extension name", "permessage@deflate", BAD),
    C("grammar error in another extension", f"foo;, {PMD}", BAD),
    C("grammar error on a second header line", [BROWSER_OFFER, "foo bar"], BAD),
]

#: --compression-client-context --compression-client-window-bits 10
CONTEXT_TABLE = [
    C("bare: no client_max_window_bits (not offered), context allowed", PMD, ACCEPT, client_bits="absent"),
    C("client_max_window_bits: asked for 10", f"{PMD}; client_max_window_bits", ACCEPT, client_bits=10),
    C("client_max_window_bits=12: asked for 10", f"{PMD}; client_max_window_bits=12", ACCEPT, client_bits=10),
    C("client_max_window_bits=9: at most 9", f"{PMD}; client_max_window_bits=9", ACCEPT, client_bits=9),
    C("client_no_context_takeover offered", f"{PMD}; client_no_context_takeover", ACCEPT, client_bits="absent"),
    C("bad offer still declined", f"{PMD}; client_max_window_bits=7", DECLINE),
    C("bad grammar still 400", f"{PMD};", BAD),
]


def offers_in(case: Case) -> list[dict[str, str | None]]:
    """The permessage-deflate offers of a (well-formed) case, as parameter dicts, in order."""
    out = []
    for line in case.lines or []:
        try:
            exts = parse_extensions(line)
        except ValueError:
            return []
        for name, params in exts:
            # (the server compares names case-insensitively, which the table tolerates)
            if name.lower() == PMD:
                out.append({k.lower(): v for k, v in params})
    return out


def observe(server, case: Case) -> tuple[str, Agreed | None, str]:
    """Runs one case: (outcome, agreement, detail). An accepted agreement is used for a round trip
    through the relay (a compressed message out, its compressed broadcast back)."""
    resp, bs, _ = upgrade(server, case.lines)
    try:
        if resp.status == 400:
            return BAD, None, "400"
        assert resp.status == 101, f"{case.name}: unexpected status {resp!r}"
        headers = extension_headers(resp)
        assert len(headers) <= 1, f"{case.name}: several extension headers {headers}"
        if not headers:
            return DECLINE, None, "101, no extension"
        agreed = agreed_from(headers[0])
        ws = DeflateClient(bs, resp)
        ws.agreed = agreed
        # Short enough for any window (distances < 256 bytes), long enough to be compressed back.
        msg = text_of(200, seed=7)
        ws.send_compressed(msg)
        op, compressed, raw, data = ws.recv_data()
        assert (op, data) == (OP_TEXT, msg), f"{case.name}: round trip {op}/{data[:40]!r}"
        assert compressed, f"{case.name}: a 200-byte broadcast came back uncompressed"
        if agreed.server_window < 15:
            # Matches 2 KiB back: a server that ignored server_max_window_bits would use them.
            chunk = os.urandom(1024).hex().encode()
            big = chunk + b"-" + chunk + b"-" + chunk
            ws.send_frame(OP_TEXT, big)
            op, compressed, raw, _ = ws.recv_data()
            try:
                got = inflate(raw, agreed.server_window) if compressed else raw
            except zlib.error as e:
                raise AssertionError(f"{case.name}: server_max_window_bits={agreed.server_window} agreed, but the "
                                     f"server's message needs a larger window ({e})") from None
            assert got == big, f"{case.name}: windowed round trip differs"
        return ACCEPT, agreed, headers[0]
    finally:
        bs.close()


def check_acceptance(case: Case, agreed: Agreed, client_context: bool) -> list[str]:
    """RFC 7692 section 7 rules for an acceptance of ``case``'s offers (and this server's policy)."""
    problems = []
    offers = offers_in(case)
    chosen = offers[case.offer] if case.offer is not None and offers else (offers[0] if len(offers) == 1 else None)
    p = agreed.params
    # This server never keeps its own context (a broadcast compresses once for everyone).
    if not agreed.server_no_context_takeover:
        problems.append("no server_no_context_takeover in the response")
    if not client_context and not agreed.client_no_context_takeover:
        problems.append("default configuration, but no client_no_context_takeover in the response")
    if chosen is not None:
        # 7.1.2.2: client_max_window_bits only if the offer had it, and not above the offered value.
        if "client_max_window_bits" in p:
            if "client_max_window_bits" not in chosen:
                problems.append("client_max_window_bits in the response, but not in the offer (RFC 7692 7.1.2.2)")
            elif chosen["client_max_window_bits"] and _int(chosen["client_max_window_bits"]) is not None \
                    and int(p["client_max_window_bits"]) > _int(chosen["client_max_window_bits"]):
                problems.append("client_max_window_bits above the offered value")
        # 7.1.2.1: an accepted server_max_window_bits offer is answered with one, <= the offer.
        if "server_max_window_bits" in chosen:
            if "server_max_window_bits" not in p:
                problems.append("the offer had server_max_window_bits, the response does not (RFC 7692 7.1.2.1)")
            elif _int(chosen["server_max_window_bits"]) is not None and \
                    int(p["server_max_window_bits"]) > _int(chosen["server_max_window_bits"]):
                problems.append("server_max_window_bits above the offered value")
    if case.client_bits == "absent" and "client_max_window_bits" in p:
        problems.append("client_max_window_bits in the response")
    elif isinstance(case.client_bits, int) and "client_max_window_bits" in p \
            and int(p["client_max_window_bits"]) > case.client_bits:
        problems.append(f"client_max_window_bits above {case.client_bits}")
    if case.server_bits is not None and int(p.get("server_max_window_bits") or 99) > case.server_bits:
        problems.append(f"server_max_window_bits missing or above {case.server_bits}")
    return problems


def _int(v: str | None) -> int | None:
    try:
        return int(v.strip('"')) if v else None
    except ValueError:
        return None


def run_table(server, table: list[Case], client_context: bool = False) -> None:
    rows, failures = [], []
    for case in table:
        try:
            outcome, agreed, detail = observe(server, case)
        except Exception as e:  # a broken round trip is a failure of that row, not of the table
            failures.append(f"{case.name}: {e}")
            rows.append((case.name, "ERROR", str(e)[:120]))
            continue
        rows.append((case.name, outcome, detail))
        if outcome not in case.expect:
            failures.append(f"{case.name}: offered {case.lines!r} -> {detail}; expected {'/'.join(sorted(case.expect))}")
        elif agreed is not None:
            for p in check_acceptance(case, agreed, client_context):
                failures.append(f"{case.name}: offered {case.lines!r} -> {detail}: {p}")
    table_text = "\n".join(f"{name:<60} {outcome:<8} {detail}" for name, outcome, detail in rows)
    print("\n" + table_text)
    server.assert_alive()
    assert not failures, "negotiation table:\n" + "\n".join(failures) + "\n\nobserved:\n" + table_text


def test_negotiation_table(server_factory):
    """Every offer of DEFAULT_TABLE through a raw upgrade: accepted (parameters checked, then a
    compressed round trip with them), declined (101 without the header) or 400."""
    server = server_factory(service="relay")
    run_table(server, DEFAULT_TABLE)


def test_negotiation_table_with_client_context(server_factory):
    """With --compression-client-context the server does not ask for client_no_context_takeover
    and asks for --compression-client-window-bits only from offers that allow it."""
    server = server_factory("--compression-client-context", "--compression-client-window-bits", "10",
                            service="relay")
    run_table(server, CONTEXT_TABLE, client_context=True)
    resp, bs, _ = upgrade(server, [PMD])
    bs.close()
    agreed = agreed_from(extension_headers(resp)[0])
    assert not agreed.client_no_context_takeover, f"client context allowed, yet: {agreed.header!r}"


def test_compression_off_declines_every_offer(server_factory):
    """--compression off: no offer is answered with the extension, RSV1 is a protocol error, large
    messages travel plain (to a websockets client that offered it too)."""
    server = server_factory("--compression", "off", service="relay")
    for lines in ([PMD], [BROWSER_OFFER], [f"{PMD}; client_no_context_takeover", PMD]):
        resp, bs, _ = upgrade(server, lines)
        bs.close()
        assert resp.status == 101 and not extension_headers(resp), f"--compression off, offer {lines}: {resp!r}"

    async def main():
        async with ws_connect(server.ws_url("off"), compression="deflate") as a:
            assert not a.protocol.extensions, a.protocol.extensions
            assert a.response.headers.get("Sec-WebSocket-Extensions") is None
            big = text_of(5000).decode()
            await a.send(big)
            await expect(a, big)
    run(main())
    with DeflateClient.open(server, "/ws/off") as raw:
        assert raw.agreed is None
        raw.send_text(text_of(1000))
        op, compressed, _, _ = raw.recv_data()
        assert not compressed
        raw.send_compressed(text_of(300))
        expect_close(raw, 1002, "RSV1 with compression off")
    assert metric(server, "stateroom_websockets_deflate") == 0
    server.assert_alive()


# --------------------------------------------------------------------------------------------
# server -> client: compressed broadcasts
# --------------------------------------------------------------------------------------------


def test_websockets_round_trips_around_the_threshold_and_large(server_factory):
    """Python websockets with the extension (a) and without it (b), and two raw clients (one agreed,
    one did not offer): text and binary of every size reach all four intact; RSV1 on the raw frames
    exactly for messages >= --compression-min-bytes (compressible ones) to the client that agreed."""
    server = server_factory(service="relay")
    url = server.ws_url("rt")
    sizes = [0, 1, 64, MIN_BYTES - 1, MIN_BYTES, MIN_BYTES + 1, 1000, 16 << 10, 70_000, 1 << 20]

    async def main():
        async with ws_connect(url, compression="deflate") as a, ws_connect(url, compression=None) as b:
            ext = a.response.headers.get("Sec-WebSocket-Extensions")
            assert ext and agreed_from(ext) is not None, f"websockets' offer was not accepted: {ext!r}"
            assert a.protocol.extensions and a.protocol.extensions[0].name == PMD
            assert not b.protocol.extensions
            with DeflateClient.open(server, "/ws/rt") as r1, DeflateClient.open(server, "/ws/rt", offer=None) as r2:
                assert r1.agreed is not None
                await asyncio.sleep(0.05)
                assert metric(server, "stateroom_websockets_deflate") == 2
                for i, size in enumerate(sizes):
                    for kind in ("text", "binary"):
                        data = text_of(size, seed=i)
                        msg = data.decode() if kind == "text" else data
                        sender = a if i % 2 == 0 else b
                        await sender.send(msg)
                        for who, ws in (("websockets+deflate", a), ("websockets plain", b)):
                            got = await recv(ws, 15)
                            assert got == msg, f"{who}: {kind} {size} bytes -> {len(got)} different bytes"
                        for who, r in (("raw agreed", r1), ("raw plain", r2)):
                            op, compressed, raw, got = await asyncio.to_thread(r.recv_data, 15)
                            assert got == data and op == (OP_TEXT if kind == "text" else OP_BINARY), \
                                f"{who}: {kind} {size} bytes"
                            want = r is r1 and size >= MIN_BYTES
                            assert compressed == want, (f"{who}: {kind} of {size} bytes came "
                                                        f"{'compressed' if compressed else 'plain'}")
                            if compressed and size >= 1000:
                                assert len(raw) < size / 2, f"{kind} {size} B compressed to only {len(raw)} B"
            wait_metric(server, "stateroom_websockets_deflate", lambda v: v == 1, "the raw clients left")
    run(main(), 60)
    wait_metric(server, "stateroom_messages_inflated_total", lambda v: v >= 10, "websockets' messages not inflated")
    wait_metric(server, "stateroom_websockets_deflate", lambda v: v == 0, "agreeing connections closed")
    server.assert_alive()


def test_a_broadcast_is_compressed_once_same_bytes_to_every_agreeing_client(server_factory):
    """Three raw clients agreed, one did not: every broadcast reaches the three as the same
    compressed bytes (RSV1) and the fourth plain; stateroom_messages_compressed_total moves once
    per broadcast, not per recipient."""
    server = server_factory(service="relay")
    agreeing = [DeflateClient.open(server, "/ws/once") for _ in range(3)]
    plain = DeflateClient.open(server, "/ws/once", offer=None)
    try:
        time.sleep(0.05)
        before = metric(server, "stateroom_messages_compressed_total")
        messages = [json_like(i, 1024) for i in range(10)]
        for i, m in enumerate(messages):
            if i % 2:
                agreeing[i % 3].send_compressed(m)
            else:
                plain.send_text(m)
            seen = []
            for ws in agreeing:
                op, compressed, raw, data = ws.recv_data()
                assert compressed and data == m, f"message {i}: compressed={compressed}"
                seen.append(raw)
            assert seen[0] == seen[1] == seen[2], f"message {i}: agreeing clients got different compressed bytes"
            assert len(seen[0]) < len(m) * 0.7, f"1 KiB JSON compressed to {len(seen[0])} B"
            op, compressed, raw, data = plain.recv_data()
            assert not compressed and data == m
        after = wait_metric(server, "stateroom_messages_compressed_total", lambda v: v >= before + len(messages),
                            "compressed counter behind")
        assert after - before == len(messages), f"{after - before:g} compressions for {len(messages)} broadcasts " \
                                                "to 3 agreeing clients (want one each)"
    finally:
        for ws in agreeing + [plain]:
            ws.close()


def test_min_bytes_threshold_and_incompressible_messages(server_factory):
    """--compression-min-bytes 200: 199 bytes go plain, 200 compressed; random bytes that do not
    get smaller go plain and count in stateroom_compressions_skipped_total."""
    server = server_factory("--compression-min-bytes", "200", service="relay")
    with DeflateClient.open(server, "/ws/min") as ws:
        for size, want in ((199, False), (200, True), (201, True), (10, False)):
            data = text_of(size)
            ws.send_text(data)
            op, compressed, raw, got = ws.recv_data()
            assert got == data and compressed == want, f"{size} bytes: compressed={compressed}, want {want}"
        skipped = metric(server, "stateroom_compressions_skipped_total")
        noise = os.urandom(4096)
        ws.send_binary(noise)
        op, compressed, raw, got = ws.recv_data()
        assert (op, got) == (OP_BINARY, noise)
        assert not compressed, "random bytes sent compressed (the compressed form is not smaller)"
        wait_metric(server, "stateroom_compressions_skipped_total", lambda v: v == skipped + 1,
                    "an incompressible message was not counted as skipped")
        # Control frames are never compressed: a ping's pong and the close.
        ws.ping(b"x" * 125)
        f = ws.recv_frame()
        assert f.opcode == OP_PONG and f.rsv == 0 and f.payload == b"x" * 125, f
        ws.send_close(1000)
        frames, code = ws.read_until_close()
        assert code == 1000 and ws.close_frame.rsv == 0


def test_chat_service_broadcasts_to_deflate_and_plain_clients(server_factory):
    """The chat service (its own text, sent to one client, to everyone but one, to everyone) with a
    compressing client and a plain one: short notices and a long chat line reach both intact, and
    the long line went through the compressor."""
    server = server_factory(service="chat")

    async def main():
        async with ws_connect(server.ws_url("chat"), compression="deflate") as a, \
                ws_connect(server.ws_url("chat"), compression=None) as b:
            assert (await recv(a)).startswith("Welcome, ")
            assert (await recv(b)).startswith("Welcome, ")
            assert (await recv(a)).endswith("has joined the chat")
            line = "hello " * 100
            await a.send(line)
            got_a, got_b = await recv(a), await recv(b)
            assert got_a == got_b and got_a.endswith(line), (got_a[:80], got_b[:80])
    run(main())
    wait_metric(server, "stateroom_messages_compressed_total", lambda v: v >= 1, "the chat line was not compressed")


def test_broadcast_to_clients_with_different_server_windows(server_factory):
    """One room: a client that limited the server's window (server_max_window_bits=10), one with the
    browser's offer (15) and one without the extension: a message with repeats 2 KiB apart reaches
    each in a form it can inflate with its own window."""
    server = server_factory(service="relay")
    small = DeflateClient.open(server, "/ws/windows", offer=f"{PMD}; server_max_window_bits=10")
    full = DeflateClient.open(server, "/ws/windows")
    plain = DeflateClient.open(server, "/ws/windows", offer=None)
    try:
        if small.agreed is None:
            pytest.skip("server_max_window_bits=10 is declined: nothing to check")
        assert small.agreed.server_window <= 10, small.agreed.header
        assert full.agreed.server_window == 15, full.agreed.header
        for i in range(3):
            chunk = os.urandom(1024).hex().encode()
            msg = chunk + b"|" + chunk + b"|" + chunk
            plain.send_binary(msg)
            for who, ws in (("window 10", small), ("window 15", full), ("plain", plain)):
                try:
                    op, compressed, raw, got = ws.recv_data()
                except zlib.error as e:
                    raise AssertionError(f"message {i} to the {who} client does not inflate with its window: {e}") from None
                assert got == msg and compressed == (ws is not plain), f"message {i} to the {who} client"
    finally:
        for ws in (small, full, plain):
            ws.close()


# --------------------------------------------------------------------------------------------
# client -> server
# --------------------------------------------------------------------------------------------


def test_fragmented_compressed_messages_are_delivered_whole(server_factory):
    """A compressed message in fragments (RSV1 on the first only; one-byte fragments, a ping
    between fragments; text whose compressed bytes are not UTF-8 and split anywhere) reaches a
    plain client whole."""
    server = server_factory(service="relay")
    with DeflateClient.open(server, "/ws/frag") as sender, DeflateClient.open(server, "/ws/frag", offer=None) as plain:
        cases = [
            ("text in 3 fragments", OP_TEXT, ("\u00e9t\u00e9 " * 400).encode(), 3),
            ("binary in 5 fragments", OP_BINARY, text_of(5000), 5),
            ("text in one-byte fragments", OP_TEXT, text_of(300), None),
            ("large text in 4 fragments", OP_TEXT, text_of(300_000), 4),
        ]
        for name, opcode, data, parts in cases:
            comp = deflate(data)
            if parts is None:
                chunks = [comp[i:i + 1] for i in range(len(comp))]
            else:
                step = -(-len(comp) // parts)
                chunks = [comp[i:i + step] for i in range(0, len(comp), step)]
            for k, chunk in enumerate(chunks):
                first, last = k == 0, k == len(chunks) - 1
                sender.send_frame(opcode if first else OP_CONT, chunk, fin=last, rsv=RSV1 if first else 0)
                if k == 1:
                    sender.ping(b"mid")
            for who, ws in (("plain", plain), ("sender", sender)):
                op, compressed, raw, got = via_room(ws, sender, name, 10)
                assert (op, got) == (opcode, data), f"{name}: {who} got {op}/{len(got)} bytes"
        # every ping sent between fragments was answered
        pongs = [f for f in sender.frames_seen if f.opcode == OP_PONG]
        assert len(pongs) == len(cases) and all(p.payload == b"mid" for p in pongs), pongs


# RFC 7692 7.2.3: payloads a conforming client may send.
EDGE_PAYLOADS = {
    "empty payload (an empty message)": (b"", b""),
    "single 0x00 byte (7.2.3.6, empty)": (b"\x00", b""),
    "BFINAL block, not stripped (7.2.3.4)": (None, b"final block " * 30),
    "two blocks in one message (7.2.3.5)": ("two", b"first part " * 20 + b"second part " * 20),
    "stored block, no compression (7.2.3.3)": ("stored", b"stored " * 30),
    "stripped sync flush of an empty tail": ("tail", b"abc" * 100),
}


def edge_payload(name: str) -> tuple[bytes, bytes]:
    kind, data = EDGE_PAYLOADS[name]
    if isinstance(kind, bytes):
        return kind, data
    if kind is None:  # BFINAL=1: Z_FINISH, nothing stripped
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FINISH), data
    if kind == "two":
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        half = len(data) // 2
        out = c.compress(data[:half]) + c.flush(zlib.Z_FULL_FLUSH) + c.compress(data[half:]) + c.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4], data
    if kind == "stored":
        c = zlib.compressobj(0, zlib.DEFLATED, -15)
        return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4], data
    # a message that ends with two sync flushes: only the last tail is stripped
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4], data


@pytest.mark.parametrize("name", list(EDGE_PAYLOADS))
def test_rfc7692_edge_payloads_inflate(server_factory, name):
    server = server_factory(service="relay")
    payload, data = edge_payload(name)
    with DeflateClient.open(server, "/ws/edge") as ws, DeflateClient.open(server, "/ws/edge", offer=None) as plain:
        for opcode in (OP_TEXT, OP_BINARY):
            ws.send_frame(opcode, payload, rsv=RSV1)
            op, compressed, raw, got = via_room(plain, ws, name)
            assert (op, got) == (opcode, data), f"{name}: {op}/{got[:40]!r}"
            ws.recv_data()
        # the connection is still in order: a plain message after it
        ws.send_text(b"after")
        assert plain.recv_data()[3] == b"after"
    server.assert_alive()


RSV_ERRORS = {
    "RSV1 on a continuation frame": lambda ws: (
        ws.send_frame(OP_TEXT, deflate(b"a" * 300)[:5], fin=False, rsv=RSV1),
        ws.send_frame(OP_CONT, deflate(b"a" * 300)[5:], fin=True, rsv=RSV1)),
    "RSV1 on a continuation of a plain message": lambda ws: (
        ws.send_frame(OP_TEXT, b"plain ", fin=False),
        ws.send_frame(OP_CONT, deflate(b"x"), fin=True, rsv=RSV1)),
    "RSV1 on a ping": lambda ws: ws.send_frame(OP_PING, b"p", rsv=RSV1),
    "RSV1 on a pong": lambda ws: ws.send_frame(OP_PONG, b"p", rsv=RSV1),
    "RSV1 on a close": lambda ws: ws.send_frame(OP_CLOSE, struct.pack("!H", 1000), rsv=RSV1),
    "RSV1 on a ping between fragments": lambda ws: (
        ws.send_frame(OP_TEXT, deflate(b"a" * 300)[:5], fin=False, rsv=RSV1),
        ws.send_frame(OP_PING, b"p", rsv=RSV1)),
    "RSV2 on a text frame": lambda ws: ws.send_frame(OP_TEXT, b"hello", rsv=RSV2),
    "RSV3 on a binary frame": lambda ws: ws.send_frame(OP_BINARY, b"hello", rsv=RSV3),
    "RSV1|RSV2 on a text frame": lambda ws: ws.send_frame(OP_TEXT, deflate(b"hello"), rsv=RSV1 | RSV2),
    "RSV1 without the extension agreed": None,
}


@pytest.mark.parametrize("name", list(RSV_ERRORS))
def test_rsv_bits_where_not_allowed_close_1002(server_factory, name):
    server = server_factory(service="relay")
    offer = None if RSV_ERRORS[name] is None else BROWSER_OFFER
    with DeflateClient.open(server, "/ws/rsv", offer=offer) as ws, DeflateClient.open(server, "/ws/rsv") as neighbour:
        if RSV_ERRORS[name] is None:
            ws.send_frame(OP_TEXT, deflate(b"hello " * 50), rsv=RSV1)
        else:
            assert ws.agreed is not None
            RSV_ERRORS[name](ws)
        expect_close(ws, 1002, name)
        neighbour.send_compressed(text_of(500))
        assert neighbour.recv_data()[3] == text_of(500)
    server.assert_alive()


def test_zip_bomb_closes_1009_without_inflating_it_neighbour_unaffected(server_factory):
    """A ~20 KB compressed frame that inflates to 20 MB against --max-message-size 1 MiB: 1009,
    counted; the server's peak memory does not grow by the bomb's size (inflation stops at the
    limit); a neighbour in the room carries on; a message of exactly the limit still passes."""
    limit = 1 << 20
    server = server_factory("--max-message-size", str(limit), service="relay", shards=1)
    bomb = deflate(b"\x00" * 20_000_000, level=9)
    assert 15_000 < len(bomb) < 25_000, len(bomb)

    async def main():
        async with ws_connect(server.ws_url("bomb"), compression="deflate") as neighbour:
            with DeflateClient.open(server, "/ws/bomb") as attacker:
                await neighbour.send("before")
                await expect(neighbour, "before")
                await asyncio.to_thread(attacker.recv_data)
                await asyncio.sleep(0.2)
                hwm_before = vm_hwm_kib(server.proc.pid)
                too_big = metric(server, "stateroom_inflate_too_big_closes_total")
                attacker.send_frame(OP_BINARY, bomb, rsv=RSV1)
                await asyncio.to_thread(expect_close, attacker, 1009, "zip bomb")
                grown = vm_hwm_kib(server.proc.pid) - hwm_before
                assert grown < 10 * 1024, f"peak RSS grew by {grown} KiB on a 20 MB bomb (inflated past the limit?)"
                wait_metric(server, "stateroom_inflate_too_big_closes_total", lambda v: v == too_big + 1,
                            "the 1009 close was not counted")
            await neighbour.send("after")
            await expect(neighbour, "after")
            with DeflateClient.open(server, "/ws/bomb") as attacker:
                third = len(bomb) // 3
                attacker.send_frame(OP_TEXT, bomb[:third], fin=False, rsv=RSV1)
                attacker.send_frame(OP_CONT, bomb[third:2 * third], fin=False)
                attacker.send_frame(OP_CONT, bomb[2 * third:], fin=True)
                await asyncio.to_thread(expect_close, attacker, 1009, "fragmented zip bomb")
            # exactly the limit inflates and is delivered; one byte more is 1009
            with DeflateClient.open(server, "/ws/bomb") as edge:
                exact = b"\x00" * limit
                edge.send_frame(OP_BINARY, deflate(exact), rsv=RSV1)
                got = await recv(neighbour, 15)
                assert got == exact, f"a message of exactly --max-message-size: {len(got)} bytes"
                await asyncio.to_thread(edge.recv_data, 15)
                edge.send_frame(OP_BINARY, deflate(exact + b"\x00"), rsv=RSV1)
                await asyncio.to_thread(expect_close, edge, 1009, "limit + 1")
            await neighbour.send("still here")
            await expect(neighbour, "still here")
    run(main(), 60)
    wait_metric(server, "stateroom_inflate_too_big_closes_total", lambda v: v == 3, "three 1009 closes")
    server.assert_alive()


CORRUPT = {
    "invalid block type": b"\x07\x00",
    "bad dynamic Huffman header": b"\xfc\xff\xff\xff\xff\xff\x00\x13",
    "stored block with a bad length check": b"\x00\x05\x00\x00\x00hello",
    "distance too far back": bytes([0x03, 0x02, 0x00]),  # fixed block, a match with an empty window
    # A stored block that announces 100 bytes and carries 50 (the tail appended makes 54): zlib
    # inflates what is there and waits for more, so only an inflater that checks the message ends
    # on a block boundary notices. Delivering the 54 bytes would hand the room a truncated message.
    "stored block cut short": b"\x00\x64\x00\x9b\xff" + b"a" * 50,
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_deflate_stream_closes_1007(server_factory, name):
    payload = CORRUPT[name]
    server = server_factory(service="relay")
    with DeflateClient.open(server, "/ws/bad") as ws, DeflateClient.open(server, "/ws/bad", offer=None) as neighbour:
        errors = metric(server, "stateroom_inflate_errors_total")
        ws.send_frame(OP_TEXT, payload, rsv=RSV1)
        frames, code = ws.read_until_close(5)
        delivered = []
        try:
            delivered.append(neighbour.recv_data(0.3)[3])
        except TimeoutError:
            pass
        assert code == 1007, f"{name}: close {code}, the room got {delivered!r}"
        assert not delivered, f"{name}: the room got {delivered!r}"
        wait_metric(server, "stateroom_inflate_errors_total", lambda v: v == errors + 1, "corrupt stream not counted")
        neighbour.send_text(b"ok " * 100)
        assert neighbour.recv_data()[3] == b"ok " * 100
    server.assert_alive()


@pytest.mark.parametrize("fragmented", [False, True], ids=["one frame", "fragments"])
def test_compressed_text_inflating_to_invalid_utf8_closes_1007(server_factory, fragmented):
    server = server_factory(service="relay")
    with DeflateClient.open(server, "/ws/utf8") as ws, DeflateClient.open(server, "/ws/utf8", offer=None) as plain:
        # the same bytes as binary are fine
        bad = b"valid start " * 20 + b"\xff\xfe" + b" end" * 20
        ws.send_frame(OP_BINARY, deflate(bad), rsv=RSV1)
        assert plain.recv_data()[3] == bad
        ws.recv_data()
        # text split inside a multi-byte character by the compression is fine
        good = ("\u20ac" * 500).encode()
        ws.send_frame(OP_TEXT, deflate(good), rsv=RSV1)
        assert plain.recv_data()[3] == good
        ws.recv_data()
        comp = deflate(bad)
        if fragmented:
            ws.send_frame(OP_TEXT, comp[:4], fin=False, rsv=RSV1)
            ws.send_frame(OP_CONT, comp[4:], fin=True)
        else:
            ws.send_frame(OP_TEXT, comp, rsv=RSV1)
        expect_close(ws, 1007, "invalid UTF-8 after inflation")
        plain.send_text(b"plain still works")
        assert plain.recv_data()[3] == b"plain still works"
    # a multi-byte character cut short at the end of a compressed text message
    with DeflateClient.open(server, "/ws/utf8") as ws:
        ws.send_frame(OP_TEXT, deflate(b"abc" * 50 + "\u20ac".encode()[:2]), rsv=RSV1)
        expect_close(ws, 1007, "truncated UTF-8 sequence after inflation")
    server.assert_alive()


# --------------------------------------------------------------------------------------------
# clients keeping their context
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [15, 10])
def test_client_context_takeover_across_messages_and_inflate_memory(server_factory, bits):
    """--compression-client-context: a raw client compresses with one zlib stream across messages
    (later messages refer to earlier ones); all arrive intact; the inflater memory gauge is above
    0 while it is connected (bounded per connection) and back to 0 after it leaves."""
    args = ["--compression-client-context"]
    if bits != 15:
        args += ["--compression-client-window-bits", str(bits)]
    server = server_factory(*args, service="relay", shards=1)
    assert metric(server, "stateroom_inflate_memory_bytes") == 0
    with DeflateClient.open(server, "/ws/ctx") as ws, DeflateClient.open(server, "/ws/ctx", offer=None) as plain:
        a = ws.agreed
        assert a is not None and not a.client_no_context_takeover, a
        assert a.client_window == bits, f"asked for client_max_window_bits={bits}? {a.header!r}"
        c = ContextDeflater(a.client_window)
        sizes = []
        for i in range(12):
            msg = json_like(i // 2, 450)  # every odd message repeats the one before (< 1 KiB back)
            assert len(msg) < 700
            comp = c.message(msg)
            sizes.append(len(comp))
            ws.send_frame(OP_TEXT, comp, rsv=RSV1)
            op, compressed, raw, got = plain.recv_data()
            assert got == msg, f"message {i} with context takeover arrived as {got[:60]!r}"
            op, compressed, raw, got = ws.recv_data()
            assert got == msg
        assert max(sizes[1::2]) < sizes[0] / 4, f"the context was not used? compressed sizes {sizes}"
        # fragmented with context, too
        msg = json_like(1, 600)
        comp = c.message(msg)
        ws.send_frame(OP_TEXT, comp[:3], fin=False, rsv=RSV1)
        ws.send_frame(OP_CONT, comp[3:], fin=True)
        assert plain.recv_data()[3] == msg
        ws.recv_data()
        held = wait_metric(server, "stateroom_inflate_memory_bytes", lambda v: v > 0, "no inflater memory reported")
        assert held <= 64 * 1024 + (1 << bits), f"{held:g} bytes of inflater memory for one connection"
        with DeflateClient.open(server, "/ws/ctx") as second:
            c2 = ContextDeflater(second.agreed.client_window)
            for i in range(3):
                msg = json_like(i, 400)
                second.send_frame(OP_BINARY, c2.message(msg), rsv=RSV1)
                assert plain.recv_data()[3] == msg
            two = wait_metric(server, "stateroom_inflate_memory_bytes", lambda v: v > held, "a second inflater")
            assert two <= 2 * held + 1024
        wait_metric(server, "stateroom_inflate_memory_bytes", lambda v: v == held, "second client's inflater not released")
    wait_metric(server, "stateroom_inflate_memory_bytes", lambda v: v == 0, "inflater memory after every client left")
    server.assert_alive()


CLOSES = {
    "client close handshake": lambda ws: (ws.send_close(1000), ws.read_until_close()),
    "TCP close without a close frame": lambda ws: None,
    "server closes: 1002": lambda ws: (ws.send_frame(OP_PING, b"p", rsv=RSV1), ws.read_until_close()),
    "server closes: 1007": lambda ws: (ws.send_frame(OP_TEXT, b"\x07\x00", rsv=RSV1), ws.read_until_close()),
    "server closes: 1009": lambda ws: (ws.send_frame(OP_BINARY, deflate(b"\x00" * (2 << 20)), rsv=RSV1),
                                       ws.read_until_close()),
}


@pytest.mark.parametrize("client_context", [False, True], ids=["default", "client context"])
def test_deflate_gauges_return_to_zero_after_every_kind_of_close(server_factory, client_context):
    """stateroom_websockets_deflate (and the inflater memory, with client context) count a
    connection until it is gone, whichever way it ends."""
    args = ["--max-message-size", str(1 << 20)] + (["--compression-client-context"] if client_context else [])
    server = server_factory(*args, service="relay", shards=1)
    for name, close in CLOSES.items():
        ws = DeflateClient.open(server, "/ws/gauge")
        try:
            ws.send_frame(OP_TEXT, ContextDeflater().message(text_of(400)), rsv=RSV1)
            assert ws.recv_data()[3] == text_of(400)
            wait_metric(server, "stateroom_websockets_deflate", lambda v: v == 1, f"{name}: while open")
            if client_context:
                wait_metric(server, "stateroom_inflate_memory_bytes", lambda v: v > 0, f"{name}: while open")
            close(ws)
        finally:
            ws.close()
        wait_metric(server, "stateroom_websockets_deflate", lambda v: v == 0, f"after a {name}")
        wait_metric(server, "stateroom_inflate_memory_bytes", lambda v: v == 0, f"after a {name}")
    server.assert_alive()


def test_websockets_keeping_context_when_allowed_and_not_by_default(server_factory):
    """Python websockets keeps its compression context when the server lets it: messages still
    arrive; with the default configuration it is told not to, and the server holds no inflater."""
    for args, context in ((("--compression-client-context",), True), ((), False)):
        server = server_factory(*args, service="relay", shards=1)

        async def main():
            async with ws_connect(server.ws_url("ws"), compression="deflate") as a, \
                    ws_connect(server.ws_url("ws"), compression=None) as b:
                ext = a.protocol.extensions[0]
                assert ext.local_no_context_takeover == (not context), a.response.headers
                for i in range(8):
                    msg = json_like(i % 2, 800).decode()
                    await a.send(msg)
                    await expect(a, msg)
                    await expect(b, msg)
                mem = metric(server, "stateroom_inflate_memory_bytes")
                assert (mem > 0) == context, f"inflate memory {mem:g} (client context {context})"
        run(main())
        wait_metric(server, "stateroom_inflate_memory_bytes", lambda v: v == 0, "after close")
        server.assert_alive()


# --------------------------------------------------------------------------------------------
# shards, TLS
# --------------------------------------------------------------------------------------------


def test_agreement_follows_connections_handed_to_the_room_owning_shard(server_factory):
    """8 rooms on 2 shards: connections accepted by one shard and handed to the other keep their
    agreement (compressed both ways) and their plain neighbours stay plain."""
    server = server_factory(service="relay", shards=2)
    clients = []
    try:
        for r in range(8):
            clients.append((r, DeflateClient.open(server, f"/ws/room{r}"), DeflateClient.open(server, f"/ws/room{r}", offer=None)))
        for r, z, p in clients:
            msg = json_like(r, 700)
            z.send_compressed(msg)
            op, compressed, raw, got = z.recv_data()
            assert compressed and got == msg, f"room {r}: deflate client"
            op, compressed, raw, got = p.recv_data()
            assert not compressed and got == msg, f"room {r}: plain client"
            p.send_text(msg[::-1])
            assert z.recv_data()[1:4:2] == (True, msg[::-1])
            p.recv_data()
        assert metric(server, "stateroom_websockets_deflate") == 8
    finally:
        for _, z, p in clients:
            z.close()
            p.close()


def test_compression_over_wss(server_factory, tls_pair):
    import ssl
    server = server_factory(*tls_pair.args(), service="relay")
    ctx = ssl.create_default_context(cafile=str(tls_pair.cert))

    async def main():
        url = server.ws_url("tls")
        async with ws_connect(url, ssl=ctx, compression="deflate") as a, ws_connect(url, ssl=ctx) as b:
            assert a.protocol.extensions and not b.protocol.extensions
            for size in (10, 5000, 200_000):
                msg = text_of(size).decode()
                await a.send(msg)
                await expect(a, msg, 10)
                await expect(b, msg, 10)
    run(main())


# --------------------------------------------------------------------------------------------
# a browser
# --------------------------------------------------------------------------------------------

COUNTER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>deflate e2e</title></head>
<body><pre id="log"></pre>
<script>
const log = (s) => { document.getElementById('log').textContent += s + "\\n"; };
const ws = new WebSocket('ws://' + location.host + '/ws/browser');
ws.onopen = () => {
  log('extensions: ' + ws.extensions);
  ws.send('x'.repeat(2000));          // ignored by the counter, inflated by the server
  ws.send('increment');
};
ws.onmessage = (e) => {
  log('message: ' + e.data);
  if (e.data === 'new value: 1') ws.send('increment');
  if (e.data === 'new value: 2') { log('done'); ws.close(1000); }
};
ws.onerror = () => log('error');
ws.onclose = (e) => log('close ' + e.code);
</script></body></html>
"""

RELAY_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>deflate relay</title></head>
<body><pre id="log"></pre>
<script>
const log = (s) => { document.getElementById('log').textContent += s + "\\n"; };
const big = JSON.stringify(Array.from({length: 60}, (_, i) => ({id: 'p-' + i, x: i * 3.25, name: 'player ' + (i % 7)})));
const ws = new WebSocket('ws://' + location.host + '/ws/relay');
ws.onopen = () => { log('extensions: ' + ws.extensions); log('sent ' + big.length); ws.send(big); };
ws.onmessage = (e) => {
  log(e.data === big ? 'echo ok' : 'echo differs: ' + String(e.data).slice(0, 80));
  log('done'); ws.close(1000);
};
ws.onerror = () => log('error');
ws.onclose = (e) => log('close ' + e.code);
</script></body></html>
"""


def test_chromium_negotiates_permessage_deflate_with_the_counter(server_factory, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text(COUNTER_PAGE)
    server = server_factory("--static", str(www))  # the seed's counter
    with DeflateClient.open(server, "/ws/browser") as watcher:
        inflated = metric(server, "stateroom_messages_inflated_total")
        log, stderr = browser_log(tmp_path, server.http_url("/index.html"))
        ext = next((line for line in log if line.startswith("extensions: ")), "")
        assert "permessage-deflate" in ext, f"ws.extensions without permessage-deflate (log {log}):\n{stderr}"
        for line in ("message: new value: 1", "message: new value: 2", "done"):
            assert line in log, f"browser log lacks {line!r}: {log}\n{stderr}"
        assert watcher.recv_data()[3] == b"new value: 1"
        assert watcher.recv_data()[3] == b"new value: 2"
    assert metric(server, "stateroom_messages_inflated_total") > inflated, "Chromium's messages were not inflated"


def test_chromium_gets_a_compressed_broadcast_back(server_factory, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text(RELAY_PAGE)
    server = server_factory("--static", str(www), service="relay")
    with DeflateClient.open(server, "/ws/relay") as watcher:
        log, stderr = browser_log(tmp_path, server.http_url("/index.html"))
        assert any(line.startswith("extensions: permessage-deflate") for line in log), f"{log}\n{stderr}"
        assert "echo ok" in log, f"browser log {log}\n{stderr}"
        op, compressed, raw, got = watcher.recv_data()
        assert compressed and len(raw) < len(got) / 2, "the browser's message was not broadcast compressed"
        assert got.startswith(b'[{"id":"p-0"')


def vm_rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_bombs_at_the_default_limit_leave_no_lasting_memory_behind(server_factory):
    """A bomb is inflated up to --max-message-size (16 MiB by default) before its 1009: that
    buffer is let go after the message and comes back to the kernel, so after bombs on every shard
    the server's resident memory is back near where it was (it used to keep ~34 MB per shard)."""
    server = server_factory(service="relay", shards=2)
    bomb = deflate(b"\x00" * (17 << 20), level=9)

    def one(room: str) -> None:
        with DeflateClient.open(server, f"/ws/{room}") as attacker:
            attacker.send_frame(OP_BINARY, bomb, rsv=RSV1)
            expect_close(attacker, 1009, "zip bomb")

    # Warm: every shard has inflated (small) messages, so its workspace and arena exist.
    for i in range(8):
        with DeflateClient.open(server, f"/ws/bomb-{i}") as warm:
            warm.send_compressed(text_of(4000))
            assert warm.recv_data()[3] == text_of(4000)
    time.sleep(0.3)
    before = vm_rss_kib(server.proc.pid)
    # Rooms spread over both shards (room ids hash to shards): every shard inflates bombs.
    for i in range(8):
        one(f"bomb-{i}")
    time.sleep(0.3)
    grown = vm_rss_kib(server.proc.pid) - before
    assert grown < 8 * 1024, f"resident memory grew by {grown} KiB after 8 bombs of 16 MiB"
    server.assert_alive()
