"""sam2serve.media.fetch: URL policy (every IP spelling), host lists, pinning, redirects, caps.

No network: names resolve through a fake resolver, policy tests use httpx.MockTransport,
and the end-to-end tests talk only to a server this module starts on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from sam2serve.config import Settings
from sam2serve.errors import BadRequest, PayloadTooLarge, ServiceError
from sam2serve.media.fetch import ByteCap, UrlFetcher, blocked_reason

pytestmark = pytest.mark.timeout(60)

PUBLIC_V4 = "93.184.216.34"
FAKE_DNS: dict[str, list[str]] = {
    "img.example.test": [PUBLIC_V4],
    "cdn.img.example.test": [PUBLIC_V4],
    "example.test": [PUBLIC_V4],
    "other.test": ["203.0.114.7"],
    "v6.example.test": ["2606:4700::1"],
    "localhost": ["127.0.0.1", "::1"],
    "foo.localhost": ["127.0.0.1"],
    "internal.example.test": ["10.0.0.5"],
    "rebind.example.test": [PUBLIC_V4, "127.0.0.1"],
    "meta-alias.example.test": ["169.254.169.254"],
    "mapped.example.test": ["::ffff:10.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
}


class FakeResolver:
    """Resolves from a table; unknown names fail like NXDOMAIN, with a detail never shown."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = FAKE_DNS if table is None else table
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "secret-resolver-detail")
        return self.table[host]


