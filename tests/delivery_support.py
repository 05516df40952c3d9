"""Helpers for delivery tests: the emulator as TikTok, queued events, an in-process worker."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import orjson
from redis.asyncio import Redis

from gateway.delivery.destinations import make_routes
from gateway.delivery.ratelimit import RateLimit, RateLimiter
from gateway.delivery.worker import Worker
from gateway.ingest.enqueue import IngestQueue, Outgoing
from gateway.integrations import Integrations, IntegrationStore, TokenBox, keep_fresh
from gateway.settings import Settings
from gateway.store.connections import make_redis
from gateway.tiktok.emulator import serve_emulator
from gateway.tiktok.emulator_state import EmulatorConfig, EmulatorState

PIXEL = "CXXXXXXXXXXXXXXXXXX0"
TOKEN = "emulator-token-0001"


def event_data(event_id: str, *, event: str = "Purchase", age_s: float = 0) -> bytes:
    """A TikTok data[] item as ingest would queue it."""
    return orjson.dumps(
        {
            "event": event,
            "event_time": int(time.time() - age_s),
            "event_id": event_id,
            "user": {
                "email": [hashlib.sha256(f"{event_id}@example.com".encode()).hexdigest()],
                "ip": "203.0.113.24",
                "user_agent": "Mozilla/5.0",
            },
            "properties": {"value": 10.5, "currency": "EUR"},
            "page": {"url": "https://shop.example/thank-you"},
            "limited_data_use": False,
        }
    )


async def enqueue(redis_url: str, ids: list[str], *, pixel: str = PIXEL, age_s: float = 0) -> None:
    """Queue events exactly as ingest does."""
    client = make_redis(redis_url)
    try:
        items = [Outgoing(pixel, "Purchase", i, event_data(i, age_s=age_s), "server") for i in ids]
        for start in range(0, len(items), 1000):
            await IngestQueue(client).submit(items[start : start + 1000], max_events=0)
    finally:
        await client.aclose()


@dataclass
class Emulator:
    """A running emulator and the API base URL that points at it."""

    state: EmulatorState
    url: str


@asynccontextmanager
async def running_emulator(**config: object) -> AsyncIterator[Emulator]:
    """The strict TikTok emulator on a free loopback port."""
    config.setdefault("tokens", {TOKEN: {PIXEL}})
    state = EmulatorState(EmulatorConfig(**config))  # type: ignore[arg-type]
    runner, port = await serve_emulator(state, "127.0.0.1", 0)
    try:
        yield Emulator(state, f"http://127.0.0.1:{port}/open_api/v1.3/")
    finally:
        state.release_hangs()
        await runner.cleanup()


def delivery_env(emulator: Emulator, redis_url: str, **extra: str) -> dict[str, str]:
    """TTGW_* variables of a gateway that delivers to ``emulator`` quickly."""
    env = {
        "TTGW_REDIS_URL": redis_url,
        "TTGW_TIKTOK_API_URL": emulator.url,
        "TTGW_PIXEL_CODE": PIXEL,
        "TTGW_ACCESS_TOKEN": TOKEN,
        "TTGW_RETRY_BASE_S": "0.05",
        "TTGW_RETRY_CAP_S": "0.2",
        "TTGW_RATE_LIMIT_RPS": "1000",
        "TTGW_RATE_LIMIT_BURST": "100",
    }
    env.update(extra)
    return env


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    """A Worker running in this event loop until the block ends."""
    assert settings.redis_url is not None
    redis: Redis = make_redis(settings.redis_url)  # type: ignore[assignment]
    session = aiohttp.ClientSession()
    limiter = RateLimiter(redis, RateLimit(settings.rate_limit_rps, settings.rate_limit_burst))
    registry = Integrations(settings)
    store = IntegrationStore(redis, TokenBox(settings.secret_key))
    await registry.refresh(store, force=True)
    worker = Worker(redis, settings, make_routes(settings, redis, session, registry), limiter)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    refresher = asyncio.create_task(keep_fresh(registry, store, stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await refresher
        await session.close()
        await redis.aclose()


async def wait_until(check: Callable[[], object], timeout_s: float = 15.0) -> None:
    """Poll an external condition (another process's work) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not await _truthy(check()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def _truthy(value: object) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value)
