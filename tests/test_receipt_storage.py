"""How receipts are stored (issue #18: at most 400 B kept per delivered event): a delivered
request's events once, compressed, with TikTok's answer; each receipt a small record in the hash
of its time bucket pointing into it. Real Redis, the real outbox scripts."""

from __future__ import annotations

import time
import zlib

import orjson
from redis.asyncio import Redis

from gateway.delivery.entry import Entry, Outcome
from gateway.delivery.outbox import Outbox
from gateway.delivery.receipts import counters, receipts_for
from gateway.delivery.scrub import Matcher, _scrub_receipts
from gateway.identity.forget import Traces
from gateway.ingest.enqueue import IngestQueue, Outgoing
from gateway.store import keys
from gateway.store.receipt_records import decode
from tests.delivery_support import PIXEL, event_data

ANSWER = Outcome(200, 0, "OK", "req-20261202")


async def queued_entries(redis: Redis, ids: list[str]) -> tuple[Outbox, list[Entry]]:
    items = [Outgoing(PIXEL, "Purchase", i, event_data(i), "server") for i in ids]
    await IngestQueue(redis).submit(items, max_events=0)
    outbox = Outbox(redis)
    await outbox.ensure_group()
    return outbox, await outbox.read("test", len(ids), 100)


async def request_keys(redis: Redis) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=keys.REQUEST_PREFIX + "*")]


async def test_a_delivered_request_is_stored_once_and_each_receipt_reads_its_payload(
    redis: Redis,
) -> None:
    ids = [f"ord_{n}" for n in range(50)]
    outbox, entries = await queued_entries(redis, ids)
    now_ms = int(time.time() * 1000)
    await outbox.settle([outbox.delivered(entries, ANSWER, now_ms)])
    (request,) = await request_keys(redis)  # one key for the 50 events
    stored = zlib.decompress(await redis.hget(request, "b")).split(b"\n")
    assert stored == [e.data for e in entries]
    # no key per event: the receipts are fields of one bucket's hash
    bucket = keys.receipts_key(keys.receipt_bucket(now_ms))
    assert await redis.hlen(bucket) == 50
    assert not [k async for k in redis.scan_iter(match=f"{keys.PREFIX}:{{q}}:sent:*")]
    for entry in entries:
        (receipt,) = await receipts_for(redis, entry.event_id)
        assert receipt["payload"] == orjson.loads(entry.data)
        assert (receipt["state"], receipt["attempts"]) == ("delivered", 0)
        assert (receipt["code"], receipt["message"], receipt["request_id"]) == (
            0, "OK", "req-20261202"
        )  # fmt: skip
        assert receipt["http_status"] == 200
        assert receipt["delivered_ms"] == receipt["last_try_ms"] == now_ms
    # the request lives as long as the longest-lived receipt pointing into it
    ttl_ms = await redis.pttl(request)
    retention_ms = (keys.RECEIPT_TTL_S + keys.RECEIPT_BUCKET_S) * 1000
    assert retention_ms - 60_000 < ttl_ms <= retention_ms


async def test_a_settle_run_twice_changes_nothing(redis: Redis) -> None:
    """The worker retries a settle whose reply was lost: the second run is a no-op."""
    outbox, entries = await queued_entries(redis, ["a1", "a2", "a3"])
    call = outbox.delivered(entries, ANSWER, int(time.time() * 1000))
    await outbox.settle([call])
    bucket = keys.receipts_key(keys.receipt_bucket(int(time.time() * 1000)))
    before = (await redis.hgetall(bucket), await counters(redis), await request_keys(redis))
    await outbox.settle([call])
    after = (await redis.hgetall(bucket), await counters(redis), await request_keys(redis))
    assert after == before
    assert before[1]["delivered"] == 3
    assert "duplicate" not in before[1]
    # the receipt is the "sent" marker: the worker will not send these again
    assert await outbox.already_sent(entries) == [True, True, True]


