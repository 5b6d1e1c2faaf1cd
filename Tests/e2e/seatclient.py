"""A client of the resume protocol (docs/seats.md), written from the spec alone on the
``websockets`` asyncio client: opt in, read the seat message, count, resume."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

from wsraw import ws_connect


class SeatClient:
    """``await c.connect()`` takes a new seat; after ``c.drop()`` (no close handshake: the seat is
    kept), ``await c.resume()`` asks for it back. ``recv`` counts every message but the seat's."""

    def __init__(self, url: str, **connect_kw):
        self.url = url
        self.kw = connect_kw              # for ws_connect (websockets' connect, test defaults)
        self.ws = None
        self.token: str | None = None     # the seat's token (None: the server keeps no seats)
        self.client: int | None = None    # the seat's ClientId
        self.recovered = False            # whether the last connection resumed the seat
        self.received = 0                 # service messages received on the seat
        self.seat_message: dict | None = None

    async def connect(self, timeout: float = 5.0) -> dict:
        self.token = None
        return await self._open("seat=new", timeout)

    async def resume(self, timeout: float = 5.0) -> dict:
        if self.token is None:
            return await self.connect(timeout)
        return await self._open(f"seat={quote(self.token, safe='')}&received={self.received}", timeout)

    async def _open(self, query: str, timeout: float) -> dict:
        self.ws = await ws_connect(self.url + ("&" if "?" in self.url else "?") + query, **self.kw)
        seat = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        assert seat.get("type") == "seat", f"first message is not a seat message: {seat!r}"
        self.seat_message, self.recovered = seat, seat["recovered"] is True
        self.token, self.client = seat["seat"], seat["client"]
        if not self.recovered:
            self.received = 0
        return seat

    async def recv(self, timeout: float = 5.0):
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        self.received += 1
        return message

    async def send(self, message) -> None:
        await self.ws.send(message)

    def drop(self) -> None:
        """Drops the connection without a close frame, as a network failure would."""
        self.ws.transport.abort()

    async def close(self, code: int = 1000) -> None:
        """A close handshake: the seat ends."""
        await self.ws.close(code)
