"""Swift services compiled to wasm: the ``Examples/`` built by the ``stateroom`` CLI, served by
the real server and driven by the third-party ``websockets`` client.

Covered:

* every example builds (``stateroom build --release``; up to date after ``make examples``);
* the seed's scenarios, end to end: counter (``increment`` -> ``new value: 1`` to all), echo
  (``User ClientId(1) connected.`` ...), clock (timer messages arrive, the pace changes), chat
  (``/nick`` renames) - echo and chat are run against the built-in native service too and must
  produce the very same messages;
* ``stateroom serve`` serves a module and static files; ``stateroom dev`` builds, serves the
  ``client/`` folder, rebuilds on a source edit, restarts rooms with 1012, and a reconnected client
  sees the new behaviour (a broken edit keeps the previous build serving);
* the same source compiled natively (``stateroom build --native``) and to wasm gives the same
  transcript on a scripted conversation;
* the CLI's errors: compiler diagnostics as Swift prints them, a missing registration line, a
  toolchain without the wasm pieces.

Env: ``STATEROOM_CLI`` (default ``<repo>/.build/release/stateroom``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import websockets

from conftest import REPO_ROOT
import wsraw
from wsraw import close_code, expect, recv, run, silent, ws_connect

EXAMPLES = REPO_ROOT / "Examples"
#: example folder -> module name (stateroom.toml ``name``, else the folder's name)
MODULES = {"SharedCounter": "counter", "EchoServer": "EchoServer", "Clock": "clock", "Chat": "chat"}
BUILD_TIMEOUT = 600


def cli_binary() -> Path:
    p = Path(os.environ.get("STATEROOM_CLI", str(REPO_ROOT / ".build" / "release" / "stateroom")))
    return p if p.is_absolute() else REPO_ROOT / p


@pytest.fixture(scope="session")
def cli() -> Path:
    p = cli_binary()
    if not p.exists():
        pytest.skip(f"stateroom CLI not found at {p} (swift build -c release --product stateroom)")
    return p


def stateroom(cli: Path, *args: str, cwd: Path | None = None, env: dict | None = None,
              check: bool = True, timeout: float = BUILD_TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(cli), *args], cwd=str(cwd or REPO_ROOT), env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"stateroom {' '.join(args)} failed ({proc.returncode})\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def modules(cli) -> dict[str, Path]:
    """Every example built for release: folder name -> dist/<name>.wasm."""
    out = {}
    for folder, name in MODULES.items():
        stateroom(cli, "build", "--release", "--path", str(EXAMPLES / folder))
        wasm = EXAMPLES / folder / "dist" / f"{name}.wasm"
        assert wasm.exists(), f"{wasm} missing after stateroom build"
        out[folder] = wasm
    return out


@pytest.fixture
def example_server(server_factory, modules):
    """``example_server("Chat")``: a one-shard stateroom-server serving that example's module."""
    def start(folder: str, *extra: str):
        return server_factory("--wasm", str(modules[folder]), *extra, shards=1)
    return start


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def test_every_example_builds_to_a_small_module_with_the_abi_exports(modules):
    for folder, wasm in modules.items():
        data = wasm.read_bytes()
        assert data[:4] == b"\0asm", folder
        assert len(data) < 512 * 1024, f"{folder}: {len(data)} bytes"
        for export in (b"stateroom_recv", b"stateroom_malloc", b"stateroom_free",
                       b"STATEROOM_API_VERSION", b"STATEROOM_API_PROTOCOL"):
            assert export in data, f"{folder} lacks the export {export!r}"
    # The imports are exactly what ABI.md allows. `make test` installs wabt, so a missing tool is
    # a broken set-up, not a reason to drop the check.
    tool = shutil.which("wasm-objdump")
    assert tool, "wasm-objdump not found: install wabt (apt-get install wabt; `make deps` does it)"
    for folder, wasm in modules.items():
        listing = subprocess.run([tool, "-j", "Import", "-x", str(wasm)], capture_output=True,
                                 text=True, check=True).stdout
        imports = set(re.findall(r"<- (\S+)", listing))
        assert "env.stateroom_send" in imports, (folder, imports)
        assert all(i == "env.stateroom_send" or i.startswith("wasi_snapshot_preview1.")
                   for i in imports), (folder, imports)


