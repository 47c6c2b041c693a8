"""What an ingest may fetch: http(s) only, the host policy on every URL and redirect, a whole-download
deadline and size bound, and decompression bombs refused from the header (never decoded)."""

from __future__ import annotations

import io
import resource
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tasks.ingest.checks import TOO_LARGE, StrictResizer, header_area
from tasks.ingest.fetch import FetchPolicy, policy_download
from tasks.ingest.report import reason_of
from tasks.loopback import sample_jpeg


def fake_dns(mapping):
    def resolve(host, port, proto=0):
        if host not in mapping:
            raise socket.gaierror(f"unknown host {host}")
        return [(socket.AF_INET, socket.SOCK_STREAM, proto, "", (mapping[host], port))]

    return resolve


WEB = FetchPolicy(
    resolve=fake_dns({"images.example.com": "93.184.216.34", "intranet.example.com": "10.1.2.3"})
)


@pytest.mark.parametrize(
    ("url", "message", "reason"),
    [
        ("file:///etc/passwd", "blocked: scheme 'file'", "blocked_scheme"),
        ("data:image/png;base64,iVBORw0KGgo=", "blocked: scheme 'data'", "blocked_scheme"),
        ("ftp://images.example.com/a.jpg", "blocked: scheme 'ftp'", "blocked_scheme"),
        ("http://127.0.0.1:8080/a.jpg", "non-public address 127.0.0.1", "blocked_host"),
        ("http://[::1]/a.jpg", "non-public address ::1", "blocked_host"),
        ("http://169.254.169.254/latest/meta-data/", "non-public address 169.254.169.254", "blocked_host"),
        ("http://intranet.example.com/a.jpg", "resolves to the non-public address 10.1.2.3", "blocked_host"),
        ("http://192.168.0.7/a.jpg", "non-public address 192.168.0.7", "blocked_host"),
    ],
)
def test_web_sources_never_open_local_or_private_urls(url, message, reason):
    key, stream, error = policy_download(WEB, (0, url), 1, "vlmpipe", [])
    assert stream is None and error.startswith("blocked:") and message in error
    assert reason_of(error) == reason


def test_host_lists_allow_and_deny_by_name_pattern_and_range():
    policy = FetchPolicy(
        allowed_hosts=("*.example.com", "127.0.0.1"),
        denied_hosts=("bad.example.com", "93.184.0.0/16"),
        resolve=fake_dns({"ok.example.com": "8.8.8.8", "cdn.example.com": "93.184.216.34"}),
    )
    policy.check("https://ok.example.com/x.jpg")
    policy.check("http://127.0.0.1:9/x.jpg")  # named in allowed_hosts: allowed although private
    for url, why in (
        ("https://bad.example.com/x.jpg", "in denied_hosts"),
        ("https://other.org/x.jpg", "not in allowed_hosts"),
        ("https://cdn.example.com/x.jpg", "denied address 93.184.216.34"),
    ):
        with pytest.raises(Exception, match=why):
            policy.check(url)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's API)
        if self.path == "/redirect-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        elif self.path == "/redirect-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/")
            self.end_headers()
        elif self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            for _ in range(40):  # a byte every 0.1 s: no socket read ever times out
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path == "/huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        else:
            body = sample_jpeg(1)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_redirects_deadlines_and_sizes_follow_the_policy(server):
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), deadline_s=1.0, max_bytes=10_000_000)
    key, stream, error = policy_download(policy, (1, f"{server}/good.jpg"), 2, None, [])
    assert error is None and Image.open(stream).size == (64, 64)
    _, _, error = policy_download(policy, (2, f"{server}/redirect-file"), 2, None, [])
    assert error.startswith("blocked: scheme 'file'")
    _, _, error = policy_download(policy, (3, f"{server}/redirect-metadata"), 2, None, [])
    assert error.startswith("blocked: host 169.254.169.254")
    started = time.monotonic()
    _, stream, error = policy_download(policy, (4, f"{server}/trickle"), 2, None, [])
    assert stream is None and "deadline" in error and reason_of(error) == "timeout"
    assert time.monotonic() - started < 2.5
    _, stream, error = policy_download(policy, (5, f"{server}/huge"), 2, None, [])
    assert stream is None and "max_download_bytes" in error and reason_of(error) == "too_many_bytes"


