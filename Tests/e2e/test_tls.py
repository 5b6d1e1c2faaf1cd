"""TLS: HTTPS and WSS on the server's one port (``--tls-cert PATH --tls-key PATH``).

What is checked, against the real binary on 127.0.0.1, once per I/O backend:

* verified clients: Python ``websockets`` over wss (the seed's counter, ECDSA and RSA pairs, a
  chain file), ``http.client`` over https (``/status``, ``/metrics``, ALPN), a handshake dribbled
  a few bytes at a time, large messages across many TLS records;
* ``openssl s_client`` with TLS 1.2 and 1.3: verification, protocol, ALPN, the ``/status`` body,
  session resumption (and its counter);
* bad input on the TLS port (plain HTTP, garbage, malformed/unacceptable ClientHello, a stalled
  ClientHello, a peer that resets or closes mid-handshake): the client-visible outcome, the
  matching ``stateroom_tls_*`` counter, and a wss client already in a room keeps working;
* SIGHUP reload (new pair presented, open connections kept; a bad pair or missing file keeps the
  old pair, counted and logged);
* start-up failures (expired certificate, mismatched key, missing or non-PEM files);
* headless Chromium loading a page over https from ``--static`` that talks wss to the counter;
* rooms owned by another shard reached over TLS (hand-offs of TLS connections).

Certificates are made with the openssl CLI (OpenSSL 3.0 here: an expired one comes from
``openssl ca -selfsign -startdate/-enddate``, as ``x509 -days`` cannot go back in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import wsraw
from browser import browser_log, chromium_binary
from conftest import TLSPair, make_cert_pair, openssl, server_binary
from wsraw import OP_TEXT, RawWebSocket, expect, recv, run, ws_connect

HOSTNAME = "localhost"  # the name every test certificate carries (with IP:127.0.0.1)

TLS_COUNTERS = (
    "stateroom_tls_handshakes_total",
    "stateroom_tls_resumptions_total",
    "stateroom_tls_handshake_failures_total",
    "stateroom_tls_plaintext_rejected_total",
    "stateroom_tls_handshake_timeouts_total",
    "stateroom_tls_handshakes_abandoned_total",
    "stateroom_tls_reloads_total",
    "stateroom_tls_reload_failures_total",
)
BAD_INPUT_COUNTERS = (
    "stateroom_tls_handshake_failures_total",
    "stateroom_tls_plaintext_rejected_total",
    "stateroom_tls_handshake_timeouts_total",
    "stateroom_tls_handshakes_abandoned_total",
)


# --------------------------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    a: TLSPair            # ECDSA P-256, CN=localhost (conftest's tls_pair)
    b: TLSPair            # another ECDSA pair, CN=stateroom-b (for the reload)
    rsa: TLSPair          # RSA 2048, CN=localhost
    expired: TLSPair      # valid Jan 2020 only
    mismatched: TLSPair   # a's certificate with b's key
    chain: TLSPair        # leaf + intermediate in one file, the leaf's key
    root: Path            # the chain's root (the only thing a client trusts for it)
    dir: Path


def _ext_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def make_expired_pair(d: Path) -> TLSPair:
    """A self-signed certificate valid from 2020-01-01 to 2020-02-01 (``openssl ca``: OpenSSL 3.0's
    ``x509``/``req`` have no -not_before/-not_after)."""
    key, csr, cert = d / "expired.key", d / "expired.csr", d / "expired.crt"
    ca_dir = d / "expired-ca"
    ca_dir.mkdir()
    (ca_dir / "index.txt").write_text("")
    cnf = _ext_file(d / "expired-ca.cnf", f"""
