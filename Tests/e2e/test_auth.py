"""Authentication: JSON Web Tokens on every WebSocket upgrade (``--jwt-secret``,
``--jwt-secret-file``, ``--jwt-public-key``, ``--jwt-clock-skew``) and ``--metrics-token``.

What is checked, against the real binary on 127.0.0.1, once per I/O backend:

* a token is taken from ``Authorization: Bearer``, else ``?token=``, else a ``bearer.<t>``
  ``Sec-WebSocket-Protocol`` entry; with the subprotocol, the 101 names the first other protocol
  offered (or the token entry when there is no other), and ``websockets`` accepts that handshake;
* refusals happen before the upgrade, as one plain-text line: 401 with
  ``WWW-Authenticate: Bearer error="invalid_token"`` for a missing, malformed, badly signed,
  expired, not-yet-valid, wrong-algorithm, ``alg: none``, algorithm-confusion or subject-less
  token; 403 for a ``rooms`` claim that does not name the room. The connection is closed, no room
  is created, and ``stateroom_auth_failures_total`` / ``stateroom_auth_forbidden_total`` /
  ``stateroom_upgrades_refused_total`` count them;
* the clock skew for ``exp`` and ``nbf`` (default 30 s, and as configured);
* HS256 in full, ES256 for acceptance, refusals and confusion, RS256 briefly;
* ``/status`` stays open; ``/metrics`` is open unless ``--metrics-token`` is set;
* the token's ``sub`` names the client in the chat service (also across shards);
* headless Chromium passing the token as a subprotocol (``new WebSocket(url, [...])``).

Tokens are made with PyJWT (see jwt_helpers.py), never by hand.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

import pytest
import websockets

import wsraw
from browser import browser_log
from conftest import server_binary
from jwt_helpers import (ALL_COUNTERS, OTHER_SECRET, SECRET, attempt, confused_hs256, ec_p384_pair, ec_pair,
                         get, hs256, metrics, rsa_pair, signed, unsigned, wait_metrics)
from wsraw import OP_TEXT, expect, run, silent, ws_connect

CHALLENGE = 'Bearer error="invalid_token"'


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def hs_server(server_factory):
    """A counter server that requires HS256 tokens signed with SECRET."""
    def start(*extra, **kw):
        return server_factory("--jwt-secret", SECRET, *extra, **kw)
    return start


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key pairs for the module: the server's ES256 and RS256 keys and a stranger's of each kind."""
    d = tmp_path_factory.mktemp("jwtkeys")

    class Keys:
        es = ec_pair(d, "es")
        es_other = ec_pair(d, "es-other")
        es384 = ec_p384_pair(d, "es384")
        rs = rsa_pair(d, "rs")
        rs_other = rsa_pair(d, "rs-other")
    return Keys


def assert_unauthorized(a, fragment: str) -> None:
    """A 401 refusal before the upgrade: one-line body naming ``fragment``, the bearer challenge,
    connection closed."""
    assert a.status == 401, f"expected 401, got {a.response!r}"
    body = a.text
    assert body.startswith("401 Unauthorized: "), f"body {body!r}"
    assert body.endswith("\n") and body.count("\n") == 1, f"body is not one line: {body!r}"
    assert fragment in body, f"the reason does not mention {fragment!r}: {body!r}"
    assert a.response.header("www-authenticate") == CHALLENGE, f"challenge: {a.response!r}"
    assert a.response.header("sec-websocket-accept") is None, a.response
    assert a.closed, "the server did not close the connection after the 401"


def assert_forbidden(a, room: str) -> None:
    assert a.status == 403, f"expected 403, got {a.response!r}"
    assert a.text == f"403 Forbidden: token does not open room {room}\n", f"body {a.text!r}"
    assert a.response.header("sec-websocket-accept") is None, a.response
    assert a.closed, "the server did not close the connection after the 403"


def assert_counts(server, *, failures: int = 0, forbidden: int = 0, refused: int | None = None,
                  rooms_created: int = 0) -> None:
    """The auth counters and the rooms created (a refused upgrade creates none)."""
    want = {
        "stateroom_auth_failures_total": failures,
        "stateroom_auth_forbidden_total": forbidden,
        "stateroom_upgrades_refused_total": failures + forbidden if refused is None else refused,
        "stateroom_rooms_created_total": rooms_created,
    }
    got = wait_metrics(server, want)
    assert got == want, f"counters {got}, want {want}"