# --------------------------------------------------------------------------------------------
# the seed scenarios, end to end
# --------------------------------------------------------------------------------------------


def test_counter_seed_scenario(example_server):
    run(wsraw.seed_counter_scenario(example_server("SharedCounter")))


async def echo_conversation(server) -> list[tuple[str, str]]:
    got = []
    async with ws_connect(server.ws_url("e")) as a:
        got.append(("a", await recv(a)))
        async with ws_connect(server.ws_url("e")) as b:
            got.append(("b", await recv(b)))
            await silent(a, 0.2)  # the greeting went to b only
            await a.send("hello")
            got += [("a", await recv(a)), ("b", await recv(b))]
            await b.send(b"\x00\x01")  # binary: ignored
            await b.send("héllo wörld")
            got += [("a", await recv(a)), ("b", await recv(b))]
        got.append(("a", await recv(a)))
    return got


def test_echo_seed_scenario_matches_the_builtin_echo(example_server, server_factory):
    want = [("a", "User ClientId(1) connected."), ("b", "User ClientId(2) connected."),
            ("a", "User ClientId(1) sent 'hello'"), ("b", "User ClientId(1) sent 'hello'"),
            ("a", "User ClientId(2) sent 'héllo wörld'"), ("b", "User ClientId(2) sent 'héllo wörld'"),
            ("a", "User ClientId(2) left.")]
    assert run(echo_conversation(example_server("EchoServer"))) == want
    assert run(echo_conversation(server_factory(service="echo", shards=1))) == want


def test_clock_timer_messages_arrive(example_server):
    server = example_server("Clock")

    async def main():
        async with ws_connect(server.ws_url("clock")) as a:
            await expect(a, "tick every 1000 ms; 0 ticks so far")
            await expect(a, "Timer @ 0", timeout=5)  # set at Init, 1 s
            await a.send("interval 50")
            await expect(a, "ClientId(1) set the interval to 50 ms")
            for n in (1, 2, 3, 4):
                await expect(a, f"Timer @ {n}", timeout=2)
            async with ws_connect(server.ws_url("clock")) as b:
                greeting = await recv(b)
                assert re.fullmatch(r"tick every 50 ms; \d+ ticks so far", greeting), greeting
                t1, t2 = await recv(b, 2), await recv(b, 2)
                n1, n2 = int(t1.split("@ ")[1]), int(t2.split("@ ")[1])
                assert n2 == n1 + 1, (t1, t2)
            await a.send("interval 5")  # out of range: a usage line, ticks go on meanwhile
            for _ in range(50):
                got = await recv(a, 2)
                if not got.startswith("Timer @ "):
                    break
            assert got == "usage: interval MS (10...60000)"
    run(main())


async def chat_conversation(server) -> list[tuple[str, str]]:
    got = []
    url = server.ws_url("lobby")
    async with ws_connect(url) as a:
        got.append(("a", await recv(a)))
        async with ws_connect(url) as b:
            got += [("b", await recv(b)), ("a", await recv(a))]
            await a.send("/nick alice")
            got += [("a", await recv(a)), ("b", await recv(b))]
            await a.send("hi, I'm alice")
            got += [("a", await recv(a)), ("b", await recv(b))]
            await b.send("/nick ")  # empty name: ignored
            await b.send("/nick bob")
            got += [("a", await recv(a)), ("b", await recv(b))]
            await b.send("hello alice")
            got += [("a", await recv(a)), ("b", await recv(b))]
        got.append(("a", await recv(a)))
    return got


def test_chat_nick_renames_and_matches_the_builtin_chat(example_server, server_factory):
    want = [("a", "Welcome, client1!"),
            ("b", "Welcome, client2!"), ("a", "client2 has joined the chat"),
            ("a", "client1 is now known as alice"), ("b", "client1 is now known as alice"),
            ("a", "alice: hi, I'm alice"), ("b", "alice: hi, I'm alice"),
            ("a", "client2 is now known as bob"), ("b", "client2 is now known as bob"),
            ("a", "bob: hello alice"), ("b", "bob: hello alice"),
            ("a", "bob has left the chat")]
    assert run(chat_conversation(example_server("Chat"))) == want
    assert run(chat_conversation(server_factory(service="chat", shards=1))) == want


