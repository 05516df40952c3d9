"""The application factory: ``create_app(settings)`` wires resources, middlewares and routes.

Resources live in ``cleanup_ctx`` contexts, entered in order and closed in reverse: the Redis
client first, then the HTTP client session. State is stored under typed ``web.AppKey``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway import __version__
from gateway.appkeys import (
    COALESCER,
    HTTP,
    INGEST,
    INTEGRATIONS,
    REDIS,
    SETTINGS,
    SIGNER,
    STORE,
    VISITORS,
)
from gateway.content_encoding import SERVER_LOG, decoded_bodies
from gateway.identity.cookies import CookieSigner
from gateway.identity.visitors import VisitorStore
from gateway.ingest import landing, routes, script, segment_api, webhooks
from gateway.ingest.enqueue import IngestQueue
from gateway.integrations import Integrations, IntegrationStore, TokenBox, keep_fresh
from gateway.logs import REQUEST_ID, get_logger
from gateway.operate import dashboard
from gateway.operate.admin import create_admin_app
from gateway.operate.metrics import metrics_handler
from gateway.operate.stats import stats_calls
from gateway.settings import Settings
from gateway.store import keys
from gateway.store.connections import REDIS_ERRORS, Coalescer, RedisOptions, make_redis
from gateway.tiktok.proxy import ProxyConfig, create_proxy_app
from gateway.tiktok.proxy_rules import PREFIX

__all__ = ["HTTP", "REDIS", "SETTINGS", "create_app"]


REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
READY_TIMEOUT_S = 1.0
READY_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, TimeoutError)

log = get_logger("gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


ACCESS_LOG_SAMPLE = 100  # with TTGW_ACCESS_LOG=errors, 1 in this many answers below 400 is logged


def request_context(access_log: str = "all") -> Middleware:
    """The middleware that gives every request an id (kept from a sane ``X-Request-ID``), binds
    it for every log line, and writes the access line as ``access_log`` (``TTGW_ACCESS_LOG``)
    says: ``all``; ``errors`` (status >= 400 or an exception, and 1 in
    :data:`ACCESS_LOG_SAMPLE` of the rest); ``off``."""
    log_all = access_log == "all"
    log_errors = access_log != "off"
    sampled = itertools.count()
    numbers = itertools.count(1)
    prefix = secrets.token_hex(4)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get(REQUEST_ID_HEADER)
        if incoming is not None and _REQUEST_ID_RE.match(incoming):
            request_id = incoming
        else:  # unique in this process's life, and across processes by its random prefix
            request_id = f"{prefix}{next(numbers):08x}"
        REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        finally:
            if log_all or (
                log_errors and (status >= 400 or next(sampled) % ACCESS_LOG_SAMPLE == 0)
            ):
                log.info(
                    "request",
                    method=request.method,
                    path=request.path,
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                )
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return middleware


async def redis_context(app: web.Application) -> AsyncIterator[None]:
    """The shared Redis client, closed after everything that uses it."""
    settings = app[SETTINGS]
    assert settings.redis_url is not None  # checked by create_app
    client = make_redis(settings.redis_url, RedisOptions())
    app[REDIS] = client
    # every request's scripts of one loop iteration share a round trip (group commit)
    app[COALESCER] = coalescer = Coalescer(client, stats_calls)
    app[INGEST] = IngestQueue(client, coalescer.run, coalescer.count)
    app[VISITORS] = VisitorStore(
        client,
        coalescer.run,
        click_ttl_s=settings.click_ttl_s,
        session_ttl_s=settings.session_ttl_s,
    )
    app[STORE] = store = IntegrationStore(client, TokenBox(settings.secret_key))
    stop = asyncio.Event()
    # integrations changed through the admin API reach this process within seconds
    refresher = asyncio.create_task(keep_fresh(app[INTEGRATIONS], store, stop))
    yield
    stop.set()
    await asyncio.gather(refresher, return_exceptions=True)
    with contextlib.suppress(*REDIS_ERRORS):  # counters are best effort; events are settled
        await coalescer.aclose()
    await client.aclose()


async def http_context(app: web.Application) -> AsyncIterator[None]:
    """One client session for every outgoing request, with explicit time-outs and host limits."""
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=keys.HTTP_TOTAL_TIMEOUT_S, sock_connect=keys.HTTP_CONNECT_TIMEOUT_S
        ),
        connector=aiohttp.TCPConnector(limit_per_host=keys.HTTP_CONNECTIONS_PER_HOST),
        raise_for_status=False,
    )
    app[HTTP] = session
    yield
    await session.close()


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: Redis answers within a second."""
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), READY_TIMEOUT_S)
    except READY_ERRORS as exc:
        return web.json_response({"status": "unavailable", "redis": type(exc).__name__}, status=503)
    return web.json_response({"status": "ready", "redis": "ok"})


def create_app(settings: Settings) -> web.Application:
    """Build the gateway's web application for ``settings`` (``redis_url`` must be set)."""
    if settings.redis_url is None:
        raise ValueError("create_app needs settings.redis_url (start the embedded Redis first)")
    app = web.Application(
        middlewares=[request_context(settings.access_log), decoded_bodies],
        client_max_size=keys.TRACK_BODY_MAX_BYTES,
        handler_args={"logger": SERVER_LOG},
    )
    app[SETTINGS] = settings
    app[SIGNER] = CookieSigner(settings.secret_key)
    app[INTEGRATIONS] = Integrations(settings)
    app.cleanup_ctx.append(redis_context)
    app.cleanup_ctx.append(http_context)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    routes.add_routes(app)
    segment_api.add_routes(app)
    webhooks.add_routes(app)
    script.add_routes(app)
    dashboard.add_routes(app)
    landing.add_routes(app)
    app.add_subapp("/v1/admin", create_admin_app())
    app.add_subapp(
        PREFIX,
        create_proxy_app(
            ProxyConfig(upstream=settings.pixel_origin, trusted_proxies=settings.trusted_proxies)
        ),
    )
    return app