def counter_ok(a) -> None:
    """``a`` is an accepted upgrade to a counter room: increment gets an answer."""
    assert a.status == 101, f"expected 101, got {a.response!r}"
    with a.ws as ws:
        ws.send_text("increment")
        op, payload = ws.recv_message(5)
        assert op == OP_TEXT and payload.startswith(b"new value: "), payload


# --------------------------------------------------------------------------------------------
# where the token comes from
# --------------------------------------------------------------------------------------------


def test_bearer_header_opens_a_room(hs_server):
    server = hs_server()

    async def main():
        async with ws_connect(server.ws_url("lobby"),
                              additional_headers={"Authorization": f"Bearer {hs256('bob')}"}) as ws:
            await ws.send("increment")
            await expect(ws, "new value: 1")
            assert ws.subprotocol is None
    run(main())
    assert_counts(server, rooms_created=1)


def test_query_token_opens_a_room(hs_server):
    server = hs_server()

    async def main():
        async with ws_connect(server.ws_url("lobby") + "?token=" + hs256("bob")) as ws:
            await ws.send("increment")
            await expect(ws, "new value: 1")
            # the query is not part of the room name: a second client is in the same room
            async with ws_connect(server.ws_url("lobby") + "?x=1&token=" + hs256("carol") + "&y=2") as ws2:
                await ws2.send("increment")
                await expect(ws2, "new value: 2")
                await expect(ws, "new value: 2")
    run(main())
    assert_counts(server, rooms_created=1)


def test_subprotocol_token_answers_the_first_other_protocol(hs_server):
    server = hs_server()
    token = hs256("bob")

    async def main():
        async with ws_connect(server.ws_url("sp"), subprotocols=["stateroom", f"bearer.{token}"]) as ws:
            assert ws.subprotocol == "stateroom"
            await ws.send("increment")
            await expect(ws, "new value: 1")
        # the token first, then two others: the first other one
        async with ws_connect(server.ws_url("sp"), subprotocols=[f"bearer.{token}", "v2", "v1"]) as ws:
            assert ws.subprotocol == "v2"
    run(main())
    # the same on the wire, offered as one header
    with attempt(server, "/ws/sp", headers=[("Sec-WebSocket-Protocol", f"stateroom, bearer.{token}")]) as a:
        assert a.status == 101, a.response
        assert a.response.header("sec-websocket-protocol") == "stateroom", a.response


def test_subprotocol_token_alone_is_answered_with_itself(hs_server):
    server = hs_server()
    token = hs256("bob")

    async def main():
        async with ws_connect(server.ws_url("sp"), subprotocols=[f"bearer.{token}"]) as ws:
            assert ws.subprotocol == f"bearer.{token}"
            await ws.send("increment")
            await expect(ws, "new value: 1")
    run(main())
    with attempt(server, "/ws/sp", headers=[("Sec-WebSocket-Protocol", f"bearer.{token}")]) as a:
        assert a.status == 101, a.response
        assert a.response.header("sec-websocket-protocol") == f"bearer.{token}", a.response


def test_authorization_header_comes_first(hs_server):
    """The header's token is the one checked: a bad one there is not saved by a good query token
    or subprotocol, and a good one is not spoiled by bad ones elsewhere."""
    server = hs_server()
    good, bad = hs256("bob"), hs256("bob", secret=OTHER_SECRET)
    a = attempt(server, f"/ws/order?token={good}", token=bad,
                headers=[("Sec-WebSocket-Protocol", f"bearer.{good}")])
    assert_unauthorized(a, "signature")
    with attempt(server, f"/ws/order?token={bad}", token=good,
                 headers=[("Sec-WebSocket-Protocol", f"bearer.{bad}")]) as a:
        counter_ok(a)
    # the query comes before the subprotocol
    a = attempt(server, f"/ws/order?token={bad}", headers=[("Sec-WebSocket-Protocol", f"bearer.{good}")])
    assert_unauthorized(a, "signature")
    with attempt(server, f"/ws/order2?token={good}", headers=[("Sec-WebSocket-Protocol", f"bearer.{bad}")]) as a:
        counter_ok(a)
    assert_counts(server, failures=2, rooms_created=2)


