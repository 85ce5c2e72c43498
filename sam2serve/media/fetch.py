"""Safe fetching of client-given image URLs (SSRF guard). Checked on every redirect hop:

- scheme https (http only with url_allow_http); no user:password@ part;
- the host (any IPv4 spelling: 2130706433, 0x7f000001, 017700000001, 127.1, trailing dot;
  IPv6 with zone ids, IPv4-mapped/compatible, 6to4, Teredo, NAT64) is resolved, and the fetch
  is refused if ANY address is loopback, private, link-local, shared (100.64/10), unspecified,
  multicast, broadcast, reserved, or cloud metadata (all of 169.254.0.0/16 counts as metadata);
- url_allow_private lifts the loopback/private/link-local block (LANs, tests), never the
  metadata block nor unspecified/multicast/reserved addresses;
- url_deny_hosts / url_allow_hosts: names, `*.example.com` (any subdomain, not the apex), or
  IPs/CIDRs (deny: against every resolved address; allow: IP-literal hosts);
- the connection goes to the checked address (pinned), with Host header and TLS SNI /
  certificate check on the original name, so DNS rebinding cannot swap the address;
- one deadline (url_timeout_s) for the whole fetch incl. redirects; the body is streamed and
  cut off past url_max_bytes; no environment proxies, no cookies, no keep-alive (a pinned
  connection is never reused for another name), Accept-Encoding: identity only.

One exception, per call: a `TrustedOrigin` (the Label Studio server an admin configured,
SAM2SERVE_LABEL_STUDIO_URL) may be plain http and on a loopback/private address, and only
hops to exactly that scheme://host:port carry its headers (the token); every other hop (a
redirect to a presigned storage URL, say) gets the ordinary policy and no token. Metadata,
unspecified, multicast and reserved addresses stay refused for it too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import anyio
import httpx

from sam2serve.config import Settings
from sam2serve.errors import BadRequest, PayloadTooLarge

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: (host name, port) -> IP address strings, like `loop.getaddrinfo`. Raise OSError on failure.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

FIELD = "image.value"
MAX_URL_CHARS = 8192
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEADERS = {"User-Agent": "sam2serve", "Accept": "image/*", "Accept-Encoding": "identity"}
_HOSTNAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_IPV4_PART = {8: re.compile(r"[0-7]*"), 10: re.compile(r"[0-9]+"), 16: re.compile(r"[0-9a-f]*")}

# Always refused, whatever url_allow_private says.
_METADATA_NETS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",  # link-local v4: AWS/GCP/Azure/OpenStack metadata, ECS/EKS creds
        "fd00:ec2::/32",  # AWS IMDS over IPv6 (fd00:ec2::254) and friends
        "100.100.100.200/32",  # Alibaba Cloud
        "192.0.0.192/32",  # Oracle Cloud
    )
)
_METADATA_NAMES = frozenset(
    ("metadata", "metadata.google.internal", "metadata.goog", "instance-data",
     "instance-data.ec2.internal", "metadata.tencentyun.com", "metadata.platformequinix.com")
)  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPAT = ipaddress.ip_network("::/96")
# Never unicast destinations, also always refused ("this network" 0/8 reaches localhost on Linux).
_NEVER_NETS = tuple(ipaddress.ip_network(n) for n in ("0.0.0.0/8", "255.255.255.255/32"))


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve `host` with the event loop's getaddrinfo (runs in a thread)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class TrustedOrigin:
    """A server an admin configured explicitly: `scheme`://`host`:`port` (host lowercase, no
    trailing dot; port explicit). Hops to exactly this origin skip the https-only rule, the
    private-address block and the allow list, and carry `headers` (e.g. its API token); no
    other hop ever sees `headers`. `repr` never shows them."""

    scheme: str
    host: str
    port: int
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"TrustedOrigin({self.scheme}://{self.host}:{self.port})"

    @classmethod
    def parse(cls, url: str, headers: dict[str, str] | None = None) -> TrustedOrigin:
        """From a base URL such as http://label-studio:8080 (a path is ignored)."""
        parsed = httpx.URL(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"{url!r} is not an http(s) URL with a host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        host = parsed.host.lower().rstrip(".")
        return cls(parsed.scheme, host, port, tuple((headers or {}).items()))

    def matches(self, url: httpx.URL) -> bool:
        port = url.port or (443 if url.scheme == "https" else 80)
        host = url.host.lower().rstrip(".")
        return (url.scheme, host, port) == (self.scheme, self.host, self.port)


@dataclass(frozen=True)
class _Target:
    """One checked hop: `url` as written, `pinned` with its host replaced by the checked IP."""

    url: httpx.URL
    pinned: httpx.URL
    host_header: str
    sni: str | None
    trusted: bool = False


@dataclass(frozen=True)
class ByteCap:
    """A download's byte cap: `max_bytes`, the `setting` that sets it (named in the 413) and
    what the client can do instead (`advice`). Images use url_max_bytes; video clips pass
    their own, larger cap per call."""

    max_bytes: int
    setting: str = "url_max_bytes"
    advice: str = "link a smaller image or send it as base64"


class UrlFetcher:
    """Fetches image URLs under the policy above. One per process; `aclose()` at shutdown.

    Args:
        settings: url_* fields are read once here.
        resolver: host-name resolver (default: the system's getaddrinfo); inject for tests.
        transport: httpx transport override (tests); the default is a fresh-connection pool.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.allow_http = settings.url_allow_http
        self.allow_private = settings.url_allow_private
        self.timeout_s = float(settings.url_timeout_s)
        self.max_bytes = int(settings.url_max_bytes)
        self.max_redirects = int(settings.url_max_redirects)
        self.allow_hosts = tuple(_parse_pattern(p) for p in settings.url_allow_hosts)
        self.deny_hosts = tuple(_parse_pattern(p) for p in settings.url_deny_hosts)
        self._resolve = resolver or system_resolver
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,  # an environment proxy would resolve the name itself: no pinning
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_keepalive_connections=0),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # keep none
            headers=_HEADERS,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(
        self,
        url: str,
        *,
        cap: ByteCap | None = None,
        field: str = FIELD,
        origin: TrustedOrigin | None = None,
    ) -> bytes:
        """GET `url` (following up to url_max_redirects checked redirects) -> body bytes.

        `cap`: this download's byte cap (default: url_max_bytes, for images); `field`: the
        request field the URL came in, named by every error (default image.value);
        `origin`: a server the admin configured, see `TrustedOrigin` (its headers go to it
        only).

        Raises:
            BadRequest (field `field`): refused by policy, unreachable, non-2xx status,
                too many redirects, or over the url_timeout_s deadline.
            PayloadTooLarge (field `field`): body over the cap.
        """
        try:
            return await self._fetch_within_deadline(url, cap or ByteCap(self.max_bytes), origin)
        except (BadRequest, PayloadTooLarge) as exc:
            if field == FIELD or exc.field != FIELD:
                raise
            raise type(exc)(field + exc.message[len(FIELD) :], field=field) from exc

    async def _fetch_within_deadline(
        self, url: str, cap: ByteCap, origin: TrustedOrigin | None
    ) -> bytes:
        try:
            with anyio.fail_after(self.timeout_s):
                return await self._fetch(url, cap, origin)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise BadRequest(
                f"{FIELD}: fetching the URL timed out after {self.timeout_s:g} s "
                "(url_timeout_s, redirects included); use a faster host or send the image "
                "as base64",
                field=FIELD,
            ) from exc
        except httpx.HTTPError as exc:  # details stay server-side: they describe the network
            raise BadRequest(
                f"{FIELD}: could not fetch the URL: the connection was refused, unreachable, "
                "broke off, or the TLS certificate check failed",
                field=FIELD,
            ) from exc

    async def _fetch(self, url: str, cap: ByteCap, origin: TrustedOrigin | None) -> bytes:
        current: str | httpx.URL = url
        for hop in range(self.max_redirects + 1):
            target = await self._check(current, hop, origin)
            headers = {"Host": target.host_header}
            if target.trusted and origin is not None:  # its token goes to it, nowhere else
                headers.update(origin.headers)
            request = self._client.build_request(
                "GET",
                target.pinned,
                headers=headers,
                extensions={"sni_hostname": target.sni} if target.sni else None,
            )
            response = await self._client.send(request, stream=True)
            try:
                if response.status_code in _REDIRECTS:
                    current = _redirect_target(target.url, response, hop)
                    continue
                if not 200 <= response.status_code < 300:
                    why = f"the server answered HTTP {response.status_code}, not 2xx"
                    raise _refuse(why + " with the image", hop)
                return await self._read_body(response, hop, cap)
            finally:
                await response.aclose()
        raise BadRequest(
            f"{FIELD}: more than {self.max_redirects} redirects (url_max_redirects); "
            "give the final URL of the image",
            field=FIELD,
        )

    async def _read_body(self, response: httpx.Response, hop: int, cap: ByteCap) -> bytes:
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > cap.max_bytes:
            raise _too_large(cap, f" (it declares {int(declared)} bytes)")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):  # asked for identity: no decompression bombs
            raise _refuse(f"the server sent a {encoding!r}-compressed body, unasked", hop)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > cap.max_bytes:
                raise _too_large(cap, "")
        return bytes(body)

    async def _check(
        self, raw: str | httpx.URL, hop: int, origin: TrustedOrigin | None = None
    ) -> _Target:
        """Apply the whole policy to one URL; return where to connect. Raises BadRequest."""
        if isinstance(raw, str):
            if len(raw) > MAX_URL_CHARS:
                raise _refuse(f"the URL is longer than {MAX_URL_CHARS} characters", hop)
            try:
                url = httpx.URL(raw.strip())
            except (httpx.InvalidURL, ValueError, TypeError) as exc:
                raise _refuse("not a valid URL", hop) from exc
        else:
            url = raw
        trusted = origin is not None and bool(url.host) and origin.matches(url)
        allowed = ("https", "http") if self.allow_http or trusted else ("https",)
        if url.scheme not in allowed:
            shown = f"scheme is {url.scheme!r}" if url.scheme else "has no scheme"
            need = "http:// or https://" if self.allow_http else "https://"
            raise _refuse(f"the URL {shown}; only {need} URLs are fetched", hop)
        if url.userinfo:
            raise _refuse("URLs with a user name or password (user@host) are refused", hop)
        host, literal = _parse_host(url.raw_host.decode("ascii", "replace"), hop)
        allow_private = self.allow_private or trusted
        self._check_lists(host, literal, hop, trusted=trusted)
        if host in _METADATA_NAMES:
            raise _refuse("the host is a cloud metadata endpoint", hop)
        if (host == "localhost" or host.endswith(".localhost")) and not allow_private:
            raise _refuse(_PRIVATE_WHY, hop)
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = (
            [literal] if literal is not None else await self._resolve_checked(host, port, hop)
        )
        for ip in addresses:
            why = blocked_reason(ip, allow_private=allow_private)
            if why is not None:
                raise _refuse(why, hop)
            if any(ip in net for net in self.deny_hosts if not isinstance(net, str)):
                raise _refuse("the host is on this server's deny list (url_deny_hosts)", hop)
        first = addresses[0]
        pinned_ip = (first.ipv4_mapped if first.version == 6 else None) or first
        host_header = url.raw_host.decode("ascii") if literal is None else _ip_netloc(literal)
        if url.port is not None:
            host_header = f"{host_header}:{url.port}"
        return _Target(
            url=url,
            pinned=url.copy_with(host=str(pinned_ip)),
            host_header=host_header,
            sni=host if literal is None and url.scheme == "https" else None,
            trusted=trusted,
        )

    async def _resolve_checked(self, host: str, port: int, hop: int) -> list[IPAddress]:
        try:  # resolver errors are never shown: they can describe the internal network
            addresses = [ipaddress.ip_address(str(a)) for a in await self._resolve(host, port)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise _refuse("the host name could not be resolved", hop) from exc
        if not addresses:
            raise _refuse("the host name could not be resolved", hop)
        return addresses

    def _check_lists(
        self, host: str, literal: IPAddress | None, hop: int, *, trusted: bool = False
    ) -> None:
        if any(_matches(p, host, literal) for p in self.deny_hosts):
            raise _refuse("the host is on this server's deny list (url_deny_hosts)", hop)
        if (
            self.allow_hosts
            and not trusted
            and not any(_matches(p, host, literal) for p in self.allow_hosts)
        ):
            raise _refuse(
                "the host is not on this server's allow list (url_allow_hosts); "
                "send the image as base64 instead",
                hop,
            )


def _too_large(cap: ByteCap, detail: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{FIELD}: the download is over the {cap.max_bytes} byte cap ({cap.setting})"
        f"{detail}; {cap.advice}",
        field=FIELD,
    )


_PRIVATE_WHY = (
    "the host is a loopback, private, link-local or shared network address, which this "
    "server does not fetch (server setting url_allow_private)"
)


def blocked_reason(ip: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why `ip` must not be fetched, or None if it may be.

    IPv6 spellings of an IPv4 address (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64
    64:ff9b::/96) are judged as that IPv4 address; 6to4 (2002::/16) and Teredo (2001::/32)
    addresses are refused if the IPv4 addresses they carry are, and are judged as IPv6 too.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return blocked_reason(ip.ipv4_mapped, allow_private=allow_private)
        if ip in _NAT64 or (ip in _V4_COMPAT and int(ip) > 1):
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            return blocked_reason(inner, allow_private=allow_private)
        tunnelled = [ip.sixtofour] if ip.sixtofour is not None else list(ip.teredo or ())
        for inner in tunnelled:
            why = blocked_reason(inner, allow_private=allow_private)
            if why is not None:
                return why
    if any(ip in net for net in _METADATA_NETS):
        return "the host is a cloud metadata endpoint (169.254.0.0/16, fd00:ec2::/32 and similar)"
    if not ip.is_loopback and (  # ::1 sits inside the reserved ::/8
        ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
        or any(ip in net for net in _NEVER_NETS)
    ):
        return "the host is not a unicast address (unspecified, multicast, broadcast or reserved)"
    private = ip.is_loopback or ip.is_link_local or ip.is_private or not ip.is_global
    if isinstance(ip, ipaddress.IPv6Address):
        private = private or ip.is_site_local
    if private and not allow_private:
        return _PRIVATE_WHY
    return None


def _parse_host(raw_host: str, hop: int) -> tuple[str, IPAddress | None]:
    """Normalize a URL host: (lowercase name without trailing dot, IP if it is a literal).

    IPv4 literals follow the URL standard / inet_aton: 1 to 4 parts, each decimal, octal
    (leading 0) or hex (0x), the last part filling the remaining bytes (127.1 = 127.0.0.1).
    """
    host = raw_host.lower()
    if ":" in host:  # IPv6 literal; httpx has removed the brackets
        try:
            return host, ipaddress.IPv6Address(host.replace("%25", "%", 1))
        except ValueError as exc:
            raise _refuse("the host is not a valid IPv6 address", hop) from exc
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise _refuse("the URL has no valid host name", hop)
    last = host.rsplit(".", 1)[-1]
    if last.isdigit() or re.fullmatch(r"0x[0-9a-f]*", last):
        ip = _parse_ipv4(host)
        if ip is None:
            raise _refuse("the host looks like an IPv4 address but is not a valid one", hop)
        return str(ip), ip
    return host, None


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if len(parts) > 4:
        return None
    numbers = []
    for part in parts:
        if part.startswith("0x"):
            base, digits = 16, part[2:]
        elif len(part) > 1 and part.startswith("0"):
            base, digits = 8, part[1:]
        else:
            base, digits = 10, part
        if not part or not _IPV4_PART[base].fullmatch(digits):
            return None
        numbers.append(int(digits or "0", base))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for index, n in enumerate(head):
        value += n << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ip_netloc(ip: IPAddress) -> str:
    return f"[{ip}]" if ip.version == 6 else str(ip)


Pattern = str | ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_pattern(entry: str) -> Pattern:
    """'images.example.com' | '*.example.com' | '10.0.0.0/8' | '2001:db8::1' -> Pattern."""
    text = entry.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        return text


def _matches(pattern: Pattern, host: str, literal: IPAddress | None) -> bool:
    if not isinstance(pattern, str):
        return literal is not None and literal.version == pattern.version and literal in pattern
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def _redirect_target(current: httpx.URL, response: httpx.Response, hop: int) -> httpx.URL:
    location = response.headers.get("location", "").strip()
    if not location:
        raise _refuse(f"the server answered HTTP {response.status_code} with no Location", hop)
    try:
        return current.join(location)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise _refuse("the redirect Location is not a valid URL", hop + 1) from exc


def _refuse(why: str, hop: int) -> BadRequest:
    where = f"redirect {hop}: " if hop else ""
    return BadRequest(f"{FIELD}: {where}{why}", field=FIELD)
