"""Shared helpers for the authentication and admission end-to-end tests (test_auth.py,
test_admission.py).

* Tokens are made with PyJWT (``import jwt``; ``cryptography`` for RS256/ES256): never by hand.
  ``confused_hs256`` signs HS256 with a public key's PEM bytes as the secret (the classic
  algorithm-confusion token); PyJWT refuses that key for HMAC on purpose, so it goes through a
  ``PyJWS`` whose HS256 takes the bytes as they are.
* ``attempt`` makes one raw upgrade request (optionally from another source address such as
  127.0.0.2) and returns the response, the open WebSocket if it was 101, or whether the server
  closed the connection after a refusal.
* ``wait_metric`` polls ``/metrics`` until a counter reaches a value (shards publish their
  counters once per loop turn, so a count can trail the response by a moment).
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import HMACAlgorithm

import wsraw

#: the HS256 secret the tests' servers use (64 bytes: PyJWT warns below the hash size)
SECRET = "e2e-stateroom-hs256-secret-" + "0123456789abcdef" * 3
OTHER_SECRET = "another-secret-nobody-configured-" + "fedcba9876543210" * 3

ALL_COUNTERS = (
    "stateroom_auth_failures_total",
    "stateroom_auth_forbidden_total",
    "stateroom_upgrades_refused_total",
    "stateroom_upgrades_rate_limited_total",
    "stateroom_upgrades_address_limited_total",
    "stateroom_upgrades_server_full_total",
    "stateroom_upgrades_room_full_total",
    "stateroom_accept_pauses_total",
    "stateroom_rooms_created_total",
)


# --------------------------------------------------------------------------------------------
# tokens
# --------------------------------------------------------------------------------------------


def claims(sub: str | None = "bob", *, exp: float | None = 300, nbf: float | None = None,
           rooms: list[str] | None = None, **extra) -> dict:
    """A claim set; ``exp``/``nbf`` are offsets in seconds from now (None: left out)."""
    now = int(time.time())
    c: dict = {"iat": now}
    if sub is not None:
        c["sub"] = sub
    if exp is not None:
        c["exp"] = now + int(exp)
    if nbf is not None:
        c["nbf"] = now + int(nbf)
    if rooms is not None:
        c["rooms"] = rooms
    c.update(extra)
    return c


def hs256(sub: str | None = "bob", *, secret: str = SECRET, algorithm: str = "HS256",
          headers: dict | None = None, **kw) -> str:
    return jwt.encode(claims(sub, **kw), secret, algorithm=algorithm, headers=headers)


def signed(key, algorithm: str, sub: str | None = "bob", **kw) -> str:
    """A token signed with a private key (RS256 / ES256 / ...)."""
    return jwt.encode(claims(sub, **kw), key, algorithm=algorithm)


def unsigned(sub: str = "bob", **kw) -> str:
    """``alg: none`` (empty signature), as PyJWT writes it."""
    return jwt.encode(claims(sub, **kw), None, algorithm="none")


class _RawKeyHMAC(HMACAlgorithm):
    """HS256 that takes any bytes as the secret, a PEM public key included."""

    def prepare_key(self, key):
        return key if isinstance(key, bytes) else str(key).encode()


def confused_hs256(public_pem: bytes, sub: str = "mallory", **kw) -> str:
    """HS256 signed with the server's public key PEM (exactly the file's bytes) as the secret."""
    jws = jwt.PyJWS(algorithms=[])
    jws.register_algorithm("HS256", _RawKeyHMAC(HMACAlgorithm.SHA256))
    payload = json.dumps(claims(sub, **kw), separators=(",", ":")).encode()
    return jws.encode(payload, public_pem, algorithm="HS256", headers={"typ": "JWT"})


@dataclass
class KeyPair:
    private: object  # a cryptography private key object (PyJWT signs with it)
    public_pem: bytes
    pem_path: Path


def _write_public(private, path: Path) -> KeyPair:
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    path.write_bytes(pem)
    return KeyPair(private, pem, path)


def ec_pair(directory: Path, name: str = "es256") -> KeyPair:
    return _write_public(ec.generate_private_key(ec.SECP256R1()), directory / f"{name}.pub.pem")


def ec_p384_pair(directory: Path, name: str = "es384") -> KeyPair:
    return _write_public(ec.generate_private_key(ec.SECP384R1()), directory / f"{name}.pub.pem")


def rsa_pair(directory: Path, name: str = "rs256", bits: int = 2048) -> KeyPair:
    return _write_public(rsa.generate_private_key(public_exponent=65537, key_size=bits),
                         directory / f"{name}.pub.pem")


# --------------------------------------------------------------------------------------------
# raw upgrade attempts
# --------------------------------------------------------------------------------------------


def open_from(host: str, port: int, source: str | None = None, timeout: float = 5.0) -> socket.socket:
    """A connected TCP socket, bound to ``source`` (e.g. 127.0.0.2) first if given."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if source:
            s.bind((source, 0))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(timeout)
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


