"""The ingest side of the queue against a real Redis: the receipt as idempotency marker, the
receipt log and the event_id index, and their trimming past the retention."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from gateway.delivery.receipts import receipts_for
from gateway.ingest.enqueue import IngestQueue, Outgoing, Status
from gateway.store import keys

PIXEL = "CQUEUETEST0000000001"
DAY_S = 86400


def item(event_id: str, event: str = "Purchase", suppressed: str | None = None) -> Outgoing:
    return Outgoing(
        PIXEL, event, event_id, b'{"event":"%s"}' % event.encode(), "server", suppressed
    )


async def submit(redis: Redis, *items: Outgoing, now: float | None = None) -> list[Status]:
    return await IngestQueue(redis).submit(list(items), max_events=0, now=now)


async def test_a_repeat_inside_the_window_is_a_duplicate_and_after_it_is_queued_again(
    redis: Redis,
) -> None:
    now = time.time()
    assert await submit(redis, item("o1"), now=now) == [Status.QUEUED]
    assert await submit(redis, item("o1"), now=now + keys.IDEMPOTENCY_TTL_S - 5) == [
        Status.DUPLICATE
    ]
    assert await submit(redis, item("o1"), now=now + keys.IDEMPOTENCY_TTL_S + 5) == [Status.QUEUED]
    assert await redis.xlen(keys.EVENTS_STREAM) == 2
    (receipt,) = await receipts_for(redis, "o1")
    assert (receipt["pixel"], receipt["event"], receipt["event_id"]) == (PIXEL, "Purchase", "o1")
    assert receipt["state"] == "queued"
    assert receipt["received_ms"] == int((now + keys.IDEMPOTENCY_TTL_S + 5) * 1000)
    # the queued receipt holds no pixel, event or event_id: its key does
    raw = await redis.hgetall(keys.receipt_key(PIXEL, "Purchase", "o1"))
    assert not {b"pixel", b"event", b"event_id"} & set(raw)


async def test_consent_suppression_never_overwrites_an_accepted_event(redis: Redis) -> None:
    """Suppressed first, then consented: queued. Queued first, then suppressed: a duplicate."""
    assert await submit(redis, item("s1", suppressed="consent")) == [Status.SUPPRESSED]
    assert await submit(redis, item("s1")) == [Status.QUEUED]
    assert await submit(redis, item("s1", suppressed="consent")) == [Status.DUPLICATE]
    (receipt,) = await receipts_for(redis, "s1")
    assert receipt["state"] == "queued"
    assert receipt["duplicates"] == 1
    counters = await redis.hgetall(keys.COUNTERS_HASH)
    assert counters[b"suppressed"] == b"1"
    assert counters[b"duplicate"] == b"1"
    assert counters[b"accepted"] == b"3"


async def test_one_event_id_under_several_names_is_found_by_event_id(redis: Redis) -> None:
    await submit(redis, item("m1", "AddToCart"), item("m1", "Purchase"), item("m1", "Purchase"))
    found = await receipts_for(redis, "m1")
    assert sorted(r["event"] for r in found) == ["AddToCart", "Purchase"]
    assert await redis.xlen(keys.RECEIPT_LOG_STREAM) == 2


async def test_log_and_index_entries_leave_past_the_retention(redis: Redis) -> None:
    """Entries older than the receipt TTL are trimmed by later ingests (up to 4 each), with
    their index fields; an event received again since keeps its index field."""
    queue = IngestQueue(redis)
    ttl = 3 * DAY_S
    now = time.time()
    await queue.submit([item(f"t{i}") for i in range(6)], max_events=0, receipt_ttl_s=ttl)
    renewed = await queue.submit([item("t0")], max_events=0, receipt_ttl_s=ttl, now=now + 9 * DAY_S)
    assert renewed == [Status.QUEUED]
    # that ingest, at day 9, already trimmed the 4 oldest entries (t0..t3): t0 keeps its field
    ids = {k.decode() for k in await redis.hkeys(keys.RECEIPT_IDS_HASH)}
    assert ids == {"t0", "t4", "t5"}
    assert await redis.xlen(keys.RECEIPT_LOG_STREAM) == 3
    # ten days on (the log's ids carry Redis's clock, which is "now"): everything is past 3 days
    for n in range(3):
        await queue.submit([item(f"new{n}")], max_events=0, receipt_ttl_s=ttl, now=now + 10 * DAY_S)
    ids = {k.decode() for k in await redis.hkeys(keys.RECEIPT_IDS_HASH)}
    assert ids == {"t0", "new0", "new1", "new2"}  # t1..t5 left; t0 was received again at day 9
    assert await redis.xlen(keys.RECEIPT_LOG_STREAM) == 0  # 6 entries, up to 12 trimmed
