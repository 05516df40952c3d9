"""The worker under trouble from outside: one pixel throttled, a crashed consumer's large backlog.

(Redis restarts, outages and failovers with real processes are in ``test_redis_faults.py``.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from gateway.delivery.destinations import make_routes
from gateway.delivery.ratelimit import RateLimit, RateLimiter
from gateway.delivery.receipts import counters
from gateway.delivery.worker import Worker
from gateway.settings import Settings
from gateway.store import keys
from gateway.tiktok.emulator_state import AcceptedEvent
from tests.delivery_support import (
    TOKEN,
    delivery_env,
    enqueue,
    running_emulator,
    running_worker,
    wait_until,
)

MakeSettings = Callable[..., Settings]
PIXEL_A = "CAAAAAAAAAAAAAAAAAA0"
PIXEL_B = "CBBBBBBBBBBBBBBBBBB0"


def two_pixels(tmp_path: Path) -> str:
    config = tmp_path / "two.toml"
    config.write_text(
        f'[[integrations]]\npixel_code = "{PIXEL_A}"\naccess_token = "{TOKEN}"\n'
        f'[[integrations]]\npixel_code = "{PIXEL_B}"\naccess_token = "{TOKEN}"\n'
    )
    return str(config)


async def test_a_throttled_pixel_does_not_delay_another_pixels_events(
    make_settings: MakeSettings, redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    # Pixel A has a 20,000-event backlog and TikTok has been throttling it: its limiter runs at
    # 1/64 of the limit (one request every 3.2 s). Pixel B's events arrive behind that backlog.
    await enqueue(redis_url, [f"a{i}" for i in range(20_000)], pixel=PIXEL_A)
    await enqueue(redis_url, [f"b{i}" for i in range(50)], pixel=PIXEL_B)
    await redis.set(keys.throttle_key(PIXEL_A), "64", ex=300)
    async with running_emulator(tokens={TOKEN: {PIXEL_A, PIXEL_B}}) as tiktok:
        env = delivery_env(
            tiktok, redis_url, TTGW_CONFIG=two_pixels(tmp_path), TTGW_RATE_LIMIT_RPS="20",
            TTGW_RATE_LIMIT_BURST="1",
        )  # fmt: skip
        env.pop("TTGW_PIXEL_CODE")
        env.pop("TTGW_ACCESS_TOKEN")
        started = time.time()
        async with running_worker(make_settings(**env)):
            await tiktok.state.wait_for(lambda: _count(tiktok.state.accepted, PIXEL_B) >= 50, 60)
            a_requests = sum(1 for r in tiktok.state.requests if r.pixel_code == PIXEL_A)
            b_times = [e.received_at for e in tiktok.state.accepted if e.pixel_code == PIXEL_B]
    # Before lanes, B was read only after A's 20 batches had each waited for a cell of A's
    # limiter (at least 12 A requests first). Now A's wait holds neither a send slot nor the
    # stream: B goes out after at most the few A requests A's limiter lets through meanwhile.
    assert a_requests < 8, a_requests
    assert _count(tiktok.state.accepted, PIXEL_A) < 20_000
    delay_s = max(b_times) - started
    print(f"pixel B's 50 events delivered {delay_s:.2f} s after start; A requests: {a_requests}")
    # A's backlog is intact: delivered, still in the stream (parked ones are pending there), or
    # handed back to the retry set by the worker's stop
    left = await redis.xlen(keys.EVENTS_STREAM) + await redis.zcard(keys.RETRY_ZSET)
    assert left + len({e.event_id for e in tiktok.state.accepted if e.pixel_code == PIXEL_A}) == (
        20_000
    )
    assert (await counters(redis)).get("dead", 0) == 0


def _count(accepted: list[AcceptedEvent], pixel: str) -> int:
    return sum(1 for e in accepted if e.pixel_code == pixel)


async def test_reclaim_takes_every_idle_entry_in_one_pass(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    # A consumer that crashed with 4,700 entries read and not settled (a killed `run`)
    await enqueue(redis_url, [f"r{i}" for i in range(4_700)])
    await redis.xgroup_create(keys.EVENTS_STREAM, keys.DELIVERY_GROUP, "0", mkstream=True)
    while await redis.xreadgroup(
        keys.DELIVERY_GROUP, "crashed", {keys.EVENTS_STREAM: ">"}, count=1000
    ):
        pass
    assert (await redis.xpending(keys.EVENTS_STREAM, keys.DELIVERY_GROUP))["pending"] == 4_700
    async with running_emulator() as tiktok:
        # idle for 1 ms counts as abandoned here (the setting's floor is 1 s)
        settings = replace(make_settings(**delivery_env(tiktok, redis_url)), reclaim_idle_s=0.001)
        async with aiohttp.ClientSession() as session:
            worker = _worker(settings, redis, session)
            await worker._reclaim()  # one pass
            left: dict[str, Any] = await redis.xpending(keys.EVENTS_STREAM, keys.DELIVERY_GROUP)
            crashed = [c for c in left["consumers"] if c["name"] == b"crashed"]
            assert crashed == []  # every idle entry moved, not the first 1,000
            await wait_until(lambda: _delivered(redis, 4_700), 60)
            for task in list(worker._tasks):
                await task
    assert len(tiktok.state.unique_events()) == 4_700
    assert tiktok.state.duplicates == 0


async def _delivered(redis: Redis, n: int) -> bool:
    return (await counters(redis)).get("delivered", 0) >= n


def _worker(settings: Settings, redis: Redis, session: aiohttp.ClientSession) -> Worker:
    limiter = RateLimiter(redis, RateLimit(settings.rate_limit_rps, settings.rate_limit_burst))
    return Worker(redis, settings, make_routes(settings, redis, session), limiter)
