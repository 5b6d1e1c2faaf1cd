"""Durable rooms (--store redis://...): rooms saved to a real redis-server and restored.

Each test starts its own ``redis-server`` on a free loopback port (nothing written to disk) and
real server processes; clients are the third-party ``websockets`` library.
"""
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import websockets

from conftest import server_binary

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A private redis-server on 127.0.0.1. With ``directory``, every write is appended to a file
    there and fsynced before Redis answers (``appendfsync always``), so a restart, even after
    SIGKILL, finds everything it acknowledged; without, it keeps nothing."""

    def __init__(self, port: int | None = None, directory: Path | None = None):
        self.port = port or free_port()
        self.directory = directory
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        persistence = (["--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always"]
                       if self.directory else ["--appendonly", "no"])
        self.proc = subprocess.Popen([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      *persistence, "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def cli(self, *args: str) -> str:
        return subprocess.run([REDIS_CLI, "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()


@pytest.fixture
def server_binary_path():
    binary = server_binary()
    if not binary.exists():
        pytest.fail(f"server binary not found at {binary}")
    return binary


@pytest.fixture
def redis():
    if not shutil.which("redis-server") and not shutil.which(REDIS):
        pytest.fail("redis-server is not installed (make's set-up installs it)")
    r = Redis()
    yield r
    r.kill()


@pytest.fixture
def persistent_redis(tmp_path):
    """A redis-server that keeps what it acknowledged across a restart (append-only file)."""
    r = Redis(directory=tmp_path)
    yield r
    r.kill()


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def expect(ws, text: str, timeout: float = 10) -> None:
    got = await asyncio.wait_for(ws.recv(), timeout)
    assert got == text


async def increment(url: str, times: int, last: int) -> None:
    async with websockets.connect(url) as ws:
        for i in range(times):
            await ws.send("increment")
            await expect(ws, f"new value: {last - times + i + 1}")


async def kill_once_saved(server) -> None:
    """SIGKILL `server` once an interval save made after this call has gone through (so it holds
    everything sent before the call; there is no shutdown save)."""
    saved = server.metric("stateroom_room_snapshots_saved_total")
    deadline = time.monotonic() + 10
    while server.metric("stateroom_room_snapshots_saved_total") < saved + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    server.proc.kill()
    server.proc.wait(10)
    server.stopped = True  # killed on purpose


def wait_metric(server, name: str, predicate, timeout: float = 10) -> float:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = server.metric(name)
        if value is not None and predicate(value):
            return value
        time.sleep(0.05)
    raise AssertionError(f"{name} = {value} after {timeout} s")


def test_a_room_that_empties_is_saved_dropped_and_restored(server_factory, redis):
    server = server_factory("--store", redis.url, service="counter", shards=2)
    run(increment(server.ws_url("hib"), 3, 3))
    wait_metric(server, "stateroom_rooms_hibernated_total", lambda v: v >= 1)
    wait_metric(server, "stateroom_rooms_active", lambda v: v == 0)
    assert redis.cli("EXISTS", "stateroom:room:hib") == "1"
    run(increment(server.ws_url("hib"), 2, 5))  # restored: the count goes on
    wait_metric(server, "stateroom_rooms_restored_total", lambda v: v >= 1)
    # Another room is independent and starts at zero.
    run(increment(server.ws_url("other"), 1, 1))


def test_a_restart_keeps_every_room_and_clients_get_1012(server_factory, redis):
    first = server_factory("--store", redis.url, service="counter")

    async def before():
        ws = await websockets.connect(first.ws_url("r"))
        for i in range(1, 5):
            await ws.send("increment")
            await expect(ws, f"new value: {i}")
        return ws

    async def scenario():
        ws = await before()
        first.proc.send_signal(signal.SIGTERM)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012

    run(scenario())
    assert first.proc.wait(15) == 0
    first.stopped = True  # stopped by the test
    second = server_factory("--store", redis.url, service="counter")
    run(increment(second.ws_url("r"), 1, 5))


def test_interval_snapshots_bound_what_a_crash_loses(server_factory, redis):
    server = server_factory("--store", redis.url, "--snapshot-interval", "0.2", service="counter")

    async def scenario():
        async with websockets.connect(server.ws_url("crash")) as ws:
            for i in range(1, 4):
                await ws.send("increment")
                await expect(ws, f"new value: {i}")
            await kill_once_saved(server)  # saved while the client is still connected

    run(scenario())
    again = server_factory("--store", redis.url, service="counter")
    run(increment(again.ws_url("crash"), 1, 4))


def test_redis_down_at_start_is_a_clear_error(server_binary_path, redis):
    port = free_port()  # nothing listens there
    proc = subprocess.run([str(server_binary_path), "--host", "127.0.0.1", "--port", "0",
                           "--store", f"redis://127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert f"redis://127.0.0.1:{port}/0: cannot connect" in proc.stderr


def test_a_bad_store_url_is_refused(server_binary_path):
    proc = subprocess.run([str(server_binary_path), "--port", "0", "--store", "http://nope"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "--store" in proc.stderr and "redis://HOST:PORT[/DB]" in proc.stderr


def test_losing_redis_holds_answers_until_the_state_is_stored_and_loses_nothing(server_factory, persistent_redis):
    redis = persistent_redis
    server = server_factory("--store", redis.url, "--snapshot-interval", "0.2", service="counter")

    async def while_connected():
        async with websockets.connect(server.ws_url("keep")) as ws:
            for i in (1, 2):
                await ws.send("increment")
                await expect(ws, f"new value: {i}")
            redis.kill()
            # The room takes the message, but its answer waits until the new value is stored.
            await ws.send("increment")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 1.5)
            # A room the store cannot be asked about is refused with 503, not started blank.
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                async with websockets.connect(server.ws_url("brand-new")):
                    pass
            assert refused.value.response.status_code == 503
            # Redis comes back with what it acknowledged: the answer goes out, nothing lost.
            redis.start()
            await expect(ws, "new value: 3", timeout=15)
            await ws.send("increment")
            await expect(ws, "new value: 4")

    run(while_connected())
    wait_metric(server, "stateroom_store_errors_total", lambda v: v >= 1)
    wait_metric(server, "stateroom_frames_gated_total", lambda v: v >= 4)
    assert "its clients' answers wait, retrying" in server.stderr_text()
    wait_metric(server, "stateroom_rooms_hibernated_total", lambda v: v >= 1)
    server.stop()
    again = server_factory("--store", redis.url, service="counter")
    run(increment(again.ws_url("keep"), 1, 5))

def test_a_room_emptied_while_redis_is_gone_is_held_and_stored_when_it_returns(server_factory, persistent_redis):
    redis = persistent_redis
    server = server_factory("--store", redis.url, "--snapshot-interval", "0.2", service="chat")

    async def scenario():
        async with websockets.connect(server.ws_url("held")) as ws:
            await expect(ws, "Welcome, client1!")
            redis.kill()
        # The room empties with Redis gone: its last state (client1 left) cannot be stored.
    run(scenario())
    wait_metric(server, "stateroom_room_snapshots_unsaved", lambda v: v == 1)
    redis.start()
    wait_metric(server, "stateroom_room_snapshots_unsaved", lambda v: v == 0, timeout=15)
    assert redis.cli("EXISTS", "stateroom:room:held") == "1"

    async def back():
        async with websockets.connect(server.ws_url("held")) as ws:
            await expect(ws, "Welcome, client2!")  # client ids go on: the room was restored
    run(back())

# -- several nodes -------------------------------------------------------------------------

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


class HAProxy:
    """``haproxy -db -f deploy/haproxy.cfg`` in front of two nodes, on a free loopback port."""

    def __init__(self, node1: int, node2: int):
        self.port = free_port()
        env = dict(os.environ, STATEROOM_FRONT=f"127.0.0.1:{self.port}",
                   STATEROOM_NODE1=f"127.0.0.1:{node1}", STATEROOM_NODE2=f"127.0.0.1:{node2}")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(HAPROXY_CFG)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"haproxy exited: {self.proc.stderr.read().decode()}")
                time.sleep(0.02)
        # Both nodes up in HAProxy's health checks (rise 1, every 500 ms).
        time.sleep(1.2)

    def url(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{room}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def test_two_nodes_behind_haproxy_clients_of_a_room_meet(server_factory, redis):
    nodes = [server_factory("--store", redis.url, service="counter") for _ in range(2)]
    proxy = HAProxy(nodes[0].port, nodes[1].port)
    try:
        rooms = [f"meet{i}" for i in range(12)]

        async def room(name: str):
            async with websockets.connect(proxy.url(name)) as a, websockets.connect(proxy.url(name)) as b:
                for i in range(1, 4):
                    await (a if i % 2 else b).send("increment")
                    await expect(a, f"new value: {i}")
                    await expect(b, f"new value: {i}")

        async def all_rooms():
            await asyncio.gather(*(room(r) for r in rooms))

        run(all_rooms())
        deadline = time.monotonic() + 5  # counters are published within a loop turn or so
        while sum(n.metric("stateroom_rooms_created_total") for n in nodes) < len(rooms) and time.monotonic() < deadline:
            time.sleep(0.05)
        created = [n.metric("stateroom_rooms_created_total") for n in nodes]
        assert sum(created) == len(rooms), created
        assert all(c > 0 for c in created), f"rooms spread over both nodes: {created}"
    finally:
        proxy.stop()


def test_a_client_reaching_the_other_node_moves_the_room(server_factory, redis):
    a, b = (server_factory("--store", redis.url, service="counter") for _ in range(2))

    async def scenario():
        old = await websockets.connect(a.ws_url("moving"))
        for i in range(1, 4):
            await old.send("increment")
            await expect(old, f"new value: {i}")
        # A client of the same room on the other node: the owner hands the room over.
        async with websockets.connect(b.ws_url("moving"), open_timeout=15) as new:
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(old.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            await new.send("increment")
            await expect(new, "new value: 4")

    run(scenario())
    wait_metric(b, "stateroom_rooms_restored_total", lambda v: v == 1)


def test_after_the_owner_is_killed_the_room_comes_back_elsewhere_within_the_lease(server_factory, redis):
    lease = ["--lease-duration", "1", "--snapshot-interval", "0.2"]
    a = server_factory("--store", redis.url, *lease, service="counter")
    b = server_factory("--store", redis.url, *lease, service="counter")

    async def before():
        async with websockets.connect(a.ws_url("orphan")) as ws:
            for i in (1, 2):
                await ws.send("increment")
                await expect(ws, f"new value: {i}")
            await kill_once_saved(a)

    run(before())
    start = time.monotonic()
    run(increment(b.ws_url("orphan"), 1, 3))
    assert time.monotonic() - start < 1 + 2.5, "back within the lease (1 s) and a retry"


def test_both_nodes_stopped_and_started_again_keep_every_room(server_factory, redis):
    rooms = [f"both{i}" for i in range(6)]

    def serve_then_stop(expected_before: int):
        nodes = [server_factory("--store", redis.url, service="counter") for _ in range(2)]
        proxy = HAProxy(nodes[0].port, nodes[1].port)
        try:
            async def scenario():
                clients = [await websockets.connect(proxy.url(r)) for r in rooms]
                for ws in clients:
                    await ws.send("increment")
                    await expect(ws, f"new value: {expected_before + 1}")
                # Still connected: SIGTERM saves every room, then closes its clients with 1012.
                for n in nodes:
                    n.proc.send_signal(signal.SIGTERM)
                for ws in clients:
                    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                        await asyncio.wait_for(ws.recv(), 15)
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012

            run(scenario())
        finally:
            proxy.stop()
        for n in nodes:
            assert n.proc.wait(15) == 0
            n.stopped = True

    serve_then_stop(0)
    serve_then_stop(1)
    serve_then_stop(2)


# -- wasm rooms: the guest's memory is the snapshot ------------------------------------------

@pytest.fixture(scope="module")
def swift_counter(tmp_path_factory) -> Path:
    """Examples/SharedCounter built with the Swift guest SDK (release) in a folder of its own."""
    cli = Path(__file__).resolve().parents[2] / ".build" / "release" / "stateroom"
    if not cli.exists():
        pytest.fail(f"stateroom CLI not found at {cli}")
    folder = tmp_path_factory.mktemp("guest") / "SharedCounter"
    shutil.copytree(Path(__file__).resolve().parents[2] / "Examples" / "SharedCounter", folder,
                    ignore=shutil.ignore_patterns("dist", ".stateroom"))
    proc = subprocess.run([str(cli), "build", "--release", "--path", str(folder)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return folder / "dist" / "counter.wasm"


def test_a_swift_wasm_room_hibernates_restarts_and_moves_with_its_memory(server_factory, redis, swift_counter):
    wasm = ["--wasm", str(swift_counter), "--store", redis.url]
    a = server_factory(*wasm, shards=2)
    run(increment(a.ws_url("guest"), 3, 3))
    wait_metric(a, "stateroom_rooms_hibernated_total", lambda v: v >= 1)
    assert redis.cli("EXISTS", "stateroom:room:guest") == "1"
    run(increment(a.ws_url("guest"), 2, 5))  # woken from its memory image
    wait_metric(a, "stateroom_rooms_restored_total", lambda v: v >= 1)

    # A second node takes the room over from a client that is still connected to the first.
    b = server_factory(*wasm)

    async def move():
        old = await websockets.connect(a.ws_url("guest"))
        await old.send("increment")
        await expect(old, "new value: 6")
        async with websockets.connect(b.ws_url("guest"), open_timeout=15) as new:
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(old.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            await new.send("increment")
            await expect(new, "new value: 7")

    run(move())
    # Both nodes stop; a new one restores the room from Redis.
    assert a.stop() is None and b.stop() is None
    c = server_factory(*wasm)
    run(increment(c.ws_url("guest"), 1, 8))


def test_a_snapshot_of_another_service_is_reported_and_the_room_starts_afresh(server_factory, redis):
    counter = server_factory("--store", redis.url, service="counter")
    run(increment(counter.ws_url("redeployed"), 2, 2))
    assert counter.stop() is None
    # The same store, another service: the stored counter cannot become a chat.
    chat = server_factory("--store", redis.url, service="chat")

    async def join(n: int):
        async with websockets.connect(chat.ws_url("redeployed")) as ws:
            await expect(ws, f"Welcome, client{n}!")

    run(join(1))
    wait_metric(chat, "stateroom_store_errors_total", lambda v: v >= 1)
    assert "cannot restore its snapshot (stateroom.counter/1)" in chat.stderr_text()
    # Its next save replaces the unusable snapshot: the room is a chat from now on (restored,
    # so client ids go on).
    wait_metric(chat, "stateroom_rooms_hibernated_total", lambda v: v >= 1)
    run(join(2))
    wait_metric(chat, "stateroom_rooms_restored_total", lambda v: v == 1)
