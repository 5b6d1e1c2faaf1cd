"""Identities reach WebAssembly guests: ``stateroom-server --jwt-secret S --wasm chat.wasm``.

The chat example (``Examples/Chat``, built with the ``stateroom`` CLI and the Swift guest SDK)
greets ``context.identity(of:) ?? "client<N>"``. The SDK declares the identity extension
(``Sources/StateroomWasm/IDENTITY.md``: the module exports ``STATEROOM_IDENTITY_VERSION``), so the
host delivers ``ClientIdentity { client, identity }`` before the ``Connect`` of a client that
joined with a verified token, and the guest answers with the token's ``sub``.

Covered:

* a client with ``?token=<HS256 JWT, sub=bob>`` is greeted as bob, others hear bob join, speak
  and leave under that name; a multi-byte ``sub`` arrives intact;
* with ``--jwt-secret`` a client without a token is refused (401), so the anonymous case runs on
  a second server without ``--jwt-secret``: everyone is ``client<N>``, as before;
* a module without the extension (the WAT counter fixture, ABI v1 only) served with
  ``--jwt-secret`` to an identified client behaves exactly as before;
* ``stateroom build --native`` and ``stateroom replay`` of the same chat source agree on a script
  with ``connect N as IDENTITY``.

Env: ``STATEROOM_SERVER`` (see conftest.py), ``STATEROOM_CLI`` (default
``<repo>/.build/release/stateroom``). Tests needing ``--jwt-secret`` fail, saying so, when the server
binary does not list it in ``--help`` (a stale build).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import jwt
import pytest

from conftest import REPO_ROOT, server_binary
from wsraw import expect, recv, run, silent, ws_connect

#: 64 bytes (PyJWT warns about HMAC keys shorter than the hash)
SECRET = "e2e-auth-wasm-hs256-secret-" + "0123456789abcdef" * 3
CHAT = REPO_ROOT / "Examples" / "Chat"
COUNTER_WAT = REPO_ROOT / "Tests" / "WasmHostTests" / "Fixtures" / "counter.wat"
BUILD_TIMEOUT = 600


def token(sub: str, secret: str = SECRET) -> str:
    return jwt.encode({"sub": sub}, secret, algorithm="HS256")


def with_token(url: str, sub: str) -> str:
    return f"{url}?token={quote(token(sub), safe='')}"


def cli_binary() -> Path:
    p = Path(os.environ.get("STATEROOM_CLI", str(REPO_ROOT / ".build" / "release" / "stateroom")))
    return p if p.is_absolute() else REPO_ROOT / p


@pytest.fixture(scope="session")
def cli() -> Path:
    p = cli_binary()
    if not p.exists():
        pytest.skip(f"stateroom CLI not found at {p} (swift build -c release --product stateroom)")
    return p


def stateroom(cli: Path, *args: str) -> str:
    proc = subprocess.run([str(cli), *args], cwd=str(REPO_ROOT), capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, (f"stateroom {' '.join(args)} failed ({proc.returncode})\n"
                                  f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="session")
def chat_wasm(cli) -> Path:
    """Examples/Chat built for release, declaring the identity extension."""
    stateroom(cli, "build", "--release", "--path", str(CHAT))
    wasm = CHAT / "dist" / "chat.wasm"
    assert wasm.exists(), f"{wasm} missing after stateroom build"
    tool = shutil.which("wasm-objdump")
    if tool:
        listing = subprocess.run([tool, "-j", "Export", "-x", str(wasm)], capture_output=True,
                                 text=True, check=True).stdout
        assert '-> "STATEROOM_IDENTITY_VERSION"' in listing, listing
    else:
        assert b"STATEROOM_IDENTITY_VERSION" in wasm.read_bytes()
    return wasm


@pytest.fixture(scope="session")
def jwt_server_flag() -> None:
    """Fails (saying why) if this server binary has no ``--jwt-secret``: a stale build."""
    binary = server_binary()
    assert binary.exists(), f"server binary not found at {binary}"
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    assert "--jwt-secret" in out.stdout + out.stderr, f"{binary} has no --jwt-secret option (a stale build?)"


# --------------------------------------------------------------------------------------------
# identified clients
# --------------------------------------------------------------------------------------------


def test_wasm_chat_greets_the_token_subject(server_factory, chat_wasm, jwt_server_flag):
    server = server_factory("--jwt-secret", SECRET, "--wasm", str(chat_wasm), shards=1)
    url = server.ws_url("lobby")

    async def main():
        async with ws_connect(with_token(url, "bob")) as bob:
            await expect(bob, "Welcome, bob!")
            async with ws_connect(with_token(url, "alice")) as alice:
                await expect(alice, "Welcome, alice!")
                await expect(bob, "alice has joined the chat")
                await bob.send("hi alice")
                await expect(bob, "bob: hi alice")
                await expect(alice, "bob: hi alice")
                await alice.send("/nick al")  # a nickname still replaces the identity's name
                await expect(bob, "alice is now known as al")
                await expect(alice, "alice is now known as al")
            await expect(bob, "al has left the chat")
            # Multi-byte UTF-8 in the token's sub arrives intact, byte for byte.
            async with ws_connect(with_token(url, "Zoë 🐙 ✓")) as zoe:
                await expect(zoe, "Welcome, Zoë 🐙 ✓!")
                await expect(bob, "Zoë 🐙 ✓ has joined the chat")
                await zoe.send("ünïcode")
                await expect(bob, "Zoë 🐙 ✓: ünïcode")
            await expect(bob, "Zoë 🐙 ✓ has left the chat")
            await silent(bob, 0.2)
    run(main())
    server.assert_alive()
    assert "wasm guest failed" not in server.stderr_text()


def test_a_client_without_a_token_is_refused_when_tokens_are_required(server_factory, chat_wasm,
                                                                      jwt_server_flag):
    from websockets.exceptions import InvalidStatus

    server = server_factory("--jwt-secret", SECRET, "--wasm", str(chat_wasm), shards=1)

    async def main():
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(server.ws_url("lobby")):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as forged:
            async with ws_connect(f"{server.ws_url('lobby')}?token={token('bob', 'not-the-secret-' * 4)}"):
                pass
        assert forged.value.response.status_code == 401
    run(main())


def test_a_v1_module_is_unaffected_by_identities(server_factory, jwt_server_flag, tmp_path):
    """The WAT counter exports no STATEROOM_IDENTITY_VERSION: it must never see variant 5 (its
    stateroom_recv would ignore an unknown tag, so the proof is that it works as before, and
    the unit tests pin the bytes)."""
    tool = shutil.which("wat2wasm")
    if tool is None:
        pytest.skip("wat2wasm (Debian package wabt) is not installed")
    wasm = tmp_path / "counter.wasm"
    subprocess.run([tool, str(COUNTER_WAT), "-o", str(wasm)], check=True)
    server = server_factory("--jwt-secret", SECRET, "--wasm", str(wasm), shards=1)
    url = server.ws_url("count")

    async def main():
        async with ws_connect(with_token(url, "bob")) as a, ws_connect(with_token(url, "alice")) as b:
            await a.send("increment")
            await expect(a, "new value: 1")
            await expect(b, "new value: 1")
            await b.send("increment")
            await expect(a, "new value: 2")
            await expect(b, "new value: 2")
    run(main())
    server.assert_alive()


# --------------------------------------------------------------------------------------------
# anonymous clients (a server without --jwt-secret)
# --------------------------------------------------------------------------------------------


def test_wasm_chat_anonymous_clients_are_still_client_n(server_factory, chat_wasm):
    server = server_factory("--wasm", str(chat_wasm), shards=1)
    url = server.ws_url("lobby")

    async def main():
        async with ws_connect(url) as a:
            await expect(a, "Welcome, client1!")
            async with ws_connect(url) as b:
                await expect(b, "Welcome, client2!")
                await expect(a, "client2 has joined the chat")
                await b.send("hello")
                await expect(a, "client2: hello")
                await expect(b, "client2: hello")
            await expect(a, "client2 has left the chat")
    run(main())


# --------------------------------------------------------------------------------------------
# one source, two compilers, with identities
# --------------------------------------------------------------------------------------------

SCRIPT = """\
connect 1 as bob
connect 2
text 1 hello
connect 3 as Zoë 🐙
text 3 hi bob
text 2 /nick carl
disconnect 1
text 3 still here
disconnect 3
"""


def test_native_and_wasm_builds_of_the_chat_agree_with_identities(cli, chat_wasm, tmp_path):
    script = tmp_path / "script.txt"
    script.write_text(SCRIPT)
    stateroom(cli, "build", "--release", "--native", "--path", str(CHAT))
    native = subprocess.run([str(CHAT / "dist" / "chat-native"), str(script)], capture_output=True,
                            text=True, check=True, timeout=60).stdout
    wasm = stateroom(cli, "replay", str(chat_wasm), str(script))
    assert native == wasm
    lines = native.splitlines()
    assert '> connect 1 as "bob"' in lines, native
    assert '< client 1: text "Welcome, bob!"' in lines, native
    assert '< client 2: text "Welcome, client2!"' in lines, native
    assert '< broadcast: text "bob: hello"' in lines, native
    assert '< everyone except 3: text "Zoë 🐙 has joined the chat"' in lines, native
    assert '< broadcast: text "bob has left the chat"' in lines, native