def test_a_host_is_resolved_once_and_the_connection_goes_to_the_checked_address(server):
    """DNS rebinding: a name that answers an allowed address to the check and a denied one to the
    connection. Each download resolves once (through the policy), connects to what it checked, and
    a later answer naming a denied address is refused before any connection."""
    port = int(server.rsplit(":", 1)[1])
    answers = iter(["127.0.0.1", "127.0.0.3", "127.0.0.3"])
    calls = []

    def rebinding(host, port, proto=0):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, proto, "", (next(answers), port))]

    policy = FetchPolicy(
        allow_private_addresses=True, denied_hosts=("127.0.0.3/32",), deadline_s=2.0, resolve=rebinding
    )
    _, stream, error = policy_download(policy, (1, f"http://rebind.test:{port}/a.jpg"), 2, None, [])
    assert error is None and Image.open(stream).size == (64, 64)  # served from the checked 127.0.0.1
    assert calls == ["rebind.test"]  # no second lookup that could answer otherwise
    _, stream, error = policy_download(policy, (2, f"http://rebind.test:{port}/a.jpg"), 2, None, [])
    assert stream is None and "resolves to the denied address 127.0.0.3" in error
    assert reason_of(error) == "blocked_host" and calls == ["rebind.test"] * 2


def _bomb_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding():
    bomb = _bomb_png(20_000)  # 400 MP in a few hundred KB
    assert len(bomb) < 2_000_000
    assert header_area(_bomb_png(9_000)) == (81_000_000, "9000x9000")
    assert header_area(bomb)[0] == 400_000_000  # PIL will not even open it: the count it read

    def decoder_must_not_run(*args, **kwargs):
        raise AssertionError("the bomb reached the decoder")

    resizer = StrictResizer(decoder_must_not_run, max_image_area=89_478_485)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    *_, error = resizer(io.BytesIO(bomb))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert error == TOO_LARGE and "not decoded" in error
    assert reason_of(error) == "too_large"
    assert grown_mb < 100  # decoding would take 400 MB at one byte a pixel


@pytest.mark.slow
def test_a_hostile_url_list_never_reaches_a_shard(tmp_path):
    """A real img2dataset ingest of a URL list with local files, data: URLs and a loopback host the
    source does not allow: only the allowed server's images land in the shards; the rest is counted."""
    import base64
    import json

    from ingest_helpers import FAST_DOWNLOAD, spec_file, url_list_file

    from data_specs.sources import load_source_spec
    from tasks.ingest import ingest_source
    from tasks.loopback import FaultServer

    secret = tmp_path / "secret.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(secret)
    inline = base64.b64encode(secret.read_bytes()).decode()
    with FaultServer() as server:
        port = server.base_url.rsplit(":", 1)[1]
        rows = [{"url": f"{server.base_url}/good/{i}.jpg", "caption": f"good {i}"} for i in range(6)]
        rows += [
            {"url": f"file://{secret}", "caption": "a local file"},
            {"url": "file:///etc/passwd", "caption": "a system file"},
            {"url": f"data:image/png;base64,{inline}", "caption": "inline bytes"},
            {"url": f"http://127.0.0.2:{port}/good/0.jpg", "caption": "loopback, not allowed"},
            {"url": f"http://localhost:{port}/good/1.jpg", "caption": "loopback by name, not allowed"},
        ]
        spec = spec_file(
            tmp_path,
            "hostile",
            kind="url_list",
            url_list=str(url_list_file(tmp_path, rows)),
            input_format="parquet",
            min_success_rate=0.1,
            **FAST_DOWNLOAD,  # allowed_hosts: [127.0.0.1]
        )
        manifest = ingest_source(load_source_spec(spec), tmp_path / "out", log=lambda _m: None)
        served = dict(server.served)
    assert served == {"good": 6}  # nothing else reached the server
    assert manifest["totals"]["success"] == 6
    assert manifest["reasons"]["blocked_scheme"] == 3 and manifest["reasons"]["blocked_host"] == 2
    from tasks.ingest import read_records

    captions = sorted(r["caption"] for r in read_records(tmp_path / "out"))
    assert captions == sorted(f"good {i}" for i in range(6))
    assert "blocked: scheme 'file'" in json.dumps(manifest["errors"])