class Recorder:
    """MockTransport handler: records requests, answers with `respond` (default 200 b'img')."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.respond = respond or (lambda request: httpx.Response(200, content=b"img"))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)


def run_fetch(
    url: str,
    recorder: Recorder | None = None,
    resolver: FakeResolver | None = None,
    **settings: Any,
) -> bytes:
    async def go() -> bytes:
        fetcher = UrlFetcher(
            Settings(**settings),
            resolver=resolver or FakeResolver(),
            transport=httpx.MockTransport(recorder or Recorder()),
        )
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.aclose()

    return asyncio.run(go())


def assert_refused(exc: ServiceError) -> None:
    assert exc.field == "image.value"
    assert exc.message.startswith("image.value: ")
    # never resolver output or exception internals
    for internal in ("secret", "10.0.0.5", "169.254.169.254", "ffff:", "Traceback", "Errno"):
        assert internal not in exc.message, exc.message


# -- policy: every blocked spelling --------------------------------------------------

BLOCKED = [
    # loopback, every IPv4 spelling
    "https://127.0.0.1/a.png",
    "https://2130706433/",
    "https://0x7f000001/",
    "https://0X7F000001/",
    "https://017700000001/",
    "https://0177.0.0.1/",
    "https://0x7f.0.0.1/",
    "https://0x7f.1/",
    "https://127.1/",
    "https://127.0.1/",
    "https://127.0.0.1./",
    "https://127.0.0.1:8080/",
    "https://127.255.255.254/",
    # loopback names and IPv6 forms
    "https://localhost/",
    "https://LOCALHOST./",
    "https://foo.localhost/",
    "https://[::1]/",
    "https://[0:0:0:0:0:0:0:1]:443/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/",
    "https://[::127.0.0.1]/",
    "https://[2002:7f00:1::]/",
    "https://[64:ff9b::7f00:1]/",
    "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo, client 127.0.0.1
    # private, link-local, shared
    "https://10.0.0.1/",
    "https://10.1/",
    "https://167772161/",
    "https://172.16.5.4/",
    "https://192.168.0.1/",
    "https://3232235521/",
    "https://100.64.0.1/",
    "https://[fe80::1]/",
    "https://[fe80::1%25eth0]/",
    "https://[fc00::1]/",
    "https://[fd12:3456::1]/",
    "https://[fec0::1]/",
    # cloud metadata, every spelling
    "https://169.254.169.254/latest/meta-data/",
    "https://2852039166/",
    "https://0xa9fea9fe/",
    "https://0xA9.0xFE.0xA9.0xFE/",
    "https://169.254.43518/",
    "https://[::ffff:169.254.169.254]/",
    "https://[::ffff:a9fe:a9fe]/",
    "https://[fd00:ec2::254]/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://METADATA.google.internal./",
    "https://metadata/",
    "https://100.100.100.200/",
    # not unicast
    "https://0.0.0.0/",
    "https://0/",
    "https://0.0.0.7/",
    "https://[::]/",
    "https://224.0.0.1/",
    "https://[ff02::1]/",
    "https://255.255.255.255/",
    "https://240.0.0.1/",
    # names resolving to blocked addresses (any address blocked => refused)
    "https://internal.example.test/",
    "https://rebind.example.test/",
    "https://meta-alias.example.test/",
    "https://mapped.example.test/",
    "https://unknown.example.test/",
    # malformed hosts
    "https://1.2.3.256/",
    "https://1.2.3.4.5/",
    "https://0x100000000/",
    "https://4294967296/",
    "https://08.1.2.3/",
    "https://%31%32%37.0.0.1/",
    "https://exa mple.test/",
    # scheme, userinfo, shape
    "http://img.example.test/a.png",
    "HTTP://img.example.test/a.png",
    "https://user:pw@img.example.test/",
    "https://user@img.example.test/",
    "https://img.example.test@127.0.0.1/",
    "ftp://img.example.test/a.png",
    "file:///etc/passwd",
    "gopher://img.example.test/",
    "data:image/png;base64,AAAA",
    "img.example.test/a.png",
    "//img.example.test/a.png",
    "",
    "https://",
    "https:///a.png",
    "https://" + "a" * 9000 + ".test/",
]


@pytest.mark.parametrize("url", BLOCKED)
def test_blocked_urls_are_refused_before_any_request(url: str) -> None:
    recorder = Recorder()
    with pytest.raises(BadRequest) as info:
        run_fetch(url, recorder)
    assert_refused(info.value)
    assert recorder.requests == []


METADATA = [
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/",
    "http://[::ffff:169.254.169.254]/",
    "http://169.254.170.2/v2/credentials",
    "http://[fd00:ec2::254]/",
    "http://metadata.google.internal/",
    "http://meta-alias.example.test/",
    "http://0.0.0.0/",
]


@pytest.mark.parametrize("url", METADATA)
def test_metadata_stays_blocked_with_allow_private(url: str) -> None:
    recorder = Recorder()
    with pytest.raises(BadRequest) as info:
        run_fetch(url, recorder, url_allow_private=True, url_allow_http=True)
    assert_refused(info.value)
    assert recorder.requests == []


def test_refusal_messages_say_why() -> None:
    cases = {
        "https://10.0.0.1/": "private",
        "https://169.254.169.254/": "metadata",
        "http://img.example.test/": "https://",
        "https://u:p@img.example.test/": "password",
        "https://unknown.example.test/": "could not be resolved",
        "https://224.0.0.1/": "unicast",
    }
    for url, phrase in cases.items():
        with pytest.raises(BadRequest) as info:
            run_fetch(url)
        assert phrase in info.value.message, (url, info.value.message)


# -- policy: allowed ones, and where the connection goes -----------------------------

ALLOWED = [
    # (url, settings, expected pinned host in the request URL, Host header, SNI)
    ("https://img.example.test/a.png", {}, PUBLIC_V4, "img.example.test", "img.example.test"),
    ("https://IMG.Example.Test./a", {}, PUBLIC_V4, "img.example.test.", "img.example.test"),
    ("https://img.example.test:8443/", {}, PUBLIC_V4, "img.example.test:8443", "img.example.test"),
    ("https://v6.example.test/", {}, "2606:4700::1", "v6.example.test", "v6.example.test"),
    ("https://8.8.8.8/", {}, "8.8.8.8", "8.8.8.8", None),
    ("https://134744072/", {}, "8.8.8.8", "8.8.8.8", None),
    ("https://[2606:4700::2]:444/", {}, "2606:4700::2", "[2606:4700::2]:444", None),
    ("https://[::ffff:8.8.8.8]/", {}, "8.8.8.8", "[::ffff:808:808]", None),
    ("http://img.example.test/", {"url_allow_http": True}, PUBLIC_V4, "img.example.test", None),
    ("http://127.1:9/", {"url_allow_http": True, "url_allow_private": True}, "127.0.0.1",
     "127.0.0.1:9", None),
    ("https://localhost/", {"url_allow_private": True}, "127.0.0.1", "localhost", "localhost"),
    ("https://10.1/", {"url_allow_private": True}, "10.0.0.1", "10.0.0.1", None),
    ("https://[::1]/", {"url_allow_private": True}, "::1", "[::1]", None),
]  # fmt: skip


@pytest.mark.parametrize(("url", "settings", "ip", "host_header", "sni"), ALLOWED)
def test_allowed_urls_connect_to_the_checked_address(
    url: str, settings: dict, ip: str, host_header: str, sni: str | None
) -> None:
    recorder = Recorder()
    assert run_fetch(url, recorder, **settings) == b"img"
    (request,) = recorder.requests
    assert request.url.host == ip
    assert request.headers["host"] == host_header
    assert request.extensions.get("sni_hostname") == sni
    assert request.headers["accept-encoding"] == "identity"


def test_ip_literals_are_not_resolved() -> None:
    resolver = FakeResolver()
    run_fetch("https://134744072/", resolver=resolver)
    run_fetch("https://[2606:4700::2]/", resolver=resolver)
    assert resolver.calls == []
    run_fetch("https://img.example.test:8443/", resolver=resolver)
    assert resolver.calls == [("img.example.test", 8443)]


def test_every_hop_is_resolved_again_and_pinned() -> None:
    """DNS rebinding: the second lookup of the same name answers loopback -> refused."""
    answers = iter([[PUBLIC_V4], ["127.0.0.1"]])

    class Rebinding(FakeResolver):
        async def __call__(self, host: str, port: int) -> list[str]:
            self.calls.append((host, port))
            return next(answers)

    recorder = Recorder(lambda r: httpx.Response(302, headers={"Location": "/again"}))
    with pytest.raises(BadRequest) as info:
        run_fetch("https://img.example.test/a", recorder, resolver=Rebinding())
    assert "redirect 1" in info.value.message and "private" in info.value.message
    assert [r.url.host for r in recorder.requests] == [PUBLIC_V4]


@pytest.mark.parametrize(
    "ip",
    ["8.8.8.8", "2606:4700::1", "::ffff:8.8.8.8", "2002:808:808::1"],
)
def test_blocked_reason_allows_public(ip: str) -> None:
    assert blocked_reason(ipaddress.ip_address(ip)) is None


# -- allow / deny lists --------------------------------------------------------------

LISTS = [
    # (allow, deny, url, allowed?)
    (["img.example.test"], [], "https://img.example.test/", True),
    (["img.example.test"], [], "https://IMG.EXAMPLE.TEST./", True),
    (["img.example.test"], [], "https://other.test/", False),
    (["img.example.test"], [], "https://cdn.img.example.test/", False),
    (["*.example.test"], [], "https://img.example.test/", True),
    (["*.example.test"], [], "https://cdn.img.example.test/", True),
    (["*.example.test"], [], "https://example.test/", False),
    (["*.example.test"], [], "https://8.8.8.8/", False),
    (["8.8.8.0/24"], [], "https://8.8.8.8/", True),
    (["8.8.8.0/24"], [], "https://img.example.test/", False),
    (["*.example.test", "other.test"], [], "https://other.test/", True),
    ([], ["img.example.test"], "https://img.example.test/", False),
    ([], ["img.example.test"], "https://other.test/", True),
    ([], ["*.example.test"], "https://cdn.img.example.test/", False),
    ([], ["93.184.216.0/24"], "https://img.example.test/", False),  # resolved address
    ([], ["93.184.216.0/24"], "https://other.test/", True),
    (["*.example.test"], ["img.example.test"], "https://img.example.test/", False),
    (["metadata.google.internal"], [], "https://metadata.google.internal/", False),
    (["internal.example.test"], [], "https://internal.example.test/", False),
]


@pytest.mark.parametrize(("allow", "deny", "url", "ok"), LISTS)
def test_host_lists(allow: list[str], deny: list[str], url: str, ok: bool) -> None:
    recorder = Recorder()
    if ok:
        assert run_fetch(url, recorder, url_allow_hosts=allow, url_deny_hosts=deny) == b"img"
        return
    with pytest.raises(BadRequest) as info:
        run_fetch(url, recorder, url_allow_hosts=allow, url_deny_hosts=deny)
    assert_refused(info.value)
    assert recorder.requests == []


def test_host_lists_from_comma_separated_settings() -> None:
    with pytest.raises(BadRequest) as info:
        run_fetch("https://other.test/", url_allow_hosts="img.example.test, *.cdn.test")
    assert "allow list" in info.value.message


# -- responses (mock transport) ------------------------------------------------------

RESPONSES = [
    # (response, error class, phrase in the message)
    (httpx.Response(404), BadRequest, "HTTP 404"),
    (httpx.Response(500), BadRequest, "HTTP 500"),
    (httpx.Response(304), BadRequest, "HTTP 304"),
    (httpx.Response(302), BadRequest, "no Location"),
    (httpx.Response(302, headers={"Location": "http://img.example.test/"}), BadRequest,
     "redirect 1: the URL scheme is 'http'"),
    (httpx.Response(301, headers={"Location": "https://10.0.0.1/"}), BadRequest,
     "redirect 1: the host is a loopback"),
    (httpx.Response(200, content=b"x", headers={"Content-Encoding": "gzip"}), BadRequest,
     "compressed"),
    (httpx.Response(200, content=b"x" * 101), PayloadTooLarge, "100 byte cap"),
]  # fmt: skip


@pytest.mark.parametrize(("response", "error", "phrase"), RESPONSES)
def test_bad_responses(response: httpx.Response, error: type, phrase: str) -> None:
    with pytest.raises(error) as info:
        run_fetch("https://img.example.test/", Recorder(lambda r: response), url_max_bytes=100)
    assert_refused(info.value)
    assert phrase in info.value.message


def test_connection_errors_do_not_leak_details() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("secret-internal-detail")

    with pytest.raises(BadRequest) as info:
        run_fetch("https://img.example.test/", Recorder(fail))
    assert "could not fetch the URL" in info.value.message
    assert "secret" not in info.value.message


def test_relative_redirect_is_followed_and_checked() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/start"):
            return httpx.Response(307, headers={"Location": "../final.png"})
        return httpx.Response(200, content=b"final")

    recorder = Recorder(respond)
    assert run_fetch("https://img.example.test/a/start", recorder) == b"final"
    assert [r.url.path for r in recorder.requests] == ["/a/start", "/final.png"]
    assert all(r.headers["host"] == "img.example.test" for r in recorder.requests)


VIDEO_CAP = ByteCap(1000, "SAM2SERVE_VIDEO_MAX_UPLOAD_BYTES", "send a shorter or smaller clip")


def fetch_many(calls: list[dict[str, Any]], body: bytes, declare: bool) -> list[Any]:
    """One fetcher (url_max_bytes=100) serving `body`; each call's bytes or error, in order."""

    def respond(request: httpx.Request) -> httpx.Response:
        if declare:
            return httpx.Response(200, content=body)  # Content-Length: len(body)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            yield body[:50]
            yield body[50:]

        return httpx.Response(200, content=chunks())

    async def go() -> list[Any]:
        fetcher = UrlFetcher(
            Settings(url_max_bytes=100),
            resolver=FakeResolver(),
            transport=httpx.MockTransport(respond),
        )
        out: list[Any] = []
        try:
            for kwargs in calls:
                try:
                    out.append(await fetcher.fetch("https://img.example.test/x", **kwargs))
                except ServiceError as exc:
                    out.append(exc)
        finally:
            await fetcher.aclose()
        return out

    return asyncio.run(go())


