"""A minimal Chrome DevTools Protocol driver for tests: headless Chromium (apt
`chromium`) + `websocket-client`; no node, no selenium, no chromedriver.
(`chromium --dump-dom` and `--screenshot` never return on a page with a live
MJPEG view or an EventSource: the page never goes idle.)

    with Chromium() as b:
        b.navigate("http://127.0.0.1:8080/")
        b.wait_for("document.body.dataset.ready === '1'")
        n = b.eval("document.querySelectorAll('img.live').length")
        b.set_files("#file", ["/tmp/test.jpg"])        # DOM.setFileInputFiles
        b.click("#infer-btn")
        b.screenshot("page.png")

Every request stays on this machine: the browser is told to resolve no host
name but 127.0.0.1/localhost (--host-resolver-rules) and to run none of its
background services.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any, Optional

import websocket  # websocket-client

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--disable-features=Translate,OptimizationHints,MediaRouter,InterestFeedContentSuggestions",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
    "--window-size=1280,900", "--hide-scrollbars", "--mute-audio",
]


class CDPError(RuntimeError):
    pass


def need_chromium() -> str:
    """The chromium binary, or skip (fail under CI=true, where tools/apt-test.txt installs it)."""
    import pytest

    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (tools/apt-test.txt)")
        pytest.skip("chromium is not installed (apt-get install --no-install-recommends chromium)")
    return binary


class Chromium:
    def __init__(self, binary: str = "chromium", extra: tuple = (), timeout: float = 20.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="lited-chromium-")   # a new empty profile every time
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", *extra, "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._devtools_port()
        page = next(t for t in self._json(port, "/json/list") if t["type"] == "page")
        # websocket-client sends an Origin header by default, which Chromium >= 111 refuses
        # unless --remote-allow-origins is given: send none instead
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self._ids = itertools.count(1)
        self.events: list = []
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _devtools_port(self) -> int:
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CDPError(f"chromium exited with {self.proc.returncode}")
            try:
                with open(path) as fh:
                    return int(fh.readline())
            except (OSError, ValueError):
                time.sleep(0.05)
        raise CDPError("chromium did not open its DevTools port")

    @staticmethod
    def _json(port: int, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.load(r)

    # -- protocol
    def call(self, method: str, **params) -> dict:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
                del self.events[:-500]
        raise CDPError(f"{method}: no answer in {self.timeout} s")

    def wait_event(self, name: str, timeout: Optional[float] = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        for i, ev in enumerate(self.events):
            if ev["method"] == name:
                return self.events.pop(i)
        self.ws.settimeout(0.5)
        try:
            while time.monotonic() < deadline:
                try:
                    msg = json.loads(self.ws.recv())
                except websocket.WebSocketTimeoutException:
                    continue
                if msg.get("method") == name:
                    return msg
                self.events.append(msg)
        finally:
            self.ws.settimeout(self.timeout)
        raise CDPError(f"no {name} event in time")

    # -- conveniences
    def navigate(self, url: str, wait_load: bool = False) -> None:
        """wait_load: wait for the load event; a page with an MJPEG <img> never
        finishes loading in some versions, so tests rather wait_for() a condition."""
        self.events.clear()
        res = self.call("Page.navigate", url=url)
        if res.get("errorText"):
            raise CDPError(f"navigate {url}: {res['errorText']}")
        if wait_load:
            self.wait_event("Page.loadEventFired")

    def eval(self, expression: str, await_promise: bool = True) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise CDPError(f"JS: {d.get('exception', {}).get('description') or d.get('text')}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0, interval: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.eval(expression)
            except CDPError as exc:  # e.g. the page is still loading: its elements are not there yet
                value, last_error = None, exc
            else:
                last_error = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for: {expression}" + (f" ({last_error})" if last_error else ""))
            time.sleep(interval)

    def set_files(self, selector: str, paths: list) -> None:
        root = self.call("DOM.getDocument", depth=0)["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise CDPError(f"no element {selector}")
        self.call("DOM.setFileInputFiles", nodeId=node, files=[os.path.abspath(p) for p in paths])

    def click(self, selector: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, path: str, full_page: bool = False) -> str:
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001
            pass
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
