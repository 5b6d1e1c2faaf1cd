"""Headless Chromium for the end-to-end tests, driven through the DevTools protocol.

A page that writes its WebSocket log into a `<pre id="log">` is a browser test: ``browser_log``
opens it and reads the log in real time until the page says `done` or `error` (or 15 s pass).
(`--dump-dom` with a virtual-time budget does not wait for WebSocket messages.) Chromium is
Debian's `chromium`, installed by `make test`; a missing one fails the test with that message.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest


def chromium_binary() -> str:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.fail("chromium is not installed (apt-get install chromium; `make test` installs it)", pytrace=False)


class HeadlessChromium:
    """Headless Chromium driven over the DevTools protocol (the ``websockets`` sync client).

    ``--dump-dom --virtual-time-budget`` is not used: virtual time only waits for pending
    fetches, not for WebSocket messages, so the DOM was sometimes dumped between two messages.
    Here the test polls the page's DOM in real time until the script is done (bounded)."""

    def __init__(self, binary: str, profile: Path, timeout: float = 20.0):
        profile.mkdir(parents=True, exist_ok=True)
        self.cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
                    "--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
        self.stderr_path = profile.parent / "chromium-stderr.log"
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._err, start_new_session=True)
        self.ws = None
        self._stack = contextlib.ExitStack()
        self.next_id = 0
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while True:
            lines = port_file.read_text().split() if port_file.exists() else []
            if len(lines) >= 2:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"chromium did not open its DevTools port within {timeout}s "
                            f"(rc {self.proc.returncode}): {' '.join(self.cmd)}\n{self.stderr_tail()}")
            time.sleep(0.05)
        from websockets.sync.client import connect
        try:
            self.ws = self._stack.enter_context(
                connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_size=None, open_timeout=10))
        except BaseException:
            self.close()
            raise

    def stderr_tail(self) -> str:
        try:
            lines = self.stderr_path.read_text("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line for line in lines if "dbus" not in line)[-3000:]

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 10.0) -> dict:
        import json
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no DevTools answer to {method} within {timeout}s")
            reply = json.loads(self.ws.recv(remaining))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"DevTools {method}: {reply['error']}")
                return reply["result"]

    def open_page(self, url: str) -> str:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        return self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return result.get("result", {}).get("value")

    def close(self) -> None:
        self._stack.close()  # the DevTools connection, if open
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: chromium and its helpers
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._err.close()


def browser_log(tmp_path, url: str, timeout: float = 15) -> tuple[list[str], str]:
    """Opens `url` and returns the page's log lines once it says `done` or `error` (or at the
    deadline), with the tail of Chromium's stderr."""
    browser = HeadlessChromium(chromium_binary(), tmp_path / "profile")
    try:
        session = browser.open_page(url)
        deadline = time.monotonic() + timeout
        log: list[str] = []
        while time.monotonic() < deadline:
            text = browser.evaluate(session, "document.getElementById('log') ? "
                                             "document.getElementById('log').textContent : ''") or ""
            log = text.splitlines()
            if "done" in log or "error" in log:
                break
            time.sleep(0.1)
        return log, browser.stderr_tail()
    finally:
        browser.close()
