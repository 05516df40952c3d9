"""The durable delivery queue in Redis: one stream of events ready to send, fed at ingest.

Ingest acknowledges an event only after one Lua script has, atomically: checked the receipt of
``(pixel, event, event_id)`` (a receipt received less than 48 h ago, not ``suppressed``, makes it
a duplicate: the receipt is the idempotency marker), checked the queue's size limit, appended the
event to the stream, written its receipt, logged it in the receipt log and the event_id index,
and counted it. A repeat inside the window is answered as a duplicate and not queued again.
Events suppressed by consent get a receipt that says so and are never queued. All keys of these
scripts share the ``{q}`` hash tag.

``event`` in that identity is the canonical name (``tiktok.names.canonical_event``): TikTok's
aliases are one event, so the page's ``CompletePayment`` and the backend's ``Purchase`` (its
``Order Completed``) for one order are queued once, whichever comes first. The event keeps the
literal name it came with (in ``data``, and as the receipt's ``queued_as`` when that is not the
canonical name). When the page's copy comes while the backend's, under another alias, is still
queued or retrying, the page's name is written to ``keys.send_as_key`` (and to the receipt's
``send_as``): the worker sends the queued event under it, so TikTok pairs it with the pixel's.

Stream entry fields: ``pixel``, ``event`` (the canonical name), ``event_id``, ``data`` (the TikTok
``data[]`` object as JSON, hashed and enriched, with the literal name), ``received_ms``, ``source``
(``browser`` or ``server``).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

from gateway.operate.health import mirror_counts
from gateway.operate.stats import stats_calls
from gateway.store import keys
from gateway.store.connections import (
    REDIS_ERRORS,
    Lua,
    LuaCall,
    RedisClient,
    RunCalls,
    eval_many,
)
from gateway.tiktok.names import canonical_event

# Shared by both ingest scripts. KEYS[1] is the receipt; the time-ordered receipt log and the
# event_id index are named by the caller. A log entry past the retention leaves with its index
# entry, unless the receipt was received again since (a repeat past the 48 h idempotency window,
# so "since" means more than a day after the entry was logged: clocks may differ by a little).
_RECORD = r"""
local function split(d)
  return string.match(d, '^([^\31]*\31[^\31]*)\31(.*)$')
end
local function record(log, ids, prefix, pair, event_id, received, ttl_ms)
  redis.call('XADD', log, '*', 'd', pair .. '\31' .. event_id)
  local have = redis.call('HGET', ids, event_id)
  if not have then
    redis.call('HSET', ids, event_id, pair)
  elseif string.find('\30' .. have .. '\30', '\30' .. pair .. '\30', 1, true) == nil then
    redis.call('HSET', ids, event_id, have .. '\30' .. pair)
  end
  local cutoff = received - ttl_ms
  if cutoff <= 0 then return end
  for _, e in ipairs(redis.call('XRANGE', log, '-', tostring(cutoff), 'COUNT', 4)) do
    local d = e[2][2]
    local old_pair, old_id = split(d)
    local logged = tonumber(string.match(e[1], '^(%d+)'))
    local again = tonumber(redis.call('HGET', prefix .. d, 'received_ms') or '0')
    local renewed = again > logged + 86400000
    if old_pair and not renewed then
      local kept = {}
      for p in string.gmatch(redis.call('HGET', ids, old_id) or '', '[^\30]+') do
        if p ~= old_pair then kept[#kept + 1] = p end
      end
      if #kept == 0 then redis.call('HDEL', ids, old_id)
      else redis.call('HSET', ids, old_id, table.concat(kept, '\30')) end
    end
    redis.call('XDEL', log, e[1])
  end
end
-- a live receipt (not suppressed, received inside the window) makes this event a duplicate
local function duplicate(receipt, counters, received, window_ms)
  local st = redis.call('HMGET', receipt, 'state', 'received_ms')
  if st[1] and st[1] ~= 'suppressed' and received - tonumber(st[2] or '0') < window_ms then
    redis.call('HINCRBY', counters, 'accepted', 1)
    redis.call('HINCRBY', counters, 'duplicate', 1)
    redis.call('HINCRBY', receipt, 'duplicates', 1)
    return true
  end
  return false
end
"""

_ENQUEUE = Lua(
    _RECORD
    + r"""
-- KEYS: receipt, stream, receipt log, receipt ids, counters, send-as name
-- ARGV: idempotency ttl s, queue max (0 = no limit), receipt ttl s, received ms,
--       pixel\31event (canonical), event_id, receipt key prefix, source, the literal name,
--       then the stream entry's pairs
local received = tonumber(ARGV[4])
local canonical = string.match(ARGV[5], '\31(.*)$')
if duplicate(KEYS[1], KEYS[5], received, tonumber(ARGV[1]) * 1000) then
  -- the first copy from the other side (page or backend) of a mirrored event: a server twin
  local first = redis.call('HMGET', KEYS[1], 'source', 'received_ms')
  local twin = ((first[1] or 'server') == 'browser') ~= (ARGV[8] == 'browser')
    and redis.call('HSETNX', KEYS[1], 'twin', ARGV[8]) == 1
  -- the page's copy of an event a backend queued under another alias, not yet sent: ours goes
  -- under the page's name, so TikTok pairs it with the pixel's copy (the first page copy wins)
  if ARGV[8] == 'browser' then
    local r = redis.call('HMGET', KEYS[1], 'state', 'source', 'queued_as', 'send_as')
    if (r[1] == 'queued' or r[1] == 'retrying') and r[2] ~= 'browser' and not r[4]
        and (r[3] or canonical) ~= ARGV[9] then
      redis.call('SET', KEYS[6], ARGV[9], 'EX', ARGV[1])
      redis.call('HSET', KEYS[1], 'send_as', ARGV[9])
    end
  end
  if twin then return {0, first[1] or 'server', first[2] or ARGV[4]} end
  return 0
end
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('XLEN', KEYS[2]) >= limit then
  return -1
end
local fields = {}
for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('DEL', KEYS[1], KEYS[6])
redis.call('HSET', KEYS[1], 'state', 'queued', 'stream_id', id, 'attempts', 0,
  'source', ARGV[8], 'received_ms', ARGV[4])
if ARGV[9] ~= canonical then redis.call('HSET', KEYS[1], 'queued_as', ARGV[9]) end
redis.call('EXPIRE', KEYS[1], math.max(tonumber(ARGV[3]), tonumber(ARGV[1])))
record(KEYS[3], KEYS[4], ARGV[7], ARGV[5], ARGV[6], received, tonumber(ARGV[3]) * 1000)
redis.call('HINCRBY', KEYS[5], 'accepted', 1)
redis.call('HINCRBY', KEYS[5], 'queued', 1)
return id
"""
)

_SUPPRESS = Lua(
    _RECORD
    + r"""
-- KEYS: receipt, receipt log, receipt ids, counters
-- ARGV: idempotency ttl s, receipt ttl s, received ms, pixel\31event, event_id,
--       receipt key prefix, source, reason
local received = tonumber(ARGV[3])
if duplicate(KEYS[1], KEYS[4], received, tonumber(ARGV[1]) * 1000) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'suppressed', 'reason', ARGV[8], 'source', ARGV[7],
  'received_ms', ARGV[3])
