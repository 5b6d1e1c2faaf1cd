"""Admission limits: ``--max-connections``, ``--max-connections-per-ip``,
``--upgrade-rate-per-ip`` / ``--upgrade-burst-per-ip`` and ``--max-clients-per-room``.

What is checked, against the real binary on 127.0.0.1 (and 127.0.0.2 as a second source
address), once per I/O backend:

* the server-wide WebSocket limit: 503 with ``Retry-After`` and a one-line reason, ``/status``
  still answered, a freed place is usable again;
* accept pausing at ``max-connections + max(64, max-connections/8)`` sockets: a new connection
  waits in the kernel backlog (no answer), the server does not spin, it resumes once sockets
  close, and ``stateroom_accept_pauses_total`` counts the pause;
* the per-address WebSocket limit and the per-address upgrade rate (429 with ``Retry-After``),
  each address on its own;
* the per-room client limit (503 "room is full", no 101, the members see nothing);
* the limits are checked before the token (a limited address gets 429/503 whatever its token);
* every refusal is counted (``stateroom_upgrades_*_total``), creates no room, and gives back any
  place it took.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

import wsraw
from jwt_helpers import (OTHER_SECRET, SECRET, attempt, attempts_at_once, get, hs256, metrics, open_from,
                         retry_until, wait_metrics)
from wsraw import OP_TEXT

SECOND_ADDRESS = "127.0.0.2"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def assert_refused(a, status: int, body: str, *, exact: bool = True) -> None:
    """A refusal before the upgrade: ``status``, ``Retry-After``, the one-line body, closed."""
    assert a.status == status, f"expected {status}, got {a.response!r}"
    assert a.response.header("sec-websocket-accept") is None, a.response
    retry = a.response.header("retry-after")
    assert retry is not None and retry.isdigit() and int(retry) >= 1, f"Retry-After: {a.response!r}"
    if exact:
        assert a.text == body, f"body {a.text!r}, want {body!r}"
    else:
        assert body in a.text and a.text.endswith("\n") and a.text.count("\n") == 1, f"body {a.text!r}"
    assert a.closed, f"the server did not close the connection after the {status}"


def expect_counters(server, **want: int) -> None:
    """The named counters (``server_full=2`` is ``stateroom_upgrades_server_full_total``, also
    ``refused``, ``auth_failures``, ``rooms_created``) have these values (waiting a moment for the
    shards to publish them)."""
    names = {"refused": "stateroom_upgrades_refused_total", "auth_failures": "stateroom_auth_failures_total",
             "rooms_created": "stateroom_rooms_created_total", "accept_pauses": "stateroom_accept_pauses_total"}
    full = {names.get(k, f"stateroom_upgrades_{k}_total"): v for k, v in want.items()}
    got = wait_metrics(server, full)
    assert got == full, f"counters {got}, want {full}"


def counter_works(ws: wsraw.RawWebSocket) -> int:
    """Increments the counter room ``ws`` is in; returns the new value."""
    ws.send_text("increment")
    op, payload = ws.recv_message(5)
    assert op == OP_TEXT and payload.startswith(b"new value: "), payload
    return int(payload.split(b": ")[1])


def succeeds(server, path: str, source: str | None = None, **kw):
    """An upgrade that must succeed (returns the Attempt, open)."""
    a = attempt(server, path, source=source, **kw)
    assert a.status == 101, f"{path} from {source or '127.0.0.1'}: expected 101, got {a.response!r}"
    return a


def eventually_upgrades(server, path: str, source: str | None = None, timeout: float = 2.0, **kw):
    """Retries an upgrade until it succeeds (a close the server has not processed yet still holds
    its place); returns the open Attempt or fails with the last answer."""
    last = []

    def once():
        a = attempt(server, path, source=source, **kw)
        if a.status == 101:
            return a
        last[:] = [a.response]
        return None
    a = retry_until(once, timeout, 0.1)
    assert a, f"{path} was still refused after {timeout}s: {last}"
    return a


# --------------------------------------------------------------------------------------------
# --max-connections
# --------------------------------------------------------------------------------------------


def test_max_connections_refuses_the_third_websocket(server_factory):
    server = server_factory("--max-connections", "2", shards=2)
    a = succeeds(server, "/ws/a")
    b = succeeds(server, "/ws/b")
    try:
        third = attempt(server, "/ws/c")
        assert_refused(third, 503, "503 Service Unavailable: the server is at its connection limit\n")
        assert_refused(attempt(server, "/ws/a"), 503,
                       "503 Service Unavailable: the server is at its connection limit\n")
        # plain HTTP is still served
        status = get(server, "/status")
        assert (status.status, status.body) == (200, b"ok"), status
        # the open ones are served
        assert counter_works(a.ws) == 1
        assert counter_works(b.ws) == 1
        expect_counters(server, server_full=2, refused=2, rooms_created=2)
        # a place freed is a place taken
        a.ws.send_close(1000)
        a.ws.read_until_close(3)
        a.close()
        with eventually_upgrades(server, "/ws/c") as c:
            assert counter_works(c.ws) == 1
    finally:
        a.close()
        b.close()


def test_places_are_given_back_however_a_websocket_ends(server_factory):
    """WebSockets closed with a handshake, by the server, reset, or dropped without a close
    frame, and upgrades refused by a full room, by the address limit or by the server limit: none
    of them keeps a place, so after a few rounds the full allowance fits again."""
    server = server_factory("--max-connections", "4", "--max-connections-per-ip", "3",
                            "--max-clients-per-room", "1", shards=2)
    for cycle in range(3):
        x = eventually_upgrades(server, f"/ws/x{cycle}")
        y = eventually_upgrades(server, f"/ws/y{cycle}")
        assert_refused(attempt(server, f"/ws/x{cycle}"), 503, "503 Service Unavailable: room is full\n")
        z = eventually_upgrades(server, f"/ws/z{cycle}")
        assert_refused(attempt(server, f"/ws/w{cycle}"), 429, "too many connections from this address",
                       exact=False)
        w = eventually_upgrades(server, f"/ws/w{cycle}", source=SECOND_ADDRESS)
        assert_refused(attempt(server, f"/ws/v{cycle}", source=SECOND_ADDRESS), 503,
                       "503 Service Unavailable: the server is at its connection limit\n")
        for c in (x, y, z, w):
            counter_works(c.ws)
        # x closes with a handshake, w is closed by the server (an unmasked frame is a protocol
        # error), y is reset, z just goes away (FIN, no close frame)
        x.ws.send_close(1000)
        x.ws.read_until_close(3)
        x.close()
        w.ws.send_text("unmasked", mask=False)
        _, code = w.ws.read_until_close(3)
        assert code == 1002, f"expected the server to close with 1002, got {code}"
        w.close()
        y.ws.bs.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        y.close()
        z.close()
    opened = []
    try:
        for room in ("p", "q", "r"):
            opened.append(eventually_upgrades(server, f"/ws/{room}"))
        opened.append(eventually_upgrades(server, "/ws/s", source=SECOND_ADDRESS))
        for c in opened:
            assert counter_works(c.ws) == 1
    finally:
        for c in opened:
            c.close()
    m = metrics(server)
    assert m["stateroom_upgrades_room_full_total"] >= 3
    assert m["stateroom_upgrades_address_limited_total"] >= 3
    assert m["stateroom_upgrades_server_full_total"] >= 3


def test_accept_pauses_at_the_socket_cap_without_spinning(server_factory):
    """--max-connections 2 caps the sockets at 2 + max(64, 2/8) = 66: with 66 sockets open (a
    WebSocket and 65 that send nothing) the server stops accepting; a new client connects (the
    kernel's backlog) but its /status is not answered, the server does not spin, the WebSocket is
    still served, and closing 10 idle sockets lets the waiting request through."""
    server = server_factory("--max-connections", "2", "--request-timeout", "30", shards=1)
    pid = server.proc.pid
    baseline = open_descriptors(pid)
    ws = succeeds(server, "/ws/kept")
    idle: list[socket.socket] = []
    probe = None
    try:
        for _ in range(65):
            idle.append(open_from(server.host, server.port))
        # the server holds its cap of 66 sockets (the WebSocket and 65 idle ones)
        held = retry_until(lambda: open_descriptors(pid) >= baseline + 66, 5.0, 0.05)
        assert held, f"the server holds {open_descriptors(pid) - baseline} sockets, expected 66"

        # a new client: the TCP connect succeeds (kernel backlog), its request is not answered
        probe = open_from(server.host, server.port)
        probe.sendall(wsraw.http_request_bytes("GET", "/status", server.host, [("Connection", "close")]))
        time.sleep(0.2)
        assert open_descriptors(pid) == baseline + 66, \
            f"the server kept accepting: it holds {open_descriptors(pid) - baseline} sockets, cap 66"
        before = cpu_seconds(pid)
        t0 = time.monotonic()
        probe.settimeout(1.0)
        try:
            early = probe.recv(1024)
        except socket.timeout:
            early = None
        assert early is None, f"/status was answered while accept was paused: {early!r}"
        # the existing WebSocket is still served during the pause
        assert counter_works(ws.ws) == 1
        time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
        used = cpu_seconds(pid) - before
        assert used < 0.5, f"the server burned {used:.2f} s of CPU in 2 s while paused (spinning)"
        server.assert_alive()

        # free 10 sockets: the waiting request is answered within a few seconds
        for s in idle[:10]:
            s.close()
        del idle[:10]
        bs = wsraw.BufferedSocket(probe)
        resp = wsraw.read_http_response(bs, time.monotonic() + 5)
        assert (resp.status, resp.body) == (200, b"ok"), resp
        assert counter_works(ws.ws) == 2
    finally:
        for s in idle:
            s.close()
        if probe is not None:
            probe.close()
        ws.close()
    retry_until(lambda: metrics(server)["stateroom_accept_pauses_total"] >= 1, 3.0, 0.05)
    pauses = metrics(server)["stateroom_accept_pauses_total"]
    assert pauses >= 1, f"stateroom_accept_pauses_total = {pauses}"
    # all is well afterwards
    with eventually_upgrades(server, "/ws/after") as a:
        assert counter_works(a.ws) == 1


def test_every_way_a_socket_ends_gives_back_its_place_under_the_cap(server_factory):
    """The socket cap (66 with --max-connections 2) counts sockets, so each way a connection
    ends must give its socket back: more than 66 sockets come and go here one after another
    (plain HTTP, 400, 401, room-full and server-full 503s, WebSockets closed, reset or handed to
    another shard, clients that leave before a word, clients dropped by the request timeout),
    and the server still answers at once and never paused."""
    server = server_factory("--jwt-secret", SECRET, "--max-connections", "2", "--max-clients-per-room", "1",
                            "--request-timeout", "1", shards=2)
    good = hs256("bob")
    held = succeeds(server, "/ws/held", token=good)
    try:
        for i in range(12):
            assert get(server, "/status").status == 200
            a = attempt(server, f"/ws/x{i}")  # no token: 401
            assert a.status == 401, a.response
            a = attempt(server, "/ws/held", token=good)  # the room holds one: 503
            assert a.status == 503, a.response
            with succeeds(server, f"/ws/y{i}", token=good) as y:  # two WebSockets: the server is full
                assert attempt(server, f"/ws/z{i}", token=good).status == 503
                counter_works(y.ws)
                y.ws.send_close(1000)
                y.ws.read_until_close(3)
            r = eventually_upgrades(server, f"/ws/r{i}", token=good)  # reset
            r.ws.bs.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            r.close()
            bad = wsraw.http_exchange(server.host, server.port, b"NOT HTTP AT ALL\r\n\r\n")
            assert bad.response.status == 400, bad.response
            open_from(server.host, server.port).close()  # leaves before a word
        # 5 clients that never finish a request, dropped by the 1 s request timeout
        silent_ones = [open_from(server.host, server.port) for _ in range(5)]
        time.sleep(1.5)
        for s in silent_ones:
            s.close()
        t0 = time.monotonic()
        status = get(server, "/status", timeout=2)
        assert (status.status, status.body) == (200, b"ok"), status
        assert time.monotonic() - t0 < 1.0, "/status was slow to answer: accept was paused"
        assert counter_works(held.ws) >= 1
        with eventually_upgrades(server, "/ws/final", token=good) as f:
            counter_works(f.ws)
        assert metrics(server)["stateroom_accept_pauses_total"] == 0, "the server paused accepting"
    finally:
        held.close()


# --------------------------------------------------------------------------------------------
# --max-connections-per-ip
# --------------------------------------------------------------------------------------------


def test_per_address_connection_limit(server_factory):
    server = server_factory("--max-connections-per-ip", "2", shards=2)
    a = succeeds(server, "/ws/a")
    b = succeeds(server, "/ws/b")
    other = None
    try:
        third = attempt(server, "/ws/c")
        assert_refused(third, 429, "too many connections from this address", exact=False)
        assert third.text.startswith("429 Too Many Requests: "), third.text
        # another address has its own count
        other = succeeds(server, "/ws/c", source=SECOND_ADDRESS)
        assert counter_works(other.ws) == 1
        with succeeds(server, "/ws/c", source=SECOND_ADDRESS) as other2:
            assert counter_works(other2.ws) == 2
            assert attempt(server, "/ws/c", source=SECOND_ADDRESS).status == 429
        expect_counters(server, address_limited=2, refused=2, rooms_created=3)
        # plain HTTP is not limited
        for _ in range(5):
            assert get(server, "/status").status == 200
        # after one of the first two closes, 127.0.0.1 may open another
        a.ws.send_close(1000)
        a.ws.read_until_close(3)
        a.close()
        with eventually_upgrades(server, "/ws/d") as d:
            assert counter_works(d.ws) == 1
            assert attempt(server, "/ws/e").status == 429
    finally:
        a.close()
        b.close()
        if other is not None:
            other.close()


# --------------------------------------------------------------------------------------------
# --upgrade-rate-per-ip / --upgrade-burst-per-ip
# --------------------------------------------------------------------------------------------


def test_upgrade_rate_per_address(server_factory):
    server = server_factory("--upgrade-rate-per-ip", "2", "--upgrade-burst-per-ip", "3", shards=2)
    # four requests at once: the burst of 3 goes through, the 4th is refused
    burst = attempts_at_once(server, [f"/ws/r{i}" for i in range(4)])
    try:
        statuses = sorted(a.status for a in burst)
        assert statuses == [101, 101, 101, 429], statuses
        fourth = next(a for a in burst if a.status == 429)
        assert_refused(fourth, 429, "too many upgrade requests from this address", exact=False)
        assert fourth.text.startswith("429 Too Many Requests: "), fourth.text
    finally:
        for a in burst:
            a.close()
    # another address has its own bucket
    with succeeds(server, "/ws/r4", source=SECOND_ADDRESS):
        pass
    # plain HTTP does not spend the rate
    assert get(server, "/status").status == 200
    # after 0.6 s at 2/s there is a token again (and only one)
    time.sleep(0.6)
    with succeeds(server, "/ws/r5") as again:
        assert counter_works(again.ws) == 1
    assert attempt(server, "/ws/r6").status == 429
    expect_counters(server, rate_limited=2, refused=2, rooms_created=5)


def test_retry_after_tells_when_to_come_back(server_factory):
    """At 0.5 upgrades/s with a burst of 1, the second request is told to wait 2 s, and is let
    in once that has passed."""
    server = server_factory("--upgrade-rate-per-ip", "0.5", "--upgrade-burst-per-ip", "1")
    with succeeds(server, "/ws/slow"):
        pass
    refused = attempt(server, "/ws/slow")
    assert refused.status == 429, refused.response
    assert refused.response.header("retry-after") == "2", refused.response
    time.sleep(2.05)
    with succeeds(server, "/ws/slow") as a:
        counter_works(a.ws)


# --------------------------------------------------------------------------------------------
# --max-clients-per-room
# --------------------------------------------------------------------------------------------


def test_room_full(server_factory):
    server = server_factory("--max-clients-per-room", "2", service="chat", shards=2)
    c1 = succeeds(server, "/ws/r")
    c2 = None
    try:
        assert c1.ws.recv_message(5) == (OP_TEXT, b"Welcome, client1!")
        c2 = succeeds(server, "/ws/r")
        assert c2.ws.recv_message(5) == (OP_TEXT, b"Welcome, client2!")
        assert c1.ws.recv_message(5) == (OP_TEXT, b"client2 has joined the chat")

        third = attempt(server, "/ws/r")
        assert_refused(third, 503, "503 Service Unavailable: room is full\n")
        # the members heard nothing of it
        for c in (c1, c2):
            with pytest.raises(TimeoutError):
                got = c.ws.recv_message(0.3)
                pytest.fail(f"a member was told about the refused client: {got!r}")
        # another room still accepts
        with succeeds(server, "/ws/s") as s:
            assert s.ws.recv_message(5) == (OP_TEXT, b"Welcome, client1!")
        expect_counters(server, room_full=1, refused=1, rooms_created=2)
        # the room is as it was: messages flow, and a freed place is taken again
        c1.ws.send_text("still here")
        assert c1.ws.recv_message(5) == (OP_TEXT, b"client1: still here")
        assert c2.ws.recv_message(5) == (OP_TEXT, b"client1: still here")
        c2.ws.send_close(1000)
        c2.ws.read_until_close(3)
        c2.close()
        assert c1.ws.recv_message(5) == (OP_TEXT, b"client2 has left the chat")
        with eventually_upgrades(server, "/ws/r") as c3:
            op, payload = c3.ws.recv_message(5)
            assert payload.startswith(b"Welcome, client"), payload
            assert c1.ws.recv_message(5)[1].endswith(b" has joined the chat")
    finally:
        c1.close()
        if c2 is not None:
            c2.close()


# --------------------------------------------------------------------------------------------
# many upgrades at once, over several shards: each limit admits exactly its number
# --------------------------------------------------------------------------------------------


def _statuses(results) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in results:
        out[r.status] = out.get(r.status, 0) + 1
    return out


@pytest.mark.parametrize("limit", ["max_connections", "per_address", "rate", "room"])
def test_simultaneous_upgrades_admit_exactly_the_limit(server_factory, limit):
    args, paths, refused_status, counter = {
        "max_connections": (("--max-connections", "5"), [f"/ws/m{i}" for i in range(16)], 503,
                            "server_full"),
        "per_address": (("--max-connections-per-ip", "5"), [f"/ws/m{i}" for i in range(16)], 429,
                        "address_limited"),
        "rate": (("--upgrade-rate-per-ip", "0.1", "--upgrade-burst-per-ip", "5"),
                 [f"/ws/m{i}" for i in range(16)], 429, "rate_limited"),
        "room": (("--max-clients-per-room", "5"), ["/ws/crowd"] * 16, 503, "room_full"),
    }[limit]
    server = server_factory(*args, shards=4)
    results = attempts_at_once(server, paths)
    try:
        assert _statuses(results) == {101: 5, refused_status: 11}, _statuses(results)
        for r in results:
            if r.status != 101:
                assert r.closed, f"a refused connection stayed open: {r.response!r}"
        expect_counters(server, **{counter: 11, "refused": 11})
        # the admitted ones work
        for r in results:
            if r.status == 101:
                counter_works(r.ws)
    finally:
        for r in results:
            r.close()


# --------------------------------------------------------------------------------------------
# limits and tokens together
# --------------------------------------------------------------------------------------------


def test_rate_limit_is_checked_before_the_token(server_factory):
    server = server_factory("--jwt-secret", SECRET, "--upgrade-rate-per-ip", "2",
                            "--upgrade-burst-per-ip", "3")
    bad = hs256("bob", secret=OTHER_SECRET)
    # refused upgrades spend the rate too (guessing tokens is slowed down)
    for i in range(3):
        a = attempt(server, f"/ws/g{i}", token=bad)
        assert a.status == 401, a.response
    limited = attempt(server, "/ws/g", token=hs256("bob"))
    assert_refused(limited, 429, "too many upgrade requests from this address", exact=False)
    limited = attempt(server, "/ws/g", token=bad)
    assert_refused(limited, 429, "too many upgrade requests from this address", exact=False)
    # a rate-limited request does not have its token checked
    expect_counters(server, rate_limited=2, auth_failures=3, refused=5, rooms_created=0)
    # another address with a valid token is let in
    with succeeds(server, "/ws/g", source=SECOND_ADDRESS, token=hs256("bob")) as a:
        counter_works(a.ws)


def test_connection_limits_are_checked_before_the_token(server_factory):
    """An address at its limit gets 429, and a full server 503, whatever token comes along (a
    valid one, garbage, none): the token is not even checked."""
    per_ip = server_factory("--jwt-secret", SECRET, "--max-connections-per-ip", "1")
    full = server_factory("--jwt-secret", SECRET, "--max-connections", "1")
    a = succeeds(per_ip, "/ws/a", token=hs256("bob"))
    b = succeeds(full, "/ws/b", token=hs256("bob"))
    try:
        for token in (hs256("bob"), "garbage", None):
            assert_refused(attempt(per_ip, "/ws/x", token=token), 429,
                           "too many connections from this address", exact=False)
            assert_refused(attempt(full, "/ws/x", token=token), 503,
                           "503 Service Unavailable: the server is at its connection limit\n")
        # another address is let in by the per-address limit, with a valid token only
        with succeeds(per_ip, "/ws/x", source=SECOND_ADDRESS, token=hs256("carol")) as c:
            counter_works(c.ws)
        assert attempt(per_ip, "/ws/x", source=SECOND_ADDRESS, token="garbage").status == 401
        # a request refused by a limit does not have its token checked
        expect_counters(per_ip, address_limited=3, auth_failures=1, refused=4, rooms_created=2)
        expect_counters(full, server_full=3, auth_failures=0, refused=3, rooms_created=1)
    finally:
        a.close()
        b.close()


def test_room_limit_applies_to_authenticated_clients(server_factory):
    """The room check comes after the token: a bad token is 401, a good one for a full room 503."""
    server = server_factory("--jwt-secret", SECRET, "--max-clients-per-room", "1", service="chat")
    with succeeds(server, "/ws/r", token=hs256("alice")) as alice:
        assert alice.ws.recv_message(5) == (OP_TEXT, b"Welcome, alice!")
        assert attempt(server, "/ws/r", token="garbage").status == 401
        assert_refused(attempt(server, "/ws/r", token=hs256("bob")), 503,
                       "503 Service Unavailable: room is full\n")
        with pytest.raises(TimeoutError):
            alice.ws.recv_message(0.3)
    expect_counters(server, auth_failures=1, room_full=1, refused=2, rooms_created=1)
