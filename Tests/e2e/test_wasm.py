"""WebAssembly rooms end to end: ``stateroom-server --wasm PATH`` with the WasmHost fixtures.

The fixtures are the WebAssembly text files of ``Tests/WasmHostTests/Fixtures``, converted with
``wat2wasm`` (Debian ``wabt``) into a temporary directory, and ``rust_shape``, a module with the
shape of a Rust SDK build (``Fixtures/rust_shape``, built by the toolchain's clang and wasm-ld).
Clients are the third-party ``websockets`` asyncio client.

Covered: the seed counter scenario served by a wasm counter; timers (fire, re-arm, replaced);
``Client`` and ``EveryoneExcept`` recipients; binary round trip byte for byte; every faulty
fixture (traps, runaway loops, bad ``stateroom_send`` arguments, a ``stateroom_malloc`` that
returns 0 or a block past the end of memory) closes its room's clients with 1011 while a second
room on the same (single) shard keeps getting every one of its messages, in order; the next
connect to a failed room starts afresh; modules that cannot serve are refused at start-up with an
error naming the fault. The ``loop`` fixture also serves to keep a shard busy: its send-coalescing
window widens, then narrows once idle, and stays put when fixed or off.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, server_binary
import wsraw
from wsraw import close_code, expect, payload_with_all_bytes, recv, run, silent, ws_connect

FIXTURES = REPO_ROOT / "Tests" / "WasmHostTests" / "Fixtures"


@pytest.fixture(scope="session")
def wasm_dir(tmp_path_factory) -> Path:
    tool = shutil.which("wat2wasm")
    if tool is None:
        pytest.skip("wat2wasm (Debian package wabt) is not installed")
    out = tmp_path_factory.mktemp("wasm")
    for wat in sorted(FIXTURES.glob("*.wat")):
        subprocess.run([tool, str(wat), "-o", str(out / (wat.stem + ".wasm"))], check=True)
    # Shaped like a build of Stateroom's Rust SDK: every export wrapped by wasm-ld in wasi-libc's
    # constructors and destructors (Fixtures/rust_shape/rust_shape.c).
    subprocess.run(["sh", str(FIXTURES / "rust_shape" / "build.sh"), str(out / "rust_shape.wasm")], check=True)
    return out


@pytest.fixture
def wasm_server(server_factory, wasm_dir):
    """``wasm_server("counter", *extra)``: a one-shard server serving that fixture."""
    def start(name: str, *extra: str):
        return server_factory("--wasm", str(wasm_dir / f"{name}.wasm"), *extra, shards=1)
    return start


# --------------------------------------------------------------------------------------------
# healthy modules
# --------------------------------------------------------------------------------------------


def test_wasm_counter_seed_scenario(wasm_server):
    run(wsraw.seed_counter_scenario(wasm_server("counter")))


def test_rust_shaped_module_counts_and_relays(wasm_server):
    """A module shaped like a Rust SDK build (each export wrapped in wasi-libc's constructors and
    destructors by wasm-ld): its counter and relay, and its stdout line in the server's log."""
    server = wasm_server("rust_shape")

    async def main():
        async with ws_connect(server.ws_url()) as a, ws_connect(server.ws_url()) as b:
            for want in ("new value: 1", "new value: 2"):
                await a.send("increment")
                await expect(a, want)
                await expect(b, want)
            await b.send("decrement")
            await expect(a, "new value: 1")
            await expect(b, "new value: 1")
            await a.send("log")
            await expect(a, "logged")
            await b.send("hello")
            await expect(a, "hello")
            await expect(b, "hello")
        async with ws_connect(server.ws_url("other")) as c:  # another room, its own instance
            await c.send("increment")
            await expect(c, "new value: 1")
    run(main())
    assert "hello from the rust-shaped guest" in server.stderr_text()
    server.assert_alive()


