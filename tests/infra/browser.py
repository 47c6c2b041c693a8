"""A headless Chromium (Debian's package) driven over the DevTools protocol: open a page, wait for
text to appear, run a line of JavaScript, take a screenshot. Enough to check what a user sees in the
MLflow and Prefect UIs; no browser-automation package is needed beyond `websockets` (Prefect's)."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect


def chromium() -> str:
    """The chromium binary; installed with apt-get when missing (the test set-up's one step)."""
    found = shutil.which("chromium")
    if found:
        return found
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
        check=True,
        capture_output=True,
        timeout=900,
        env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium, but it is not on PATH"
    return found


class Browser:
    def __init__(self, width: int = 1600, height: int = 1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.profile = tempfile.TemporaryDirectory()
        self.process = subprocess.Popen(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                f"--window-size={width},{height}",
                f"--remote-debugging-port={port}",
                f"--user-data-dir={self.profile.name}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "chromium's DevTools endpoint did not answer"
            time.sleep(0.3)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=30)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=120))
            if message.get("id") == n:
                assert "error" not in message, message["error"]
                return message.get("result", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, *needles: str, timeout_s: float = 90) -> str:
        """Wait until the page's visible text holds every needle; returns the text."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if all(n in text for n in needles):
                return text
            if time.monotonic() > deadline:
                missing = [n for n in needles if n not in text]
                raise AssertionError(
                    f"not on the page after {timeout_s:g} s: {missing}; page text: {text[:1500]!r}"
                )
            time.sleep(1)

    def click_until(self, selector_js: str, *needles: str, timeout_s: float = 90) -> str:
        """Click the element `selector_js` finds (once it is there) until the page text holds
        every needle; returns the text."""
        deadline = time.monotonic() + timeout_s
        while True:
            clicked = self.js(
                f"(() => {{ const e = {selector_js}; if (!e) return false; e.click(); return true; }})()"
            )
            if clicked:
                try:
                    return self.wait_for(*needles, timeout_s=5)
                except AssertionError:
                    pass
            if time.monotonic() > deadline:
                return self.wait_for(*needles, timeout_s=1)
            time.sleep(1)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.profile.cleanup()
