"""The worker's half of "one order, one conversion": the page's name is the one TikTok gets."""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from gateway.delivery.receipts import counters, receipt
from gateway.ingest.enqueue import IngestQueue, Outgoing, Status
from gateway.operate.stats import hour
from gateway.settings import Settings
from gateway.store import keys
from tests.delivery_support import (
    PIXEL,
    delivery_env,
    event_data,
    running_emulator,
    running_worker,
    wait_until,
)

MakeSettings = Callable[..., Settings]


async def test_a_backend_order_queued_first_is_sent_under_the_pages_name(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    queue = IngestQueue(redis)  # type: ignore[arg-type]
    backend = Outgoing(PIXEL, "Purchase", "ord_7", event_data("ord_7"), "server")
    page = Outgoing(PIXEL, "CompletePayment", "ord_7",
                    event_data("ord_7", event="CompletePayment"), "browser")  # fmt: skip
    assert await queue.submit([backend], max_events=0) == [Status.QUEUED]
    assert await queue.submit([page], max_events=0) == [Status.DUPLICATE]
    async with running_emulator() as tiktok:
        async with running_worker(make_settings(**delivery_env(tiktok, redis_url))):
            await tiktok.state.wait_for_events(1)
            await wait_until(lambda: _delivered(redis, 1))
        (sent,) = tiktok.state.accepted
    assert (sent.event, sent.event_id) == ("CompletePayment", "ord_7")
    assert tiktok.state.duplicates == 0
    found = await receipt(redis, PIXEL, "Purchase", "ord_7")
    assert found is not None
    assert found["payload"]["event"] == "CompletePayment"


async def _delivered(redis: Redis, n: int) -> bool:
    return (await counters(redis)).get("delivered", 0) >= n


async def test_coverage_counts_custom_names_under_one_row(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    queue = IngestQueue(redis)  # type: ignore[arg-type]
    items = [
        Outgoing(PIXEL, f"Custom_{i}", f"c{i}", event_data(f"c{i}", event=f"Custom_{i}"), "server")
        for i in range(40)
    ]
    await queue.submit(items, max_events=0)
    async with running_emulator() as tiktok:
        settings = make_settings(**delivery_env(tiktok, redis_url))
        async with running_worker(settings):
            await tiktok.state.wait_for_events(40)
            await wait_until(lambda: _delivered(redis, 40))
    fields = {k.decode() for k in await redis.hkeys(keys.coverage_key(hour()))}
    assert fields and {f.split("|")[0] for f in fields} == {"custom"}  # not 40 rows
    assert "custom|total" in fields
