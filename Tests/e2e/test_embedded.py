"""The server as a library: Examples/EmbeddedServer, a package of its own that depends on this one
by path, serves its own native service (a poll) through the ``StateroomServer`` library product,
with an upgrade policy that admits only rooms named ``poll-*``.

Built here with ``swift build --package-path Examples/EmbeddedServer`` (its own .build folder); run
once per I/O backend like every e2e test.
"""

from __future__ import annotations

import subprocess

import pytest
import websockets

import wsraw
from conftest import REPO_ROOT, ServerHandle
from wsraw import expect, run, ws_connect

EXAMPLE = REPO_ROOT / "Examples" / "EmbeddedServer"


@pytest.fixture(scope="module")
def poll_server_binary():
    build = subprocess.run(["swift", "build", "--package-path", str(EXAMPLE), "--product", "poll-server"],
                           capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, f"building the embedded example failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    binary = EXAMPLE / ".build" / "debug" / "poll-server"
    assert binary.exists(), f"{binary} missing after the build"
    return binary


@pytest.fixture
def poll_server(poll_server_binary, io_backend, tmp_path):
    handle = ServerHandle([str(poll_server_binary), "--port", "0", "--io", io_backend], tmp_path, io_backend)
    handle.wait_ready(20)
    yield handle
    problem = handle.stop()
    if problem:
        pytest.fail(problem, pytrace=False)


def test_the_embedded_package_serves_its_own_service(poll_server):
    assert wsraw.http_get(poll_server.host, poll_server.port, "/status").body == b"ok"

    async def main():
        async with ws_connect(poll_server.ws_url("poll-lunch")) as a:
            await expect(a, "tally:")
            await expect(a, "present: 1")
            async with ws_connect(poll_server.ws_url("poll-lunch")) as b:
                await expect(b, "tally:")
                await expect(a, "present: 2")
                await expect(b, "present: 2")
                for sender, vote, tally in ((a, "soup", "soup=1"), (b, "pizza", "pizza=1 soup=1"),
                                            (a, "soup", "pizza=1 soup=2")):
                    await sender.send(f"vote {vote}")
                    await expect(a, f"tally: {tally}")
                    await expect(b, f"tally: {tally}")
                await b.send("hello")
                await expect(b, "say: vote NAME")
            await expect(a, "present: 1")
            # A newcomer gets the room's state; another poll room has its own.
            async with ws_connect(poll_server.ws_url("poll-lunch")) as c, \
                    ws_connect(poll_server.ws_url("poll-dinner")) as d:
                await expect(c, "tally: pizza=1 soup=2")
                await expect(d, "tally:")
    run(main())


def test_the_embedded_upgrade_policy_refuses_other_rooms(poll_server):
    async def main():
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with ws_connect(poll_server.ws_url("lobby")):
                pass
        assert refused.value.response.status_code == 404
        # The refusal harmed nobody: poll rooms still work.
        async with ws_connect(poll_server.ws_url("poll-x")) as a:
            await expect(a, "tally:")
    run(main())