# (size of the body, per-call arguments, expected: bytes | (status, field, phrase))
PER_CALL_CAPS = [
    (100, {}, "ok"),
    (101, {}, (413, "image.value", "image.value: the download is over the 100 byte cap (url_max_")),
    (101, {"cap": VIDEO_CAP, "field": "url"}, "ok"),
    (1000, {"cap": VIDEO_CAP, "field": "url"}, "ok"),
    (1001, {"cap": VIDEO_CAP, "field": "url"},
     (413, "url", "url: the download is over the 1000 byte cap (SAM2SERVE_VIDEO_MAX_UPLOAD_")),
    (1001, {"cap": VIDEO_CAP}, (413, "image.value", "send a shorter or smaller clip")),
]  # fmt: skip


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "streamed"])
@pytest.mark.parametrize(("size", "kwargs", "expected"), PER_CALL_CAPS)
def test_per_call_byte_cap(size: int, kwargs: dict[str, Any], expected: Any, declare: bool) -> None:
    """A call's own cap replaces url_max_bytes for that call only: the image cap is still
    applied to the next plain call on the same fetcher."""
    body = b"v" * size
    got, after = fetch_many([kwargs, {}], body, declare)
    if expected == "ok":
        assert got == body
    else:
        status, field, phrase = expected
        assert isinstance(got, PayloadTooLarge)
        assert (got.status, got.field) == (status, field)
        assert phrase in got.message
    # the image cap is unchanged by a video call on the same fetcher
    assert (after == body) if size <= 100 else isinstance(after, PayloadTooLarge)