def test_token_spellings(hs_server):
    """The bearer scheme is case-insensitive (RFC 7235); a query token may be percent-encoded; an
    empty ``bearer.`` entry is no token at all."""
    server = hs_server()
    token = hs256("bob")
    with attempt(server, "/ws/s1", headers=[("authorization", f"bearer {token}")]) as a:
        counter_ok(a)
    with attempt(server, "/ws/s2?token=" + token.replace(".", "%2E")) as a:
        counter_ok(a)
    with attempt(server, "/ws/s3", headers=[("Sec-WebSocket-Protocol", "v1"),
                                            ("Sec-WebSocket-Protocol", f"bearer.{token}")]) as a:
        assert a.status == 101, a.response
        assert a.response.header("sec-websocket-protocol") == "v1", a.response
    a = attempt(server, "/ws/s4", headers=[("Sec-WebSocket-Protocol", "stateroom, bearer.")])
    assert a.status == 401, a.response
    assert_counts(server, failures=1, rooms_created=3)


def test_refusal_ends_the_connection_even_with_pipelined_requests(hs_server):
    """A keep-alive /status, then a refused upgrade, then a good upgrade, all in one write: the
    /status is answered, the refusal closes the connection, and what followed it is ignored."""
    server = hs_server()
    raw = (wsraw.http_request_bytes("GET", "/status", server.host)
           + wsraw.upgrade_request("/ws/pipe", server.host, extra=[("Authorization", "Bearer nope")])
           + wsraw.upgrade_request("/ws/pipe", server.host, extra=[("Authorization", f"Bearer {hs256('bob')}")]))
    sock = wsraw.open_socket(server.host, server.port)
    bs = wsraw.BufferedSocket(sock)
    try:
        bs.send(raw)
        deadline = time.monotonic() + 5
        status = wsraw.read_http_response(bs, deadline)
        assert (status.status, status.body) == (200, b"ok"), status
        refused = wsraw.read_http_response(bs, deadline)
        assert refused.status == 401, refused
        rest = bs.read_to_eof(deadline)
        assert rest == b"", f"the server answered after the refusal: {rest[:200]!r}"
    finally:
        bs.close()
    assert_counts(server, failures=1)


@pytest.mark.parametrize("where", ["query", "subprotocol"])
def test_bad_token_in_query_or_subprotocol_is_refused(hs_server, where):
    server = hs_server()
    bad = hs256("bob", secret=OTHER_SECRET)
    if where == "query":
        a = attempt(server, f"/ws/r?token={bad}")
    else:
        a = attempt(server, "/ws/r", headers=[("Sec-WebSocket-Protocol", f"stateroom, bearer.{bad}")])
    assert_unauthorized(a, "signature")
    assert_counts(server, failures=1)


def test_secret_file_with_trailing_newline(server_factory, tmp_path):
    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    server = server_factory("--jwt-secret-file", str(f))
    with attempt(server, "/ws/file", token=hs256("bob")) as a:
        counter_ok(a)
    assert_unauthorized(attempt(server, "/ws/file", token=hs256("bob", secret=OTHER_SECRET)), "signature")


def test_websockets_client_sees_the_refusal(hs_server):
    server = hs_server()

    async def main():
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with ws_connect(server.ws_url("lobby")):
                pass
        resp = refused.value.response
        assert resp.status_code == 401
        assert resp.headers.get("WWW-Authenticate") == CHALLENGE
        assert resp.body.decode().startswith("401 Unauthorized: no token (")
    run(main())


# --------------------------------------------------------------------------------------------
# HS256 refusals
# --------------------------------------------------------------------------------------------

HS256_REFUSALS = {
    # name: (token maker or None for no token, a stable part of the reason)
    "missing": (None, "no token ("),
    "empty_bearer": (lambda: "", "no token ("),
    "not_a_jwt": (lambda: "not-a-jwt", "malformed token"),
    "bad_base64": (lambda: "a.b.c", "malformed token"),
    "bad_signature": (lambda: hs256("bob", secret=OTHER_SECRET), "bad signature"),
    "expired": (lambda: hs256("bob", exp=-120), "expired"),
    "not_yet_valid": (lambda: hs256("bob", nbf=120), "not yet valid"),
    "hs384": (lambda: hs256("bob", algorithm="HS384"), "algorithm HS384 not accepted"),
    "alg_none": (lambda: unsigned("bob"), "algorithm none not accepted"),
    "no_sub": (lambda: hs256(None), "no subject"),
    "empty_sub": (lambda: hs256(""), "no subject"),
}


