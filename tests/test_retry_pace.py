"""Retries due after an outage go back into the stream at the pace of the pixel's rate limiter:
never more moved retries in the stream than the limiter lets through in one interval, none lost,
none doubled, and neither another pixel's retries nor new events wait behind them. Real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable

from redis.asyncio import Redis

from gateway.delivery.entry import Outcome
from gateway.delivery.outbox import Outbox, RetryPace
from gateway.delivery.receipts import counters
from gateway.settings import Settings
from gateway.store import keys
from tests.delivery_support import (
    PIXEL,
    delivery_env,
    enqueue,
    running_emulator,
    running_worker,
    wait_until,
)

OTHER_PIXEL = "CBBBBBBBBBBBBBBBBBB1"
INTERVAL_MS = int(keys.RETRY_POLL_INTERVAL_S * 1000)


async def schedule_retries(
    redis: Redis, redis_url: str, ids: list[str], due_ms: int, pixel: str = PIXEL
) -> None:
    """Queue ``ids`` as ingest does, then fail them once, as a worker does in an outage: each a
    retry due at ``due_ms``."""
    await enqueue(redis_url, ids, pixel=pixel)
    outbox = Outbox(redis)
    await outbox.ensure_group()
    entries = await outbox.read("outage", 10_000, 10)
    assert len(entries) == len(ids)
    now_ms = int(time.time() * 1000)
    for entry in entries:
        entry.attempts = 1
    outage = Outcome(503, None, "service unavailable")
    await outbox.settle([outbox.retry(e, due_ms, outage, now_ms) for e in entries])


async def in_stream(redis: Redis) -> dict[str, list[str]]:
    """The event ids of the stream's entries, by pixel."""
    found: dict[str, list[str]] = {}
    for _, fields in await redis.xrange(keys.EVENTS_STREAM):
        found.setdefault(fields[b"pixel"].decode(), []).append(fields[b"event_id"].decode())
    return found


async def settle_all(redis: Redis, outbox: Outbox) -> list[str]:
    """Read and settle (as already sent) everything in the stream, as a worker would."""
    entries = await outbox.read("test", 10_000, 10)
    await outbox.settle([outbox.skip_sent(e) for e in entries])
    return [e.event_id for e in entries]


def test_the_pace_is_what_the_limiter_sends_in_one_interval() -> None:
    pace = RetryPace.of(requests_per_s=4, burst=1, batch_events=5, interval_s=0.5)
    assert pace.allowance == (1 + 2) * 5  # the burst, and 2 requests in 0.5 s
    assert pace.step_ms == 50.0  # 20 events a second


async def test_due_retries_move_as_far_as_the_allowance_and_the_rest_waits_its_turn(
    redis: Redis, redis_url: str
) -> None:
    now = int(time.time() * 1000)
    flood = [f"a{i}" for i in range(50)]
    await schedule_retries(redis, redis_url, flood, now - 10_000)
    behind = [f"b{i}" for i in range(5)]  # another pixel's, due after the whole flood
    await schedule_retries(redis, redis_url, behind, now - 5_000, pixel=OTHER_PIXEL)
    outbox = Outbox(redis)
    pace = RetryPace(allowance=10, step_ms=100.0)

    assert await outbox.move_due(now, pace=pace) == (15, 55)
    fresh = ["new0", "new1"]
    await enqueue(redis_url, fresh)  # new events wait behind the allowance, not the flood
    stream = await in_stream(redis)
    assert stream[PIXEL][10:] == fresh and sorted(stream[OTHER_PIXEL]) == sorted(behind)
    # the flood's surplus is spread over the time ahead at the limiter's pace, one by one
    spread = [score for _, score in await redis.zrange(keys.RETRY_ZSET, 0, -1, withscores=True)]
    assert len(spread) == 40
    assert spread[0] >= now + INTERVAL_MS
    assert all(b - a == 100.0 for a, b in itertools.pairwise(spread))
    # nothing more before its turn, and nothing while the stream still holds the allowance;
    # the allowance waiting a minute says the pixel sends slower than its limiter (TikTok
    # throttles it): the surplus is spread at that pace, a minute per allowance
    assert await outbox.move_due(now) == (0, 0)
    assert await outbox.move_due(now + 60_000, pace=pace) == (0, 40)
    assert len((await in_stream(redis))[PIXEL]) == 10 + len(fresh)
    spread = [score for _, score in await redis.zrange(keys.RETRY_ZSET, 0, -1, withscores=True)]
    assert spread[0] >= now + 60_000 + INTERVAL_MS
    assert all(b - a == 6_000.0 for a, b in itertools.pairwise(spread))

    # as moved retries are settled, as many more move; never more than the allowance
    delivered = await settle_all(redis, outbox)
    at = now + 60_000
    while await redis.zcard(keys.RETRY_ZSET):
        at += 60_000  # every spread retry is due
        moved, _ = await outbox.move_due(at, pace=pace)
        assert 0 < moved <= 10
        assert len((await in_stream(redis)).get(PIXEL, [])) <= 10
        delivered += await settle_all(redis, outbox)
    assert sorted(delivered) == sorted(flood + behind + fresh)  # each exactly once
    assert await redis.hlen(keys.RETRY_DATA_HASH) == 0


async def test_after_an_outage_retries_are_delivered_once_at_the_limiters_pace(
    make_settings: Callable[..., Settings], redis_url: str, redis: Redis
) -> None:
    retries = [f"r{i}" for i in range(40)]
    await schedule_retries(redis, redis_url, retries, int(time.time() * 1000) - 1000)
    fresh = [f"n{i}" for i in range(5)]
    rps, burst, batch = 4, 1, 5
    allowance = RetryPace.of(rps, burst, batch, keys.RETRY_POLL_INTERVAL_S).allowance
    most = 0

    async def watch() -> None:  # the stream, sampled while the worker runs
        nonlocal most
        while True:
            moved = [i for i in (await in_stream(redis)).get(PIXEL, []) if i.startswith("r")]
            most = max(most, len(moved))
            await asyncio.sleep(0.005)

    async with running_emulator() as tiktok:
        env = delivery_env(
            tiktok, redis_url, TTGW_RATE_LIMIT_RPS=str(rps), TTGW_RATE_LIMIT_BURST=str(burst),
            TTGW_BATCH_MAX_EVENTS=str(batch),
        )  # fmt: skip
        watcher = asyncio.create_task(watch())
        try:
            async with running_worker(make_settings(**env)):
                await tiktok.state.wait_for_events(10, timeout_s=30)
                await enqueue(redis_url, fresh)  # new events, while retries move back
                await tiktok.state.wait_for_events(45, timeout_s=30)

                async def all_settled() -> bool:
                    return (await counters(redis)).get("delivered", 0) >= 45

                await wait_until(all_settled)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        state = tiktok.state
    assert sorted(e.event_id for e in state.unique_events()) == sorted(retries + fresh)
    assert state.duplicates == 0
    assert 0 < most <= allowance
    assert await redis.zcard(keys.RETRY_ZSET) == 0 and await redis.xlen(keys.EVENTS_STREAM) == 0