def test_policy_refusals_name_the_callers_field() -> None:
    """A refused clip URL names the request's `url` field, not the image field."""

    async def go() -> ServiceError:
        fetcher = UrlFetcher(Settings(), resolver=FakeResolver())
        try:
            with pytest.raises(BadRequest) as info:
                await fetcher.fetch("https://10.0.0.1/clip.mp4", cap=VIDEO_CAP, field="url")
            return info.value
        finally:
            await fetcher.aclose()

    exc = asyncio.run(go())
    assert exc.field == "url"
    assert exc.message.startswith("url: the host is a loopback, private")


# -- end to end against a real local server (127.0.0.1 only) ------------------------

MAX_BYTES = 1000
PNG_BODY = b"\x89PNG\r\n\x1a\n" + b"p" * 50


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0: one request per connection; no Content-Length means body ends at close."""

    stop: threading.Event
    hits: dict[str, int]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        key = path.rstrip("0123456789")
        self.hits[key] = self.hits.get(key, 0) + 1
        with contextlib.suppress(OSError):  # the client gave up (cap or deadline): expected
            self._route(path)

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _route(self, path: str) -> None:
        if path == "/img":
            self._send(200, PNG_BODY, Content_Length=str(len(PNG_BODY)))
        elif path.startswith("/chain/"):  # /chain/N: N redirects, then the image
            left = int(path.rsplit("/", 1)[1])
            if left == 0:
                self._send(200, PNG_BODY, Content_Length=str(len(PNG_BODY)))
            else:
                self._send(302, Location=f"/chain/{left - 1}", Content_Length="0")
        elif path.startswith("/loop/"):
            n = int(path.rsplit("/", 1)[1])
            if n > 50:  # bound the loop even if the client did not
                self._send(500, Content_Length="0")
            else:
                self._send(302, Location=f"/loop/{n + 1}", Content_Length="0")
        elif path == "/to-metadata":
            self._send(302, Location="http://169.254.169.254/latest/meta-data/")
        elif path == "/to-metadata-mapped":
            self._send(302, Location="http://[::ffff:a9fe:a9fe]/latest/meta-data/")
        elif path == "/big-declared":
            self._send(200, b"x" * (MAX_BYTES + 1), Content_Length=str(MAX_BYTES + 1))
        elif path == "/big-stream":
            self.send_response(200)
            self.end_headers()
            for _ in range(20):  # 20 x 500 bytes, no Content-Length
                self.wfile.write(b"y" * 500)
                self.wfile.flush()
        elif path == "/slow-headers":
            self.stop.wait(10)
            self._send(200, b"late", Content_Length="4")
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "500")
            self.end_headers()
            for _ in range(500):  # 1 byte per 20 ms: each read is fast, the total is not
                if self.stop.wait(0.02):
                    return
                self.wfile.write(b"z")
                self.wfile.flush()
        else:
            self._send(404, b"nope", Content_Length="4")


class LocalServer:
    def __init__(self) -> None:
        handler = type("Handler", (_Handler,), {"stop": threading.Event(), "hits": {}})
        self.handler = handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def hits(self) -> dict[str, int]:
        return self.handler.hits


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    srv = LocalServer()
    srv.thread.start()
    yield srv
    srv.handler.stop.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


LOCAL = {
    "url_allow_http": True,
    "url_allow_private": True,
    "url_max_bytes": MAX_BYTES,
    "url_timeout_s": 1.0,
    "url_max_redirects": 3,
}


def real_fetch(url: str, **overrides: Any) -> bytes:
    async def go() -> bytes:
        fetcher = UrlFetcher(Settings(**{**LOCAL, **overrides}))
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.aclose()

    return asyncio.run(go())


def test_local_fetch_returns_the_body(server: LocalServer) -> None:
    assert real_fetch(server.url("/img")) == PNG_BODY


def test_local_server_is_refused_by_default(server: LocalServer) -> None:
    before = server.hits.get("/img", 0)
    with pytest.raises(BadRequest):
        real_fetch(server.url("/img"), url_allow_private=False)
    with pytest.raises(BadRequest):
        real_fetch(server.url("/img"), url_allow_http=False)
    assert server.hits.get("/img", 0) == before


def test_local_redirect_chain_within_the_limit(server: LocalServer) -> None:
    assert real_fetch(server.url("/chain/3")) == PNG_BODY
    with pytest.raises(BadRequest) as info:
        real_fetch(server.url("/chain/3"), url_max_redirects=2)
    assert "more than 2 redirects" in info.value.message


def test_local_redirect_loop_is_cut_off(server: LocalServer) -> None:
    server.hits.pop("/loop/", None)
    with pytest.raises(BadRequest) as info:
        real_fetch(server.url("/loop/0"))
    assert_refused(info.value)
    assert "more than 3 redirects" in info.value.message
    assert server.hits["/loop/"] == 4  # the first request + 3 followed redirects


@pytest.mark.parametrize("path", ["/to-metadata", "/to-metadata-mapped"])
def test_local_redirect_to_metadata_is_refused_at_the_hop(server: LocalServer, path: str) -> None:
    with pytest.raises(BadRequest) as info:
        real_fetch(server.url(path))
    assert_refused(info.value)
    assert "redirect 1" in info.value.message and "metadata" in info.value.message


@pytest.mark.parametrize("path", ["/big-declared", "/big-stream"])
def test_local_body_over_the_cap(server: LocalServer, path: str) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        real_fetch(server.url(path))
    assert_refused(info.value)
    assert f"{MAX_BYTES} byte cap" in info.value.message


@pytest.mark.parametrize("path", ["/slow-headers", "/trickle"])
def test_local_slow_server_hits_the_total_deadline(server: LocalServer, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(BadRequest) as info:
        real_fetch(server.url(path), url_timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert "timed out after 0.5 s" in info.value.message
    assert elapsed < 0.5 + 2.0  # generous: a bound, not a benchmark


def test_local_non_2xx_names_the_status(server: LocalServer) -> None:
    with pytest.raises(BadRequest) as info:
        real_fetch(server.url("/missing"))
    assert "HTTP 404" in info.value.message