@pytest.mark.parametrize("case", list(HS256_REFUSALS))
def test_hs256_refusal(hs_server, case):
    server = hs_server()
    make, fragment = HS256_REFUSALS[case]
    if make is None:
        a = attempt(server, "/ws/r")
    else:
        a = attempt(server, "/ws/r", token=make())
    assert_unauthorized(a, fragment)
    assert_counts(server, failures=1)
    # the refusal harmed nobody: a good token still opens the room, which starts at 0
    with attempt(server, "/ws/r", token=hs256("bob")) as ok:
        assert ok.status == 101, ok.response
        ok.ws.send_text("increment")
        assert ok.ws.recv_message(5) == (OP_TEXT, b"new value: 1")
    assert_counts(server, failures=1, rooms_created=1)


def test_many_refusals_are_counted_and_create_no_room(hs_server):
    server = hs_server(shards=2)
    bad = [None, "x", hs256("bob", secret=OTHER_SECRET), hs256("bob", exp=-300), unsigned()]
    for i in range(12):
        t = bad[i % len(bad)]
        a = attempt(server, f"/ws/room{i}", token=t)
        assert a.status == 401, a.response
    assert_counts(server, failures=12)
    assert metrics(server)["stateroom_rooms_active"] == 0


# --------------------------------------------------------------------------------------------
# clock skew
# --------------------------------------------------------------------------------------------


def test_default_clock_skew_of_30_seconds(hs_server):
    server = hs_server()
    with attempt(server, "/ws/skew", token=hs256("bob", exp=-10)) as a:
        counter_ok(a)  # expired 10 s ago: within the skew
    with attempt(server, "/ws/skew2", token=hs256("bob", exp=None, nbf=10)) as a:
        counter_ok(a)  # valid in 10 s: within the skew
    assert_unauthorized(attempt(server, "/ws/skew", token=hs256("bob", exp=-60)), "expired")
    assert_unauthorized(attempt(server, "/ws/skew", token=hs256("bob", nbf=60)), "not yet valid")
    assert_counts(server, failures=2, rooms_created=2)


def test_configured_clock_skew(hs_server):
    strict = hs_server("--jwt-clock-skew", "0")
    assert_unauthorized(attempt(strict, "/ws/skew", token=hs256("bob", exp=-5)), "expired")
    assert_unauthorized(attempt(strict, "/ws/skew", token=hs256("bob", nbf=5)), "not yet valid")
    with attempt(strict, "/ws/skew", token=hs256("bob", exp=5)) as a:
        counter_ok(a)
    lenient = hs_server("--jwt-clock-skew", "120")
    with attempt(lenient, "/ws/skew", token=hs256("bob", exp=-60, nbf=60)) as a:
        counter_ok(a)
    assert_unauthorized(attempt(lenient, "/ws/skew", token=hs256("bob", exp=-180)), "expired")


# --------------------------------------------------------------------------------------------
# the rooms claim
# --------------------------------------------------------------------------------------------


def test_rooms_claim_limits_the_rooms_a_token_opens(hs_server):
    server = hs_server()
    token = hs256("bob", rooms=["a"])
    member = attempt(server, "/ws/a", token=token)  # kept open: room a lives until the end
    assert member.status == 101, member.response
    b = attempt(server, "/ws/b", token=token)
    assert_forbidden(b, "b")
    assert b.response.header("www-authenticate") != CHALLENGE, "a valid token is not an invalid_token"
    # through the query and the subprotocol as well
    assert_forbidden(attempt(server, f"/ws/b?token={token}"), "b")
    assert_forbidden(attempt(server, "/ws/b", headers=[("Sec-WebSocket-Protocol", f"bearer.{token}")]), "b")
    with member, attempt(server, f"/ws/a?token={token}") as a:
        assert a.status == 101, a.response
        a.ws.send_text("increment")
        assert a.ws.recv_message(5) == (OP_TEXT, b"new value: 1")
        assert member.ws.recv_message(5) == (OP_TEXT, b"new value: 1")
        assert_counts(server, forbidden=3, rooms_created=1)


