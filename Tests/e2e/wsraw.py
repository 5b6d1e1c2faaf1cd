"""A tiny, deliberately dumb raw WebSocket / HTTP client for the end-to-end tests.

It speaks just enough RFC 6455 and HTTP/1.1 to:

* perform an opening handshake (random key, ``Sec-WebSocket-Accept`` verified),
* build *any* client frame - masked or not, any FIN/RSV bits, any opcode, any payload,
* read and parse server frames (which must be unmasked),
* ``read_until_close()`` -> ``(frames, close_code)``,
* send arbitrary bytes as an HTTP request and parse the response.

Everything is blocking with explicit deadlines, so every call is bounded in time.
The few helpers at the bottom (``ws_connect``, metrics parsing, ``run``) are shared by the
test modules; they live here because ``conftest.py`` is not meant to be imported.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import os
import re
import socket
import struct
import time
import warnings
from dataclasses import dataclass, field

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

RSV1 = 0x4
RSV2 = 0x2
RSV3 = 0x1

#: pseudo close code reported for a close frame with an empty payload (RFC 6455 7.1.5)
NO_STATUS = 1005

DEFAULT_TIMEOUT = 5.0

#: default deadline for a test's async body (set from pytest.ini ``e2e_timeout`` by conftest)
TEST_TIMEOUT = 30.0


class PeerClosed(Exception):
    """The peer closed the TCP connection (EOF, or reset when ``reset`` is true)."""

    def __init__(self, msg: str, reset: bool = False):
        super().__init__(msg)
        self.reset = reset


# --------------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------------


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    masked: bool = False

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE:
            return None
        if len(self.payload) == 0:
            return NO_STATUS
        if len(self.payload) == 1:
            return -1  # malformed
        return struct.unpack("!H", self.payload[:2])[0]

    @property
    def close_reason(self) -> bytes:
        return self.payload[2:] if self.opcode == OP_CLOSE else b""

    def __repr__(self) -> str:  # short payloads only, keeps assertion messages readable
        p = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        return (f"Frame(fin={self.fin}, rsv={self.rsv}, op={self.opcode}, len={len(self.payload)}, "
                f"masked={self.masked}, payload={p!r})")


def mask_bytes(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` (fast path via int arithmetic)."""
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 mask: bool = True, mask_key: bytes | None = None,
                 length: int | None = None, length_form: str | None = None) -> bytes:
    """Build one frame. Anything goes: this is for producing malformed input too.

    ``length`` overrides the advertised payload length (the real payload is still appended);
    ``length_form`` forces the encoding of the length: "7", "16" or "64" bit.
    """
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    form = length_form or ("7" if n <= 125 else "16" if n <= 0xFFFF else "64")
    if form == "7":
        head = struct.pack("!BB", b0, mbit | n)
    elif form == "16":
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = mask_key if mask_key is not None else os.urandom(4)
        return head + key + mask_bytes(payload, key)
    return head + payload


def close_payload(code: int | None = None, reason: bytes | str = b"") -> bytes:
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


