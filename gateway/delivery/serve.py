"""What ``tt-gateway worker`` runs: one delivery worker with its own Redis client and HTTP
session, its integrations kept fresh from Redis, started again if it fails, stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from gateway.delivery.commit import REDIS_BACKOFF_CAP_S, REDIS_BACKOFF_FIRST_S, finish_settles
from gateway.delivery.destinations import http_session, make_routes
from gateway.delivery.ratelimit import RateLimit, RateLimiter
from gateway.delivery.worker import Worker, consumer_name
from gateway.integrations import Integrations, IntegrationStore, TokenBox, keep_fresh
from gateway.logs import get_logger
from gateway.settings import Settings
from gateway.store import keys
from gateway.store.connections import RedisOptions, is_outage, make_redis

log = get_logger("gateway.delivery")
WORKER_RESTART_CAP_S = 30.0


async def serve_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Run one delivery worker with its own Redis client and HTTP session until ``stop``."""
    assert settings.redis_url is not None
    # a socket time-out above XREADGROUP's block time: an idle read is not an error
    redis = make_redis(
        settings.redis_url, RedisOptions(socket_timeout_s=keys.DELIVERY_BLOCK_MS / 1000 + 10)
    )
    session = http_session()
    registry = Integrations(settings)
    store = IntegrationStore(redis, TokenBox(settings.secret_key))
    refresher = asyncio.create_task(keep_fresh(registry, store, stop))
    try:
        await _first_refresh(registry, store, stop)
        limit = RateLimit(settings.rate_limit_rps, settings.rate_limit_burst)
        routes = make_routes(settings, redis, session, registry)
        name = consumer_name()  # kept across restarts: a new worker re-reads what it had read
        await supervise(
            lambda: Worker(redis, settings, routes, RateLimiter(redis, limit), consumer=name), stop
        )
        left = await finish_settles(keys.SHUTDOWN_GRACE_S)
        if left:
            log.error("settles_abandoned", requests=left, reason="Redis still away at stop")
    finally:
        refresher.cancel()
        await asyncio.gather(refresher, return_exceptions=True)
        await session.close()
        await redis.aclose()


async def _first_refresh(
    registry: Integrations, store: IntegrationStore, stop: asyncio.Event
) -> None:
    """Load the integrations kept in Redis, waiting for Redis if it is away at start."""
    delay_s = REDIS_BACKOFF_FIRST_S
    while not stop.is_set():
        try:
            await registry.refresh(store, force=True)
            return
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning("redis_unavailable", error=repr(exc), retry_in_s=round(delay_s, 2))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay_s)
        delay_s = min(delay_s * 2, REDIS_BACKOFF_CAP_S)


async def supervise(make: Callable[[], Worker], stop: asyncio.Event) -> None:
    """Run a worker until ``stop``; one that fails (a bug, not an outage: those it rides out
    itself) is logged and started again with backoff, so no dependency ends the process."""
    delay_s = REDIS_BACKOFF_FIRST_S
    while not stop.is_set():
        started = time.monotonic()
        try:
            await make().run(stop)
        except Exception as exc:
            log.error("worker_failed", error=repr(exc), restart_in_s=round(delay_s, 1))
            if time.monotonic() - started > WORKER_RESTART_CAP_S:
                delay_s = REDIS_BACKOFF_FIRST_S  # it ran a while: a new failure, not a loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
            delay_s = min(delay_s * 2, WORKER_RESTART_CAP_S)