def test_rooms_claim_with_several_rooms_and_the_default_room(hs_server):
    server = hs_server()
    token = hs256("bob", rooms=["a", "b"])
    for room in ("a", "b"):
        with attempt(server, f"/ws/{room}", token=token) as a:
            counter_ok(a)
    assert_forbidden(attempt(server, "/ws/ab", token=token), "ab")
    assert_forbidden(attempt(server, "/ws/A", token=token), "A")  # names are exact
    # /ws is room "1"
    assert attempt(server, "/ws", token=token).status == 403
    with attempt(server, "/ws", token=hs256("bob", rooms=["1"])) as a:
        counter_ok(a)
    # an empty list opens nothing
    assert_forbidden(attempt(server, "/ws/a", token=hs256("bob", rooms=[])), "a")
    assert_counts(server, forbidden=4, rooms_created=3)


def test_rooms_claim_names_decoded_rooms(hs_server):
    """The claim names rooms as the server knows them: percent-decoded from the path (room ids
    are unreserved characters)."""
    server = hs_server()
    token = hs256("bob", rooms=["my-room"])
    with attempt(server, "/ws/my%2Droom", token=token) as a:
        counter_ok(a)
    assert_forbidden(attempt(server, "/ws/%61b", token=token), "ab")
    assert_counts(server, forbidden=1, rooms_created=1)


# --------------------------------------------------------------------------------------------
# ES256 (in full) and RS256 (briefly)
# --------------------------------------------------------------------------------------------


def test_es256_token_opens_a_room_every_way(server_factory, keys):
    server = server_factory("--jwt-public-key", str(keys.es.pem_path))
    token = signed(keys.es.private, "ES256", "bob")

    async def main():
        async with ws_connect(server.ws_url("es"), additional_headers={"Authorization": f"Bearer {token}"}) as a, \
                ws_connect(server.ws_url("es") + f"?token={token}") as b, \
                ws_connect(server.ws_url("es"), subprotocols=["stateroom", f"bearer.{token}"]) as c:
            assert c.subprotocol == "stateroom"
            for n, ws in enumerate((a, b, c), 1):
                await ws.send("increment")
                for each in (a, b, c):
                    await expect(each, f"new value: {n}")
    run(main())
    assert_counts(server, rooms_created=1)


ES256_REFUSALS = {
    "other_key": (lambda k: signed(k.es_other.private, "ES256"), "bad signature"),
    "confusion_hs256_with_public_key": (lambda k: confused_hs256(k.es.public_pem), "algorithm HS256 not accepted"),
    "rs256_token": (lambda k: signed(k.rs.private, "RS256"), "algorithm RS256 not accepted"),
    "es384_alg": (lambda k: signed(k.es384.private, "ES384"), "algorithm ES384 not accepted"),
    "alg_none": (lambda k: unsigned(), "algorithm none not accepted"),
    "hs256_shared_secret": (lambda k: hs256("bob"), "algorithm HS256 not accepted"),
    "expired": (lambda k: signed(k.es.private, "ES256", exp=-120), "expired"),
    "not_yet_valid": (lambda k: signed(k.es.private, "ES256", nbf=120), "not yet valid"),
    "no_sub": (lambda k: signed(k.es.private, "ES256", None), "no subject"),
}


@pytest.mark.parametrize("case", list(ES256_REFUSALS))
def test_es256_refusal(server_factory, keys, case):
    server = server_factory("--jwt-public-key", str(keys.es.pem_path))
    make, fragment = ES256_REFUSALS[case]
    assert_unauthorized(attempt(server, "/ws/es", token=make(keys)), fragment)
    assert_counts(server, failures=1)


def test_es256_forbidden_room(server_factory, keys):
    server = server_factory("--jwt-public-key", str(keys.es.pem_path))
    token = signed(keys.es.private, "ES256", rooms=["mine"])
    assert_forbidden(attempt(server, "/ws/yours", token=token), "yours")
    with attempt(server, "/ws/mine", token=token) as a:
        counter_ok(a)
    assert_counts(server, forbidden=1, rooms_created=1)


