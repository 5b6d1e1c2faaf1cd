"""Fencing: a node that wakes up late (paused with SIGSTOP past its lease, cut off from Redis,
asked to hand a room over while frozen) never serves or saves a stale copy of a room.

Real ``redis-server`` and server processes; clients are the third-party ``websockets`` library.
Leases are 1 s here, so every scenario outlives one.
"""
import asyncio
import os
import signal
import socket
import threading
import time

import pytest
import websockets

from test_durable import Redis, expect, free_port, increment, run, swift_counter, wait_metric  # noqa: F401 (a fixture)

LEASE = ["--lease-duration", "1", "--snapshot-interval", "0.2"]


@pytest.fixture
def redis():
    r = Redis()
    yield r
    r.kill()


class Frozen:
    """SIGSTOP a server now; SIGCONT when the block ends (whatever happens inside)."""

    def __init__(self, server):
        self.pid = server.proc.pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)
        return False


async def closed_with(ws, code: int, timeout: float = 10) -> list[str]:
    """Reads until the connection closes; asserts the close code; returns what came before."""
    seen = []
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        while True:
            seen.append(await asyncio.wait_for(ws.recv(), timeout))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code, (closed.value, seen)
    return seen


async def counted(ws, first: int, last: int, label: str = "") -> None:
    for i in range(first, last + 1):
        await ws.send("increment")
        await expect(ws, f"new value: {i}")


def nodes(server_factory, redis_url: str, *extra: str):
    return [server_factory("--store", redis_url, *LEASE, *extra, service="counter") for _ in range(2)]


@pytest.mark.parametrize("new_owner", ["holds the lease", "hibernated the room"])
def test_an_owner_paused_past_its_lease_serves_nothing_stale_and_overwrites_nothing(server_factory, redis, new_owner):
    a, b = nodes(server_factory, redis.url)

    async def scenario():
        x = await websockets.connect(a.ws_url("frozen"))
        await counted(x, 1, 3)
        with Frozen(a):
            await asyncio.sleep(1.6)  # past a's 1 s lease
            y = await websockets.connect(b.ws_url("frozen"), open_timeout=15)
            await counted(y, 4, 7)  # b took the room over from the store: 3 went on
            if new_owner == "hibernated the room":
                await y.close()
                await asyncio.to_thread(wait_metric, b, "stateroom_rooms_hibernated_total", lambda v: v >= 1)
        # a is awake; its old client asks: it must not be answered from a's copy (4 or 5).
        await x.send("increment")
        stale = await closed_with(x, 1012)
        assert stale == [], f"answers from a stale copy: {stale}"
        if new_owner == "holds the lease":
            await counted(y, 8, 8)
            await y.close()
        # Nothing b counted is gone, wherever the room is opened next.
        async with websockets.connect(a.ws_url("frozen"), open_timeout=15) as z:
            await counted(z, 9 if new_owner == "holds the lease" else 8, 10)

    run(scenario())
    wait_metric(a, "stateroom_rooms_fenced_total", lambda v: v >= 1)
    wait_metric(a, "stateroom_lease_revalidations_total", lambda v: v >= 1)


def test_a_paused_wasm_owner_is_fenced_like_a_native_one(server_factory, redis, swift_counter):
    # A Swift-built counter module: its rooms' state is the guest's memory image.
    a, b = (server_factory("--store", redis.url, *LEASE, "--wasm", str(swift_counter)) for _ in range(2))

    async def scenario():
        x = await websockets.connect(a.ws_url("guest"))
        await counted(x, 1, 3)
        with Frozen(a):
            await asyncio.sleep(1.6)
            async with websockets.connect(b.ws_url("guest"), open_timeout=15) as y:
                await counted(y, 4, 6)
            await asyncio.to_thread(wait_metric, b, "stateroom_rooms_hibernated_total", lambda v: v >= 1)
        await x.send("increment")
        assert await closed_with(x, 1012) == []
        async with websockets.connect(a.ws_url("guest"), open_timeout=15) as z:
            await counted(z, 7, 7)

    run(scenario())
    wait_metric(a, "stateroom_rooms_fenced_total", lambda v: v >= 1)


