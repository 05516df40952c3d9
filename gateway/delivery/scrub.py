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
* **receipts** — the payload goes: a delivered receipt's line in its request's stored body is
  emptied (the body is rewritten without it, compressed again), a retrying or dead receipt's own
  copy is deleted; the state, attempts, TikTok's codes and ``request_id`` stay;
* **sandbox** — the recorded copy is deleted.

Receipts are found by SCAN over the request and receipt-bucket keys (HSCAN inside), the queue,
dead letters and sandbox by XRANGE, retries by HSCAN, all in batches of :data:`BATCH`: an admin
operation reading every event kept (bounded by the queue limit and the retention), not a hot
path.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson

from gateway.delivery.entry import Entry
from gateway.delivery.outbox import COMPRESS_LEVEL
from gateway.identity.forget import Traces
from gateway.store import keys
from gateway.store.connections import Lua, RedisClient, eval_many
from gateway.store.receipt_records import LUA, decode, encode

BATCH = 500
ERASED = "erased"

_ERASE = r"""
-- the receipt of an event taken out of the queue: suppressed, with no payload
local function erase(bucket, pairs, event_id, pair, reason)
  local pid = pair_id(pairs, pair, false)
  local list = rget(bucket, event_id)
  local j = pid and rfind(list, pid)
  if not j then return end
  list[j].state = 's'
  list[j].x.reason = reason
  list[j].x.payload = nil
  list[j].x.next_try_ms = nil
  rput(bucket, event_id, list)
end
"""

_DROP_QUEUED = Lua(
    LUA
    + _ERASE
    + """
-- KEYS: stream, receipts bucket, pairs; ARGV: stream id, group, reason, event_id, pixel\31event
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end  -- settled meanwhile
redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
erase(KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[3])
return 1
"""
)

_DROP_RETRY = Lua(
    LUA
    + _ERASE
    + """
-- KEYS: retry zset, retry data hash, receipts bucket, pairs
-- ARGV: dedup id, reason, event_id, pixel\31event
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end  -- moved back meanwhile
redis.call('HDEL', KEYS[2], ARGV[1])
erase(KEYS[3], KEYS[4], ARGV[3], ARGV[4], ARGV[2])
return 1
"""
)

# a value rewritten only if nobody changed it meanwhile (else the next run catches it)
_REPLACE = Lua("""
-- KEYS: a hash; ARGV: field, the value read, the new value
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
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
            entry = Entry.from_stream(stream_id, fields)
            if entry is not None and match.matches(entry.data):
                calls.append((_DROP_QUEUED,
                              [keys.EVENTS_STREAM, entry.receipts_key, keys.RECEIPT_PAIRS_HASH],
                              [entry.stream_id, keys.DELIVERY_GROUP, ERASED, entry.event_id,
                               entry.pair]))  # fmt: skip
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
            pixel, event, event_id = keys.split_dedup_id(dedup)
            received = int(entry.get("receipt_ms") or entry.get("received_ms") or 0)
            bucket = keys.receipts_key(keys.receipt_bucket(received))
            calls.append((_DROP_RETRY,
                          [keys.RETRY_ZSET, keys.RETRY_DATA_HASH, bucket, keys.RECEIPT_PAIRS_HASH],
                          [dedup, ERASED, event_id, f"{pixel}\x1f{event}"]))  # fmt: skip
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
    """Payloads out of receipts: the lines of delivered requests' bodies (each rewritten without
    them, compressed again), and the payloads retrying and dead receipts keep."""
    scrubbed = 0
    async for key in redis.scan_iter(match=keys.REQUEST_PREFIX + "*", count=BATCH):
        body = cast("bytes | None", await redis.hget(key, "b"))
        if not body:
            continue
        lines = zlib.decompress(body).split(b"\n")
        erased = [i for i, line in enumerate(lines) if match.matches(line)]
        if not erased:
            continue
        for i in erased:
            lines[i] = b""
        new = zlib.compress(b"\n".join(lines), COMPRESS_LEVEL)
        if (await eval_many(redis, [(_REPLACE, [key.decode()], ["b", body, new])]))[0]:
            scrubbed += len(erased)
    async for key in redis.scan_iter(match=keys.RECEIPTS_PREFIX + "*", count=BATCH):
        async for field, value in redis.hscan_iter(key, match=None, count=BATCH):
            if b"payload" not in value:
                continue
            records = decode(value)
            found = [r for r in records if match.matches(r.extras.get("payload"))]
            for r in found:
                del r.extras["payload"]
            if (
                found
                and (
                    await eval_many(
                        redis, [(_REPLACE, [key.decode()], [field, value, encode(records)])]
                    )
                )[0]
            ):
                scrubbed += len(found)
    return scrubbed
