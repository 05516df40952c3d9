"""Erasure in the delivery side (DESIGN §9): no receipt, queued event or sandbox record keeps an
identifier of an erased person.

An event *is the person's* when its TikTok event object names one of their
:class:`~gateway.identity.forget.Traces`: a hashed e-mail, phone or external id, a ``ttclid``, a
``_ttp``, or the IP and user agent of one of their sessions together. Then:

* **queued or retrying** — it is taken out of the queue and never sent: after an erasure request
  (GDPR Art. 17) sending their data on is new processing, and an event stripped of every
  identifier is worth nothing to TikTok's matching. Its receipt becomes ``suppressed`` with reason
  ``erased``. An event already inside a request to TikTok when the erasure runs is delivered,
  and its receipt gets the payload back: run the erasure again (it is idempotent);
* **dead** — the dead letter is deleted (a replay would send it);
* **receipts** — the ``payload`` field is deleted; the state, attempts, TikTok's codes and
  ``request_id`` stay;
* **sandbox** — the recorded copy is deleted.

Receipts are found by SCAN over the receipt keys, the queue, dead letters and sandbox by XRANGE,
retries by HSCAN, all in batches of :data:`BATCH`: an admin operation reading every event kept
(bounded by the queue limit and the retention), not a hot path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson

from gateway.identity.forget import Traces
from gateway.store import keys
from gateway.store.connections import Lua, RedisClient, eval_many

BATCH = 500
ERASED = "erased"

_DROP_QUEUED = Lua("""
-- KEYS: stream, receipt; ARGV: stream id, group, reason
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end  -- settled meanwhile
redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'state', 'suppressed', 'reason', ARGV[3])
  redis.call('HDEL', KEYS[2], 'payload', 'next_try_ms')
end
return 1
""")

_DROP_RETRY = Lua("""
-- KEYS: retry zset, retry data hash, receipt; ARGV: dedup id, reason
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end  -- moved back meanwhile
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'state', 'suppressed', 'reason', ARGV[2])
  redis.call('HDEL', KEYS[3], 'payload', 'next_try_ms')
end
return 1
""")


@dataclass(slots=True)
class DeliveryErasure:
    """What :func:`scrub_events` removed."""

    queued: int = 0  # queued and retrying events taken out of the queue, never sent
    dead: int = 0  # dead letters deleted
    receipts: int = 0  # receipts whose payload was deleted
    sandbox: int = 0  # sandbox records deleted


class Matcher:
    """Tells whether a TikTok event object names the erased person."""

    def __init__(self, traces: Traces) -> None:
        self.needles = [n.encode() for n in (*traces.hashes, *traces.ttclids, *traces.ttps) if n]
        self.sessions = traces.sessions

    def __bool__(self) -> bool:
        return bool(self.needles or self.sessions)

    def matches(self, payload: bytes | str | None) -> bool:
        """True when ``payload`` (the event object as JSON) names one of the traces."""
        if not payload:
            return False
        raw = payload.encode() if isinstance(payload, str) else payload
        # the traces are hex digests, click ids and _ttp values: found as written in the JSON
        if any(needle in raw for needle in self.needles):
            return True
        if not self.sessions:
            return False
        try:
            user = orjson.loads(raw).get("user")
        except (orjson.JSONDecodeError, AttributeError):
            return False
        if not isinstance(user, dict):
            return False
        return (str(user.get("ip")), str(user.get("user_agent"))) in self.sessions


async def scrub_events(redis: RedisClient, traces: Traces) -> DeliveryErasure:
    """Take the person's events out of the queue and their identifiers out of what is kept."""
    done = DeliveryErasure()
    match = Matcher(traces)
    if not match:
        return done
    done.queued = await _drop_queued(redis, match) + await _drop_retrying(redis, match)
    done.dead = await _drop_entries(redis, keys.DEAD_STREAM, b"data", match)
    done.sandbox = await _drop_entries(redis, keys.SANDBOX_STREAM, b"payload", match)
    done.receipts = await _scrub_receipts(redis, match)
    return done


Page = list[tuple[bytes, dict[bytes, bytes]]]


async def _pages(redis: RedisClient, stream: str, on_page: Callable[[Page], Awaitable[int]]) -> int:
    total, start = 0, "-"
    while True:
        page = cast("Page", await redis.xrange(stream, start, "+", count=BATCH))
        if not page:
            return total
        total += await on_page(page)
        if len(page) < BATCH:
            return total
        start = "(" + page[-1][0].decode()


async def _drop_queued(redis: RedisClient, match: Matcher) -> int:
    async def on_page(page: Page) -> int:
        calls = []
        for stream_id, fields in page:
            if match.matches(fields.get(b"data")):
                receipt = keys.receipt_key(
                    fields[b"pixel"].decode(), fields[b"event"].decode(),
                    fields[b"event_id"].decode(),
                )  # fmt: skip
                calls.append((_DROP_QUEUED, [keys.EVENTS_STREAM, receipt],
                              [stream_id.decode(), keys.DELIVERY_GROUP, ERASED]))  # fmt: skip
        return sum(await eval_many(redis, calls)) if calls else 0

    return await _pages(redis, keys.EVENTS_STREAM, on_page)


async def _drop_retrying(redis: RedisClient, match: Matcher) -> int:
    calls = []
    async for member, raw in redis.hscan_iter(keys.RETRY_DATA_HASH, count=BATCH):
        try:
            entry: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        data = entry.get("data") if isinstance(entry, dict) else None
        if match.matches(data if isinstance(data, str) else raw):
            dedup = member.decode()
            receipt = keys.receipt_key(*keys.split_dedup_id(dedup))
            calls.append((_DROP_RETRY, [keys.RETRY_ZSET, keys.RETRY_DATA_HASH, receipt],
                          [dedup, ERASED]))  # fmt: skip
    dropped = 0
    for start in range(0, len(calls), BATCH):
        dropped += sum(await eval_many(redis, calls[start : start + BATCH]))
    return dropped


async def _drop_entries(redis: RedisClient, stream: str, field: bytes, match: Matcher) -> int:
    async def on_page(page: Page) -> int:
        ids = [stream_id for stream_id, fields in page if match.matches(fields.get(field))]
        return await redis.xdel(stream, *ids) if ids else 0

    return await _pages(redis, stream, on_page)


async def _scrub_receipts(redis: RedisClient, match: Matcher) -> int:
    scrubbed = 0
    batch: list[bytes] = []

    async def flush() -> int:
        pipe = redis.pipeline(transaction=False)
        for key in batch:
            pipe.hget(key, "payload")
        found = [k for k, p in zip(batch, await pipe.execute(), strict=True) if match.matches(p)]
        batch.clear()
        if not found:
            return 0
        pipe = redis.pipeline(transaction=False)
        for key in found:
            pipe.hdel(key, "payload")
        return sum(cast("list[int]", await pipe.execute()))

    async for key in redis.scan_iter(match=keys.RECEIPT_KEY_PREFIX + "*", count=BATCH):
        batch.append(key)
        if len(batch) >= BATCH:
            scrubbed += await flush()
    if batch:
        scrubbed += await flush()
    return scrubbed
