"""``/tt/…``: a first-party proxy of TikTok's pixel origin, for mirror mode.

The storefront loads the real pixel from its own domain (``/tt/i18n/pixel/events.js?sdkid=…``),
so blockers and ITP see first-party traffic. The proxy is deliberately not general: a fixed
allow-list of paths and methods, matched on the *raw* request path (so ``..``, ``%2f``, ``@``
and ``://`` never match), each forwarded to the one configured origin and nowhere else. Anything
else is answered 404 without touching the upstream (the rules are in
:mod:`gateway.tiktok.proxy_rules`).

Scripts are cached raw for a few minutes and rewritten per request, because their URLs must point
at the host the browser used, which can differ between requests.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import Counter
from yarl import URL

from gateway.config import IPNetwork
from gateway.logs import get_logger
from gateway.tiktok.proxy_rules import (
    ANSWER_HEADERS,
    BEACON_TYPES,
    Refusal,
    RouteKind,
    allowed_route,
    message_query,
    public_base,
    rewrite_script,
    script_query,
    upstream_headers,
)

__all__ = [
    "CACHE",
    "CONFIG",
    "DEFAULT_PIXEL_ORIGIN",
    "LOOPBACK_NETWORKS",
    "SESSION",
    "ProxyConfig",
    "ScriptCache",
    "UpstreamAnswer",
    "create_proxy_app",
    "default_session",
    "proxy_handler",
]

DEFAULT_PIXEL_ORIGIN = "https://analytics.tiktok.com"
LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)

SCRIPT_CACHE_ENTRIES = 64
SCRIPT_MAX_AGE_S = 300
UPSTREAM_MAX_BYTES = 4 * 1024 * 1024  # TikTok's largest script is well under 1 MiB
UPSTREAM_CONNECTIONS = 32

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


async def _read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole stream, or ``None`` as soon as it exceeds ``limit`` bytes."""
    data = bytearray()
    async for chunk in stream.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def _failed(reason: str, path: str, **details: object) -> Refusal:
    UPSTREAM_FAILURES.labels(reason=reason).inc()
    log.warning("pixel origin unavailable", reason=reason, upstream_path=path, **details)
    return Refusal(502, "pixel origin unavailable", None)


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
            headers=upstream_headers(request, config.trusted_proxies),
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
                (name, answer.headers[name]) for name in ANSWER_HEADERS if name in answer.headers
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
    base = public_base(request, config.trusted_proxies)
    query = script_query(path, request.rel_url.query)
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
    if request.content_type not in BEACON_TYPES:
        raise Refusal(415, "unsupported content type", "Content-Type")
    limit = request.app[CONFIG].max_body_bytes
    # Read here, not with request.read(): the parent application's client_max_size is not ours.
    too_large = Refusal(413, "body too large", "body")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = await _read_limited(request.content, limit)
    if body is None:
        raise too_large
    upstream = await _fetch(request, path, "", body)
    return _answer(upstream, upstream.body, script=False)


async def _beacon_get(request: web.Request, path: str) -> web.Response:
    upstream = await _fetch(request, path, message_query(request.rel_url.raw_query_string), None)
    return _answer(upstream, upstream.body, script=False)


async def proxy_handler(request: web.Request) -> web.Response:
    """Every request under ``/tt``: forward it if allowed, else answer 404 JSON."""
    try:
        route = allowed_route(request.method, request.rel_url.raw_path)
        if route is None:
            raise Refusal(404, "not proxied", "path")
        kind, path = route
        if kind is RouteKind.SCRIPT:
            return await _script(request, path)
        if kind is RouteKind.BEACON:
            return await _beacon(request, path)
        return await _beacon_get(request, path)
    except Refusal as refusal:
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
