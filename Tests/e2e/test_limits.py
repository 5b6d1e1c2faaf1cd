"""Running out of file descriptors: the server pauses accepting (no spinning), keeps serving the
clients it has, and accepts again once descriptors free up. Also: a client that never finishes
its request head is dropped after the request timeout."""

from __future__ import annotations

import os
import socket
import time

import pytest

from conftest import ServerHandle, server_binary
import wsraw


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


@pytest.fixture
def limited_server(io_backend, tmp_path_factory):
    """A one-shard relay server whose process may hold at most 48 descriptors."""
    binary = server_binary()
    if not binary.exists():
        pytest.skip(f"server binary not found at {binary}")
    cmd = ["prlimit", "--nofile=48:48", "--", str(binary), "--host", "127.0.0.1", "--port", "0",
           "--io", io_backend, "--shards", "1", "--service", "relay"]
    h = ServerHandle(cmd, tmp_path_factory.mktemp("limited"), io_backend)
    h.wait_ready()
    yield h
    problem = h.stop()
    if problem:
        pytest.fail(problem, pytrace=False)


def test_emfile_pauses_accept_without_spinning_and_recovers(limited_server):
    server = limited_server
    # Hold more connections than the server can have descriptors: the rest wait in the backlog.
    held = []
    for _ in range(80):
        s = socket.create_connection((server.host, server.port), timeout=5)
        held.append(s)
    time.sleep(0.5)
    before = cpu_seconds(server.proc.pid)
    time.sleep(2.0)
    used = cpu_seconds(server.proc.pid) - before
    assert used < 1.0, f"server burned {used:.2f} s of CPU in 2 s while out of descriptors (spinning)"
    server.assert_alive()
    assert "accept paused" in server.stderr_text(), "the pause was not logged"
    assert server.stderr_text().count("accept paused") <= 3, "the pause is logged once, not per attempt"

    # Free descriptors: the server must accept again and serve a WebSocket client.
    for s in held:
        s.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            async def roundtrip():
                async with wsraw.ws_connect(server.ws_url("after")) as ws:
                    await ws.send("hello")
                    assert await wsraw.recv(ws, 5) == "hello"
            wsraw.run(roundtrip(), 8)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_client_that_never_finishes_its_request_is_dropped(server_factory):
    server = server_factory("--request-timeout", "1.5")
    s = socket.create_connection((server.host, server.port), timeout=20)
    s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
    t0 = time.monotonic()
    s.settimeout(20)
    data = s.recv(100)
    waited = time.monotonic() - t0
    assert data == b"", f"expected the server to close the connection, got {data!r}"
    assert waited < 10, "the connection was not dropped after the 1.5 s request timeout"
    s.close()


def test_sigterm_closes_clients_with_1001_and_exits_cleanly(server_factory):
    import signal as _signal
    server = server_factory(shards=2)
    ws = wsraw.RawWebSocket.connect(server.host, server.port, "/ws/bye")
    server.proc.send_signal(_signal.SIGTERM)
    frames, code = ws.read_until_close(5)
    assert code == 1001, f"expected close 1001 (going away) on shutdown, got {code}"
    rc = server.proc.wait(5)
    # Stopped here on purpose: tell the fixture not to count it as a crash.
    server.stopped = True
    server._out.close()
    server._err.close()
    assert rc in (0, -_signal.SIGTERM, 128 + _signal.SIGTERM), f"exit status {rc} after SIGTERM"