def test_wasm_timer_fires_rearms_and_is_replaced(wasm_server):
    server = wasm_server("timer")

    async def main():
        async with ws_connect(server.ws_url("clock")) as ws:
            # Init set a 100 ms timer; each tick re-arms it.
            await expect(ws, "tick 1", timeout=5)
            await expect(ws, "tick 2", timeout=5)
            # `slow` replaces the pending timer with a 60 s one: the ticks stop.
            await ws.send("slow")
            await asyncio.sleep(0.3)
            late = []
            while True:  # a tick already on the wire when `slow` arrived
                try:
                    late.append(await asyncio.wait_for(ws.recv(), 0.05))
                except asyncio.TimeoutError:
                    break
            assert len(late) <= 1, late
            await silent(ws, 0.6)
            # `fast` replaces it with a 0 ms timer: the next tick comes at once, then every 100 ms.
            n = 3 + len(late)
            await ws.send("fast")
            await expect(ws, f"tick {n}", timeout=2)
            await expect(ws, f"tick {n + 1}", timeout=2)
    run(main())


def test_wasm_client_and_everyone_except_recipients(wasm_server):
    server = wasm_server("recipients")
    url = server.ws_url("r")

    async def main():
        async with ws_connect(url) as a:
            await expect(a, "welcome")  # Client(a) on connect
            async with ws_connect(url) as b:
                await expect(b, "welcome")
                async with ws_connect(url) as c:
                    await expect(c, "welcome")
                    await silent(a, 0.2)  # nobody else got c's welcome
                    # text -> Client(sender): only a
                    await a.send("just me")
                    await expect(a, "just me")
                    # binary -> EveryoneExcept(sender): a and c, not b
                    await b.send(b"\x00\x01\xff")
                    await expect(a, b"\x00\x01\xff")
                    await expect(c, b"\x00\x01\xff")
                    await silent(b, 0.3)
                    await silent(c, 0.1)
    run(main())


@pytest.mark.parametrize("module", ["relay", "rust_shape"])
def test_wasm_relay_binary_round_trip_byte_for_byte(wasm_server, module):
    server = wasm_server(module)
    url = server.ws_url("bin")

    async def main():
        async with ws_connect(url) as a, ws_connect(url) as b:
            for size in (0, 1, 125, 126, 65535, 65536, 200_000):
                data = payload_with_all_bytes(size)
                await a.send(data)
                got_a = await recv(a)
                got_b = await recv(b)
                assert isinstance(got_a, bytes) and got_a == data, f"size {size}"
                assert got_b == data, f"size {size}"
            text = "héllo wörld ✓ 🎉"
            await b.send(text)
            await expect(a, text)
            await expect(b, text)
    run(main())


# --------------------------------------------------------------------------------------------
# faulty modules: 1011 for their room, no gap for the other room on the same shard
# --------------------------------------------------------------------------------------------

FAULTS = {
    "trap_unreachable": ("trap", "boom"),
    "trap_stack_exhausted": ("trap", "recurse"),
    "infinite_loop": ("loop", "spin"),
    "memory_growth": ("grow", "oom"),
    "proc_exit": ("wasi", "exit"),
    "rust_shaped_panic": ("rust_shape", "panic"),
    "send_out_of_range": ("bad_send", "range"),
    "send_garbage_tag": ("bad_send", "tag"),
    "send_invalid_utf8": ("bad_send", "utf8"),
    "send_length_past_end": ("bad_send", "length"),
    "malloc_returns_null": ("malloc_fault", "null"),
    "malloc_block_past_the_end": ("malloc_fault", "past"),
}

