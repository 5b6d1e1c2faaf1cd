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
    # A long request timeout: the held connections that never send a head must keep their
    # descriptors for the whole test, not be dropped (freeing descriptors) after the default 10 s.
    cmd = ["prlimit", "--nofile=48:48", "--", str(binary), "--host", "127.0.0.1", "--port", "0",
           "--io", io_backend, "--shards", "1", "--service", "relay", "--request-timeout", "60"]
    h = ServerHandle(cmd, tmp_path_factory.mktemp("limited"), io_backend)
    h.wait_ready()
    yield h
    problem = h.stop()
    if problem:
        pytest.fail(problem, pytrace=False)


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def relay_roundtrip(sender: wsraw.RawWebSocket, receivers: list[wsraw.RawWebSocket], text: str,
                    timeout: float = 5.0) -> None:
    """``sender`` sends ``text``; the relay must deliver it to every receiver (sender included)."""
    sender.send_text(text)
    for i, r in enumerate(receivers):
        opcode, payload = r.recv_message(timeout)
        assert (opcode, payload) == (wsraw.OP_TEXT, text.encode()), \
            f"receiver {i} got {opcode}/{payload!r}, expected {text!r}"


def test_emfile_pauses_accept_without_spinning_keeps_serving_and_recovers(limited_server):
    server = limited_server
    pid = server.proc.pid
    # Two clients of one room, connected before the server runs out of descriptors.
    a = wsraw.RawWebSocket.connect(server.host, server.port, "/ws/kept")
    b = wsraw.RawWebSocket.connect(server.host, server.port, "/ws/kept")
    held: list[socket.socket] = []
    try:
        relay_roundtrip(a, [a, b], "before")

        # Hold more connections than the server can have descriptors: the rest wait in the backlog.
        for _ in range(80):
            held.append(socket.create_connection((server.host, server.port), timeout=5))
        deadline = time.monotonic() + 5
        while "accept paused" not in server.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "accept paused" in server.stderr_text(), "the pause was not logged"
        time.sleep(0.5)
        before = cpu_seconds(pid)
        time.sleep(2.0)
        used = cpu_seconds(pid) - before
        assert used < 1.0, f"server burned {used:.2f} s of CPU in 2 s while out of descriptors (spinning)"
        server.assert_alive()
        assert server.stderr_text().count("accept paused") <= 3, "the pause is logged once, not per attempt"

        # Still out of descriptors (the 1 s retries fail again): the room's clients are served.
        assert open_descriptors(pid) == 48, f"the server holds {open_descriptors(pid)} of its 48 descriptors"
        for i in range(3):
            relay_roundtrip(a, [a, b], f"during {i}")
            relay_roundtrip(b, [a, b], f"during {i} from b")
        assert open_descriptors(pid) == 48, "descriptors freed while the room was checked: not a test of the pause"
    finally:
        # Free descriptors: the server must accept again.
        for s in held:
            s.close()

    try:
        # A new client: connecting may take a moment while the server drains the closed backlog.
        deadline = time.monotonic() + 10
        while True:
            try:
                c = wsraw.RawWebSocket.connect(server.host, server.port, "/ws/kept", timeout=2)
                break
            except (OSError, AssertionError, TimeoutError, wsraw.PeerClosed):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with c:
            # The old clients are still served, and the new one shares their room.
            relay_roundtrip(a, [a, b, c], "after")
            relay_roundtrip(c, [a, b, c], "from the new client")
        server.assert_alive()
    finally:
        a.close()
        b.close()


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


def _stop_and_time(server, timeout: float = 8.0) -> tuple[int, float]:
    import signal as _signal
    t0 = time.monotonic()
    server.proc.send_signal(_signal.SIGTERM)
    rc = server.proc.wait(timeout)
    took = time.monotonic() - t0
    server.stopped = True
    server._out.close()
    server._err.close()
    return rc, took


def test_drain_waits_for_a_silent_client_up_to_drain_timeout_then_cuts_it(server_factory):
    # A client that never answers the 1001 close keeps the drain going until --drain-timeout,
    # then it is cut and the server exits 0.
    server = server_factory("--drain-timeout", "2.5", shards=1)
    ws = wsraw.RawWebSocket.connect(server.host, server.port, "/ws/drain")
    rc, took = _stop_and_time(server)
    frames, code = ws.read_until_close(2, reply=False)
    assert code == 1001, f"expected close 1001 on shutdown, got {code}"
    assert rc == 0, f"exit status {rc} after SIGTERM"
    assert 2.0 <= took < 6.0, f"the server stopped after {took:.2f} s, expected about --drain-timeout 2.5 s"
    assert ws.wait_closed(3), "the silent client's connection was not cut after the drain"


def test_drain_ends_as_soon_as_every_client_has_answered(server_factory):
    # Clients that answer the close let the server exit long before a long --drain-timeout.
    server = server_factory("--drain-timeout", "20", shards=2)
    clients = [wsraw.RawWebSocket.connect(server.host, server.port, f"/ws/d{i}") for i in range(4)]
    import signal as _signal
    t0 = time.monotonic()
    server.proc.send_signal(_signal.SIGTERM)
    for c in clients:
        _, code = c.read_until_close(5)  # replies with a close and hangs up
        assert code == 1001
        c.close()
    rc = server.proc.wait(8)
    took = time.monotonic() - t0
    server.stopped = True
    server._out.close()
    server._err.close()
    assert rc == 0, f"exit status {rc} after SIGTERM"
    assert took < 3.0, f"the server took {took:.2f} s to stop although every client answered"
