"""The ingest side of the queue against a real Redis: the receipt as idempotency marker, the
receipts packed in time buckets with their logs, and their expiry past the retention."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from gateway.delivery.receipts import receipts_for
from gateway.ingest.enqueue import IngestQueue, Outgoing, Status
from gateway.store import keys
from gateway.store.receipt_records import decode

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
    then = time.time() - keys.IDEMPOTENCY_TTL_S - 10
    assert await submit(redis, item("o1"), now=then) == [Status.QUEUED]
    assert await submit(redis, item("o1"), now=then + keys.IDEMPOTENCY_TTL_S - 5) == [
        Status.DUPLICATE
    ]
    assert await submit(redis, item("o1"), now=then + keys.IDEMPOTENCY_TTL_S + 5) == [Status.QUEUED]
    assert await redis.xlen(keys.EVENTS_STREAM) == 2
    (receipt,) = await receipts_for(redis, "o1")  # the newest receipt of the pair
    assert (receipt["pixel"], receipt["event"], receipt["event_id"]) == (PIXEL, "Purchase", "o1")
    assert receipt["state"] == "queued"
    assert receipt["received_ms"] == int((then + keys.IDEMPOTENCY_TTL_S + 5) * 1000)
    assert receipt["duplicates"] == 0
    # the first receipt stays in its own bucket (with its duplicate counted) until it expires
    first = keys.receipts_key(keys.receipt_bucket(int(then * 1000)))
    (old,) = decode(await redis.hget(first, "o1"))
    assert (old.received_ms, old.duplicates) == (int(then * 1000), 1)


async def test_receipts_are_records_in_time_buckets_expiring_after_the_retention(
    redis: Redis,
) -> None:
    """No key per receipt: one field per event_id in the hash of its bucket, the bucket and its
    log expire as a whole ``receipt_ttl_s`` after the bucket's end."""
    ttl = 3 * DAY_S
    now_ms = int(time.time() * 1000)
    await IngestQueue(redis).submit(
        [item(f"b{i}") for i in range(5)], max_events=0, receipt_ttl_s=ttl, now=now_ms / 1000
    )
    bucket = keys.receipt_bucket(now_ms)
    assert await redis.hlen(keys.receipts_key(bucket)) == 5
    assert await redis.xlen(keys.receipt_log_key(bucket)) == 5
    expected = keys.bucket_expiry_ms(bucket, ttl)
    for key in (keys.receipts_key(bucket), keys.receipt_log_key(bucket)):
        assert await redis.pexpiretime(key) == expected
    assert ttl * 1000 < expected - now_ms <= (ttl + keys.RECEIPT_BUCKET_S) * 1000
    assert not await redis.keys(f"{keys.PREFIX}:{{q}}:receipt:*")  # the old layout
    (record,) = decode(await redis.hget(keys.receipts_key(bucket), "b0"))
    assert (record.state, record.source, record.received_ms) == ("q", "server", now_ms)
    # the pair is named by a number, shared by every receipt
    assert await redis.hget(keys.RECEIPT_PAIRS_HASH, f"{PIXEL}\x1fPurchase") == record.pair.encode()


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
    bucket = keys.receipt_bucket(int(time.time() * 1000))
    assert await redis.xlen(keys.receipt_log_key(bucket)) == 2
    assert len(decode(await redis.hget(keys.receipts_key(bucket), "m1"))) == 2


async def test_a_receipt_in_a_bucket_past_the_window_makes_no_duplicate(redis: Redis) -> None:
    """Ingest looks for a live receipt in every bucket of the last 48 h, and only there."""
    base = time.time() - 3 * DAY_S
    assert await submit(redis, item("w1"), now=base) == [Status.QUEUED]
    for hours in (6, 12, 30, 47):
        assert await submit(redis, item("w1"), now=base + hours * 3600) == [Status.DUPLICATE]
    assert await submit(redis, item("w1"), now=base + 49 * 3600) == [Status.QUEUED]
    assert await submit(redis, item("w1"), now=base + 60 * 3600) == [Status.DUPLICATE]