def parse_frame(buf: bytes | bytearray) -> tuple[Frame, int] | None:
    """Parse one frame from the start of ``buf``; ``None`` if more bytes are needed."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    masked = bool(b1 & 0x80)
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack_from("!H", buf, 2)[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack_from("!Q", buf, 2)[0]
        pos = 10
    key = b""
    if masked:
        if len(buf) < pos + 4:
            return None
        key = bytes(buf[pos:pos + 4])
        pos += 4
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos:pos + n])
    if masked:
        payload = mask_bytes(payload, key)
    return Frame(bool(b0 & 0x80), (b0 >> 4) & 0x7, b0 & 0xF, payload, masked), pos + n


# --------------------------------------------------------------------------------------------
# buffered socket with deadlines
# --------------------------------------------------------------------------------------------


class BufferedSocket:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def fill(self, deadline: float, max_read: int = 1 << 20) -> None:
        """Read at least one byte into the buffer, or raise TimeoutError / PeerClosed."""
        if self.eof:
            raise PeerClosed("connection already closed by peer", self.reset)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed while waiting for data")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(max_read)
        except socket.timeout:
            raise TimeoutError("no data before the deadline") from None
        except (ConnectionResetError, ConnectionAbortedError) as e:
            self.eof = self.reset = True
            raise PeerClosed(f"connection reset by peer ({e})", reset=True) from None
        if not data:
            self.eof = True
            raise PeerClosed("EOF")
        self.buf += data

    def read_until(self, sep: bytes, deadline: float, limit: int = 1 << 20) -> bytes:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError(f"separator {sep!r} not found within {limit} bytes")
            self.fill(deadline)

    def read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self.fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self, deadline: float) -> bytes:
        try:
            while True:
                self.fill(deadline)
        except PeerClosed:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def wait_closed(self, timeout: float = 3.0) -> bool:
        """True if the peer closes (EOF or RST) within ``timeout``; bytes read are discarded."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.fill(deadline)
                self.buf.clear()
        except PeerClosed:
            return True
        except TimeoutError:
            return False

    def send(self, data: bytes) -> None:
        self.sock.settimeout(DEFAULT_TIMEOUT)
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def open_socket(host: str, port: int, *, rcvbuf: int | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # must happen before connect() so the advertised window (and its scale) stays small
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


@dataclass
class HTTPResponse:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def __repr__(self) -> str:
        return f"HTTPResponse({self.status} {self.reason!r}, headers={self.headers}, body={self.body[:200]!r})"


def read_http_response(bs: BufferedSocket, deadline: float, *, head_only: bool = False) -> HTTPResponse:
    head = bs.read_until(b"\r\n\r\n", deadline, limit=64 * 1024)
    lines = head[:-4].decode("latin-1").split("\r\n")
    m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
    if not m:
        raise ValueError(f"bad status line {lines[0]!r}")
    resp = HTTPResponse(int(m.group(2)), m.group(3) or "", m.group(1))
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        resp.headers.append((k.strip(), v.strip()))
    if head_only or resp.status in (101, 204, 304) or 100 <= resp.status < 200:
        return resp
    te = (resp.header("transfer-encoding") or "").lower()
    cl = resp.header("content-length")
    if "chunked" in te:
        body = bytearray()
        while True:
            size_line = bs.read_until(b"\r\n", deadline)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                bs.read_until(b"\r\n", deadline)  # (no trailers expected)
                break
            body += bs.read_exact(size, deadline)
            bs.read_exact(2, deadline)
        resp.body = bytes(body)
    elif cl is not None:
        resp.body = bs.read_exact(int(cl), deadline)
    else:
        resp.body = bs.read_to_eof(deadline)
    return resp


def http_request_bytes(method: str, path: str, host: str = "127.0.0.1",
                       headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class HTTPExchange:
    responses: list[HTTPResponse]
    closed: bool  # the server closed the connection (EOF or RST) after the responses

    @property
    def response(self) -> HTTPResponse:
        return self.responses[0]


def http_exchange(host: str, port: int, raw: bytes, *, count: int = 1,
                  timeout: float = DEFAULT_TIMEOUT, expect_close: bool = True,
                  close_timeout: float = 3.0) -> HTTPExchange:
    """Send ``raw`` bytes, read ``count`` responses, then (optionally) wait for the close."""
    sock = open_socket(host, port, timeout=timeout)
    bs = BufferedSocket(sock)
    try:
        bs.send(raw)
        deadline = time.monotonic() + timeout
        responses = [read_http_response(bs, deadline) for _ in range(count)]
        closed = bs.wait_closed(close_timeout) if expect_close else False
        return HTTPExchange(responses, closed)
    finally:
        bs.close()


def http_get(host: str, port: int, path: str, timeout: float = DEFAULT_TIMEOUT) -> HTTPResponse:
    raw = http_request_bytes("GET", path, host, [("Connection", "close")])
    return http_exchange(host, port, raw, timeout=timeout, expect_close=False).response


# --------------------------------------------------------------------------------------------
# WebSocket
# --------------------------------------------------------------------------------------------


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def upgrade_request(path: str = "/ws", host: str = "127.0.0.1", *, key: str | None = None,
                    version: str | None = "13", method: str = "GET",
                    extra: list[tuple[str, str]] | None = None,
                    omit: tuple[str, ...] = ()) -> bytes:
    """An opening-handshake request; ``key=None`` means a fresh random key."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key if key is not None else new_key()),
    ]
    if version is not None:
        headers.append(("Sec-WebSocket-Version", version))
    headers += extra or []
    headers = [(k, v) for k, v in headers if k.lower() not in {o.lower() for o in omit}]
    return http_request_bytes(method, path, host, headers)


class RawWebSocket:
    """A raw WebSocket client connection: frames in, frames out, nothing hidden."""

    def __init__(self, bs: BufferedSocket, response: HTTPResponse):
        self.bs = bs
        self.response = response
        self.frames_seen: list[Frame] = []

    @classmethod
    def connect(cls, host: str, port: int, path: str = "/ws", *, rcvbuf: int | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> "RawWebSocket":
        sock = open_socket(host, port, rcvbuf=rcvbuf, timeout=timeout)
        bs = BufferedSocket(sock)
        try:
            key = new_key()
            bs.send(upgrade_request(path, host, key=key))
            resp = read_http_response(bs, time.monotonic() + timeout, head_only=True)
            if resp.status != 101:
                raise AssertionError(f"handshake for {path} failed: {resp!r}")
            upgrade = (resp.header("upgrade") or "").lower()
            conn = (resp.header("connection") or "").lower()
            if upgrade != "websocket" or "upgrade" not in conn:
                raise AssertionError(f"bad upgrade headers: {resp!r}")
            if resp.header("sec-websocket-accept") != accept_for(key):
                raise AssertionError(f"bad Sec-WebSocket-Accept: {resp!r} (want {accept_for(key)})")
        except BaseException:
            bs.close()
            raise
        return cls(bs, resp)

    # -- sending -------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.bs.send(data)

    def send_frame(self, opcode: int, payload: bytes | str = b"", **kw) -> None:
        self.bs.send(encode_frame(opcode, payload, **kw))

    def send_text(self, text: str | bytes, **kw) -> None:
        self.send_frame(OP_TEXT, text.encode() if isinstance(text, str) else text, **kw)

    def send_binary(self, data: bytes, **kw) -> None:
        self.send_frame(OP_BINARY, data, **kw)

    def ping(self, payload: bytes = b"", **kw) -> None:
        self.send_frame(OP_PING, payload, **kw)

    def send_close(self, code: int | None = 1000, reason: bytes | str = b"", **kw) -> None:
        self.send_frame(OP_CLOSE, close_payload(code, reason), **kw)

    # -- receiving -----------------------------------------------------------------------

    def recv_frame(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """Next frame (any opcode). Raises TimeoutError or PeerClosed."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = parse_frame(self.bs.buf)
            if parsed is not None:
                frame, used = parsed
                del self.bs.buf[:used]
                self.frames_seen.append(frame)
                return frame
            self.bs.fill(deadline)

    def recv_message(self, timeout: float = DEFAULT_TIMEOUT, *,
                     pongs: list[Frame] | None = None) -> tuple[int, bytes]:
        """Next data message as (opcode, payload), reassembling server fragments.

        Pongs are collected into ``pongs`` if given; pings are ignored; a close frame raises
        AssertionError (the caller did not expect one).
        """
        deadline = time.monotonic() + timeout
        opcode, parts = None, []
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f.opcode == OP_PONG:
                if pongs is not None:
                    pongs.append(f)
                continue
            if f.opcode == OP_PING:
                continue
            if f.opcode == OP_CLOSE:
                raise AssertionError(f"unexpected close frame {f!r} (code {f.close_code})")
            if opcode is None:
                assert f.opcode in (OP_TEXT, OP_BINARY), f"unexpected frame {f!r}"
                opcode = f.opcode
            else:
                assert f.opcode == OP_CONT, f"expected continuation, got {f!r}"
            parts.append(f.payload)
            if f.fin:
                return opcode, b"".join(parts)

    def read_until_close(self, timeout: float = DEFAULT_TIMEOUT, *, reply: bool = True,
                         eof_timeout: float = 3.0) -> tuple[list[Frame], int | None]:
        """Read frames until the server's close frame; returns (frames, close_code).

        ``close_code`` is None if the TCP connection ended (EOF/RST) or the deadline passed
        without a close frame (see ``self.bs.eof`` / ``self.bs.reset`` to tell which).
        With ``reply`` the close is echoed back (send errors are ignored: the server may
        already have closed the socket). Afterwards ``self.tcp_closed`` tells whether the
        server closed the TCP connection within ``eof_timeout``.
        """
        deadline = time.monotonic() + timeout
        frames: list[Frame] = []
        self.close_frame = None
        self.tcp_closed = False
        try:
            while True:
                f = self.recv_frame(max(0.0, deadline - time.monotonic()))
                frames.append(f)
                if f.opcode == OP_CLOSE:
                    self.close_frame = f
                    break
        except PeerClosed:
            self.tcp_closed = True
            return frames, None
        except TimeoutError:
            return frames, None
        if reply:
            try:
                code = f.close_code
                self.send_close(code if code not in (None, NO_STATUS, -1) and code >= 1000 else None)
            except OSError:
                pass
        self.tcp_closed = self.bs.wait_closed(eof_timeout)
        return frames, f.close_code

    def wait_closed(self, timeout: float = 3.0) -> bool:
        return self.bs.wait_closed(timeout)

    def close(self) -> None:
        self.bs.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# shared helpers for the tests (third-party client, metrics, asyncio runner)
# --------------------------------------------------------------------------------------------


def ws_connect(url: str, **kw):
    """``websockets.asyncio.client.connect`` with test-friendly defaults.

    No compression (keeps frames exactly as sent), no size cap, no client-initiated pings
    (so liveness relies on answering the server's pings), short open/close timeouts, and
    no proxy even if the environment names one.
    """
    from websockets.asyncio.client import connect

    opts = dict(open_timeout=5, close_timeout=2, max_size=None, compression=None,
                ping_interval=None)
    if "proxy" in inspect.signature(connect.__init__).parameters:
        opts["proxy"] = None
    opts.update(kw)
    return connect(url, **opts)


_METRIC_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """One value per metric name: the unlabeled sample if there is one (servers often export a
    total next to per-shard samples), else the sum of the labeled samples."""
    plain: dict[str, float] = {}
    labeled: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        target = labeled if m.group(2) else plain
        target[m.group(1)] = target.get(m.group(1), 0.0) + v
    return {**labeled, **plain}


class MetricMissing(UserWarning):
    pass


def metric_value(host: str, port: int, *names: str) -> float | None:
    """Value of the first of ``names`` exposed by ``/metrics`` (with or without ``_total``).

    Returns None (and warns, so the skipped assertion shows in the summary) when absent.
    """
    resp = http_get(host, port, "/metrics")
    assert resp.status == 200, f"/metrics -> {resp!r}"
    metrics = parse_metrics(resp.body.decode("utf-8", "replace"))
    for name in names:
        for candidate in (name, name.removesuffix("_total"), name + "_total"):
            if candidate in metrics:
                return metrics[candidate]
    warnings.warn(MetricMissing(
        f"/metrics exposes none of {names}; the assertion that needs it is skipped"))
    return None


def run(coro, timeout: float | None = None):
    """Run a coroutine to completion with a hard deadline (the suite's per-test timeout)."""
    async def bounded():
        return await asyncio.wait_for(coro, TEST_TIMEOUT if timeout is None else timeout)
    return asyncio.run(bounded())


async def recv(ws, timeout: float = DEFAULT_TIMEOUT):
    """``ws.recv()`` with a deadline and a readable failure."""
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no message within {timeout}s") from None


async def expect(ws, want, timeout: float = DEFAULT_TIMEOUT):
    got = await recv(ws, timeout)
    assert got == want, f"expected {want!r}, got {got!r}"
    return got


async def silent(ws, seconds: float) -> None:
    """Assert that nothing arrives on ``ws`` for ``seconds``."""
    try:
        got = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"expected silence, got {got!r}")


async def close_code(ws, timeout: float = 10.0) -> int | None:
    """Read until the server closes the connection; return its close code."""
    async def drain():
        try:
            while True:
                await ws.recv()
        except Exception:  # ConnectionClosed*: the close handshake is done
            pass
    await asyncio.wait_for(drain(), timeout)
    return ws.close_code


async def seed_counter_scenario(server) -> None:
    """The seed README's counter, for any server serving a counter (native, wat or Swift guest):
    two clients on /ws, `increment` -> both see 1, `decrement` -> both see 0, other text and
    binary messages are ignored, and another room has its own value."""
    async with ws_connect(server.ws_url()) as a, ws_connect(server.ws_url()) as b:
        await a.send("increment")
        await expect(a, "new value: 1")
        await expect(b, "new value: 1")
        await b.send("decrement")
        await expect(a, "new value: 0")
        await expect(b, "new value: 0")
        # other messages are ignored: the next broadcast is the next change
        await a.send("hello")
        await a.send(b"increment")  # binary: not a command
        await b.send("increment")
        await expect(a, "new value: 1")
        await expect(b, "new value: 1")
    async with ws_connect(server.ws_url("other")) as c:  # another room, its own instance
        await c.send("increment")
        await expect(c, "new value: 1")


async def counter_roundtrip(url: str, expect_start: int = 0) -> None:
    """Fresh counter client on ``url``: increment -> start+1, decrement -> start."""
    async with ws_connect(url) as ws:
        await ws.send("increment")
        await expect(ws, f"new value: {expect_start + 1}")
        await ws.send("decrement")
        await expect(ws, f"new value: {expect_start}")


def payload_with_all_bytes(size: int) -> bytes:
    """``size`` bytes: 0..255 once (as far as they fit), then random bytes."""
    head = bytes(range(256))[:size]
    return head + os.urandom(size - len(head))
