"""What an ingest may fetch, and how long it may take: img2dataset's `download_image`, replaced in
its worker process by `policy_download`, which opens only http and https URLs, refuses hosts the
source's policy denies (every loopback, private, link-local and reserved address by default for
web sources), applies the same policy to every redirect, and bounds a download's total time and
size (a socket timeout alone lets a server that trickles bytes hold a thread forever). A host is
resolved once per connection, and the connection goes to an address that was checked.

A refused URL is never opened; it is recorded as failed_to_download with a message that starts
with "blocked:", which the manifest counts under its own reason.
"""

from __future__ import annotations

import fnmatch
import http.client
import io
import ipaddress
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

SCHEMES = ("http", "https")
BROWSER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"


class Blocked(urllib.error.URLError):
    """A URL the policy refuses; `reason` is the one-line message recorded for it."""


@dataclass(frozen=True)
class FetchPolicy:
    allow_private_addresses: bool = False
    allowed_hosts: tuple[str, ...] = ()  # non-empty: only these (names, *.suffix patterns, IPs, CIDRs)
    denied_hosts: tuple[str, ...] = ()  # always refused, same forms
    deadline_s: float = 60.0  # the whole download, connection to last byte
    max_bytes: int = 50_000_000
    resolve: Any = field(default=socket.getaddrinfo, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FetchPolicy:
        """From SourceSpec.fetch_policy() (JSON in the worker's config: lists become tuples)."""
        hosts = {key: tuple(config.get(key) or ()) for key in ("allowed_hosts", "denied_hosts")}
        return cls(**{**config, **hosts})

    def check(self, url: str, *, resolve: bool = True) -> None:
        """Raise Blocked when `url` may not be fetched. With `resolve=False` only what the URL itself
        says is checked (scheme, host names): the download checks the addresses it connects to."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise Blocked(f"blocked: scheme {scheme or '(none)'!r} (only http and https are fetched)")
        host = (parts.hostname or "").lower()
        if not host:
            raise Blocked("blocked: no host in the URL")
        if _matches(host, self.denied_hosts):
            raise Blocked(f"blocked: host {host} is in denied_hosts")
        if self.allowed_hosts and not _matches(host, self.allowed_hosts):
            raise Blocked(f"blocked: host {host} is not in allowed_hosts")
        if resolve:
            self.addresses(host, parts.port or (443 if scheme == "https" else 80))

    def addresses(self, host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """`host` resolved once, every address checked: a connection goes to one of these, so a DNS
        answer that changes between the check and the connection (rebinding) cannot slip past."""
        found = self._resolve(host, port)
        explicitly_allowed = bool(self.allowed_hosts) and _matches(host, self.allowed_hosts)
        private_ok = self.allow_private_addresses or explicitly_allowed
        for address in found:
            if _matches(str(address), self.denied_hosts):
                raise Blocked(f"blocked: host {host} resolves to the denied address {address}")
            if not private_ok and not address.is_global:
                raise Blocked(f"blocked: host {host} resolves to the non-public address {address}")
        return found

    def _resolve(self, host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            infos = self.resolve(host, port, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise urllib.error.URLError(f"cannot resolve {host} ({exc})") from None
        return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def _matches(host: str, patterns: tuple[str, ...]) -> bool:
    """Host names (exact or `*.example.com`), IP addresses and CIDR ranges."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for pattern in patterns:
        pattern = pattern.lower()
        if "/" in pattern and address is not None:
            try:
                if address in ipaddress.ip_network(pattern, strict=False):
                    return True
            except ValueError:
                continue
        elif fnmatch.fnmatchcase(host, pattern):
            return True
    return False


class _PolicyRedirects(urllib.request.HTTPRedirectHandler):
    """Checks every redirect target against the policy before urllib looks at it (urllib alone would
    follow a redirect to ftp:// or to an internal host)."""

    def __init__(self, policy: FetchPolicy):
        self.policy = policy

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001 (urllib's API)
        location = headers.get("location") or headers.get("uri")
        if location:  # its addresses are checked when the pinned connection opens
            self.policy.check(urljoin(req.full_url, location), resolve=False)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _pinned(base: type[http.client.HTTPConnection], policy: FetchPolicy) -> Any:
    """A connection class of `base` that connects only to the addresses `policy.addresses` checked,
    from one resolution (https still verifies the certificate against the host name)."""

    class Pinned(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = self._connect_checked

        def _connect_checked(self, address: tuple[str, int], timeout: Any = None, source: Any = None):  # noqa: ANN202
            host, port = address
            failure: OSError | None = None
            for ip in policy.addresses(host.strip("[]").lower(), port):
                try:
                    return socket.create_connection((str(ip), port), timeout, source)
                except OSError as exc:
                    failure = exc
            raise failure or OSError(f"no address for {host}")

    return Pinned


class _PinnedHTTP(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.connection = _pinned(http.client.HTTPConnection, policy)

    def http_open(self, req):  # noqa: ANN001, ANN201 (urllib's API)
        return self.do_open(self.connection, req)


class _PinnedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.connection = _pinned(http.client.HTTPSConnection, policy)

    def https_open(self, req):  # noqa: ANN001, ANN201 (urllib's API)
        return self.do_open(self.connection, req, context=self._context)


def policy_download(
    policy: FetchPolicy,
    row: Any,
    timeout: float,
    user_agent_token: str | None,
    disallowed_header_directives: Any,
) -> tuple[Any, io.BytesIO | None, str | None]:
    """img2dataset's download_image contract: (key, bytes or None, error message or None)."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    agent = BROWSER_AGENT
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
    try:
        policy.check(url, resolve=False)  # the addresses: at connection time, from one resolution
        opener = urllib.request.build_opener(
            _PolicyRedirects(policy), _PinnedHTTP(policy), _PinnedHTTPS(policy)
        )
        request = urllib.request.Request(url, data=None, headers={"User-Agent": agent})
        deadline = time.monotonic() + policy.deadline_s
        with opener.open(request, timeout=timeout) as response:
            if disallowed_header_directives and is_disallowed(
                response.headers, user_agent_token, disallowed_header_directives
            ):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                return (
                    key,
                    None,
                    f"blocked: {length} bytes announced, above max_download_bytes {policy.max_bytes}",
                )
            buffer = io.BytesIO()
            # read1 returns what one socket read gives: the deadline is checked between trickles
            read_some = getattr(response, "read1", response.read)
            while True:
                if time.monotonic() > deadline:
                    return key, None, f"download timed out: over the {policy.deadline_s:g} s deadline"
                chunk = read_some(1 << 16)
                if not chunk:
                    break
                buffer.write(chunk)
                if buffer.tell() > policy.max_bytes:
                    return key, None, f"blocked: over max_download_bytes {policy.max_bytes}"
        buffer.seek(0)
        return key, buffer, None
    except urllib.error.URLError as exc:  # urllib wraps what the pinned connection refused
        blocked = exc if isinstance(exc, Blocked) else exc.reason
        return key, None, str(blocked.reason if isinstance(blocked, Blocked) else exc)
    except Exception as exc:  # noqa: BLE001 (img2dataset records any failure as the URL's message)
        return key, None, str(exc)


class PolicyDownloader:
    """Wraps img2dataset's Downloader, which is pickled into its download processes (multiprocessing
    or Spark): in each of them, before the first shard, the module's download_image is replaced by
    policy_download under `policy`, so no process downloads around the policy."""

    def __init__(self, inner: Any, policy: FetchPolicy):
        self.inner, self.policy = inner, policy

    def __call__(self, row: Any) -> Any:
        install(self.policy)
        return self.inner(row)


def install(policy: FetchPolicy) -> None:
    """Route img2dataset's downloads in this process through `policy` (download_image_with_retry
    looks download_image up at each call)."""
    import functools
    import importlib

    downloader = importlib.import_module("img2dataset.downloader")
    downloader.download_image = functools.partial(policy_download, policy)