#: what the server must log for a fault (its error line names the export at fault)
FAULT_LOGS = {
    "malloc_returns_null": "stateroom_malloc(512) returned 0",
    "malloc_block_past_the_end": "stateroom_malloc(512) returned 131070, outside guest memory",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_wasm_fault_closes_room_1011_and_spares_the_other_room(wasm_server, fault):
    module, trigger = FAULTS[fault]
    server = wasm_server(module)

    async def main():
        async with ws_connect(server.ws_url("healthy")) as h1, \
                ws_connect(server.ws_url("healthy")) as h2, \
                ws_connect(server.ws_url("victim")) as v1, \
                ws_connect(server.ws_url("victim")) as v2:
            sent = 0
            received = {id(h1): [], id(h2): []}

            async def sender():
                nonlocal sent
                for i in range(60):
                    await h1.send(f"seq {i}")
                    sent += 1
                    await asyncio.sleep(0.01)

            async def reader(ws):
                while len(received[id(ws)]) < 60:
                    received[id(ws)].append(await recv(ws, 10))

            async def fault():
                await asyncio.sleep(0.15)
                await v1.send(trigger)
                if module == "malloc_fault":
                    # The host keeps one event buffer per room (256 bytes from Init on): only an
                    # event that does not fit calls stateroom_malloc again, and that one fails.
                    await v1.send("z" * 300)
                return await close_code(v1), await close_code(v2)

            _, _, _, codes = await asyncio.gather(sender(), reader(h1), reader(h2), fault())
            assert codes == (1011, 1011), f"{fault}: victim close codes {codes}"
            want = [f"seq {i}" for i in range(60)]
            assert received[id(h1)] == want
            assert received[id(h2)] == want

        # the failed room starts afresh on the next connect
        async with ws_connect(server.ws_url("victim")) as again:
            await again.send("hello again")
            await expect(again, "hello again")
    run(main())
    server.assert_alive()
    if fault in FAULT_LOGS:
        assert FAULT_LOGS[fault] in server.stderr_text(), server.stderr_text()


# --------------------------------------------------------------------------------------------
# a busy shard widens its send-coalescing window, and narrows it again once idle
# --------------------------------------------------------------------------------------------

WINDOW = "stateroom_coalesce_window_microseconds"


def _spin_rooms(server, count: int) -> None:
    """Keeps the shard's thread on the CPU: each `spin` runs until the callback budget ends it
    (tens of milliseconds at least), then that room closes with 1011."""
    async def main():
        for i in range(count):
            async with ws_connect(server.ws_url(f"spin-{i}")) as ws:
                await ws.send("spin")
                assert await close_code(ws) == 1011
    run(main())


def _window(server) -> float:
    value = server.metric(WINDOW)
    assert value is not None, f"/metrics has no {WINDOW}"
    return value


def test_busy_shard_widens_the_coalescing_window_and_narrows_it_when_idle(wasm_server):
    server = wasm_server("loop", "--coalesce-ms", "2", "--coalesce-max-ms", "40")
    assert _window(server) == 2000
    _spin_rooms(server, 4)
    peak = 0.0
    deadline = time.monotonic() + 2
    while peak <= 2000 and time.monotonic() < deadline:  # the gauge is published within 1 ms
        peak = max(peak, _window(server))
        time.sleep(0.01)
    assert 2000 < peak <= 40_000, f"window after a busy spell: {peak} µs"
    # Idle, it shrinks by a quarter per load measurement (every 50 ms), back to the base, without
    # anything waking the loop: wait without asking, then look.
    time.sleep(1.5)
    assert _window(server) == 2000
    # The busy gauge shows idle too (these /metrics requests cost the shard a little).
    assert server.metric("stateroom_shard_busy_permille") < 50
    server.assert_alive()


@pytest.mark.parametrize("base_ms,max_ms,window_us", [("2", "2", 2000), ("0", "40", 0)],
                         ids=["limit-not-above-base-is-fixed", "off-stays-off"])
def test_coalescing_window_does_not_move_when_it_must_not(wasm_server, base_ms, max_ms, window_us):
    server = wasm_server("loop", "--coalesce-ms", base_ms, "--coalesce-max-ms", max_ms)
    _spin_rooms(server, 3)
    for _ in range(5):
        assert _window(server) == window_us
        time.sleep(0.06)


# --------------------------------------------------------------------------------------------
# modules refused at start-up
# --------------------------------------------------------------------------------------------

REFUSED = {
    "missing_export": "stateroom_free",
    "wrong_version": "STATEROOM_API_VERSION",
    "unknown_import": "env.abort",
}


@pytest.mark.parametrize("module", sorted(REFUSED))
def test_wasm_bad_module_is_refused_at_start_up(wasm_dir, module):
    binary = server_binary()
    if not binary.exists():
        pytest.skip(f"server binary not found at {binary}")
    proc = subprocess.run(
        [str(binary), "--host", "127.0.0.1", "--port", "0", "--shards", "1",
         "--wasm", str(wasm_dir / f"{module}.wasm")],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=20, cwd=str(REPO_ROOT))
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode not in (0, None) and proc.returncode > 0, (proc.returncode, out, err)
    assert "listening on" not in out
    assert REFUSED[module] in err, err