def test_rs256_briefly(server_factory, keys):
    server = server_factory("--jwt-public-key", str(keys.rs.pem_path))
    with attempt(server, "/ws/rs", token=signed(keys.rs.private, "RS256")) as a:
        counter_ok(a)
    with attempt(server, "/ws/rs2", headers=[("Sec-WebSocket-Protocol",
                                             f"stateroom, bearer.{signed(keys.rs.private, 'RS256')}")]) as a:
        assert a.status == 101 and a.response.header("sec-websocket-protocol") == "stateroom", a.response
    assert_unauthorized(attempt(server, "/ws/rs", token=confused_hs256(keys.rs.public_pem)),
                        "algorithm HS256 not accepted")
    assert_unauthorized(attempt(server, "/ws/rs", token=signed(keys.rs_other.private, "RS256")), "bad signature")
    assert_unauthorized(attempt(server, "/ws/rs", token=signed(keys.es.private, "ES256")),
                        "algorithm ES256 not accepted")
    assert_unauthorized(attempt(server, "/ws/rs", token=signed(keys.rs.private, "PS256")),
                        "algorithm PS256 not accepted")
    assert_counts(server, failures=4, rooms_created=2)


@pytest.mark.parametrize("case", ["missing_file", "private_key_pem"])
def test_unusable_public_key_stops_startup(io_backend, keys, tmp_path, case):
    from cryptography.hazmat.primitives import serialization
    binary = server_binary()
    assert binary.exists(), f"server binary not found at {binary}"
    path = tmp_path / "key.pem"
    if case == "private_key_pem":
        path.write_bytes(keys.es.private.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    cmd = [str(binary), "--host", "127.0.0.1", "--port", "0", "--io", io_backend, "--jwt-public-key", str(path)]
    proc = subprocess.run(cmd, capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
    out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    assert proc.returncode > 0, f"exit status {proc.returncode}; stderr:\n{err}"
    assert "listening on" not in out, out
    assert err.strip(), "no reason given on stderr"


# --------------------------------------------------------------------------------------------
# /status and /metrics
# --------------------------------------------------------------------------------------------


def test_status_and_metrics_stay_open_with_jwt(hs_server):
    server = hs_server()
    status = get(server, "/status")
    assert (status.status, status.body) == (200, b"ok"), status
    m = get(server, "/metrics")
    assert m.status == 200, m
    lines = m.body.decode().splitlines()
    for name in ALL_COUNTERS:  # each with a sum line without labels
        assert f"{name} 0" in lines, f"/metrics has no line '{name} 0'"


def test_metrics_token(hs_server):
    server = hs_server("--metrics-token", "m3trics-t0ken")
    for headers in ([], [("Authorization", "Bearer wrong")], [("Authorization", "Bearer m3trics-t0ken-and-more")],
                    [("Authorization", "Basic m3trics-t0ken")], [("Authorization", f"Bearer {hs256('bob')}")]):
        r = get(server, "/metrics", headers)
        assert r.status == 401, f"{headers}: {r!r}"
        assert b"stateroom_" not in r.body, f"{headers}: the metrics leaked: {r!r}"
    r = get(server, "/metrics", [("Authorization", "Bearer m3trics-t0ken")])
    assert r.status == 200 and b"stateroom_upgrades_refused_total" in r.body, r
    status = get(server, "/status")
    assert (status.status, status.body) == (200, b"ok"), status
    # the metrics token is not a WebSocket token
    assert_unauthorized(attempt(server, "/ws/r", token="m3trics-t0ken"), "malformed")


def test_metrics_token_without_jwt(server_factory):
    server = server_factory("--metrics-token", "tok")
    assert get(server, "/metrics").status == 401
    assert get(server, "/metrics", [("Authorization", "Bearer tok")]).status == 200
    # WebSockets stay open to anyone: the metrics token is only for /metrics
    with attempt(server, "/ws/r") as a:
        counter_ok(a)


# --------------------------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------------------------


def test_sub_names_the_chat_client(hs_server):
    server = hs_server(service="chat")
    url = server.ws_url("chat")

    async def main():
        async with ws_connect(url, additional_headers={"Authorization": f"Bearer {hs256('alice')}"}) as alice:
            await expect(alice, "Welcome, alice!")
            async with ws_connect(url + f"?token={hs256('bob')}") as bob:
                await expect(bob, "Welcome, bob!")
                await expect(alice, "bob has joined the chat")
                await bob.send("hi")
                await expect(alice, "bob: hi")
                await expect(bob, "bob: hi")
                async with ws_connect(url, subprotocols=["chat", f"bearer.{hs256('Zoë Ω')}"]) as zoe:
                    assert zoe.subprotocol == "chat"
                    await expect(zoe, "Welcome, Zoë Ω!")
                    await expect(alice, "Zoë Ω has joined the chat")
                    await expect(bob, "Zoë Ω has joined the chat")
                await expect(alice, "Zoë Ω has left the chat")
                await expect(bob, "Zoë Ω has left the chat")
            await expect(alice, "bob has left the chat")
            await silent(alice, 0.2)
    run(main())


def test_anonymous_chat_clients_without_jwt(server_factory):
    server = server_factory(service="chat")
    url = server.ws_url("anon")

    async def main():
        async with ws_connect(url) as c1:
            await expect(c1, "Welcome, client1!")
            # a token sent to a server without JWT is ignored, not used as a name
            async with ws_connect(url, additional_headers={"Authorization": f"Bearer {hs256('bob')}"}) as c2:
                await expect(c2, "Welcome, client2!")
                await expect(c1, "client2 has joined the chat")
            await expect(c1, "client2 has left the chat")
    run(main())


def test_identity_travels_to_the_room_owning_shard(hs_server):
    """Rooms spread over 4 shards: many connections are accepted by a shard that does not own
    their room and handed over; each keeps its token's name."""
    server = hs_server(service="chat", shards=4)

    async def main():
        for i in range(8):
            url = server.ws_url(f"room{i}")
            async with ws_connect(url, additional_headers={"Authorization": f"Bearer {hs256(f'user{i}')}"}) as a:
                await expect(a, f"Welcome, user{i}!")
                async with ws_connect(url + f"?token={hs256(f'guest{i}')}") as b:
                    await expect(b, f"Welcome, guest{i}!")
                    await expect(a, f"guest{i} has joined the chat")
                await expect(a, f"guest{i} has left the chat")
    run(main())
    m = metrics(server)
    assert m["stateroom_handoffs_total"] > 0, "no connection was handed over: the test proves nothing"


# --------------------------------------------------------------------------------------------
# a browser
# --------------------------------------------------------------------------------------------

BROWSER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>jwt e2e</title></head>
<body><pre id="log"></pre>
<script>
const log = (s) => { document.getElementById('log').textContent += s + "\\n"; };
const token = "%TOKEN%";
const ws = new WebSocket('ws://' + location.host + '/ws/browser', ['stateroom', 'bearer.' + token]);
ws.onopen = () => { log('open'); log('protocol ' + ws.protocol); ws.send('hello from the browser'); };
ws.onmessage = (e) => {
  log('message: ' + e.data);
  if (e.data === 'bob: hello from the browser') { log('done'); ws.close(1000); }
};
ws.onerror = () => log('error');
ws.onclose = (e) => log('close ' + e.code);
</script></body></html>
"""


def test_browser_passes_the_token_as_a_subprotocol(hs_server, tmp_path):
    """Browsers cannot set headers on a WebSocket: Chromium offers ``["stateroom", "bearer.<t>"]``,
    is answered ``stateroom``, and is in the room as the token's ``sub``."""
    # make's set-up installs Chromium: a missing browser fails (as in test_tls.py), never skips.
    assert any(p and os.path.exists(p) for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"),
                                                 shutil.which("chromium-browser"), "/usr/bin/chromium")), \
        "chromium is not installed (make deps installs it)"

    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text(BROWSER_PAGE.replace("%TOKEN%", hs256("bob")))
    server = hs_server("--static", str(www), service="chat")

    async def watch():
        async with ws_connect(server.ws_url("browser"),
                              additional_headers={"Authorization": f"Bearer {hs256('alice')}"}) as alice:
            await expect(alice, "Welcome, alice!")
            log, stderr = await asyncio.to_thread(browser_log, tmp_path, server.http_url("/index.html"))
            for line in ("open", "protocol stateroom", "message: Welcome, bob!",
                         "message: bob: hello from the browser", "done"):
                assert line in log, f"browser log lacks {line!r}: {log}\nchromium stderr:\n{stderr}"
            await expect(alice, "bob has joined the chat")
            await expect(alice, "bob: hello from the browser")
            await expect(alice, "bob has left the chat")
    run(watch(), 40)