redis.call('EXPIRE', KEYS[1], math.max(tonumber(ARGV[2]), tonumber(ARGV[1])))
record(KEYS[2], KEYS[3], ARGV[6], ARGV[4], ARGV[5], received, tonumber(ARGV[2]) * 1000)
redis.call('HINCRBY', KEYS[4], 'accepted', 1)
redis.call('HINCRBY', KEYS[4], 'suppressed', 1)
return 1
"""
)


class QueueFull(Exception):
    """The queue holds ``TTGW_QUEUE_MAX_EVENTS`` events: ingest answers 503, drops nothing."""


class Status(StrEnum):
    """What ingest did with one event."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    SUPPRESSED = "suppressed"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event ready for the queue: ``data`` is the TikTok event object as JSON.

    ``event`` is the name sent, as in ``data``; the queue deduplicates on its canonical name.
    """

    pixel: str
    event: str
    event_id: str
    data: bytes
    source: str
    suppressed: str | None = None  # the reason, when consent keeps it from being sent


class IngestQueue:
    """The ingest side of the queue."""

    def __init__(
        self,
        redis: RedisClient,
        run: RunCalls | None = None,
        count: Callable[[Mapping[str, int]], None] | None = None,
    ) -> None:
        self.redis = redis
        self._run: RunCalls = run or partial(eval_many, redis)
        self._count = count  # counters written with a later round trip (the Coalescer's)

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
            event = canonical_event(item.event)
            receipt = keys.receipt_key(item.pixel, event, item.event_id)
            pair = f"{item.pixel}\x1f{event}"
            if item.suppressed is not None:
                calls.append(
                    (
                        _SUPPRESS,
                        [receipt, keys.RECEIPT_LOG_STREAM, keys.RECEIPT_IDS_HASH,
                         keys.COUNTERS_HASH],
                        [
                            keys.IDEMPOTENCY_TTL_S, receipt_ttl_s, received_ms, pair,
                            item.event_id, keys.RECEIPT_KEY_PREFIX, item.source, item.suppressed,
                        ],
                    )
                )  # fmt: skip
                continue
            fields: list[str | bytes | int] = [
                "pixel", item.pixel, "event", event, "event_id", item.event_id,
                "source", item.source, "received_ms", received_ms, "data", item.data,
            ]  # fmt: skip
            calls.append(
                (
                    _ENQUEUE,
                    [
                        receipt,
                        keys.EVENTS_STREAM,
                        keys.RECEIPT_LOG_STREAM,
                        keys.RECEIPT_IDS_HASH,
                        keys.COUNTERS_HASH,
                        keys.send_as_key(item.pixel, event, item.event_id),
                    ],
                    [
                        keys.IDEMPOTENCY_TTL_S, max_events, receipt_ttl_s, received_ms, pair,
                        item.event_id, keys.RECEIPT_KEY_PREFIX, item.source, item.event, *fields,
                    ],
                )
            )  # fmt: skip
        results = await self._run(calls)
        await self._count_mirror(items, results, received_ms)
        statuses: list[Status] = []
        for item, result in zip(items, results, strict=True):
            if result == 0 or isinstance(result, list):  # a list: a duplicate that is a twin
                statuses.append(Status.DUPLICATE)
            elif item.suppressed is not None:
                statuses.append(Status.SUPPRESSED)
            elif result == -1:
                raise QueueFull(f"the delivery queue holds {max_events} events")
            else:
                statuses.append(Status.QUEUED)
        return statuses

    async def _count_mirror(
        self, items: Sequence[Outgoing], results: Sequence[object], received_ms: int
    ) -> None:
        """Pixel events and their server twins (``operate/health.py``), best effort."""
        counts: Counter[str] = Counter()
        for item, result in zip(items, results, strict=True):
            if item.suppressed is None:
                counts.update(mirror_counts(canonical_event(item.event), item.source, result,
                                            received_ms))  # fmt: skip
        if not counts:
            return
        if self._count is not None:
            self._count(counts)
            return
        with contextlib.suppress(*REDIS_ERRORS):
            await eval_many(self.redis, stats_calls(counts))
