"""A browser keeps its seat: headless Chromium runs ``StateroomSocket`` (``/stateroom.js``, served by
the server) on the counter through a TCP relay that is cut (every socket closed, no WebSocket close,
new connections refused) while another client keeps incrementing, then restored. The page must
show every value once, in order, and reconnect with ``recovered`` true and the same ClientId.

Two kinds of cut: the server's side of the relay is closed too (the server sees the drop at once),
or it is kept open with what the server sends into it thrown away (the server does not notice the
drop: the values it sent meanwhile were lost in flight and must be replayed all the same)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from browser import HeadlessChromium, chromium_binary
from conftest import REPO_ROOT
from wsraw import expect, http_get, run, ws_connect

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>resume</title>
<pre id="log"></pre>
<script>
  window.log = (s) => { document.getElementById('log').textContent += s + '\\n'; };
  addEventListener('error', (e) => log('page error ' + e.message));
</script>
<script type="module">
  import { StateroomSocket } from '/stateroom.js';
  const ws = new StateroomSocket('ws://' + location.host + '/ws/resume');
  ws.onopen = () => log('open ' + ws.clientId);
  ws.onmessage = (e) => log('message ' + e.data);
  ws.ondrop = (e) => log('drop ' + e.code);
  ws.onreconnect = (e) => log('reconnect ' + e.recovered + ' ' + e.clientId);
  ws.onerror = () => log('error');
  ws.onclose = (e) => log('close ' + e.code);
</script>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream, self.cut = client, upstream, False


class CuttableProxy:
    """A TCP relay on 127.0.0.1 in front of the server's port. ``cut()`` closes the client side of
    every connection (a network failure: no close frame) and refuses new ones until ``restore()``;
    with ``keep_upstream`` the server's side stays open and what the server sends is discarded."""

    def __init__(self, target_port: int, keep_upstream: bool):
        self.target, self.keep_upstream = target_port, keep_upstream
        self.port = free_port()
        self.lock = threading.Lock()
        self.links: list[_Link] = []
        self.listener: socket.socket | None = None
        self.stopped = False
        self.restore()

    def restore(self) -> None:
        with self.lock:
            self.listener = socket.create_server(("127.0.0.1", self.port))
            listener = self.listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            if self.listener:
                _shut(self.listener)  # shutdown wakes the thread blocked in accept()
                self.listener = None
            for link in self.links:
                if not link.cut:
                    link.cut = True
                    _shut(link.client)
                    if not self.keep_upstream:
                        _shut(link.upstream)

    def stop(self) -> None:
        self.stopped = True
        self.cut()
        with self.lock:
            for link in self.links:
                _shut(link.upstream)

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopped:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            link = _Link(client, socket.create_connection(("127.0.0.1", self.target)))
            with self.lock:
                self.links.append(link)
            threading.Thread(target=self._to_server, args=(link,), daemon=True).start()
            threading.Thread(target=self._to_client, args=(link,), daemon=True).start()

    def _to_server(self, link: _Link) -> None:
        try:
            while data := link.client.recv(65536):
                link.upstream.sendall(data)
        except OSError:
            pass
        if not (link.cut and self.keep_upstream):
            _shut(link.upstream)

    def _to_client(self, link: _Link) -> None:
        try:
            while data := link.upstream.recv(65536):
                if not link.cut:
                    try:
                        link.client.sendall(data)
                    except OSError:
                        if not (link.cut and self.keep_upstream):
                            break
        except OSError:
            pass
        if not link.cut:
            _shut(link.client)


class Page:
    """The page's log, polled through DevTools."""

    def __init__(self, browser: HeadlessChromium, url: str):
        self.browser = browser
        self.session = browser.open_page(url)

    def lines(self) -> list[str]:
        text = self.browser.evaluate(self.session, "document.getElementById('log') ? "
                                                   "document.getElementById('log').textContent : ''")
        return (text or "").splitlines()

    def wait_for(self, what: str, predicate, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if predicate(lines):
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"the page did not show {what} within {timeout}s; its log:\n"
                                     + "\n".join(lines) + f"\nchromium stderr:\n{self.browser.stderr_tail()}")
            time.sleep(0.05)


def values(lines: list[str]) -> list[str]:
    return [line.removeprefix("message ") for line in lines if line.startswith("message ")]


@pytest.mark.parametrize("cut", ["the server sees the drop", "the server does not see the drop"])
def test_a_browser_resumes_its_seat_after_a_cut_and_misses_nothing(server_factory, tmp_path, cut):
    chromium_binary()  # a missing browser fails here, with the reason
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text(PAGE)
    server = server_factory("--static", str(www), service="counter")
    module = http_get(server.host, server.port, "/stateroom.js")  # the server's own, not www's
    assert module.status == 200, f"the server does not serve /stateroom.js: {module!r}"
    assert (module.header("Content-Type") or "").startswith(("text/javascript", "application/javascript")), module
    assert module.body == (REPO_ROOT / "Clients" / "js" / "stateroom.js").read_bytes(), \
        "the server's /stateroom.js is not Clients/js/stateroom.js"

    proxy = CuttableProxy(server.port, keep_upstream=cut == "the server does not see the drop")
    browser = HeadlessChromium(chromium_binary(), tmp_path / "profile")
    try:
        page = Page(browser, f"http://127.0.0.1:{proxy.port}/index.html")
        first = page.wait_for("open", lambda ls: any(line.startswith("open ") for line in ls))
        client_id = next(line for line in first if line.startswith("open ")).split()[1]
        assert client_id != "null", first

        async def increments(first_value: int, last_value: int) -> None:
            async with ws_connect(server.ws_url("resume")) as c:
                for i in range(first_value, last_value + 1):
                    await c.send("increment")
                    await expect(c, f"new value: {i}")

        run(increments(1, 3), timeout=10)
        page.wait_for("values 1-3", lambda ls: len(values(ls)) >= 3)
        proxy.cut()
        run(increments(4, 8), timeout=10)  # the page is cut off meanwhile
        page.wait_for("the drop", lambda ls: any(line.startswith("drop ") for line in ls))
        proxy.restore()
        page.wait_for("the reconnection", lambda ls: any(line.startswith("reconnect ") for line in ls),
                      timeout=15)
        run(increments(9, 11), timeout=10)
        page.wait_for("value 11", lambda ls: "message new value: 11" in ls)
        time.sleep(0.3)  # anything late and twice would show now
        lines = page.lines()

        want = [f"new value: {i}" for i in range(1, 12)]
        assert values(lines) == want, "\n".join(lines)
        reconnects = [line for line in lines if line.startswith("reconnect ")]
        assert reconnects == [f"reconnect true {client_id}"], "\n".join(lines)
        assert not any(line.startswith(("close", "error", "page error")) for line in lines), "\n".join(lines)
    finally:
        browser.close()
        proxy.stop()
