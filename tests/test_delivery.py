"""Delivery against the strict emulator, with a real Redis: outcomes, chaos, exactly-once."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from redis.asyncio import Redis

from gateway.delivery.receipts import counters, receipts_for
from gateway.delivery.replay import dead_letters, replay
from gateway.settings import Settings
from gateway.store import keys
from gateway.tiktok.emulator_state import Outcome, Script
from tests.delivery_support import (
    PIXEL,
    TOKEN,
    delivery_env,
    enqueue,
    event_data,
    running_emulator,
    running_worker,
    wait_until,
)

MakeSettings = Callable[..., Settings]


async def settled(redis: Redis, n: int, *states: str) -> None:
    """Wait until ``n`` events have ended in the given counter(s)."""

    async def done() -> bool:
        c = await counters(redis)
        return sum(c.get(s, 0) for s in states) >= n

    await wait_until(done)


async def test_a_backlog_is_delivered_once_in_full_batches(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    ids = [f"ord_{i}" for i in range(2500)]
    await enqueue(redis_url, ids)
    async with running_emulator() as tiktok:
        async with running_worker(make_settings(**delivery_env(tiktok, redis_url))):
            await tiktok.state.wait_for_events(2500)
            await settled(redis, 2500, "delivered")
        state = tiktok.state
    assert sorted(e.event_id for e in state.unique_events()) == sorted(ids)
    assert state.duplicates == 0
    sizes = [r.event_count for r in state.requests]
    assert max(sizes) == 1000 and len(sizes) <= 4
    assert await redis.xlen(keys.EVENTS_STREAM) == 0
    pending = await redis.xpending(keys.EVENTS_STREAM, keys.DELIVERY_GROUP)
    assert pending["pending"] == 0
    (receipt,) = await receipts_for(redis, "ord_7")
    assert receipt["state"] == "delivered"
    assert receipt["code"] == 0 and receipt["http_status"] == 200
    assert receipt["request_id"] and receipt["attempts"] == 1
    assert receipt["payload"]["event_id"] == "ord_7"
    assert TOKEN not in orjson.dumps(receipt).decode()
    assert receipt["first_try_ms"] <= receipt["last_try_ms"]


async def test_an_outage_then_throttling_loses_and_doubles_nothing(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    ids = [f"o{i}" for i in range(60)]
    await enqueue(redis_url, ids)
    async with running_emulator() as tiktok:
        tiktok.state.script(
            Script(Outcome.FAIL, times=3, http_status=503),
            Script(Outcome.HANG, times=1, hang_s=0.2),
            Script(Outcome.CODE, times=2, code=50002),
            Script(Outcome.THROTTLE, times=3),
        )
        env = delivery_env(tiktok, redis_url, TTGW_BATCH_MAX_EVENTS="20")
        async with running_worker(make_settings(**env)) as worker:
            await tiktok.state.wait_for_events(60)
            await settled(redis, 60, "delivered")
            assert await worker.limiter.factor(PIXEL) > 1  # TikTok throttled: the limiter slowed
        state = tiktok.state
    assert sorted(e.event_id for e in state.unique_events()) == sorted(ids)
    assert state.duplicates == 0
    c = await counters(redis)
    assert c["delivered"] == 60
    assert c["retried"] >= 20
    assert "dead" not in c
    retried = [r for i in ids for r in await receipts_for(redis, i) if r["attempts"] > 1]
    assert retried and all(r["state"] == "delivered" for r in retried)


async def test_a_poisoned_event_in_a_batch_of_1000_is_isolated(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    ids = [f"b{i}" for i in range(1000)]
    await enqueue(redis_url, ids[:500])
    await enqueue(redis_url, ["b500"], age_s=2 * 86400)  # we accept 7 days; this TikTok only 1
    await enqueue(redis_url, ids[501:])
    async with running_emulator(max_event_age_s=86400) as tiktok:
        async with running_worker(make_settings(**delivery_env(tiktok, redis_url))):
            await settled(redis, 1000, "delivered", "dead")
        state = tiktok.state
    delivered = {e.event_id for e in state.unique_events()}
    assert delivered == set(ids) - {"b500"}
    assert state.duplicates == 0
    (letter,) = await dead_letters(redis)
    assert letter.event_id == "b500"
    assert "event_time" in letter.reason
    (receipt,) = await receipts_for(redis, "b500")
    assert receipt["state"] == "dead"
    assert receipt["code"] == 40002
    assert len(state.requests) <= 2 * 10 + 2  # a bisection, not one request per event


async def test_a_revoked_token_pauses_and_resumes_by_itself(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    ids = [f"r{i}" for i in range(5)]
    await enqueue(redis_url, ids)
    async with running_emulator() as tiktok:
        tiktok.state.revoke(TOKEN)
        env = delivery_env(tiktok, redis_url, TTGW_PAUSED_PROBE_S="0.3")
        async with running_worker(make_settings(**env)):
            await wait_until(lambda: redis.hexists(keys.PAUSED_HASH, PIXEL))
            pause = orjson.loads(await redis.hget(keys.PAUSED_HASH, PIXEL))
            assert pause["code"] == 40105
            alerts = await redis.xrange(keys.ALERTS_STREAM)
            assert alerts[0][1][b"kind"] == b"paused"
            assert tiktok.state.accepted == []
            probes_before = len(tiktok.state.requests)
            await wait_until(lambda: len(tiktok.state.requests) >= probes_before + 1)
            tiktok.state.restore(TOKEN, {PIXEL})  # the merchant fixed the token in TikTok
            await tiktok.state.wait_for_events(5)
            await settled(redis, 5, "delivered")
            assert not await redis.hexists(keys.PAUSED_HASH, PIXEL)
        state = tiktok.state
    assert sorted(e.event_id for e in state.unique_events()) == ids
    assert state.duplicates == 0
    assert "dead" not in await counters(redis)  # paused events were kept, not burnt


async def test_dead_letters_replay_with_their_event_id(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    await enqueue(redis_url, ["keep-me"], age_s=2 * 86400)
    async with running_emulator(max_event_age_s=86400) as tiktok:
        env = delivery_env(tiktok, redis_url)
        async with running_worker(make_settings(**env)):
            await settled(redis, 1, "dead")
            letters = await dead_letters(redis, event_ids={"keep-me"})
            assert len(letters) == 1
            tiktok.state.config.max_event_age_s = 7 * 86400  # say TikTok relaxed, or data fixed
            assert await replay(redis, letters) == 1
            await tiktok.state.wait_for_events(1)
            await settled(redis, 1, "delivered")
        (event,) = tiktok.state.accepted
    assert event.event_id == "keep-me"
    c = await counters(redis)
    assert (c["dead"], c["replayed"], c["delivered"]) == (0, 1, 1)
    assert await dead_letters(redis) == []


async def test_an_event_is_never_sent_twice_even_if_queued_again(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    """A repeat received more than 48 h after the first copy, but less than 48 h after TikTok
    accepted it (it was delivered late), is still a duplicate: the delivered receipt is the
    "sent" marker."""
    from gateway.ingest.enqueue import IngestQueue, Outgoing, Status

    received = time.time() - 46 * 3600
    copy = Outgoing(PIXEL, "Purchase", "once", event_data("once"), "server")
    await IngestQueue(redis).submit([copy], max_events=0, now=received)
    async with running_emulator() as tiktok:
        settings = make_settings(
            **delivery_env(tiktok, redis_url), TTGW_DEAD_LETTER_AFTER_S=str(47 * 3600)
        )
        async with running_worker(settings):
            await settled(redis, 1, "delivered")
        later = received + keys.IDEMPOTENCY_TTL_S + 3600
        assert await IngestQueue(redis).submit([copy], max_events=0, now=later) == [
            Status.DUPLICATE
        ]
        assert [e.event_id for e in tiktok.state.accepted] == ["once"]
    (receipt,) = await receipts_for(redis, "once")
    assert receipt["state"] == "delivered"
    assert receipt["duplicates"] == 1


async def test_test_event_code_goes_with_every_request(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    await enqueue(redis_url, ["t1", "t2"])
    async with running_emulator() as tiktok:
        env = delivery_env(tiktok, redis_url, TTGW_TEST_EVENT_CODE="TEST12345")
        async with running_worker(make_settings(**env)):
            await tiktok.state.wait_for_events(2)
        assert {e.test_event_code for e in tiktok.state.accepted} == {"TEST12345"}


async def test_stale_and_invalid_events_are_dead_lettered_not_sent(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    await enqueue(redis_url, ["stale"], age_s=8 * 86400)
    async with running_emulator() as tiktok:
        async with running_worker(make_settings(**delivery_env(tiktok, redis_url))):
            await settled(redis, 1, "dead")
        assert tiktok.state.requests == []
    (letter,) = await dead_letters(redis)
    assert letter.reason.startswith("stale")


async def test_two_workers_share_the_rate_limit(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    ids = [f"rl{i}" for i in range(70)]
    await enqueue(redis_url, ids)
    async with running_emulator() as tiktok:
        env = delivery_env(
            tiktok, redis_url, TTGW_BATCH_MAX_EVENTS="1", TTGW_RATE_LIMIT_RPS="20",
            TTGW_RATE_LIMIT_BURST="2",
        )  # fmt: skip
        settings = make_settings(**env)
        async with running_worker(settings), running_worker(settings):
            await tiktok.state.wait_for_events(70)
        times = sorted(r.at for r in tiktok.state.requests)
    assert len(times) == 70
    worst = max(sum(1 for t in times if start <= t < start + 1) for start in times)
    assert worst <= 20 + 2  # never above the limit (plus the burst), across both workers
    rate = (len(times) - 2) / (times[-1] - times[0])
    assert rate >= 0.8 * 20  # and the limit is reached: it is the bottleneck here


async def test_the_sandbox_records_without_sending(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    from gateway.delivery.sandbox import Sandbox
    from gateway.settings import SANDBOX_PIXEL_CODE

    await enqueue(redis_url, ["s1", "s2"], pixel=SANDBOX_PIXEL_CODE)
    settings = make_settings(TTGW_REDIS_URL=redis_url)
    assert settings.sandbox
    async with running_worker(settings):
        await settled(redis, 2, "delivered")
    recorded = await Sandbox(redis).recorded()  # type: ignore[arg-type]
    assert sorted(r.event_id for r in recorded) == ["s1", "s2"]
    (receipt,) = await receipts_for(redis, "s1")
    assert receipt["state"] == "delivered" and receipt["request_id"]


async def test_graceful_stop_returns_unsent_events(
    make_settings: MakeSettings, redis_url: str, redis: Redis, monkeypatch
) -> None:
    monkeypatch.setattr(keys, "SHUTDOWN_GRACE_S", 0.3)
    await enqueue(redis_url, [f"g{i}" for i in range(3)])
    async with running_emulator() as tiktok:
        tiktok.state.script(Script(Outcome.HANG, times=1, hang_s=30))
        settings = make_settings(**delivery_env(tiktok, redis_url))
        async with running_worker(settings):
            await tiktok.state.wait_for_hanging(1)
        tiktok.state.release_hangs()
        # the stopped worker gave its batch back: due now, attempts unchanged
        assert await redis.zcard(keys.RETRY_ZSET) == 3
        async with running_worker(settings):
            await tiktok.state.wait_for_events(3)
            await settled(redis, 3, "delivered")
        assert tiktok.state.duplicates == 0


async def test_batches_waiting_on_the_limiter_are_not_reclaimed_by_others(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    """Waiting longer than the reclaim idle time must not make another worker send it too."""
    ids = [f"w{i}" for i in range(8)]
    await enqueue(redis_url, ids)
    async with running_emulator() as tiktok:
        env = delivery_env(
            tiktok, redis_url, TTGW_BATCH_MAX_EVENTS="1", TTGW_RATE_LIMIT_RPS="3",
            TTGW_RATE_LIMIT_BURST="1", TTGW_RECLAIM_IDLE_S="1",
        )  # fmt: skip
        settings = make_settings(**env)
        async with running_worker(settings), running_worker(settings):
            await tiktok.state.wait_for_events(8, timeout_s=20)
            await settled(redis, 8, "delivered")
        state = tiktok.state
    assert len(state.requests) == 8  # each event sent once: nothing stolen mid-wait
    assert state.duplicates == 0
    assert "duplicate" not in await counters(redis)


async def test_an_event_failing_tiktoks_rules_is_found_without_bisecting(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    """Ingest's checks are not repeated per event; TikTok's 40002 makes the worker check them."""
    from gateway.ingest.enqueue import IngestQueue, Outgoing
    from gateway.store.connections import make_redis

    ids = [f"v{i}" for i in range(20)]
    await enqueue(redis_url, ids[:10])
    bad = orjson.loads(event_data("raw-email"))
    bad["user"]["email"] = ["Someone@Example.com"]  # not hashed: TikTok refuses the request
    client = make_redis(redis_url)
    try:
        item = Outgoing(PIXEL, "Purchase", "raw-email", orjson.dumps(bad), "server")
        await IngestQueue(client).submit([item], max_events=0)
    finally:
        await client.aclose()
    await enqueue(redis_url, ids[10:])
    async with running_emulator() as tiktok:
        async with running_worker(make_settings(**delivery_env(tiktok, redis_url))):
            await settled(redis, 21, "delivered", "dead")
        state = tiktok.state
    assert {e.event_id for e in state.unique_events()} == set(ids)
    assert [r.code for r in state.requests] == [40002, 0]  # refused, then the rest at once
    (letter,) = await dead_letters(redis)
    assert letter.event_id == "raw-email"
    assert letter.reason.startswith("invalid: ") and "email" in letter.reason
    (receipt,) = await receipts_for(redis, "raw-email")
    assert receipt["state"] == "dead" and receipt["code"] == 40002
    (receipt,) = await receipts_for(redis, "v3")
    assert receipt["state"] == "delivered" and receipt["attempts"] == 2
    sent = next(e for e in state.accepted if e.event_id == "v3")
    assert receipt["payload"] == sent.payload  # cut by Redis from the body as sent
