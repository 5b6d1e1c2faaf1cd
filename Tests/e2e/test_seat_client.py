"""The resume protocol (docs/seats.md) through ``seatclient.SeatClient``, the spec's raw client:
a seat dropped without a close handshake is resumed with the same ClientId and exactly the
messages it missed, in order, then the live stream."""

from __future__ import annotations

from seatclient import SeatClient
from wsraw import expect, run, ws_connect


def test_a_dropped_seat_resumes_with_what_it_missed(server_factory):
    server = server_factory(service="counter")

    async def scenario():
        a = SeatClient(server.ws_url("seats"))
        seat = await a.connect()
        assert seat["recovered"] is False and seat["seat"] and isinstance(seat["client"], int), seat
        assert seat["grace"] == 30, seat
        async with ws_connect(server.ws_url("seats")) as b:  # no seat: the plain stream
            for i in (1, 2):
                await b.send("increment")
                await expect(b, f"new value: {i}")
                assert await a.recv() == f"new value: {i}"
            assert a.received == 2
            a.drop()  # no close frame: the seat is kept
            for i in (3, 4, 5):  # the server may not have noticed the drop yet
                await b.send("increment")
                await expect(b, f"new value: {i}")
            token, client = a.token, a.client
            resumed = await a.resume()
            assert resumed["recovered"] is True, resumed
            assert (a.token, a.client) == (token, client), resumed
            assert [await a.recv() for _ in range(3)] == ["new value: 3", "new value: 4", "new value: 5"]
            await b.send("increment")  # the live stream follows the replay, nothing twice
            await expect(b, "new value: 6")
            assert await a.recv() == "new value: 6"
            assert a.received == 6
            await a.close()

    run(scenario())
