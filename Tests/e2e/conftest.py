"""Shared fixtures for the end-to-end tests: start the real server binary on 127.0.0.1.

Generic on purpose (other test files will use it):

* ``io_backend``      - session fixture, parametrized from env ``STATEROOM_IO`` (default ``uring``;
                        a comma list such as ``uring,epoll`` runs every test once per backend).
* ``server_factory``  - function fixture; ``server_factory(*extra_args, service=..., shards=...)``
                        spawns ``stateroom-server --host 127.0.0.1 --port 0 --io <backend> ...``,
                        waits (<= 20 s) for the ``listening on http://HOST:PORT`` line and returns a
                        :class:`ServerHandle`. At teardown every server gets SIGTERM (SIGKILL after
                        5 s) and the test FAILS if a server crashed (died of a signal other than
                        SIGTERM, or exited non-zero) - its stderr is printed.
* ``server``          - a default server (counter service).
* ``tls_pair``        - session fixture: a throwaway self-signed ECDSA P-256 pair (``TLSPair``: cert,
                        key; CN=localhost, SAN DNS:localhost and IP:127.0.0.1) made with the openssl
                        CLI; start a TLS server with ``server_factory(*pair.args())``. A server that
                        announces ``https://`` gets ``wss://``/``https://`` from ``ws_url``/``http_url``.
                        ``make_cert_pair`` makes more (RSA, other names) for the tests that need them.

Env: ``STATEROOM_SERVER`` (binary path, default ``<repo>/.build/release/stateroom-server``),
``STATEROOM_IO`` (see above), ``STATEROOM_LOG_LEVEL`` (passed as ``--log-level`` if set).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import wsraw

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = REPO_ROOT / ".build" / "release" / "stateroom-server"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
LISTEN_RE = re.compile(r"listening on (?P<scheme>https?)://(?P<host>\[[^\]]*\]|[^\s:/]+):(?P<port>\d+)")

_OK_EXIT = {0, -signal.SIGTERM, 128 + signal.SIGTERM}


def server_binary() -> Path:
    p = Path(os.environ.get("STATEROOM_SERVER", str(DEFAULT_BINARY)))
    return p if p.is_absolute() else REPO_ROOT / p


def io_backends() -> list[str]:
    raw = os.environ.get("STATEROOM_IO", "uring")
    return [b.strip() for b in raw.split(",") if b.strip()] or ["uring"]


def pytest_addoption(parser):
    parser.addini("e2e_timeout", "default deadline (seconds) for one test's async body", default="30")


def pytest_configure(config):
    wsraw.TEST_TIMEOUT = float(config.getini("e2e_timeout"))


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


class ServerHandle:
    """One running server process."""

    def __init__(self, cmd: list[str], workdir: Path, io: str):
        self.cmd = cmd
        self.io = io
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.scheme = "http"  # "https" once the server announced a TLS listener
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, cwd=str(REPO_ROOT))
        self.stopped = False
        self.killed = False

    # -- start-up ------------------------------------------------------------------------

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout_path.read_text("utf-8", "replace")
            m = LISTEN_RE.search(text)
            if m:
                self.port = int(m.group("port"))
                self.scheme = m.group("scheme")
                if self.port == 0:
                    raise RuntimeError(f"server reported port 0: {text!r}")
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited before it was ready ({_describe_exit(self.proc.returncode)})\n"
                    f"cmd: {' '.join(self.cmd)}\nstdout:\n{text}\nstderr:\n{self.stderr_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"server did not print 'listening on http(s)://HOST:PORT' within {timeout}s\n"
                           f"cmd: {' '.join(self.cmd)}\nstdout:\n{self.stdout_path.read_text('utf-8', 'replace')}"
                           f"\nstderr:\n{self.stderr_text()}")

    # -- addresses -----------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def ws_url(self, room: str | None = None) -> str:
        """``ws://host:port/ws`` or ``/ws/<room>`` (``room`` is used verbatim: encode it yourself);
        ``wss://`` for a TLS server."""
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{self.host}:{self.port}/ws" + ("" if room is None else f"/{room}")

    def http_url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    # -- state ---------------------------------------------------------------------------

    def stderr_text(self, tail: int = 20000) -> str:
        try:  # the child writes straight to the file: nothing to flush on our side
            data = self.stderr_path.read_bytes()
        except OSError:
            return ""
        return data[-tail:].decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            pytest.fail(f"server died: {_describe_exit(self.proc.returncode)}\ncmd: {' '.join(self.cmd)}\n"
                        f"stderr (tail):\n{self.stderr_text()}", pytrace=False)

    def metric(self, *names: str) -> float | None:
        """Counter value by name from /metrics, or None (with a warning) if not exposed."""
        if self.tls:  # a plaintext request would only be rejected (and counted) by a TLS port
            raise RuntimeError("ServerHandle.metric() speaks plain HTTP; read a TLS server's /metrics over https")
        return wsraw.metric_value(self.host, self.port, *names)

    # -- shutdown ------------------------------------------------------------------------

    def stop(self) -> str | None:
        """SIGTERM, then SIGKILL after 5 s. Returns a problem description, or None if clean."""
        if self.stopped:
            return None
        self.stopped = True
        problem = None
        rc = self.proc.poll()
        if rc is not None:
            # it was already gone before we asked it to stop: that is a crash whatever the code
            problem = f"server exited on its own during the test ({_describe_exit(rc)})"
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                rc = self.proc.wait(STOP_TIMEOUT)
                warnings.warn(f"server did not exit within {STOP_TIMEOUT}s of SIGTERM and was killed "
                              f"(cmd: {' '.join(self.cmd)})")
            if not self.killed and rc not in _OK_EXIT:
                problem = f"server crashed on shutdown ({_describe_exit(rc)})"
        self._out.close()
        self._err.close()
        if problem:
            problem += f"\ncmd: {' '.join(self.cmd)}\nstderr (tail):\n{self.stderr_text()}"
        return problem