async def test_a_copy_delivered_by_a_racing_worker_counts_as_a_duplicate(redis: Redis) -> None:
    outbox, (first,) = await queued_entries(redis, ["r1"])
    await outbox.settle([outbox.delivered([first], ANSWER, int(time.time() * 1000))])
    await redis.xadd(keys.EVENTS_STREAM, first.as_fields())  # the same event in the stream again
    (copy,) = await outbox.read("test", 10, 100)
    await outbox.settle([outbox.delivered([copy], ANSWER, int(time.time() * 1000))])
    (receipt,) = await receipts_for(redis, "r1")
    assert (receipt["state"], receipt["duplicates"]) == ("delivered", 1)
    assert receipt["payload"]["event_id"] == "r1"
    c = await counters(redis)
    assert (c["delivered"], c["duplicate"]) == (1, 1)
    assert len(await request_keys(redis)) == 1  # nothing stored for the repeat


async def test_erasure_rewrites_the_shared_body_without_the_persons_event(redis: Redis) -> None:
    outbox, entries = await queued_entries(redis, ["e1", "e2", "e3"])
    await outbox.settle([outbox.delivered(entries, ANSWER, int(time.time() * 1000))])
    email = orjson.loads(entries[1].data)["user"]["email"][0]
    assert await _scrub_receipts(redis, Matcher(Traces(hashes={email}))) == 1
    (request,) = await request_keys(redis)
    lines = zlib.decompress(await redis.hget(request, "b")).split(b"\n")
    assert lines == [entries[0].data, b"", entries[2].data]
    erased = (await receipts_for(redis, "e2"))[0]
    assert erased["state"] == "delivered" and erased.get("payload") is None
    assert erased["request_id"] == "req-20261202"  # TikTok's answer stays
    assert (await receipts_for(redis, "e3"))[0]["payload"] == orjson.loads(entries[2].data)
    assert await _scrub_receipts(redis, Matcher(Traces(hashes={email}))) == 0


async def test_a_retry_and_a_dead_letter_keep_their_own_payload_and_answer(redis: Redis) -> None:
    outbox, (retried, dead) = await queued_entries(redis, ["t1", "t2"])
    now_ms = int(time.time() * 1000)
    throttled = Outcome(200, 40100, "too many requests", "req-x")
    await outbox.settle(
        [
            outbox.retry(retried, now_ms + 5000, throttled, now_ms),
            outbox.dead(dead, "rejected by TikTok: bad", Outcome(200, 40001, "bad", None), now_ms),
        ]
    )
    (r,) = await receipts_for(redis, "t1")
    assert (r["state"], r["code"], r["next_try_ms"], r["request_id"]) == (
        "retrying", 40100, now_ms + 5000, "req-x"
    )  # fmt: skip
    assert r["payload"] == orjson.loads(retried.data)
    (d,) = await receipts_for(redis, "t2")
    assert (d["state"], d["reason"], d["dead_ms"]) == ("dead", "rejected by TikTok: bad", now_ms)
    # a delivery later replaces the attempt's answer with the request's
    moved, _ = await outbox.move_due(now_ms + 10_000)
    assert moved == 1
    (back,) = await outbox.read("test", 10, 100)
    await outbox.settle([outbox.delivered([back], ANSWER, now_ms + 10_000)])
    (r,) = await receipts_for(redis, "t1")
    assert (r["state"], r["code"], r["next_try_ms"]) == ("delivered", 0, None)
    bucket = keys.receipts_key(keys.receipt_bucket(now_ms))
    (record,) = decode(await redis.hget(bucket, "t1"))
    assert "payload" not in record.extras  # stored once, in the request


async def test_pair_numbers_keep_pixels_and_names_apart(redis: Redis) -> None:
    other = "CYYYYYYYYYYYYYYYYYY1"
    items = [
        Outgoing(PIXEL, "Purchase", "p1", event_data("p1"), "server"),
        Outgoing(other, "Purchase", "p1", event_data("p1"), "server"),
        Outgoing(PIXEL, "AddToCart", "p1", event_data("p1", event="AddToCart"), "browser"),
    ]
    await IngestQueue(redis).submit(items, max_events=0)
    found = await receipts_for(redis, "p1")
    assert sorted((r["pixel"], r["event"], r["source"]) for r in found) == [
        (PIXEL, "AddToCart", "browser"), (PIXEL, "Purchase", "server"),
        (other, "Purchase", "server"),
    ]  # fmt: skip
    assert await redis.hlen(keys.RECEIPT_PAIRS_HASH) == 1 + 2 * 3  # the counter, both ways