def test_an_owner_paused_while_asked_to_hand_over_cannot_save_when_it_wakes(server_factory, redis):
    a, b = nodes(server_factory, redis.url)

    async def scenario():
        x = await websockets.connect(a.ws_url("asked"))
        await counted(x, 1, 3)
        with Frozen(a):
            # b asks a (frozen) to hand the room over, then takes it when a's lease runs out.
            y = await websockets.connect(b.ws_url("asked"), open_timeout=15)
            await counted(y, 4, 5)
        # a wakes with the hand-over request waiting: its save is refused, its client gets 1012.
        assert await closed_with(x, 1012) == []
        await counted(y, 6, 6)
        await y.close()
        async with websockets.connect(b.ws_url("asked"), open_timeout=15) as z:
            await counted(z, 7, 7)

    run(scenario())
    wait_metric(a, "stateroom_rooms_fenced_total", lambda v: v >= 1)
    assert "save refused" in a.stderr_text() or "no longer this node's" in a.stderr_text()


class CuttableProxy:
    """A TCP relay on 127.0.0.1 in front of one port that can be cut (every connection closed,
    new ones refused) and restored: a node's link to Redis, broken on command."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.stopped = False
        self.restore()

    def restore(self) -> None:
        with self.lock:
            self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
            listener = self.listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            if self.listener:
                try:  # wakes the thread blocked in accept() (a close alone would not)
                    self.listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.listener.close()
                self.listener = None
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.open.clear()

    def stop(self) -> None:
        self.stopped = True
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopped:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.mark.parametrize("meanwhile", ["another node takes the room", "nobody takes the room"])
def test_a_node_cut_off_from_redis_past_its_lease_holds_its_answers(server_factory, redis, meanwhile):
    proxy = CuttableProxy(redis.port)
    try:
        a = server_factory("--store", f"redis://127.0.0.1:{proxy.port}", *LEASE, service="counter")
        b = server_factory("--store", redis.url, *LEASE, service="counter")

        async def scenario():
            x = await websockets.connect(a.ws_url("cut"))
            await counted(x, 1, 2)
            proxy.cut()
            for _ in range(3):  # its client keeps sending: nothing may be answered unstored
                await x.send("increment")
            await asyncio.sleep(1.6)  # past a's lease
            if meanwhile == "another node takes the room":
                async with websockets.connect(b.ws_url("cut"), open_timeout=15) as y:
                    await counted(y, 3, 4)  # from the stored 2: a's unstored increments never counted
                    proxy.restore()
                    # a's save and renewal are refused: x gets 1012 and no answer from a's copy.
                    assert await closed_with(x, 1012, timeout=15) == []
                    await counted(y, 5, 5)
            else:
                proxy.restore()
                # Nobody took the room: a keeps it, and every increment is answered, in order.
                for i in (3, 4, 5):
                    await expect(x, f"new value: {i}", timeout=15)
                await counted(x, 6, 6)
                await x.close()
                await asyncio.to_thread(wait_metric, a, "stateroom_rooms_hibernated_total", lambda v: v >= 1)
                await increment(b.ws_url("cut"), 1, 7)

        run(scenario())
        if meanwhile == "another node takes the room":
            wait_metric(a, "stateroom_rooms_fenced_total", lambda v: v >= 1)
        else:
            assert a.metric("stateroom_rooms_fenced_total") == 0
    finally:
        proxy.stop()


def test_a_room_waiting_for_its_lease_holds_at_most_a_megabyte_and_says_1013(server_factory, redis):
    proxy = CuttableProxy(redis.port)
    try:
        # Messages of up to 64 KiB: the room holds at most 1 MiB of them while it waits.
        a = server_factory("--store", f"redis://127.0.0.1:{proxy.port}", *LEASE, "--max-message-size", "65536",
                           service="counter")

        async def scenario():
            async with websockets.connect(a.ws_url("flood"), max_size=None) as x, \
                       websockets.connect(a.ws_url("flood")) as quiet:
                await counted(x, 1, 1)
                await expect(quiet, "new value: 1")
                proxy.cut()
                await asyncio.sleep(1.2)  # past the lease: the room's callbacks wait
                chunk = "x" * 60_000
                with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                    for _ in range(40):  # 2.4 MB, more than the room holds while it waits
                        await x.send(chunk)
                    await asyncio.wait_for(x.recv(), 10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
                # The room and its other client go on once the store is back.
                proxy.restore()
                await quiet.send("increment")
                await expect(quiet, "new value: 2", timeout=15)

        run(scenario())
        a.assert_alive()
    finally:
        proxy.stop()
