"""``/tt/…``: a first-party proxy of TikTok's pixel origin, for mirror mode.

The storefront loads the real pixel from its own domain (``/tt/i18n/pixel/events.js?sdkid=…``),
so blockers and ITP see first-party traffic. The proxy is deliberately not general: a fixed
allow-list of paths and methods, matched on the *raw* request path (so ``..``, ``%2f``, ``@``
and ``://`` never match), each forwarded to the one configured origin and nowhere else. Anything
else is answered 404 without touching the upstream.

Requests carry only a few harmless headers upstream; the gateway's cookies and any
``Authorization`` stay here, and TikTok's ``Set-Cookie`` never comes back. Scripts are cached raw
for a few minutes and rewritten per request, because their URLs must point at the host the
browser used, which can differ between requests.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiDictProxy
from prometheus_client import Counter
from yarl import URL

from gateway.ingest.forwarded import client_ip, forwarded_proto
from gateway.logs import get_logger
from gateway.settings import IPNetwork

__all__ = [
    "CACHE",
    "CONFIG",
    "DEFAULT_PIXEL_ORIGIN",
    "LOOPBACK_NETWORKS",
    "PREFIX",
    "SESSION",
    "ProxyConfig",
    "ScriptCache",
    "UpstreamAnswer",
    "create_proxy_app",
    "default_session",
    "proxy_handler",
    "rewrite_script",
]

DEFAULT_PIXEL_ORIGIN = "https://analytics.tiktok.com"
PREFIX = "/tt"
LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)

SCRIPT_CACHE_ENTRIES = 64
SCRIPT_MAX_AGE_S = 300
UPSTREAM_MAX_BYTES = 4 * 1024 * 1024  # TikTok's largest script is well under 1 MiB
UPSTREAM_CONNECTIONS = 32
ANALYTICS_MESSAGE_MAX_CHARS = 8000  # under aiohttp's 8190-byte request line

_SCRIPTS = frozenset({"/i18n/pixel/events.js", "/i18n/pixel/sdk.js"})
_STATIC_RE = re.compile(r"/i18n/pixel/static/[A-Za-z0-9._-]{1,128}\.js")
_BEACONS = frozenset(
    {
        "/api/v2/pixel",
        "/api/v2/pixel/act",
        "/api/v2/pixel/inter",
        "/api/v2/pixel/perf",
        "/api/v2/pixel/track/",
        "/api/v2/monitor",
    }
)
_BEACON_GET = "/api/v2/pixel/act"
_BEACON_TYPES = frozenset({"application/json", "text/plain"})

_SCRIPT_PARAMS = ("sdkid", "lib", "partner")  # also the canonical order of the cache key
_PARAM_VALUE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Kept percent-encoded as the browser sent it: decoding and re-encoding base64 would turn '+'
# into a space. Nothing outside this set (no '&', '#') can end the value early.
_MESSAGE_RE = re.compile(
    rf"(?:[A-Za-z0-9+/=_.~-]|%[0-9A-Fa-f]{{2}}){{1,{ANALYTICS_MESSAGE_MAX_CHARS}}}"
)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?:(?:{_LABEL}\.)*{_LABEL}|\[[0-9A-Fa-f:.]{{2,45}}\])(?::[0-9]{{1,5}})?")

# TikTok's scripts spell their origin as literals, template strings, protocol-relative URLs and,
# inside embedded JSON, with escaped slashes; the look-ahead leaves longer host names alone.
_ORIGIN_RE = re.compile(rb"(?:https?:)?//analytics\.tiktok\.com(?![\w.:-])")
_ESCAPED_ORIGIN_RE = re.compile(rb"(?:https?:)?\\/\\/analytics\.tiktok\.com(?![\w.:-])")

_REQUEST_HEADERS = ("User-Agent", "Accept", "Accept-Language", "Content-Type", "Referer", "Origin")
_ANSWER_HEADERS = ("Content-Type", "Cache-Control", "ETag", "Last-Modified")

UPSTREAM_FAILURES = Counter(
    "ttgw_proxy_upstream_failures_total",
    "Pixel-proxy requests answered 502 because the pixel origin failed, by reason "
    "(timeout, connection, status, redirect, too_large)",
    ["reason"],
)

log = get_logger("gateway.proxy")


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """How the pixel proxy reaches TikTok.

    ``upstream`` is an origin only (``scheme://host[:port]``); tests point it at a local stand-in.
    ``trusted_proxies`` are the peers whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are
    believed (pass ``Settings.trusted_proxies``); loopback by default.
    """

    upstream: str = DEFAULT_PIXEL_ORIGIN
    script_cache_s: float = 300.0
    max_body_bytes: int = 64 * 1024
    timeout_s: float = 10.0
    trusted_proxies: tuple[IPNetwork, ...] = LOOPBACK_NETWORKS

    def __post_init__(self) -> None:
        url = URL(self.upstream)
        if (
            url.scheme not in ("http", "https")
            or not url.host
            or url.user is not None
            or url.password is not None
            or url.raw_path not in ("", "/")
            or url.query_string
            or url.fragment
        ):
            raise ValueError(f"pixel origin must be http(s)://host[:port], got {self.upstream!r}")
        if self.script_cache_s < 0 or self.max_body_bytes <= 0 or self.timeout_s <= 0:
            raise ValueError("script_cache_s must be >= 0, max_body_bytes and timeout_s > 0")


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """What the pixel origin answered, reduced to what may be passed back."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class ScriptCache:
    """Raw upstream script answers by upstream path and query, each kept for ``ttl_s``.

    At most ``max_entries`` are held; the least recently stored goes first. ``ttl_s == 0``
    disables caching.
    """

    def __init__(
        self,
        ttl_s: float,
        max_entries: int = SCRIPT_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, UpstreamAnswer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> UpstreamAnswer | None:
        """The stored answer for ``key`` if it has not expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, answer = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        return answer

    def put(self, key: str, answer: UpstreamAnswer) -> None:
        """Store ``answer`` under ``key``, evicting the oldest entries beyond the bound."""
        if self.ttl_s <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self.ttl_s, answer)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


CONFIG: web.AppKey[ProxyConfig] = web.AppKey("proxy_config", ProxyConfig)
CACHE: web.AppKey[ScriptCache] = web.AppKey("proxy_script_cache", ScriptCache)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("proxy_http", aiohttp.ClientSession)


class _Refusal(Exception):
    """A JSON error answer; raised anywhere in a request, answered by the handler."""

    def __init__(self, status: int, error: str, field: str | None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field

    def response(self) -> web.Response:
        return web.json_response(
            {"error": self.error, "field": self.field},
            status=self.status,
            headers={"X-Content-Type-Options": "nosniff"},
        )


class _Kind(enum.Enum):
    SCRIPT = "script"
    BEACON = "beacon"
    BEACON_GET = "beacon_get"


def _route(method: str, raw_path: str) -> tuple[_Kind, str] | None:
    """The kind of an allowed request and its upstream path, or ``None`` if it is not allowed."""
    if not raw_path.startswith(PREFIX + "/"):
        return None
    path = raw_path[len(PREFIX) :]
    if method == "GET":
        if path in _SCRIPTS or (_STATIC_RE.fullmatch(path) and ".." not in path):
            return _Kind.SCRIPT, path
        if path == _BEACON_GET:
            return _Kind.BEACON_GET, path
    elif method == "POST" and path in _BEACONS:
        return _Kind.BEACON, path
    return None


def _script_query(path: str, query: MultiDictProxy[str]) -> str:
    """The loader's allowed parameters, in a fixed order; everything else is dropped."""
    if path not in _SCRIPTS:
        return ""
    pairs = []
    for name in _SCRIPT_PARAMS:
        values = query.getall(name, [])
        if not values:
            continue
        if len(values) > 1 or not _PARAM_VALUE_RE.fullmatch(values[0]):
            raise _Refusal(400, "invalid query parameter", name)
        pairs.append(f"{name}={values[0]}")
    return "&".join(pairs)


def _message_query(raw_query: str) -> str:
    """The pixel's GET fallback: exactly one ``analytics_message``, kept as sent."""
    values = [
        part.partition("=")[2]
        for part in raw_query.split("&")
        if part.partition("=")[0] == "analytics_message"
    ]
    if len(values) != 1 or not _MESSAGE_RE.fullmatch(values[0]):
        raise _Refusal(400, "invalid query parameter", "analytics_message")
    return f"analytics_message={values[0]}"


def _public_base(request: web.Request, trusted: Sequence[IPNetwork]) -> bytes:
    """``<scheme>://<host>/tt`` as the browser sees this proxy."""
    host = request.headers.get("Host", "")
    # The host is written into JavaScript, so it must be a host name and nothing more.
    if len(host) > 255 or not _HOST_RE.fullmatch(host):
        raise _Refusal(400, "invalid host", "Host")
    scheme = forwarded_proto(
        request.remote, request.scheme, request.headers.getall("X-Forwarded-Proto", []), trusted
    )
    return f"{scheme}://{host}{PREFIX}".encode("ascii")


def rewrite_script(body: bytes, base: bytes) -> bytes:
    """Point every URL of TikTok's pixel origin in ``body`` at ``base`` (``https://host/tt``)."""
    escaped = base.replace(b"/", b"\\/")
    # Functions, not strings, as replacements: re.sub would read backslashes in a string.
    body = _ORIGIN_RE.sub(lambda _m: base, body)
    return _ESCAPED_ORIGIN_RE.sub(lambda _m: escaped, body)


def _upstream_headers(request: web.Request, trusted: Sequence[IPNetwork]) -> CIMultiDict[str]:
    # An allow-list, not a deny-list: Cookie and Authorization can never slip through.
    headers: CIMultiDict[str] = CIMultiDict()
    for name in _REQUEST_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            headers[name] = value
    ip = client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
    if ip is not None:
        headers["X-Forwarded-For"] = ip
    return headers


async def _read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole stream, or ``None`` as soon as it exceeds ``limit`` bytes."""
    data = bytearray()
    async for chunk in stream.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def _failed(reason: str, path: str, **details: object) -> _Refusal:
    UPSTREAM_FAILURES.labels(reason=reason).inc()
    log.warning("pixel origin unavailable", reason=reason, upstream_path=path, **details)
    return _Refusal(502, "pixel origin unavailable", None)


async def _fetch(request: web.Request, path: str, query: str, body: bytes | None) -> UpstreamAnswer:
    """Send the request to the configured origin; a failure raises a 502 refusal."""
    config = request.app[CONFIG]
    origin = str(URL(config.upstream).origin())
    # Path and query were validated character by character, so they go out exactly as built.
    url = URL(f"{origin}{path}?{query}" if query else f"{origin}{path}", encoded=True)
    try:
        async with request.app[SESSION].request(
            request.method,
            url,
            headers=_upstream_headers(request, config.trusted_proxies),
            data=body,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=config.timeout_s),
            skip_auto_headers=("User-Agent",),  # no aiohttp UA when the browser sent none
        ) as answer:
            if answer.status >= 500:
                raise _failed("status", path, status=answer.status)
            if 300 <= answer.status < 400:
                # Following it would let the origin send us elsewhere; passing it back without
                # Location would be useless.
                raise _failed("redirect", path, status=answer.status)
            payload = await _read_limited(answer.content, UPSTREAM_MAX_BYTES)
            if payload is None:
                raise _failed("too_large", path)
            headers = tuple(
                (name, answer.headers[name]) for name in _ANSWER_HEADERS if name in answer.headers
            )
            return UpstreamAnswer(answer.status, headers, payload)
    except TimeoutError as exc:
        raise _failed("timeout", path, error=type(exc).__name__) from exc
    except aiohttp.ClientError as exc:
        raise _failed("connection", path, error=type(exc).__name__) from exc


def _answer(upstream: UpstreamAnswer, body: bytes, script: bool) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict(upstream.headers)
    if script and upstream.status == 200:
        headers.setdefault("Content-Type", "text/javascript; charset=utf-8")
        headers.setdefault("Cache-Control", f"public, max-age={SCRIPT_MAX_AGE_S}")
    headers["X-Content-Type-Options"] = "nosniff"
    return web.Response(status=upstream.status, body=body, headers=headers)


async def _script(request: web.Request, path: str) -> web.Response:
    config = request.app[CONFIG]
    base = _public_base(request, config.trusted_proxies)
    query = _script_query(path, request.rel_url.query)
    key = f"{path}?{query}"
    cache = request.app[CACHE]
    upstream = cache.get(key)
    if upstream is None:
        upstream = await _fetch(request, path, query, None)
        if upstream.status == 200:
            cache.put(key, upstream)
    if upstream.status != 200:
        return _answer(upstream, upstream.body, script=True)
    return _answer(upstream, rewrite_script(upstream.body, base), script=True)


async def _beacon(request: web.Request, path: str) -> web.Response:
    if request.content_type not in _BEACON_TYPES:
        raise _Refusal(415, "unsupported content type", "Content-Type")
    limit = request.app[CONFIG].max_body_bytes
    # Read here, not with request.read(): the parent application's client_max_size is not ours.
    too_large = _Refusal(413, "body too large", "body")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = await _read_limited(request.content, limit)
    if body is None:
        raise too_large
    upstream = await _fetch(request, path, "", body)
    return _answer(upstream, upstream.body, script=False)


async def _beacon_get(request: web.Request, path: str) -> web.Response:
    upstream = await _fetch(request, path, _message_query(request.rel_url.raw_query_string), None)
    return _answer(upstream, upstream.body, script=False)


async def proxy_handler(request: web.Request) -> web.Response:
    """Every request under ``/tt``: forward it if allowed, else answer 404 JSON."""
    try:
        route = _route(request.method, request.rel_url.raw_path)
        if route is None:
            raise _Refusal(404, "not proxied", "path")
        kind, path = route
        if kind is _Kind.SCRIPT:
            return await _script(request, path)
        if kind is _Kind.BEACON:
            return await _beacon(request, path)
        return await _beacon_get(request, path)
    except _Refusal as refusal:
        return refusal.response()


def default_session(config: ProxyConfig) -> aiohttp.ClientSession:
    """The proxy's own client session: explicit time-outs, no cookie jar, no proxy from env.

    Without ``DummyCookieJar`` a ``Set-Cookie`` from TikTok for one visitor would be replayed
    upstream for every other visitor.
    """
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=config.timeout_s, sock_connect=config.timeout_s),
        connector=aiohttp.TCPConnector(limit_per_host=UPSTREAM_CONNECTIONS),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


def create_proxy_app(
    config: ProxyConfig,
    session_factory: Callable[[], aiohttp.ClientSession] | None = None,
) -> web.Application:
    """The ``/tt`` sub-application: mount it with ``app.add_subapp(PREFIX, create_proxy_app(…))``.

    It owns its client session (from ``session_factory``, else :func:`default_session`), opened
    at start-up and closed at clean-up. Redirects are never followed, whatever the session says.
    """
    app = web.Application()
    app[CONFIG] = config
    app[CACHE] = ScriptCache(config.script_cache_s)

    async def http_context(app: web.Application) -> AsyncIterator[None]:
        session = session_factory() if session_factory is not None else default_session(config)
        app[SESSION] = session
        yield
        await session.close()

    app.cleanup_ctx.append(http_context)
    # One catch-all route (any method, any path, and the bare prefix) so every refusal is the
    # same JSON 404, decided by the allow-list on the raw path.
    app.router.add_route("*", "", proxy_handler)
    app.router.add_route("*", "/{tail:.*}", proxy_handler)
    return app