[ ca ]
default_ca = tca
[ tca ]
dir = {ca_dir}
database = {ca_dir}/index.txt
new_certs_dir = {ca_dir}
serial = {ca_dir}/serial
default_md = sha256
policy = pol
unique_subject = no
copy_extensions = copy
[ pol ]
commonName = supplied
""")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={HOSTNAME}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(csr))
    openssl("ca", "-batch", "-config", str(cnf), "-selfsign", "-keyfile", str(key), "-in", str(csr),
            "-out", str(cert), "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
            "-notext", "-rand_serial")
    return TLSPair(cert, key)


def make_chain(d: Path) -> tuple[TLSPair, Path]:
    """root -> intermediate -> leaf (CN=localhost). Returns (leaf+intermediate chain file with the
    leaf's key, root certificate)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-subj", "/CN=Stateroom Test Root", "-days", "30",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(d / "root.key"), "-out", str(d / "root.crt"))
    ext = _ext_file(d / "chain.ext", """
[ int ]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ leaf ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
""")
    openssl("req", "-new", *ec, "-subj", "/CN=Stateroom Test Intermediate",
            "-keyout", str(d / "int.key"), "-out", str(d / "int.csr"))
    openssl("x509", "-req", "-in", str(d / "int.csr"), "-CA", str(d / "root.crt"), "-CAkey", str(d / "root.key"),
            "-set_serial", "2", "-days", "30", "-extfile", str(ext), "-extensions", "int",
            "-out", str(d / "int.crt"))
    openssl("req", "-new", *ec, "-subj", f"/CN={HOSTNAME}",
            "-keyout", str(d / "leaf.key"), "-out", str(d / "leaf.csr"))
    openssl("x509", "-req", "-in", str(d / "leaf.csr"), "-CA", str(d / "int.crt"), "-CAkey", str(d / "int.key"),
            "-set_serial", "3", "-days", "30", "-extfile", str(ext), "-extensions", "leaf",
            "-out", str(d / "leaf.crt"))
    chain = d / "leaf-chain.pem"
    chain.write_text((d / "leaf.crt").read_text() + (d / "int.crt").read_text())
    return TLSPair(chain, d / "leaf.key"), d / "root.crt"


@pytest.fixture(scope="session")
def certs(tmp_path_factory, tls_pair) -> Certs:
    d = tmp_path_factory.mktemp("tls-certs")
    a = tls_pair  # conftest's throwaway ECDSA pair
    b = make_cert_pair(d, "b", cn="stateroom-b")
    rsa = make_cert_pair(d, "rsa", key_type="rsa")
    chain, root = make_chain(d)
    return Certs(a=a, b=b, rsa=rsa, expired=make_expired_pair(d), mismatched=TLSPair(a.cert, b.key),
                 chain=chain, root=root, dir=d)


def cert_der(path: Path) -> bytes:
    """DER of the first certificate in a PEM file."""
    text = path.read_text()
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    assert m, f"no certificate in {path}"
    return ssl.PEM_cert_to_DER_cert(m.group(0))


# --------------------------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------------------------


def client_context(*cafiles: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A verifying client context (hostname checked) trusting only ``cafiles``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for f in cafiles:
        ctx.load_verify_locations(cafile=str(f))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_socket(server, ctx: ssl.SSLContext, hostname: str = HOSTNAME,
               timeout: float = 5.0) -> ssl.SSLSocket:
    raw = wsraw.open_socket(server.host, server.port, timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=hostname)
    except BaseException:
        raw.close()
        raise


def https_get(server, ctx: ssl.SSLContext, path: str, timeout: float = 5.0) -> wsraw.HTTPResponse:
    bs = wsraw.BufferedSocket(tls_socket(server, ctx, timeout=timeout))
    try:
        bs.send(wsraw.http_request_bytes("GET", path, HOSTNAME, [("Connection", "close")]))
        return wsraw.read_http_response(bs, time.monotonic() + timeout)
    finally:
        bs.close()


def tls_metrics(server, ctx: ssl.SSLContext | None = None) -> dict[str, float]:
    """/metrics over https (a verified handshake: it counts in stateroom_tls_handshakes_total)."""
    resp = https_get(server, ctx or insecure_context(), "/metrics")
    assert resp.status == 200, f"/metrics over https -> {resp!r}"
    return wsraw.parse_metrics(resp.body.decode("utf-8", "replace"))


def tls_metric(server, name: str, ctx: ssl.SSLContext | None = None) -> float:
    metrics = tls_metrics(server, ctx)
    if name not in metrics:
        tls = sorted(k for k in metrics if "tls" in k)
        raise AssertionError(f"/metrics has no {name} (TLS metrics present: {tls})")
    return metrics[name]


def wait_metric(server, name: str, want: float, timeout: float = 3.0) -> float:
    """Poll /metrics until ``name`` == ``want`` (counters of closing connections may land a moment
    after the client saw the close)."""
    deadline = time.monotonic() + timeout
    while True:
        got = tls_metric(server, name)
        if got == want or time.monotonic() > deadline:
            assert got == want, f"{name} = {got:g} after {timeout}s, expected {want:g}"
            return got
        time.sleep(0.05)


def wait_metric_at_least(server, name: str, least: float, timeout: float = 3.0) -> dict[str, float]:
    """Poll /metrics until ``name`` >= ``least``; returns that /metrics reading. (A shard publishes
    its counters at most once a millisecond, so a reading may lag the event just before it.)"""
    deadline = time.monotonic() + timeout
    while True:
        metrics = tls_metrics(server)
        got = metrics.get(name)
        assert got is not None, f"/metrics has no {name}"
        if got >= least:
            return metrics
        assert time.monotonic() < deadline, f"{name} = {got:g} after {timeout}s, expected at least {least:g}"
        time.sleep(0.05)


def wss_raw(server, ctx: ssl.SSLContext, path: str, hostname: str = HOSTNAME,
            timeout: float = 5.0) -> RawWebSocket:
    """A raw (blocking, wsraw) WebSocket client over a verified TLS connection."""
    bs = wsraw.BufferedSocket(tls_socket(server, ctx, hostname, timeout))
    try:
        key = wsraw.new_key()
        bs.send(wsraw.upgrade_request(path, hostname, key=key))
        resp = wsraw.read_http_response(bs, time.monotonic() + timeout, head_only=True)
        assert resp.status == 101, f"wss handshake for {path}: {resp!r}"
        assert resp.header("sec-websocket-accept") == wsraw.accept_for(key), resp
    except BaseException:
        bs.close()
        raise
    return RawWebSocket(bs, resp)


def bump(ws: RawWebSocket, want: int, cmd: str = "increment", who: str = "client") -> None:
    """Send a counter command and expect the broadcast of the new value."""
    ws.send_text(cmd)
    got = ws.recv_message(5)
    assert got == (OP_TEXT, f"new value: {want}".encode()), f"{who}: after {cmd!r} got {got!r}, want {want}"


def assert_healthy(server, room: str = "healthy") -> None:
    """/status ok over https, and a fresh wss counter client in a fresh room works."""
    server.assert_alive()
    ctx = insecure_context()
    resp = https_get(server, ctx, "/status")
    assert resp.status == 200 and resp.body.strip() == b"ok", f"/status over https: {resp!r}"
    with wss_raw(server, ctx, f"/ws/{room}") as ws:
        bump(ws, 1, who=f"fresh client in {room!r}")
        bump(ws, 0, "decrement", who=f"fresh client in {room!r}")


def read_to_close(sock: socket.socket, timeout: float = 3.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (EOF or RST); (bytes, closed-in-time)."""
    bs = wsraw.BufferedSocket(sock)
    deadline = time.monotonic() + timeout
    try:
        while True:
            bs.fill(deadline)
    except wsraw.PeerClosed:
        return bytes(bs.buf), True
    except TimeoutError:
        return bytes(bs.buf), False


def client_hello(hostname: str = HOSTNAME) -> bytes:
    """A real ClientHello (TLS 1.2/1.3, SNI ``hostname``), as Python's ssl would send it."""
    ctx = insecure_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    assert data[:1] == b"\x16" and len(data) > 100, data[:16]
    return data


def reset_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class HandDrivenTLS:
    """A TLS client over a plain socket driven by hand (ssl.MemoryBIO): every byte it sends goes
    out ``chunk`` bytes per write (TCP_NODELAY), so records arrive at the server in pieces."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, hostname: str, chunk: int, pause: float):
        self.sock, self.chunk, self.pause = sock, chunk, pause
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=hostname)
        self.sent_writes = 0

    def _flush(self) -> None:
        data = self.outgoing.read()
        for i in range(0, len(data), self.chunk):
            self.sock.sendall(data[i:i + self.chunk])
            self.sent_writes += 1
            if self.pause:
                time.sleep(self.pause)

    def _pull(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no TLS data from the server before the deadline")
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        if not data:
            raise wsraw.PeerClosed("EOF during hand-driven TLS")
        self.incoming.write(data)

    def handshake(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._pull(deadline)

    def write(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def read(self, deadline: float) -> bytes:
        while True:
            try:
                return self.obj.read(65536)
            except ssl.SSLWantReadError:
                self._flush()
                self._pull(deadline)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(server_factory, certs):
    """``tls_server(*extra, pair=certs.a, **kw)``: a server with TLS on (pair ``a`` by default)."""
    def start(*extra: str, pair: TLSPair | None = None, **kw):
        server = server_factory(*(pair or certs.a).args(), *extra, **kw)
        assert server.tls, f"the start-up line does not announce https: {server.stdout_path.read_text()!r}"
        return server
    return start


# --------------------------------------------------------------------------------------------
# verified clients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_wss_counter_seed_scenario_verified(tls_server, certs, kind):
    """The seed's counter over wss, the server's certificate verified: one client checks the IP
    SAN (127.0.0.1), the other the DNS SAN (SNI localhost)."""
    pair = certs.a if kind == "ecdsa" else certs.rsa
    server = tls_server(pair=pair)
    ctx = client_context(pair.cert)
    assert server.ws_url().startswith("wss://127.0.0.1:")

    async def main():
        url = server.ws_url()
        async with ws_connect(url, ssl=ctx) as a, ws_connect(url, ssl=ctx, server_hostname=HOSTNAME) as b:
            for who, ws in (("a", a), ("b", b)):
                tls = ws.transport.get_extra_info("ssl_object")
                assert tls is not None, f"{who}: not a TLS connection"
                assert tls.version() in ("TLSv1.2", "TLSv1.3"), f"{who}: {tls.version()}"
                assert tls.getpeercert(binary_form=True) == cert_der(pair.cert), f"{who}: another certificate"
            await a.send("increment")
            await expect(a, "new value: 1")
            await expect(b, "new value: 1")
            await b.send("decrement")
            await expect(a, "new value: 0")
            await expect(b, "new value: 0")
            await a.send("hello")          # ignored
            await a.send(b"increment")     # binary: not a command
            await b.send("increment")
            await expect(a, "new value: 1")
            await expect(b, "new value: 1")
        async with ws_connect(server.ws_url("other"), ssl=ctx) as c:  # another room
            await c.send("increment")
            await expect(c, "new value: 1")
    run(main())


def test_wss_with_certificate_chain_file(tls_server, certs):
    """The cert file holds leaf + intermediate: a client trusting only the root verifies it."""
    server = tls_server(pair=certs.chain)
    ctx = client_context(certs.root)

    async def main():
        async with ws_connect(server.ws_url("chained"), ssl=ctx, server_hostname=HOSTNAME) as ws:
            await ws.send("increment")
            await expect(ws, "new value: 1")
    run(main())
    resp = https_get(server, ctx, "/status")
    assert resp.status == 200 and resp.body.strip() == b"ok", resp


def test_https_status_metrics_keep_alive_and_alpn(tls_server, certs):
    """/status and /metrics over one https keep-alive connection; ALPN picks http/1.1 even when
    h2 is offered first; every TLS counter has an unlabeled sample line."""
    server = tls_server()
    ctx = client_context(certs.a.cert, alpn=["h2", "http/1.1"])
    conn = http.client.HTTPSConnection(server.host, server.port, context=ctx, timeout=5)
    try:
        conn.request("GET", "/status")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and body.strip() == b"ok", (resp.status, body)
        assert conn.sock.selected_alpn_protocol() == "http/1.1", conn.sock.selected_alpn_protocol()
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        sock_before = conn.sock
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode()
        assert resp.status == 200, (resp.status, text[:200])
        assert (resp.getheader("content-type") or "").startswith("text/plain"), resp.getheaders()
        assert conn.sock is sock_before, "the https connection was not kept alive between requests"
    finally:
        conn.close()
    for name in TLS_COUNTERS:
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        assert m, f"/metrics has no unlabeled sample line for {name}"
    # (the keep-alive connection's own handshake may not be published yet: counters lag <= 1 ms)
    values = wait_metric_at_least(server, "stateroom_tls_handshakes_total", 1)
    for name in TLS_COUNTERS[2:]:
        assert values[name] == 0, f"{name} = {values[name]:g} on a fresh server with only good clients"
    # without ALPN at all (websockets and http.client default): still served
    resp = https_get(server, client_context(certs.a.cert), "/status")
    assert resp.status == 200 and resp.body.strip() == b"ok", resp


def test_untrusted_client_fails_and_server_is_unharmed(tls_server, certs):
    """A client that does not trust the certificate (or expects another name) gives up in the
    handshake; the server keeps serving."""
    server = tls_server()
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_socket(server, client_context(certs.b.cert)).close()
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_socket(server, client_context(certs.a.cert), hostname="not-localhost.example").close()
    assert_healthy(server)


def test_handshake_and_request_dribbled_in_small_writes(tls_server, certs):
    """Every TLS record the client sends (ClientHello, Finished, the upgrade request, frames)
    reaches the server 3 bytes per TCP write."""
    server = tls_server()
    sock = wsraw.open_socket(server.host, server.port)
    try:
        tls = HandDrivenTLS(sock, client_context(certs.a.cert), HOSTNAME, chunk=3, pause=0.001)
        tls.handshake()
        assert tls.sent_writes > 100, tls.sent_writes
        key = wsraw.new_key()
        tls.write(wsraw.upgrade_request("/ws/dribble", HOSTNAME, key=key))
        deadline = time.monotonic() + 5
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += tls.read(deadline)
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert wsraw.accept_for(key).encode() in head, head
        tls.write(wsraw.encode_frame(OP_TEXT, b"increment"))
        buf = bytearray(rest)
        while (parsed := wsraw.parse_frame(buf)) is None:
            buf += tls.read(deadline)
        frame, _ = parsed
        assert (frame.opcode, frame.payload) == (OP_TEXT, b"new value: 1"), frame
    finally:
        sock.close()
    assert_healthy(server)


def test_wss_relay_large_messages_byte_for_byte(tls_server, certs):
    """Messages around and far beyond the 16 KiB TLS record size arrive intact, to the sender
    and to another client."""
    server = tls_server(service="relay")
    ctx = client_context(certs.a.cert)
    sizes = [0, 125, 16383, 16384, 16385, 65536, 1 << 20, 3 << 20]

    async def main():
        url = server.ws_url("big")
        async with ws_connect(url, ssl=ctx) as sender, ws_connect(url, ssl=ctx) as other:
            for size in sizes:
                data = wsraw.payload_with_all_bytes(size)
                await sender.send(data)
                for who, ws in (("sender", sender), ("other", other)):
                    got = await recv(ws, 15)
                    assert got == data, f"{who}: {size} bytes sent, {len(got)} different bytes back"
            text = "\u00e9\u20ac" * 20000  # 100 000 bytes of UTF-8
            await other.send(text)
            assert await recv(sender, 10) == text
            assert await recv(other, 10) == text
    run(main(), 60)


# --------------------------------------------------------------------------------------------
# openssl s_client
# --------------------------------------------------------------------------------------------

STATUS_REQUEST = f"GET /status HTTP/1.1\r\nHost: {HOSTNAME}\r\nConnection: close\r\n\r\n"


def s_client(server, cafile: Path, version: str, *extra: str, timeout: float = 15) -> str:
    """``openssl s_client`` sends GET /status (Connection: close) and reads to the server's close;
    returns stdout (the session summary and the response)."""
    cmd = ["openssl", "s_client", "-connect", f"{server.host}:{server.port}", "-servername", HOSTNAME,
           "-CAfile", str(cafile), "-verify_hostname", HOSTNAME, "-verify_return_error",
           "-alpn", "http/1.1", version, "-ign_eof", *extra]
    try:
        proc = subprocess.run(cmd, input=STATUS_REQUEST.encode(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        pytest.fail(f"{' '.join(cmd)} still running after {timeout}s (the server did not close after "
                    f"'Connection: close'?)\nstdout:\n{out[-3000:]}")
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    return out


def check_s_client_output(out: str, proto: str) -> None:
    assert "Verify return code: 0 (ok)" in out, out[-3000:]
    assert re.search(rf"^\s*Protocol\s*:\s*{re.escape(proto)}\s*$", out, re.M), f"no 'Protocol : {proto}':\n{out[-3000:]}"
    assert "ALPN protocol: http/1.1" in out, out[-3000:]
    i = out.find("HTTP/1.1 200")
    assert i >= 0, f"no 200 response:\n{out[-3000:]}"
    head, _, body = out[i:].partition("\r\n\r\n")
    m = re.search(r"^content-length:\s*(\d+)", head, re.I | re.M)
    body = body[:int(m.group(1))] if m else body
    assert body.strip().startswith("ok"), f"/status body {body[:100]!r}"


TLS_VERSIONS = {"tls1_2": ("-tls1_2", "TLSv1.2"), "tls1_3": ("-tls1_3", "TLSv1.3")}


@pytest.mark.parametrize("version", list(TLS_VERSIONS))
def test_openssl_s_client_verifies_and_gets_status(tls_server, certs, version):
    flag, proto = TLS_VERSIONS[version]
    server = tls_server()
    out = s_client(server, certs.a.cert, flag)
    check_s_client_output(out, proto)
    assert re.search(rf"^New, {re.escape(proto)}, Cipher is ", out, re.M), out[-3000:]


@pytest.mark.parametrize("version", list(TLS_VERSIONS))
def test_openssl_s_client_session_resumption(tls_server, certs, version, tmp_path):
    flag, proto = TLS_VERSIONS[version]
    """A session saved by one s_client is resumed by the next ones (3 times, 2 shards: whichever
    shard accepts the connection can resume a ticket another one issued)."""
    server = tls_server(shards=2)
    sess = tmp_path / "session.pem"
    first = s_client(server, certs.a.cert, flag, "-sess_out", str(sess))
    check_s_client_output(first, proto)
    assert re.search(rf"^New, {re.escape(proto)}", first, re.M), first[-3000:]
    assert sess.exists() and sess.stat().st_size > 0, "s_client saved no session (no ticket issued?)"
    before = tls_metric(server, "stateroom_tls_resumptions_total")
    for i in range(3):
        again = s_client(server, certs.a.cert, flag, "-sess_in", str(sess))
        check_s_client_output(again, proto)
        assert re.search(rf"^Reused, {re.escape(proto)}", again, re.M), f"resumption {i + 1}: not resumed:\n{again[-3000:]}"
    wait_metric(server, "stateroom_tls_resumptions_total", before + 3)


def test_tls12_client_renegotiation_does_not_hurt(tls_server, certs):
    """A TLS 1.2 client asks to renegotiate (s_client's R command) before its request: the server
    may renegotiate or refuse, but it must answer the request or close the connection - not hang
    or fall over - and a wss client in a room keeps working."""
    server = tls_server()
    with wss_raw(server, client_context(certs.a.cert), "/ws/bystander") as bystander:
        bump(bystander, 1, who="bystander before")
        cmd = ["openssl", "s_client", "-connect", f"{server.host}:{server.port}", "-servername", HOSTNAME,
               "-CAfile", str(certs.a.cert), "-tls1_2"]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            proc.stdin.write(b"R\n")
            proc.stdin.flush()
            time.sleep(0.5)
            try:
                proc.stdin.write(STATUS_REQUEST.encode())
                proc.stdin.flush()
            except BrokenPipeError:
                pass  # s_client already gave up (renegotiation refused)
            time.sleep(1.0)
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            pytest.fail("s_client still running 10 s after a renegotiation attempt")
        text = out.decode("utf-8", "replace")
        assert "RENEGOTIATING" in text, text[-2000:]
        answered = "HTTP/1.1 200" in text
        refused = re.search(r"no renegotiation|alert|error", text, re.I) is not None
        assert answered or refused, f"neither an answer nor a refusal after renegotiation:\n{text[-2000:]}"
        bump(bystander, 2, who="bystander after")
    assert_healthy(server)


# --------------------------------------------------------------------------------------------
# bad input on the TLS port
# --------------------------------------------------------------------------------------------


def _bad_plaintext_status(server):
    raw = wsraw.http_request_bytes("GET", "/status")
    return _plaintext(server, raw)


def _bad_plaintext_upgrade(server):
    return _plaintext(server, wsraw.upgrade_request("/ws/bystander"))


def _plaintext(server, raw: bytes):
    sock = wsraw.open_socket(server.host, server.port)
    bs = wsraw.BufferedSocket(sock)
    try:
        bs.send(raw)
        resp = wsraw.read_http_response(bs, time.monotonic() + 5)
        assert resp.status == 400, f"plain HTTP on the TLS port: {resp!r}"
        assert re.search(rb"tls|https", resp.body, re.I), f"the 400's body does not say the port speaks TLS: {resp!r}"
        assert bs.wait_closed(3), "connection still open 3 s after the 400"
    finally:
        bs.close()


def _bad_garbage(server):
    sock = wsraw.open_socket(server.host, server.port)
    try:
        sock.sendall(b"\x00\x01\x02\x03\xff\xfe\xfd\xfc" * 16)
        data, closed = read_to_close(sock)
        assert closed, "connection still open 3 s after garbage"
        assert data == b"" or data[:1] == b"\x15", f"garbage answered with {data[:40]!r} (not a TLS alert)"
    finally:
        sock.close()


def _bad_malformed_client_hello(server):
    # a handshake record holding a ClientHello whose session id claims 255 bytes (max 32) and
    # runs past the end of the message
    body = b"\x03\x03" + bytes(32) + b"\xff" + b"\x00" * 8
    hello = b"\x01" + len(body).to_bytes(3, "big") + body
    record = b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + hello
    sock = wsraw.open_socket(server.host, server.port)
    try:
        sock.sendall(record)
        data, closed = read_to_close(sock)
        assert closed, "connection still open 3 s after a malformed ClientHello"
        assert data == b"" or data[:1] == b"\x15", f"malformed ClientHello answered with {data[:40]!r}"
    finally:
        sock.close()


def _bad_no_shared_cipher(server):
    # a well-formed TLS 1.2 ClientHello offering only an RSA-authenticated suite: the server's
    # key is ECDSA, so there is nothing to agree on (handshake_failure alert)
    ctx = insecure_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError):
        tls_socket(server, ctx).close()


def _bad_stalled_client_hello(server):
    hello = client_hello()
    sock = wsraw.open_socket(server.host, server.port)
    try:
        sock.sendall(hello[:100])  # the record announces more: the server waits for the rest
        t0 = time.monotonic()
        data, closed = read_to_close(sock, timeout=8)
        waited = time.monotonic() - t0
        assert closed, "a stalled ClientHello was not dropped within 8 s (--request-timeout 1)"
        assert 0.5 <= waited <= 5, f"a stalled ClientHello was dropped after {waited:.2f}s (--request-timeout 1)"
    finally:
        sock.close()


def _bad_reset_after_server_hello(server):
    sock = wsraw.open_socket(server.host, server.port)
    try:
        sock.sendall(client_hello())
        bs = wsraw.BufferedSocket(sock)
        deadline = time.monotonic() + 5
        while len(bs.buf) < 5:
            bs.fill(deadline)
        assert bs.buf[:1] == b"\x16", f"expected the server's handshake flight, got {bytes(bs.buf[:20])!r}"
    finally:
        reset_close(sock)


def _bad_close_mid_client_hello(server):
    sock = wsraw.open_socket(server.host, server.port)
    sock.sendall(client_hello()[:60])
    time.sleep(0.1)
    sock.close()  # FIN half-way through the ClientHello


def _bad_reset_mid_client_hello(server):
    sock = wsraw.open_socket(server.host, server.port)
    sock.sendall(client_hello()[:60])
    time.sleep(0.1)
    reset_close(sock)


BAD_INPUTS = {
    # name: (action, counter it must bump, extra server args)
    "plaintext_get_status": (_bad_plaintext_status, "stateroom_tls_plaintext_rejected_total", ()),
    "plaintext_websocket_upgrade": (_bad_plaintext_upgrade, "stateroom_tls_plaintext_rejected_total", ()),
    "garbage_bytes": (_bad_garbage, "stateroom_tls_handshake_failures_total", ()),
    "malformed_client_hello": (_bad_malformed_client_hello, "stateroom_tls_handshake_failures_total", ()),
    "no_shared_cipher": (_bad_no_shared_cipher, "stateroom_tls_handshake_failures_total", ()),
    "stalled_client_hello": (_bad_stalled_client_hello, "stateroom_tls_handshake_timeouts_total",
                             ("--request-timeout", "1")),
    "reset_after_server_hello": (_bad_reset_after_server_hello, "stateroom_tls_handshakes_abandoned_total", ()),
    "fin_mid_client_hello": (_bad_close_mid_client_hello, "stateroom_tls_handshakes_abandoned_total", ()),
    "reset_mid_client_hello": (_bad_reset_mid_client_hello, "stateroom_tls_handshakes_abandoned_total", ()),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_on_tls_port(tls_server, certs, name):
    """The bad client gets the documented outcome, exactly the matching counter moves (by 1),
    and a wss client that was in a room all along keeps working, as do new clients."""
    action, counter, extra = BAD_INPUTS[name]
    server = tls_server(*extra)
    ctx = client_context(certs.a.cert)
    with wss_raw(server, ctx, "/ws/bystander") as bystander:
        bump(bystander, 1, who="bystander before")
        before = tls_metrics(server)
        action(server)
        wait_metric(server, counter, before[counter] + 1)
        after = tls_metrics(server)
        for other in BAD_INPUT_COUNTERS:
            if other != counter:
                assert after[other] == before[other], (
                    f"{name}: {other} moved {before[other]:g} -> {after[other]:g} (only {counter} should)")
        bump(bystander, 2, who="bystander after")
        bump(bystander, 1, "decrement", who="bystander after")
    assert_healthy(server)


def test_many_bad_clients_at_once_do_not_disturb_a_room(tls_server, certs):
    """All the bad clients above at the same time (threads), while two wss clients keep
    exchanging counter messages in their room."""
    import threading
    server = tls_server("--request-timeout", "1")
    ctx = client_context(certs.a.cert)
    errors: list[str] = []

    def bad(name, action):
        try:
            action(server)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {e!r}")

    with wss_raw(server, ctx, "/ws/busy") as a, wss_raw(server, ctx, "/ws/busy") as b:
        threads = [threading.Thread(target=bad, args=(n, act)) for n, (act, _, _) in BAD_INPUTS.items()]
        for t in threads:
            t.start()
        value = 0
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end or any(t.is_alive() for t in threads):
            value += 1
            a.send_text("increment")
            for who, ws in (("a", a), ("b", b)):
                got = ws.recv_message(5)
                assert got == (OP_TEXT, f"new value: {value}".encode()), f"{who}: {got!r} (want {value})"
            time.sleep(0.02)
        for t in threads:
            t.join(10)
        assert not errors, errors
    metrics = tls_metrics(server)
    want = {}
    for _, counter, _ in BAD_INPUTS.values():
        want[counter] = want.get(counter, 0) + 1
    deadline = time.monotonic() + 3
    while any(metrics[c] != n for c, n in want.items()) and time.monotonic() < deadline:
        time.sleep(0.1)
        metrics = tls_metrics(server)
    assert {c: metrics[c] for c in want} == want
    assert_healthy(server)


# --------------------------------------------------------------------------------------------
# SIGHUP reload
# --------------------------------------------------------------------------------------------


def install(pair: TLSPair, cert: Path, key: Path) -> None:
    """Replace the live files atomically (copy next to them, then rename over them)."""
    for src, dst in ((pair.key, key), (pair.cert, cert)):
        tmp = dst.with_name(dst.name + ".new")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def peer_der(server) -> bytes:
    with tls_socket(server, insecure_context()) as s:
        return s.getpeercert(binary_form=True)


def wait_peer_cert(server, want: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := peer_der(server)) != want:
        assert time.monotonic() < deadline, f"new connections still get another certificate {timeout}s after SIGHUP"
        time.sleep(0.1)


def wait_stderr(server, needles: tuple[str, ...], since: int, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = server.stderr_path.read_bytes()[since:].decode("utf-8", "replace")
        if any(n in text for n in needles) or time.monotonic() > deadline:
            assert any(n in text for n in needles), (
                f"nothing on stderr names {needles} after the failed reload; new stderr:\n{text}")
            return text
        time.sleep(0.05)


def test_sighup_reloads_certificate_keeps_connections_and_survives_bad_pairs(tls_server, certs, tmp_path):
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    install(certs.a, live_cert, live_key)
    server = tls_server(pair=TLSPair(live_cert, live_key))
    der_a, der_b = cert_der(certs.a.cert), cert_der(certs.b.cert)
    assert peer_der(server) == der_a

    with wss_raw(server, client_context(certs.a.cert), "/ws/reload") as old:
        bump(old, 1, who="client from before the reload")

        # 1. pair B: new handshakes present it; the open connection is untouched
        install(certs.b, live_cert, live_key)
        server.proc.send_signal(signal.SIGHUP)
        wait_peer_cert(server, der_b)
        wait_metric(server, "stateroom_tls_reloads_total", 1)
        assert tls_metric(server, "stateroom_tls_reload_failures_total") == 0
        bump(old, 2, who="client from before the reload, after it")
        ctx_b = client_context(certs.b.cert)
        with wss_raw(server, ctx_b, "/ws/reload") as new:  # verified against B; same room
            bump(new, 3, who="client after the reload")
            assert old.recv_message(5) == (OP_TEXT, b"new value: 3")
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_socket(server, client_context(certs.a.cert)).close()

        # 2. a mismatched pair (A's certificate, B's key): refused, B stays, the reason is logged
        since = server.stderr_path.stat().st_size
        install(certs.mismatched, live_cert, live_key)
        server.proc.send_signal(signal.SIGHUP)
        wait_metric(server, "stateroom_tls_reload_failures_total", 1)
        wait_stderr(server, (str(live_key), str(live_cert)), since)
        for _ in range(3):
            assert peer_der(server) == der_b, "a refused reload changed the certificate"
        assert tls_metric(server, "stateroom_tls_reloads_total") == 1
        server.assert_alive()
        bump(old, 4, who="client from before, after the failed reload")

        # 3. the key file missing: refused too
        since = server.stderr_path.stat().st_size
        live_key.unlink()
        server.proc.send_signal(signal.SIGHUP)
        wait_metric(server, "stateroom_tls_reload_failures_total", 2)
        wait_stderr(server, (str(live_key),), since)
        assert peer_der(server) == der_b
        with wss_raw(server, ctx_b, "/ws/reload") as new:
            bump(new, 5, who="client after the second failed reload")
            assert old.recv_message(5) == (OP_TEXT, b"new value: 5")

        # 4. back to pair A: accepted again
        install(certs.a, live_cert, live_key)
        server.proc.send_signal(signal.SIGHUP)
        wait_peer_cert(server, der_a)
        wait_metric(server, "stateroom_tls_reloads_total", 2)
        assert tls_metric(server, "stateroom_tls_reload_failures_total") == 2
        bump(old, 6, who="client from before every reload")
    assert_healthy(server)


# --------------------------------------------------------------------------------------------
# start-up failures
# --------------------------------------------------------------------------------------------


def _startup_case(certs: Certs, name: str, tmp: Path) -> tuple[Path, Path, str, tuple[Path | str, ...]]:
    """(cert, key, phrase the stderr line must contain, paths (and reasons) it must name)."""
    if name == "expired_certificate":
        return certs.expired.cert, certs.expired.key, "expired on", (certs.expired.cert,)
    if name == "key_does_not_match":
        p = certs.mismatched
        return p.cert, p.key, "does not match", (p.key, p.cert)
    if name == "missing_certificate":
        missing = tmp / "no-such.crt"
        return missing, certs.a.key, "cannot read the certificate chain", (missing, "No such file or directory")
    if name == "missing_key":
        missing = tmp / "no-such.key"
        return certs.a.cert, missing, "cannot read the private key", (missing, "No such file or directory")
    if name == "certificate_not_pem":
        bad = tmp / "garbage.crt"
        bad.write_text("this is not a certificate\n")
        return bad, certs.a.key, "cannot read the certificate chain", (bad,)
    if name == "key_not_pem":
        bad = tmp / "garbage.key"
        bad.write_text("this is not a key\n")
        return certs.a.cert, bad, "cannot read the private key", (bad,)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["expired_certificate", "key_does_not_match", "missing_certificate",
                                  "missing_key", "certificate_not_pem", "key_not_pem"])
def test_startup_fails_with_one_line_naming_the_file(io_backend, certs, tmp_path, name):
    binary = server_binary()
    if not binary.exists():
        pytest.skip(f"server binary not found at {binary}")
    cert, key, phrase, paths = _startup_case(certs, name, tmp_path)
    cmd = [str(binary), "--host", "127.0.0.1", "--port", "0", "--io", io_backend,
           "--tls-cert", str(cert), "--tls-key", str(key)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the server did not exit within 15 s ({name}); stdout: {e.stdout!r}")
    out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    assert proc.returncode > 0, f"{name}: exit status {proc.returncode} (want a non-zero exit, not a signal)\nstderr:\n{err}"
    assert "listening on" not in out, f"{name}: the server announced a listener:\n{out}"
    lines = [line for line in err.splitlines() if phrase in line]
    assert lines, f"{name}: no stderr line says {phrase!r}:\n{err}"
    assert any(all(str(p) in line for p in paths) for line in lines), (
        f"{name}: the {phrase!r} line does not name {[str(p) for p in paths]}:\n{err}")


# --------------------------------------------------------------------------------------------
# a browser
# --------------------------------------------------------------------------------------------

BROWSER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tls e2e</title></head>
<body><pre id="log"></pre>
<script>
const log = (s) => { document.getElementById('log').textContent += s + "\\n"; };
log('page ' + location.protocol);
const ws = new WebSocket('wss://' + location.host + '/ws/browser');
ws.onopen = () => { log('open'); ws.send('increment'); };
ws.onmessage = (e) => {
  log('message: ' + e.data);
  if (e.data === 'new value: 1') ws.send('increment');
  if (e.data === 'new value: 2') { log('done'); ws.close(1000); }
};
ws.onerror = () => log('error');
ws.onclose = (e) => log('close ' + e.code);
</script></body></html>
"""


def test_chromium_page_over_https_talks_wss_to_the_counter(tls_server, certs, tmp_path):
    chromium_binary()   # fails at once, with the reason, when chromium is missing
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text(BROWSER_PAGE)
    server = tls_server("--static", str(www))
    url = server.http_url("/index.html")
    assert url.startswith("https://127.0.0.1:")
    with wss_raw(server, client_context(certs.a.cert), "/ws/browser") as watcher:
        log, stderr = browser_log(tmp_path, url)
        assert log[:1] == ["page https:"], f"page not loaded over https (log {log}):\n{stderr}"
        for line in ("open", "message: new value: 1", "message: new value: 2", "done"):
            assert line in log, f"browser log lacks {line!r}: {log}\nchromium stderr:\n{stderr}"
        # the browser's messages reached the room a Python wss client was in
        assert watcher.recv_message(5) == (OP_TEXT, b"new value: 1")
        assert watcher.recv_message(5) == (OP_TEXT, b"new value: 2")


# --------------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------------


def test_tls_connections_handed_to_the_room_owning_shard(tls_server, certs):
    """8 rooms x 2 wss clients on 2 shards: some connections finish their TLS handshake on a
    shard that does not own their room and are handed over; every room still sees its own
    counter values in order."""
    server = tls_server(shards=2)
    ctx = client_context(certs.a.cert)
    rooms = [f"tls-shard-{i}" for i in range(8)]

    async def one_room(room: str):
        url = server.ws_url(room)
        async with ws_connect(url, ssl=ctx) as a, ws_connect(url, ssl=ctx) as b:
            value = 0
            for step, cmd in enumerate(["increment", "increment", "decrement", "increment"]):
                await (a, b)[step % 2].send(cmd)
                value += 1 if cmd == "increment" else -1
                for who, ws in (("a", a), ("b", b)):
                    got = await recv(ws)
                    assert got == f"new value: {value}", f"{room} {who}: {got!r} (want {value})"

    async def main():
        await asyncio.gather(*(one_room(r) for r in rooms))
    run(main())
    metrics = wait_metric_at_least(server, "stateroom_tls_handshakes_total", 16)
    assert metrics.get("stateroom_handoffs_total", 0) > 0, "16 wss connections over 8 rooms on 2 shards, but no handoff"
    for name in BAD_INPUT_COUNTERS:
        assert metrics[name] == 0, f"{name} = {metrics[name]:g} with good clients only"


def test_pipelined_status_upgrade_and_first_frame_in_one_record_across_shards(tls_server, certs):
    """GET /status, the upgrade and a first frame in ONE TLS record, rooms spread over 2 shards:
    the 200, then the 101, then the counter's answer, whichever shard finished the handshake
    (the TLS session and the bytes already decrypted move with the connection)."""
    server = tls_server(shards=2)
    ctx = client_context(certs.a.cert)
    for i in range(8):
        room = f"tls-pipe-{i}"
        bs = wsraw.BufferedSocket(tls_socket(server, ctx))
        try:
            key = wsraw.new_key()
            bs.send(wsraw.http_request_bytes("GET", "/status", HOSTNAME)
                    + wsraw.upgrade_request(f"/ws/{room}", HOSTNAME, key=key)
                    + wsraw.encode_frame(OP_TEXT, b"increment"))
            deadline = time.monotonic() + 5
            status = wsraw.read_http_response(bs, deadline)
            assert status.status == 200 and status.body.strip() == b"ok", f"{room}: {status!r}"
            up = wsraw.read_http_response(bs, deadline, head_only=True)
            assert up.status == 101 and up.header("sec-websocket-accept") == wsraw.accept_for(key), f"{room}: {up!r}"
            ws = RawWebSocket(bs, up)
            assert ws.recv_message(5) == (OP_TEXT, b"new value: 1"), room
            bump(ws, 2, who=room)
        finally:
            bs.close()
    metrics = wait_metric_at_least(server, "stateroom_tls_handshakes_total", 8)
    assert metrics.get("stateroom_handoffs_total", 0) > 0, "8 rooms on 2 shards, but no handoff"


def test_wss_close_handshake_both_ways(tls_server, certs):
    """Client-initiated close over TLS: the server echoes the code, then closes TCP."""
    server = tls_server()
    ctx = client_context(certs.a.cert)
    with wss_raw(server, ctx, "/ws/closing") as ws:
        bump(ws, 1)
        ws.send_close(1000, "bye")
        frames, code = ws.read_until_close(5, reply=False)
        assert code == 1000, f"close echoed with {code}; frames {frames}"
        assert ws.tcp_closed, "TCP still open 3 s after the close handshake"
    assert_healthy(server)


def test_sigterm_closes_wss_clients_with_1001_and_exits_cleanly(tls_server, certs):
    server = tls_server(shards=2)
    ctx = client_context(certs.a.cert)
    clients = [wss_raw(server, ctx, f"/ws/bye-{i}") for i in range(4)]
    try:
        for ws in clients:
            bump(ws, 1)
        server.proc.send_signal(signal.SIGTERM)
        for i, ws in enumerate(clients):
            frames, code = ws.read_until_close(5)
            assert code == 1001, f"client {i}: expected close 1001 on shutdown, got {code} (frames {frames})"
        rc = server.proc.wait(5)
    finally:
        for ws in clients:
            ws.close()
    # stopped here on purpose: tell the fixture not to count it as a crash
    server.stopped = True
    server._out.close()
    server._err.close()
    assert rc in (0, -signal.SIGTERM, 128 + signal.SIGTERM), f"exit status {rc} after SIGTERM"


def _tcp_wmem_max() -> int:
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


def test_slow_wss_reader_is_closed_with_1008_room_carries_on(tls_server, certs):
    """--max-pending-bytes holds over TLS too (sealed records count as queued bytes, not an
    unbounded buffer in front of the socket): a wss client that stops reading is closed with
    1008 (or its TCP connection ends and the slow-client counter moves), the sender goes on.
    Sizing as in test_backpressure: more than twice the kernel's largest send buffer."""
    cap = 65536
    server = tls_server("--max-pending-bytes", str(cap), service="relay")
    ctx = client_context(certs.a.cert)
    n = 2000
    size = max(1024, -(-(2 * _tcp_wmem_max() + (1 << 20)) // n))
    filler = os.urandom(size)

    def message(i: int) -> bytes:
        return struct.pack("!I", i) + filler[4:]

    raw = wsraw.open_socket(server.host, server.port, rcvbuf=4096)
    slow_tls = ctx.wrap_socket(raw, server_hostname=HOSTNAME)
    bs = wsraw.BufferedSocket(slow_tls)
    key = wsraw.new_key()
    bs.send(wsraw.upgrade_request("/ws/bp", HOSTNAME, key=key))
    resp = wsraw.read_http_response(bs, time.monotonic() + 5, head_only=True)
    assert resp.status == 101, resp
    slow = RawWebSocket(bs, resp)

    async def flood():
        # the sender is also a reader (relay: sender included); one message in flight at a time,
        # so the sender itself never has more than one message queued
        async with ws_connect(server.ws_url("bp"), ssl=ctx) as sender:
            for i in range(n):
                await sender.send(message(i))
                got = await recv(sender, 10)
                assert got == message(i), f"sender: echo {i} differs"
            return sender

    with slow:
        run(flood(), 60)
        deadline = time.monotonic() + 15
        frames, ended_by = [], "deadline"
        while time.monotonic() < deadline:
            try:
                f = slow.recv_frame(max(0.01, deadline - time.monotonic()))
            except wsraw.PeerClosed as e:
                ended_by = "reset" if e.reset else "eof"
                break
            except TimeoutError:
                break
            frames.append(f)
            if f.opcode == wsraw.OP_CLOSE:
                ended_by = "close frame"
                break
        data = [f for f in frames if f.opcode != wsraw.OP_CLOSE]
        for i, f in enumerate(data):
            assert f.payload == message(i), f"slow client frame {i} is not message {i}"
        summary = f"slow client read {len(data)} of {n} messages of {size} bytes, ended by {ended_by}"
        print(summary)
        assert len(data) < n, f"no backpressure at all: {summary}"
        if ended_by == "close frame":
            assert frames[-1].close_code == 1008, f"{summary}; close code {frames[-1].close_code}"
        else:
            assert ended_by in ("eof", "reset"), f"{summary}: still connected after 15 s, no close frame"
    wait_metric_at_least(server, "stateroom_slow_client_closes_total", 1)

    async def after():
        async with ws_connect(server.ws_url("bp"), ssl=ctx) as a, ws_connect(server.ws_url("bp"), ssl=ctx) as b:
            await a.send(b"after")
            await expect(a, b"after")
            await expect(b, b"after")
    run(after())


def test_many_concurrent_wss_handshakes_one_room(tls_server, certs):
    """200 wss clients connect at once (2 shards, so most are handed over after their handshake)
    into one counter room; one increment reaches all of them."""
    server = tls_server(shards=2)
    ctx = client_context(certs.a.cert)

    async def main():
        url = server.ws_url("crowd")
        clients = await asyncio.gather(*(ws_connect(url, ssl=ctx) for _ in range(200)))
        try:
            await clients[0].send("increment")
            got = await asyncio.gather(*(recv(ws, 10) for ws in clients))
            wrong = [i for i, g in enumerate(got) if g != "new value: 1"]
            assert not wrong, f"{len(wrong)} clients got something else, e.g. {got[wrong[0]]!r}"
        finally:
            await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
    run(main())
    metrics = wait_metric_at_least(server, "stateroom_tls_handshakes_total", 200)
    for name in BAD_INPUT_COUNTERS:
        assert metrics[name] == 0, f"{name} = {metrics[name]:g} with good clients only"


def test_reload_storm_while_clients_connect(tls_server, certs, tmp_path):
    """SIGHUPs every 20 ms, the files alternating between pairs A and B, while wss clients keep
    connecting: every handshake succeeds with one of the two certificates (a reload may catch
    the files half-replaced and be refused: that is allowed), and afterwards a clean reload to A
    is presented."""
    import threading
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    install(certs.a, live_cert, live_key)
    server = tls_server(pair=TLSPair(live_cert, live_key), shards=2)
    ctx = client_context(certs.a.cert, certs.b.cert)
    stop = threading.Event()
    sent = [0]

    def flipper():
        while not stop.is_set():
            install(certs.b if sent[0] % 2 == 0 else certs.a, live_cert, live_key)
            server.proc.send_signal(signal.SIGHUP)
            sent[0] += 1
            stop.wait(0.02)

    async def one(i: int):
        async with ws_connect(server.ws_url(f"storm-{i % 8}"), ssl=ctx) as ws:
            await ws.send("increment")
            got = await recv(ws)
            assert got.startswith("new value: "), got

    async def main():
        errors, n = [], 0
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            results = await asyncio.gather(*(one(i) for i in range(20)), return_exceptions=True)
            n += len(results)
            errors += [repr(r) for r in results if isinstance(r, BaseException)]
        return n, errors

    thread = threading.Thread(target=flipper)
    thread.start()
    try:
        n, errors = run(main())
    finally:
        stop.set()
        thread.join(5)
    assert not errors, f"{len(errors)} of {n} connections failed during {sent[0]} reloads: {errors[:5]}"
    server.assert_alive()
    metrics = tls_metrics(server)
    done = metrics["stateroom_tls_reloads_total"] + metrics["stateroom_tls_reload_failures_total"]
    assert 1 <= done <= sent[0], f"{done:g} reloads handled for {sent[0]} SIGHUPs"
    # a clean reload after the storm: pair A it is
    reloads = wait_metric_at_least(server, "stateroom_tls_reloads_total", 0)["stateroom_tls_reloads_total"]
    install(certs.a, live_cert, live_key)
    server.proc.send_signal(signal.SIGHUP)
    wait_metric_at_least(server, "stateroom_tls_reloads_total", reloads + 1)
    wait_peer_cert(server, cert_der(certs.a.cert))
    assert_healthy(server)