@dataclass
class Attempt:
    response: wsraw.HTTPResponse
    ws: wsraw.RawWebSocket | None  # the open WebSocket when the response was 101
    closed: bool | None  # for a refusal: the server closed the connection after it

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def text(self) -> str:
        return self.response.body.decode("utf-8", "replace")

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _send_upgrade(server, path: str, token: str | None, headers: list[tuple[str, str]] | None,
                  source: str | None, timeout: float) -> tuple[wsraw.BufferedSocket, str]:
    extra = list(headers or [])
    if token is not None:
        extra.append(("Authorization", f"Bearer {token}"))
    key = wsraw.new_key()
    bs = wsraw.BufferedSocket(open_from(server.host, server.port, source, timeout))
    try:
        bs.send(wsraw.upgrade_request(path, server.host, key=key, extra=extra))
    except BaseException:
        bs.close()
        raise
    return bs, key


def _read_answer(bs: wsraw.BufferedSocket, key: str, timeout: float, close_timeout: float) -> Attempt:
    try:
        deadline = time.monotonic() + timeout
        resp = wsraw.read_http_response(bs, deadline, head_only=True)
        if resp.status == 101:
            assert resp.header("sec-websocket-accept") == wsraw.accept_for(key), f"bad accept: {resp!r}"
            return Attempt(resp, wsraw.RawWebSocket(bs, resp), None)
        # read the body the refusal announced
        cl = resp.header("content-length")
        if cl is not None:
            resp.body = bs.read_exact(int(cl), deadline)
        else:
            resp.body = bs.read_to_eof(deadline)
        closed = bs.wait_closed(close_timeout)
        bs.close()
        return Attempt(resp, None, closed)
    except BaseException:
        bs.close()
        raise


def attempt(server, path: str = "/ws/r", *, token: str | None = None,
            headers: list[tuple[str, str]] | None = None, source: str | None = None,
            timeout: float = 5.0, close_timeout: float = 3.0) -> Attempt:
    """One upgrade request to ``path``; ``token`` goes in ``Authorization: Bearer``.

    A 101 is verified (accept key) and returned as an open :class:`wsraw.RawWebSocket` (close it);
    any other answer is read with its body and the socket is closed after checking whether the
    server closed its side."""
    bs, key = _send_upgrade(server, path, token, headers, source, timeout)
    return _read_answer(bs, key, timeout, close_timeout)


def attempts_at_once(server, paths: list[str], *, token: str | None = None, source: str | None = None,
                     timeout: float = 5.0) -> list[Attempt]:
    """Connects one socket per path, then sends every upgrade request before reading any answer,
    so that the server decides on them all at (nearly) the same time. Close the results."""
    conns = [open_from(server.host, server.port, source, timeout) for _ in paths]
    sent: list[tuple[wsraw.BufferedSocket, str]] = []
    try:
        for sock, path in zip(conns, paths):
            key = wsraw.new_key()
            bs = wsraw.BufferedSocket(sock)
            extra = [("Authorization", f"Bearer {token}")] if token is not None else []
            bs.send(wsraw.upgrade_request(path, server.host, key=key, extra=extra))
            sent.append((bs, key))
        return [_read_answer(bs, key, timeout, 3.0) for bs, key in sent]
    except BaseException:
        for s in conns:
            s.close()
        raise


def get(server, path: str, headers: list[tuple[str, str]] | None = None,
        source: str | None = None, timeout: float = 5.0) -> wsraw.HTTPResponse:
    """A plain HTTP GET (``Connection: close``)."""
    sock = open_from(server.host, server.port, source, timeout)
    bs = wsraw.BufferedSocket(sock)
    try:
        bs.send(wsraw.http_request_bytes("GET", path, server.host,
                                         [("Connection", "close")] + list(headers or [])))
        return wsraw.read_http_response(bs, time.monotonic() + timeout)
    finally:
        bs.close()


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def metrics(server, headers: list[tuple[str, str]] | None = None) -> dict[str, float]:
    resp = get(server, "/metrics", headers)
    assert resp.status == 200, f"/metrics -> {resp!r}"
    return wsraw.parse_metrics(resp.body.decode("utf-8", "replace"))


def wait_metrics(server, want: dict[str, float], timeout: float = 3.0,
                 headers: list[tuple[str, str]] | None = None) -> dict[str, float]:
    """Polls ``/metrics`` until every counter in ``want`` has its value (or ``timeout`` passes) and
    returns those counters' last values, for the caller to compare with ``want``. Shards publish
    their counters at most once a millisecond, so ``/metrics`` answered by one shard can trail
    what another shard just did. A counter that is not exposed at all fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(server, headers)
        missing = [k for k in want if k not in m]
        assert not missing, f"/metrics does not expose {missing}"
        got = {k: m[k] for k in want}
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def wait_metric(server, name: str, want: float, timeout: float = 3.0,
                headers: list[tuple[str, str]] | None = None) -> float:
    """:func:`wait_metrics` for one counter: its last value."""
    return wait_metrics(server, {name: want}, timeout, headers)[name]


def retry_until(fn, timeout: float = 2.0, interval: float = 0.1):
    """Calls ``fn()`` until it returns a truthy value or ``timeout`` passes; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)
