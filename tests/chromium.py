"""Open a local HTML file in headless Chromium over its DevTools protocol, offline, and report what a reader
would see: console errors and exceptions, requests that left the file, each image's decoded size, and what a
JavaScript check returns; optionally a PNG screenshot.

Used by tests/test_report.py; also a script: ``python tests/chromium.py runs/tiny/report.html --screenshot
docs/report.png`` (what made the README's screenshot).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# Every image decoded (img.decode() rejects one that cannot be), with its natural size.
IMAGES_JS = """Promise.all([...document.images].map(img => img.decode().then(
    () => ({ok: true, width: img.naturalWidth, height: img.naturalHeight, alt: img.alt}),
    err => ({ok: false, error: String(err), alt: img.alt}))))"""


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM, else the first of NAMES on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for path in map(shutil.which, NAMES) if path), None)


class Page:
    """One headless Chromium with one page, driven over the DevTools WebSocket."""

    def __init__(self, binary: str, width: int = 1280, height: int = 1800, timeout: float = 60.0):
        import websocket  # websocket-client

        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="chatalign-chromium-")
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--mute-audio",
                "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # nothing reaches a network
                "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port = self._port()
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.call(method)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _port(self) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"chromium wrote no DevToolsActivePort within {self.timeout:.0f} s")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            self.events.append(message)
            if message.get("method") == method:
                return message
        raise TimeoutError(f"no {method} within {self.timeout:.0f} s")

    def open(self, path: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                        for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Network.loadingFailed":
                out.append(f"failed load: {params.get('errorText')}")
        return out

    def requests(self) -> list[str]:
        """URLs the page asked for."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, height: int | None = None) -> None:
        params: dict[str, Any] = {"format": "png"}
        if height:
            width = self.evaluate("document.documentElement.scrollWidth")
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check(path: Path, binary: str, screenshot: Path | None = None, height: int | None = None) -> dict[str, Any]:
    """Open ``path`` and return {errors, requests, images, tables}."""
    with Page(binary) as page:
        page.open(path)
        images = page.evaluate(IMAGES_JS)
        tables = page.evaluate("[...document.querySelectorAll('table')].map(t => t.id)")
        metric_rows = page.evaluate("document.querySelectorAll('table#metrics tbody tr').length")
        if screenshot:
            page.screenshot(screenshot, height)
        return {"errors": page.errors(), "requests": page.requests(), "images": images, "tables": tables,
                "metric_rows": metric_rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("html", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--height", type=int, default=None, help="clip the screenshot to this many pixels")
    args = parser.parse_args()
    binary = find_chromium()
    if binary is None:
        print("no Chromium found (apt-get install chromium, or set $CHROMIUM)", file=sys.stderr)
        return 2
    print(json.dumps(check(args.html, binary, args.screenshot, args.height), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