# --------------------------------------------------------------------------------------------
# stateroom serve / stateroom dev
# --------------------------------------------------------------------------------------------

LISTEN_RE = re.compile(r"listening on http://([^\s:/]+):(\d+)")


class CLIProcess:
    """A ``stateroom serve`` / ``stateroom dev`` process with its output in files."""

    def __init__(self, cli: Path, args: list[str], cwd: Path, logdir: Path):
        self.out_path, self.err_path = logdir / "stdout.log", logdir / "stderr.log"
        self._out, self._err = open(self.out_path, "wb"), open(self.err_path, "wb")
        self.cmd = [str(cli), *args]
        self.proc = subprocess.Popen(self.cmd, cwd=str(cwd), stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._err)
        self.port: int | None = None

    def output(self) -> str:
        return self.out_path.read_text("utf-8", "replace") + self.err_path.read_text("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> re.Match:
        """Waits until ``pattern`` appears in stdout+stderr past offset ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.compile(pattern).search(self.output(), after)
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.cmd} exited ({self.proc.returncode}):\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen within {timeout}s:\n{self.output()}")

    def wait_ready(self, timeout: float = 300) -> None:
        self.port = int(self.wait_for(LISTEN_RE.pattern, timeout).group(2))

    def ws_url(self, room: str | None = None) -> str:
        return f"ws://127.0.0.1:{self.port}/ws" + ("" if room is None else f"/{room}")

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return r.status, r.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        self._err.close()


@pytest.fixture
def cli_process(cli, tmp_path_factory):
    started: list[CLIProcess] = []

    def start(*args: str, cwd: Path) -> CLIProcess:
        p = CLIProcess(cli, list(args), cwd, tmp_path_factory.mktemp("cli"))
        started.append(p)
        p.wait_ready()
        return p

    yield start
    for p in started:
        p.stop()
        # a clean exit on SIGTERM; anything else (a crash) fails the test
        assert p.proc.returncode in (0, -signal.SIGTERM), f"{p.cmd} ended with {p.proc.returncode}:\n{p.output()}"


def test_serve_serves_a_module_and_static_files(cli_process, modules):
    client = EXAMPLES / "SharedCounter" / "client"
    p = cli_process("serve", str(modules["SharedCounter"]), "--host", "127.0.0.1", "--port", "0",
                    "--shards", "1", "--static", str(client), "--no-pin", cwd=REPO_ROOT)
    assert p.get("/status") == (200, b"ok")
    status, body = p.get("/")
    assert status == 200 and body == (client / "index.html").read_bytes()
    run(counter_both(p.ws_url()))


def test_serve_requires_a_token_with_jwt_secret_and_names_the_client(cli_process, modules):
    import jwt
    from urllib.parse import quote
    secret = "cli-serve-hs256-secret-" + "0123456789abcdef" * 3
    p = cli_process("serve", str(modules["Chat"]), "--host", "127.0.0.1", "--port", "0",
                    "--shards", "1", "--no-pin", "--jwt-secret", secret, cwd=REPO_ROOT)
    assert p.get("/status") == (200, b"ok")
    token = quote(jwt.encode({"sub": "bob"}, secret, algorithm="HS256"), safe="")

    async def main():
        try:
            async with ws_connect(p.ws_url("lobby")):
                raise AssertionError("a client without a token joined")
        except websockets.exceptions.InvalidStatus as e:
            assert e.response.status_code == 401
        async with ws_connect(p.ws_url("lobby") + f"?token={token}") as bob:
            await expect(bob, "Welcome, bob!")
    run(main())


def test_serve_refuses_an_unusable_jwt_key(cli, modules, tmp_path):
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    proc = subprocess.run([str(cli), "serve", str(modules["Chat"]), "--port", "0", "--jwt-public-key", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "no public key or certificate found" in proc.stderr + proc.stdout


async def counter_both(url: str) -> None:
    async with ws_connect(url) as a, ws_connect(url) as b:
        await a.send("increment")
        await expect(a, "new value: 1")
        await expect(b, "new value: 1")


def test_dev_rebuilds_and_reloads_on_a_source_change(cli_process, tmp_path):
    folder = tmp_path / "counter"
    shutil.copytree(EXAMPLES / "SharedCounter", folder, ignore=shutil.ignore_patterns("dist", ".stateroom"))
    source = folder / "SharedCounter.swift"
    p = cli_process("dev", "--host", "127.0.0.1", "--port", "0", cwd=folder)
    assert (folder / "dist" / "counter.wasm").exists()
    assert p.get("/status") == (200, b"ok")
    assert b"Shared counter" in p.get("/")[1]  # client/index.html at /

    async def before_and_during_the_change():
        async with ws_connect(p.ws_url()) as ws:
            await ws.send("increment")
            await expect(ws, "new value: 1")
            mark = len(p.output())
            text = source.read_text()
            assert 'text.append("new value: ")' in text
            source.write_text(text.replace('text.append("new value: ")', 'text.append("the value is now ")'))
            # the room is restarted once the new module is in: this client gets 1012
            assert await close_code(ws, timeout=120) == 1012
            p.wait_for(r"reloaded", 5, after=mark)
        async with ws_connect(p.ws_url()) as ws:  # a new room from the new module
            await ws.send("increment")
            await expect(ws, "the value is now 1")
            await ws.send("increment")
            await expect(ws, "the value is now 2")
    run(before_and_during_the_change(), timeout=180)

    # a broken edit: the compiler's message is shown and the previous build keeps serving
    mark = len(p.output())
    source.write_text(source.read_text().replace("value += 1", "value += \"one\""))
    p.wait_for(r"SharedCounter\.swift:\d+:\d+: error:", 120, after=mark)
    p.wait_for(r"still serving the previous build", 30, after=mark)

    async def still_serving():
        async with ws_connect(p.ws_url("after-error")) as ws:
            await ws.send("increment")
            await expect(ws, "the value is now 1")
    run(still_serving())


GUEST_FEATURES = r"""
import Stateroom

/// Arrays, sets, dictionaries, interpolation, print and closeRoom inside a guest.
final class Notebook: StateroomService {
    var lines: [String] = []
    var words: Set<String> = []
    var perClient: [ClientId: [Int]] = [:]

    func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        guard let text = message.text else {
            context.send(binary: message.bytes.reversed(), to: .client(client))
            return
        }
        if text == "quit" {
            context.closeRoom(reason: "\(client) asked to quit after \(lines.count) lines")
        }
        lines.append(text)
        for w in text.split(separator: " ") { words.insert(String(w)) }
        perClient[client, default: []].append(text.count)
        print("note from \(client): \(text)")
        let sizes = perClient[client]!.map { String($0) }.joined(separator: ",")
        context.send("\(lines.count) lines, \(words.count) words; sizes \(sizes)", to: .broadcast)
    }
}

