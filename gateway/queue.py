"""The durable delivery queue in Redis: one stream of events ready to send, fed at ingest.

Ingest acknowledges an event only after one Lua script has, atomically: checked the 48 h
idempotency marker of ``(pixel, event, event_id)``, checked the queue's size limit, set the
marker, appended the event to the stream, written its receipt and counted it. A repeat inside the
window is answered as a duplicate and not queued again. Events suppressed by consent get a receipt
that says so and are never queued. All keys of these scripts share the ``{q}`` hash tag.

Stream entry fields: ``pixel``, ``event``, ``event_id``, ``data`` (the TikTok ``data[]`` object as
JSON, hashed and enriched), ``received_ms``, ``source`` (``browser`` or ``server``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway import keys
from gateway.connections import Lua, LuaCall, RedisClient, eval_many

_ENQUEUE = Lua("""
-- KEYS: seen, stream, receipt, receipt index, counters, receipt ids of the event_id
-- ARGV: idempotency ttl s, queue max (0 = no limit), receipt ttl s, received ms, dedup id,
--       then the stream entry's field/value pairs
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[5], 'accepted', 1)
  redis.call('HINCRBY', KEYS[5], 'duplicate', 1)
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[3], 'duplicates', 1) end
  return 0
end
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('XLEN', KEYS[2]) >= limit then
  return -1
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
local received = tonumber(ARGV[4])
-- the receipt gets every field but the payload (the last pair), which delivery records as sent
redis.call('HSET', KEYS[3], 'state', 'queued', 'stream_id', id, 'attempts', 0,
  unpack(fields, 1, #fields - 2))
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], received, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', received - tonumber(ARGV[3]) * 1000)
redis.call('SADD', KEYS[6], ARGV[5])
redis.call('EXPIRE', KEYS[6], ARGV[3])
redis.call('HINCRBY', KEYS[5], 'accepted', 1)
redis.call('HINCRBY', KEYS[5], 'queued', 1)
return id
""")

_SUPPRESS = Lua("""
-- KEYS: receipt, receipt index, counters, receipt ids of the event_id
-- ARGV: receipt ttl s, received ms, dedup id, reason, then field/value pairs
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'suppressed', 'reason', ARGV[4], 'received_ms', ARGV[2],
  unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[1])
local received = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], received, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', received - tonumber(ARGV[1]) * 1000)
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'accepted', 1)
redis.call('HINCRBY', KEYS[3], 'suppressed', 1)
return 1
""")


class QueueFull(Exception):
    """The queue holds ``TTGW_QUEUE_MAX_EVENTS`` events: ingest answers 503, drops nothing."""


class Status(StrEnum):
    """What ingest did with one event."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    SUPPRESSED = "suppressed"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event ready for the queue: ``data`` is the TikTok event object as JSON."""

    pixel: str
    event: str
    event_id: str
    data: bytes
    source: str
    suppressed: str | None = None  # the reason, when consent keeps it from being sent


class IngestQueue:
    """The ingest side of the queue."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def submit(
        self,
        items: Sequence[Outgoing],
        *,
        max_events: int,
        receipt_ttl_s: int = keys.RECEIPT_TTL_S,
        now: float | None = None,
    ) -> list[Status]:
        """Queue (or record as suppressed) every item in one round trip; their statuses in order.

        Raises QueueFull when the limit was reached before every item could be queued; the
        items queued before that stay queued (a retry of the request sees them as duplicates).
        """
        received_ms = int((time.time() if now is None else now) * 1000)
        calls: list[LuaCall] = []
        for item in items:
            dedup = keys.dedup_id(item.pixel, item.event, item.event_id)
            fields: list[str | bytes | int] = [
                "pixel", item.pixel, "event", item.event, "event_id", item.event_id,
                "source", item.source, "received_ms", received_ms, "data", item.data,
            ]  # fmt: skip
            receipt = keys.receipt_key(item.pixel, item.event, item.event_id)
            rids = keys.receipt_ids_key(item.event_id)
            if item.suppressed is not None:
                calls.append(
                    (
                        _SUPPRESS,
                        [receipt, keys.RECEIPT_INDEX_ZSET, keys.COUNTERS_HASH, rids],
                        [receipt_ttl_s, received_ms, dedup, item.suppressed, *fields[:-2]],
                    )
                )
                continue
            calls.append(
                (
                    _ENQUEUE,
                    [
                        keys.seen_key(item.pixel, item.event, item.event_id),
                        keys.EVENTS_STREAM,
                        receipt,
                        keys.RECEIPT_INDEX_ZSET,
                        keys.COUNTERS_HASH,
                        rids,
                    ],
                    [
                        keys.IDEMPOTENCY_TTL_S,
                        max_events,
                        receipt_ttl_s,
                        received_ms,
                        dedup,
                        *fields,
                    ],
                )
            )
        results = await eval_many(self.redis, calls)
        statuses: list[Status] = []
        for item, result in zip(items, results, strict=True):
            if item.suppressed is not None:
                statuses.append(Status.SUPPRESSED)
            elif result == 0:
                statuses.append(Status.DUPLICATE)
            elif result == -1:
                raise QueueFull(f"the delivery queue holds {max_events} events")
            else:
                statuses.append(Status.QUEUED)
        return statuses
