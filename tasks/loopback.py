"""Loopback HTTP servers that stand in for the web: the shapes world's image host, and a server of
good images and each fault a web crawl meets (404, timeout, non-image bytes, truncated JPEG, oversize
image, redirect, `X-Robots-Tag: noai`). Tests and the ingest benchmark download from them with the
real img2dataset; each server counts what it served, per kind, to compare against the manifest.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, ImageDraw


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (a slow server)
    kind: str = ""  # what the server counts this answer as; default: "ok" or the status code


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # slow-response handlers must not keep the process (or server_close) waiting
    # img2dataset opens dozens of connections at once; the default backlog of 5 drops SYNs, which
    # the client only resends after 1 s: a spurious connect timeout
    request_queue_size = 256


class LoopbackServer:
    """A threaded HTTP server on a loopback port answering GETs with `route(path) -> Response`."""

    def __init__(self, route: Callable[[str], Response], host: str = "127.0.0.1", port: int = 0):
        self.route = route
        self.served: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _count(self, kind: str) -> None:
        with self._lock:
            self.served[kind] += 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                response = server.route(self.path.split("?", 1)[0])
                server._count(response.kind or ("ok" if response.status == 200 else str(response.status)))
                if response.delay_s:
                    time.sleep(response.delay_s)
                try:
                    self.send_response(response.status)
                    self.send_header("Content-Type", response.content_type)
                    self.send_header("Content-Length", str(len(response.body)))
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(response.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): that is the point of a slow answer

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # one line per request would drown the ingest's own output

        return Handler

    def start(self) -> LoopbackServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="loopback-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- a web of good images and faults --------------------------------------------------------------

FAULT_KINDS = ("not_found", "timeout", "not_image", "truncated_jpeg", "oversize", "redirect", "noai")


def sample_jpeg(index: int, size: int = 64) -> bytes:
    """A deterministic small JPEG (a coloured rectangle on a plain background)."""
    rng = random.Random(index)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    x, y = rng.randrange(size // 2), rng.randrange(size // 2)
    ImageDraw.Draw(image).rectangle((x, y, x + size // 3, y + size // 3), fill=(255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class FaultServer(LoopbackServer):
    """Serves `/good/<i>.jpg` and `/fault/<kind>/<i>` for each kind in FAULT_KINDS.

    timeout answers after `slow_s` (set the download timeout below it); oversize is an
    `oversize_px`-square image (set max_image_area below its area); redirect sends a 302 to a good
    image, which is counted as "redirected" when fetched.
    """

    def __init__(
        self,
        slow_s: float = 4.0,
        oversize_px: int = 1200,
        image_px: int = 64,
        good_delay_s: float = 0.0,
        **kwargs,
    ):
        self.slow_s, self.oversize_px, self.image_px = slow_s, oversize_px, image_px
        self.good_delay_s = good_delay_s
        self._oversize: bytes | None = None
        super().__init__(self._route, **kwargs)

    def _route(self, path: str) -> Response:
        parts = path.strip("/").split("/")
        index = int("".join(ch for ch in parts[-1] if ch.isdigit()) or 0)
        if parts[0] == "good":
            return Response(
                200, sample_jpeg(index, self.image_px), "image/jpeg", delay_s=self.good_delay_s, kind="good"
            )
        if parts[0] == "redirected":
            return Response(200, sample_jpeg(index, self.image_px), "image/jpeg", kind="redirected")
        kind = parts[1] if parts[0] == "fault" and len(parts) == 3 else "unknown"
        if kind == "timeout":
            return Response(200, sample_jpeg(index), "image/jpeg", delay_s=self.slow_s, kind=kind)
        if kind == "not_image":
            return Response(200, b"<html><body>moved, sorry</body></html>", "text/html", kind=kind)
        if kind == "truncated_jpeg":
            whole = sample_jpeg(index, 128)
            return Response(200, whole[: len(whole) * 2 // 3], "image/jpeg", kind=kind)
        if kind == "oversize":
            return Response(200, self._oversize_png(), "image/png", kind=kind)
        if kind == "redirect":
            return Response(302, b"", "text/plain", {"Location": f"/redirected/{index}.jpg"}, kind=kind)
        if kind == "noai":
            return Response(200, sample_jpeg(index), "image/jpeg", {"X-Robots-Tag": "noai"}, kind=kind)
        return Response(
            404, b"not found", "text/plain", kind="not_found" if kind == "not_found" else "unknown"
        )

    def _oversize_png(self) -> bytes:
        if self._oversize is None:  # a plain PNG compresses to a few KB however large its area
            buf = io.BytesIO()
            Image.new("RGB", (self.oversize_px, self.oversize_px), (90, 120, 200)).save(buf, format="PNG")
            self._oversize = buf.getvalue()
        return self._oversize


def fault_url_rows(base_url: str, good: int, faults: dict[str, int], seed: int = 0) -> list[dict[str, str]]:
    """A shuffled URL list of `good` good images and `faults[kind]` URLs of each fault kind."""
    rows = [{"url": f"{base_url}/good/{i}.jpg", "caption": f"good image {i}"} for i in range(good)]
    for kind, n in faults.items():
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        rows += [{"url": f"{base_url}/fault/{kind}/{i}", "caption": f"{kind} {i}"} for i in range(n)]
    random.Random(seed).shuffle(rows)
    return rows
