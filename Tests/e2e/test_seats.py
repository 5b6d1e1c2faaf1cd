"""Seats (connection state recovery, docs/seats.md), through real servers and the third-party
``websockets`` client.

A client opts in with ``?seat=new``, learns its token from the seat message, and after a drop
without a close handshake (``transport.abort()``: the TCP connection just ends) resumes with
``?seat=<token>&received=<n>``. The ``chat`` service makes the service's view visible: it
announces every ``connect`` and ``disconnect`` to the room, so a bystander sees whether the
service was told of a drop.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import signal

import jwt
import pytest
import websockets

from jwt_helpers import SECRET

TIMEOUT = 5


#: Connections a test opened: cut when its scenario ends, so no server waits for their close.
OPEN: list = []


def run(coro, timeout: float = 60):
    async def scenario():
        try:
            return await asyncio.wait_for(coro, timeout)
        finally:
            while OPEN:
                OPEN.pop().transport.abort()
    return asyncio.run(scenario())


async def connect(url: str, **kw):
    ws = await websockets.connect(url, **kw)
    OPEN.append(ws)
    return ws


class Seated:
    """One client that opted in: its connection, seat message, and count of service messages."""

    def __init__(self, ws, hello: dict, received: int):
        self.ws = ws
        self.hello = hello
        self.received = received

    @property
    def token(self) -> str:
        return self.hello["seat"]

    @property
    def client(self) -> int:
        return self.hello["client"]

    async def recv(self) -> str:
        m = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        self.received += 1
        return m

    async def recv_n(self, n: int) -> list[str]:
        return [await self.recv() for _ in range(n)]

    def drop(self) -> None:
        """Ends the TCP connection without a WebSocket close."""
        self.ws.transport.abort()


async def seat(url: str, query: str = "seat=new", received: int = 0) -> Seated:
    sep = "&" if "?" in url else "?"
    ws = await connect(f"{url}{sep}{query}")
    hello = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert hello["type"] == "seat", hello
    return Seated(ws, hello, received if hello["recovered"] else 0)


async def resume(url: str, s: Seated) -> Seated:
    return await seat(url, f"seat={s.token}&received={s.received}", s.received)


async def seated_then_away(url: str) -> tuple[Seated, object]:
    """In a chat room: a seated client 1 (its welcome read) and a plain client 2, then client 1
    drops without a close. Returns both."""
    a = await seat(url)
    assert await a.recv() == "Welcome, client1!"
    b = await connect(url)
    await expect(b, "Welcome, client2!")
    a.drop()
    return a, b


async def silent(ws, seconds: float) -> list[str]:
    """What `ws` receives within `seconds` (expected: nothing)."""
    got = []
    try:
        while True:
            got.append(await asyncio.wait_for(ws.recv(), seconds))
    except (asyncio.TimeoutError, websockets.ConnectionClosed):
        return got


async def expect(ws, text: str) -> None:
    got = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert got == text


def metric(server, name: str, want: float | None = None) -> float:
    """`name`'s total in /metrics; with `want`, polled until it has that value (shards publish
    their counters once per loop turn: a count can trail what the client saw by a moment)."""
    import time
    import urllib.request
    deadline = time.monotonic() + 5
    while True:
        body = urllib.request.urlopen(server.http_url("/metrics"), timeout=5).read().decode()
        value = next((float(line.split()[1]) for line in body.splitlines() if line.startswith(name + " ")), None)
        if value is None:
            raise AssertionError(f"{name} not in /metrics")
        if want is None or value == want or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def test_a_resume_within_the_grace_gets_every_missed_message_once_and_the_service_sees_nothing(server_factory):
    server = server_factory(service="chat")
    url = server.ws_url("lobby")

    async def main():
        a = await seat(url)
        assert (a.hello["recovered"], a.hello["client"], a.hello["grace"]) == (False, 1, 30)
        assert len(a.token) >= 22
        assert await a.recv() == "Welcome, client1!"
        b = await connect(url)  # not opted in: no seat message
        await expect(b, "Welcome, client2!")
        assert await a.recv() == "client2 has joined the chat"
        a.drop()
        await asyncio.sleep(0.2)  # the server has seen the drop
        sent = [f"m{i}" for i in range(5)]
        for m in sent:
            await b.send(m)
            await expect(b, f"client2: {m}")
        back = await resume(url, a)
        assert (back.hello["recovered"], back.client, back.token) == (True, 1, a.token)
        assert await back.recv_n(5) == [f"client2: {m}" for m in sent]
        await b.send("live")
        await expect(b, "client2: live")
        assert await back.recv() == "client2: live"
        # The service never heard of the drop: no leave, no second join, nothing twice.
        assert await silent(b, 0.3) == []
        assert await silent(back.ws, 0.3) == []
        assert metric(server, "stateroom_resumes_recovered_total", 1) == 1
        assert metric(server, "stateroom_seats_held", 0) == 0
        await b.close()
        await back.ws.close()

    run(main())


def test_frames_in_flight_at_the_cut_are_sent_again(server_factory):
    """Messages the server had sent (to the socket) but the application never read are sent
    again: the resume names what was read, not what the server wrote."""
    server = server_factory(service="counter")
    url = server.ws_url("flight")

    async def main():
        a = await seat(url)
        b = await connect(url)
        for i in range(1, 6):
            await b.send("increment")
            await expect(b, f"new value: {i}")
        assert await a.recv_n(2) == ["new value: 1", "new value: 2"]
        await asyncio.sleep(0.1)  # 3..5 reached a's socket: written by the server, never read
        a.drop()
        await b.send("increment")
        await expect(b, "new value: 6")
        back = await resume(url, a)
        assert back.hello["recovered"] is True
        assert await back.recv_n(4) == [f"new value: {i}" for i in range(3, 7)]
        await b.send("increment")
        assert await back.recv() == "new value: 7"
        assert await silent(back.ws, 0.3) == []

    run(main())


def test_a_resume_with_a_stale_count_gets_only_what_it_did_not_read_even_twice(server_factory):
    """Two drops in a row: the count carries over the first resume."""
    server = server_factory(service="counter")
    url = server.ws_url("twice")

    async def main():
        a = await seat(url)
        b = await connect(url)
        values = []
        for round_ in range(2):
            a.drop()
            await asyncio.sleep(0.1)
            for _ in range(3):
                await b.send("increment")
                await b.recv()
            a = await resume(url, a)
            assert a.hello["recovered"] is True
            values += await a.recv_n(3)
        assert values == [f"new value: {i}" for i in range(1, 7)]

    run(main())


def test_the_service_hears_of_the_drop_when_the_grace_ends(server_factory):
    server = server_factory("--resume-grace", "1", service="chat")
    url = server.ws_url("grace")

    async def main():
        a, b = await seated_then_away(url)
        assert await silent(b, 0.6) == []  # still in its grace
        await expect(b, "client1 has left the chat")  # at the end of it
        late = await resume(url, a)
        assert (late.hello["recovered"], late.client) == (False, 3)
        assert late.token != a.token
        assert await late.recv() == "Welcome, client3!"
        await expect(b, "client3 has joined the chat")
        assert metric(server, "stateroom_seats_expired_total", 1) == 1

    run(main())


def test_a_seat_whose_buffer_overflows_ends_at_once(server_factory):
    server = server_factory("--resume-buffer", "1024", service="chat")
    url = server.ws_url("overflow")

    async def main():
        a, b = await seated_then_away(url)
        await asyncio.sleep(0.2)
        big = "x" * 600
        await b.send(big)
        await expect(b, f"client2: {big}")
        assert await silent(b, 0.2) == []  # 600 bytes kept: within the bound
        await b.send(big)
        await expect(b, f"client2: {big}")
        await expect(b, "client1 has left the chat")  # past 1024: the seat ended, long before its grace
        late = await resume(url, a)
        assert late.hello["recovered"] is False

    run(main())


def test_a_second_connection_resuming_a_seat_closes_the_first_with_4001(server_factory):
    server = server_factory(service="counter")
    url = server.ws_url("dup")

    async def main():
        a = await seat(url)
        b = await connect(url)
        await b.send("increment")
        await b.recv()
        assert await a.recv() == "new value: 1"
        second = await resume(url, a)
        assert (second.hello["recovered"], second.client) == (True, a.client)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(a.ws.recv(), TIMEOUT)
        assert closed.value.rcvd.code == 4001
        await b.send("increment")
        assert await second.recv() == "new value: 2"
        assert await silent(second.ws, 0.3) == []

    run(main())


def test_unknown_foreign_and_malformed_resumes_get_a_new_seat(server_factory):
    server = server_factory(service="chat")

    async def main():
        a = await seat(server.ws_url("one"))
        await a.recv()
        a.drop()
        await asyncio.sleep(0.1)
        for url, query in [
            (server.ws_url("one"), f"seat={secrets.token_urlsafe(18)}&received=1"),  # guessed
            (server.ws_url("two"), f"seat={a.token}&received=1"),  # another room's seat
            (server.ws_url("one"), f"seat={a.token}&received=oops"),  # no count
            (server.ws_url("one"), f"seat={a.token}&received=99"),  # more than it was sent
        ]:
            s = await seat(url, query)
            assert s.hello["recovered"] is False, query
            assert s.token != a.token
            assert s.client != a.client or url != server.ws_url("one")
            assert (await s.recv()).startswith("Welcome, client")
            await s.ws.close()
        # None of those touched the seat: its owner still resumes it.
        back = await resume(server.ws_url("one"), a)
        assert (back.hello["recovered"], back.client) == (True, 1)
        assert metric(server, "stateroom_resumes_refused_total", 4) == 4

    run(main())


def test_a_client_that_does_not_opt_in_sees_todays_stream(server_factory):
    server = server_factory(service="chat")

    async def main():
        plain = await connect(server.ws_url("plain"))
        await expect(plain, "Welcome, client1!")
        ignored = await connect(server.ws_url("plain") + "?received=3")
        await expect(ignored, "Welcome, client2!")
        await expect(plain, "client2 has joined the chat")
        ignored.transport.abort()
        await expect(plain, "client2 has left the chat")  # no seat: the service is told at once

    run(main())


def test_a_client_close_ends_its_seat_at_once(server_factory):
    server = server_factory(service="chat")
    url = server.ws_url("bye")

    async def main():
        b = await connect(url)
        await expect(b, "Welcome, client1!")
        a = await seat(url)
        await a.recv()
        await expect(b, "client2 has joined the chat")
        await a.ws.close(1001)
        await expect(b, "client2 has left the chat")
        late = await resume(url, a)
        assert late.hello["recovered"] is False

    run(main())


def test_grace_zero_turns_seats_off_and_says_so(server_factory):
    server = server_factory("--resume-grace", "0", service="chat")
    url = server.ws_url("off")

    async def main():
        a = await seat(url)
        assert a.hello["seat"] is None and a.hello["recovered"] is False
        assert await a.recv() == "Welcome, client1!"
        b = await connect(url)
        await expect(b, "Welcome, client2!")
        a.drop()
        await expect(b, "client1 has left the chat")

    run(main())


def test_with_tokens_only_the_same_identity_resumes(server_factory):
    server = server_factory("--jwt-secret", SECRET, service="chat")
    url = server.ws_url("auth")
    alice = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    mallory = jwt.encode({"sub": "mallory"}, SECRET, algorithm="HS256")

    async def main():
        a = await seat(f"{url}?token={alice}")
        assert await a.recv() == "Welcome, alice!"
        a.drop()
        await asyncio.sleep(0.1)
        stolen = await seat(f"{url}?token={mallory}", f"seat={a.token}&received={a.received}")
        assert stolen.hello["recovered"] is False and stolen.client != a.client
        assert await stolen.recv() == "Welcome, mallory!"
        back = await seat(f"{url}?token={alice}", f"seat={a.token}&received={a.received}", a.received)
        assert (back.hello["recovered"], back.client) == (True, a.client)
        assert await back.recv() == "mallory has joined the chat"  # sent while alice was away

    run(main())


# -- Across nodes (--store) -------------------------------------------------------------------

from test_durable import Redis, kill_once_saved, redis  # noqa: E402,F401 (a fixture)

LEASE = ["--lease-duration", "1", "--snapshot-interval", "0.2"]


async def closed_code(ws) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    return closed.value.rcvd.code if closed.value.rcvd else None


def test_a_seat_survives_a_graceful_restart_of_its_node(server_factory, redis):
    first = server_factory("--store", redis.url, service="chat")
    holder = {}

    async def before():
        a = await seat(first.ws_url("restart"))
        assert await a.recv() == "Welcome, client1!"
        b = await connect(first.ws_url("restart"))
        await expect(b, "Welcome, client2!")
        for i in range(3):
            await b.send(f"m{i}")
            await expect(b, f"client2: m{i}")
        # a reads only the join notice and m0: m1 and m2 stay unread when the node stops.
        assert await a.recv_n(2) == ["client2 has joined the chat", "client2: m0"]
        first.proc.send_signal(signal.SIGTERM)
        assert await closed_code(b) == 1012
        holder["a"] = a

    run(before())
    assert first.proc.wait(15) == 0
    first.stopped = True
    second = server_factory("--store", redis.url, service="chat")

    async def after():
        a = holder["a"]
        back = await resume(second.ws_url("restart"), a)
        assert (back.hello["recovered"], back.client) == (True, 1)
        assert await back.recv_n(2) == ["client2: m1", "client2: m2"]
        c = await connect(second.ws_url("restart"))
        assert await c.recv() == "Welcome, client3!"  # ids continue: 1 is still taken
        assert await back.recv() == "client3 has joined the chat"
        assert await silent(back.ws, 0.3) == []  # no leave or join of client1 in between

    run(after())


def test_a_seat_moves_with_its_room_to_another_node(server_factory, redis):
    a_node = server_factory("--store", redis.url, service="counter")
    b_node = server_factory("--store", redis.url, service="counter")

    async def main():
        a = await seat(a_node.ws_url("moving"))
        b = await connect(a_node.ws_url("moving"))
        for i in range(1, 4):
            await b.send("increment")
            await expect(b, f"new value: {i}")
        assert await a.recv() == "new value: 1"
        # A client of the room on the other node: the owner hands it over, its clients get 1012.
        c = await connect(b_node.ws_url("moving"), open_timeout=15)
        assert await closed_code(b) == 1012
        back = await resume(b_node.ws_url("moving"), a)
        assert (back.hello["recovered"], back.client) == (True, a.client)
        assert await back.recv_n(2) == ["new value: 2", "new value: 3"]
        await c.send("increment")
        await expect(c, "new value: 4")
        assert await back.recv() == "new value: 4"
        assert metric(b_node, "stateroom_resumes_recovered_total", 1) == 1

    run(main())


def test_after_a_crash_a_resume_is_refused_not_served_a_wrong_history(server_factory, redis):
    a_node = server_factory("--store", redis.url, *LEASE, service="counter")
    holder = {}

    async def before():
        a = await seat(a_node.ws_url("crash"))
        b = await connect(a_node.ws_url("crash"))
        for i in (1, 2):
            await b.send("increment")
            await expect(b, f"new value: {i}")
        await a.recv_n(2)
        holder["a"] = a
        await kill_once_saved(a_node)

    run(before())
    b_node = server_factory("--store", redis.url, *LEASE, service="counter")

    async def after():
        a = holder["a"]
        back = await seat(b_node.ws_url("crash"), f"seat={a.token}&received={a.received}")
        assert back.hello["recovered"] is False and back.token != a.token
        await back.ws.send("increment")
        assert await back.recv() == "new value: 3"  # the room itself is back

    run(after())


# -- Under repeated cuts ----------------------------------------------------------------------

@pytest.mark.parametrize("server_sees_it", [True, False], ids=["server sees the cut", "server does not"])
def test_repeated_cuts_under_load_lose_nothing_and_repeat_nothing(server_factory, server_sees_it):
    """A counter incremented without pause by another client; the seated reader's connection is
    cut six times, at seeded random moments (`STATEROOM_SEATS_SEED`), through a proxy that closes
    the TCP connection without a close frame (and, when the server must not see it, keeps the
    server's side open and throws away what it sends). Every value arrives once, in order."""
    import os
    import random
    from test_resume_browser import CuttableProxy

    seed = int(os.environ.get("STATEROOM_SEATS_SEED", "1"))
    rng = random.Random(seed)
    server = server_factory(service="counter")
    proxy = CuttableProxy(server.port, keep_upstream=not server_sees_it)
    via_proxy = f"ws://127.0.0.1:{proxy.port}/ws/cuts"

    async def main():
        stop = asyncio.Event()
        last = 0

        async def writer():
            nonlocal last
            b = await connect(server.ws_url("cuts"))
            while not stop.is_set():
                await b.send("increment")
                last = int((await asyncio.wait_for(b.recv(), TIMEOUT)).split()[-1])
                await asyncio.sleep(0.001)

        a = await seat(via_proxy)  # seated before the first increment
        task = asyncio.create_task(writer())
        values: list[int] = []
        for cut in range(6):
            for _ in range(rng.randint(3, 30)):
                values.append(int((await a.recv()).split()[-1]))
            proxy.cut()
            a.drop()
            await asyncio.sleep(rng.uniform(0, 0.3))
            proxy.restore()
            a = await resume(via_proxy, a)
            assert a.hello["recovered"] is True, f"cut {cut} (seed {seed}): {a.hello}"
        stop.set()
        await task
        while not values or values[-1] < last:
            values.append(int((await a.recv()).split()[-1]))
        assert values == list(range(1, last + 1)), f"seed {seed}"
        assert await silent(a.ws, 0.3) == []

    try:
        run(main())
    finally:
        proxy.stop()