typealias StateroomMain = Notebook
"""


def test_collections_print_and_close_room_work_in_a_guest(cli, server_factory, tmp_path):
    folder = tmp_path / "notebook"
    folder.mkdir()
    (folder / "Notebook.swift").write_text(GUEST_FEATURES)
    stateroom(cli, "build", "--release", cwd=folder)
    server = server_factory("--wasm", str(folder / "dist" / "notebook.wasm"), shards=1)

    async def main():
        async with ws_connect(server.ws_url("n")) as a, ws_connect(server.ws_url("n")) as b:
            await a.send("hello big world")
            await expect(a, "1 lines, 3 words; sizes 15")
            await expect(b, "1 lines, 3 words; sizes 15")
            await b.send("hello again")
            await expect(a, "2 lines, 4 words; sizes 11")
            await expect(b, "2 lines, 4 words; sizes 11")
            await a.send("big")
            await expect(a, "3 lines, 4 words; sizes 15,3")
            await expect(b, "3 lines, 4 words; sizes 15,3")
            await a.send(bytes([1, 2, 3]))
            await expect(a, bytes([3, 2, 1]))
            await b.send("quit")  # closeRoom: the guest logs the reason and traps -> 1011
            assert await close_code(a) == 1011
            assert await close_code(b) == 1011
    run(main())
    deadline = time.monotonic() + 5
    while "asked to quit" not in server.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.stderr_text()
    assert "note from ClientId(1): hello big world" in log, log  # print -> the server's log
    assert "closeRoom: ClientId(2) asked to quit after 3 lines" in log, log


# --------------------------------------------------------------------------------------------
# one source, two compilers: native and wasm transcripts agree
# --------------------------------------------------------------------------------------------

SCRIPTS = {
    "SharedCounter": """
        connect 1
        connect 2
        text 1 increment
        text 2 increment
        text 2 decrement
        text 1 hello
        binary 1 696e6372656d656e74
        disconnect 1
        text 2 decrement
        text 2 decrement
    """,
    "EchoServer": """
        connect 1
        connect 2
        text 1 hello
        text 2 héllo, "quoted" \\ wörld
        binary 2 00ff
        disconnect 2
        connect 3
        text 3 last
    """,
    "Clock": """
        connect 1
        timer
        timer
        text 1 interval 250
        text 1 interval 5
        text 1 interval nonsense
        timer
        connect 2
        disconnect 1
        timer
    """,
    "Chat": """
        connect 1
        connect 2
        text 1 hello
        text 1 /nick alice
        text 1 hi again
        text 2 /nick
        text 2 /nick bob
        text 2 /nick 🐙 octo
        text 2 ünïcode ✓
        binary 2 0102
        disconnect 1
        connect 3
        disconnect 2
    """,
}


@pytest.mark.parametrize("folder", list(SCRIPTS))
def test_native_and_wasm_builds_of_one_source_agree(cli, modules, folder, tmp_path):
    script = tmp_path / "script.txt"
    script.write_text("\n".join(line.strip() for line in SCRIPTS[folder].splitlines()) + "\n")
    stateroom(cli, "build", "--release", "--native", "--path", str(EXAMPLES / folder))
    native_bin = EXAMPLES / folder / "dist" / f"{MODULES[folder]}-native"
    native = subprocess.run([str(native_bin), str(script)], capture_output=True, text=True,
                            check=True, timeout=60).stdout
    wasm = stateroom(cli, "replay", str(modules[folder]), str(script), timeout=60).stdout
    assert native == wasm
    outputs = [l for l in native.splitlines() if l.startswith("<")]
    assert len(outputs) >= 4, native  # the script made the service talk
    if folder == "SharedCounter":
        assert '< broadcast: text "new value: 1"' in outputs
    if folder == "Chat":
        assert '< broadcast: text "client1 is now known as alice"' in outputs


# --------------------------------------------------------------------------------------------
# CLI errors
# --------------------------------------------------------------------------------------------


def test_compiler_errors_are_shown_as_swift_prints_them(cli, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "SharedCounter", folder, ignore=shutil.ignore_patterns("dist", ".stateroom"))
    src = folder / "SharedCounter.swift"
    src.write_text(src.read_text().replace("value += 1", "value += undefinedThing"))
    r = stateroom(cli, "build", cwd=folder, check=False)
    assert r.returncode == 1
    assert re.search(r"^SharedCounter\.swift:\d+:\d+: error: cannot find 'undefinedThing' in scope", r.stderr, re.M), r.stderr
    assert "stateroom: building counter failed" in r.stderr
    assert not (folder / "dist" / "counter.wasm").exists()


def test_a_folder_without_a_registration_line_is_explained(cli, tmp_path):
    folder = tmp_path / "unregistered"
    folder.mkdir()
    (folder / "Service.swift").write_text("import Stateroom\nstruct S: StateroomService {}\n")
    r = stateroom(cli, "build", cwd=folder, check=False)
    assert r.returncode == 1
    assert "typealias StateroomMain = " in r.stderr, r.stderr


def test_missing_toolchain_pieces_give_one_clear_message(cli, tmp_path):
    fake = tmp_path / "usr"
    (fake / "bin").mkdir(parents=True)
    real_swiftc = shutil.which("swiftc")
    if real_swiftc:
        (fake / "bin" / "swiftc").symlink_to(os.path.realpath(real_swiftc))
    env = dict(os.environ, SWIFT_TOOLCHAIN=str(fake))
    r = stateroom(cli, "build", "--path", str(EXAMPLES / "SharedCounter"), env=env, check=False)
    assert r.returncode == 1
    lines = [l for l in r.stderr.splitlines() if l.startswith("stateroom:")]
    assert len(lines) == 1, r.stderr
    assert "wasm-ld" in lines[0] and "Embedded Swift standard library" in lines[0], r.stderr