@dataclass(frozen=True)
class TLSPair:
    cert: Path
    key: Path

    def args(self) -> tuple[str, ...]:
        return ("--tls-cert", str(self.cert), "--tls-key", str(self.key))


def openssl(*args: str, cwd: Path | None = None, timeout: float = 30) -> str:
    """Run the openssl CLI; fail with its stderr if it fails."""
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def make_cert_pair(directory: Path, name: str, *, key_type: str = "ec", cn: str = "localhost",
                   san: str = "DNS:localhost,IP:127.0.0.1", days: int = 30) -> TLSPair:
    """A self-signed pair ``<name>.crt`` / ``<name>.key`` (PEM) in ``directory``: ``key_type``
    "ec" (P-256) or "rsa" (2048 bits)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    newkey = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_type == "ec"
              else ["-newkey", "rsa:2048"])
    openssl("req", "-x509", *newkey, "-nodes", "-subj", f"/CN={cn}", "-addext", f"subjectAltName={san}",
            "-days", str(days), "-keyout", str(key), "-out", str(cert))
    return TLSPair(cert, key)


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory) -> TLSPair:
    """A throwaway self-signed ECDSA P-256 pair for localhost / 127.0.0.1."""
    return make_cert_pair(tmp_path_factory.mktemp("tls"), "server")


@pytest.fixture(scope="session", params=io_backends())
def io_backend(request) -> str:
    return request.param


@pytest.fixture
def server_factory(request, io_backend, tmp_path_factory):
    binary = server_binary()
    if not binary.exists():
        pytest.skip(f"server binary not found at {binary} (build it, or set STATEROOM_SERVER)")
    started: list[ServerHandle] = []
    request.node.stash[_SERVERS] = started

    def start(*extra: str, service: str | None = None, shards: int | None = None,
              ready_timeout: float = READY_TIMEOUT) -> ServerHandle:
        cmd = [str(binary), "--host", "127.0.0.1", "--port", "0", "--io", io_backend]
        if service:
            cmd += ["--service", service]
        if shards:
            cmd += ["--shards", str(shards)]
        level = os.environ.get("STATEROOM_LOG_LEVEL")
        if level:
            cmd += ["--log-level", level]
        cmd += [str(a) for a in extra]
        handle = ServerHandle(cmd, tmp_path_factory.mktemp("server"), io_backend)
        started.append(handle)
        handle.wait_ready(ready_timeout)
        return handle

    yield start

    problems = [p for p in (h.stop() for h in started) if p]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def server(server_factory) -> ServerHandle:
    """A server with the default (counter) service."""
    return server_factory()


_SERVERS = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    # on a failing test body, attach the servers' stderr tails so the failure is self-explaining
    if call.when == "call" and report.failed:
        for i, h in enumerate(item.stash.get(_SERVERS, [])):
            state = "running" if h.alive() else _describe_exit(h.proc.returncode)
            report.sections.append((f"server {i} stderr ({state}; {' '.join(h.cmd)})",
                                    h.stderr_text(8000)))
    return report
