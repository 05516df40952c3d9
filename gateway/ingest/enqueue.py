"""The durable delivery queue in Redis: one stream of events ready to send, fed at ingest.

Ingest acknowledges an event only after one Lua script has, atomically: checked the receipt of
``(pixel, event, event_id)`` (a receipt received less than 48 h ago, not ``suppressed``, makes it
a duplicate: the receipt is the idempotency marker), checked the queue's size limit, appended the
event to the stream, written its receipt (a compact record in the hash of the current receipt
bucket, ``gateway/store/receipt_records.py``), logged it in that bucket's receipt log, and
counted it. A repeat inside the window is answered as a duplicate and not queued again.
Events suppressed by consent get a receipt that says so and are never queued. All keys of these
scripts share the ``{q}`` hash tag.

``event`` in that identity is the canonical name (``tiktok.names.canonical_event``): TikTok's
aliases are one event, so the page's ``CompletePayment`` and the backend's ``Purchase`` (its
``Order Completed``) for one order are queued once, whichever comes first. The event keeps the
literal name it came with (in ``data``, and as the receipt's ``queued_as`` when that is not the
canonical name). When the page's copy comes while the backend's, under another alias, is still
queued or retrying, the page's name is written to the receipt's ``send_as``: the worker, which
reads the receipt before sending, sends the queued event under it, so TikTok pairs it with the
pixel's.

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
from functools import lru_cache, partial

from gateway.operate.health import mirror_counts
from gateway.operate.stats import stats_calls
from gateway.store import keys, receipt_records
from gateway.store.connections import (
    REDIS_ERRORS,
    Lua,
    LuaCall,
    RedisClient,
    RunCalls,
    eval_many,
)
from gateway.tiktok.names import canonical_event

# Shared by both ingest scripts. KEYS[1] is the receipts' bucket of this event's arrival;
# KEYS[first..] the older buckets of the 48 h idempotency window (newest first).
_LIVE = r"""
-- when a delivered receipt's request was sent (its id starts with the time, in hex)
local function sent_ms(r)
  local request = r.state == 'd' and string.match(r.ref, '^(%x+):')
  return request and tonumber(string.sub(request, 1, -7), 16)
end
-- the live receipt of this event (not suppressed; received, or delivered, inside the window):
-- a duplicate
local function live(pairs, pair, event_id, received, window_ms, first)
  local pid = pair_id(pairs, pair, false)
  if not pid then return nil end
  local buckets = {KEYS[1]}
  for i = first, #KEYS do buckets[#buckets + 1] = KEYS[i] end
  for _, bucket in ipairs(buckets) do
    local list = rget(bucket, event_id)
    local r = list[rfind(list, pid) or 0]
    if r and r.state ~= 's' and (received - tonumber(r.received) < window_ms
        or received - (sent_ms(r) or 0) < window_ms) then
      return bucket, list, rfind(list, pid)
    end
  end
  return nil
end
-- a new receipt in this bucket (replacing a suppressed or expired one of the same event) and
-- its log entry
local function fresh(bucket, log, pairs, pair, event_id, received, source, expire_at)
  local pid = pair_id(pairs, pair, true)
  local list = rget(bucket, event_id)
  local r = rnew(pid, received, source)
  list[rfind(list, pid) or (#list + 1)] = r
  redis.call('XADD', log, '*', 'd', pid .. '\31' .. event_id)
  redis.call('PEXPIREAT', log, expire_at)
  return r, list
end
"""

_ENQUEUE = Lua(
    receipt_records.LUA
    + _LIVE
    + r"""
-- KEYS: receipts bucket, stream, receipt log, pairs, counters, then the older buckets of the
--       idempotency window
-- ARGV: idempotency ttl s, queue max (0 = no limit), receipt ttl s, received ms,
--       pixel\31event (canonical), event_id, the bucket's expiry (ms), source, the literal name,
--       then the stream entry's pairs
local received = tonumber(ARGV[4])
local canonical = string.match(ARGV[5], '\31(.*)$')
local bucket, list, j = live(KEYS[4], ARGV[5], ARGV[6], received, tonumber(ARGV[1]) * 1000, 6)
if bucket then
  redis.call('HINCRBY', KEYS[5], 'accepted', 1)
  redis.call('HINCRBY', KEYS[5], 'duplicate', 1)
  local r = list[j]
  r.dups = tostring(tonumber(r.dups or '0') + 1)
  -- the first copy from the other side (page or backend) of a mirrored event: a server twin
  local first_source = r.source ~= '' and r.source or 'server'
  local twin = (first_source == 'browser') ~= (ARGV[8] == 'browser') and not r.x.twin
  if twin then r.x.twin = ARGV[8] end
  -- the page's copy of an event a backend queued under another alias, not yet sent: ours goes
  -- under the page's name, so TikTok pairs it with the pixel's copy (the first page copy wins)
  if ARGV[8] == 'browser' and (r.state == 'q' or r.state == 'r') and r.source ~= 'browser'
      and not r.x.send_as and (r.x.queued_as or canonical) ~= ARGV[9] then
    r.x.send_as = ARGV[9]
  end
  rput(bucket, ARGV[6], list)
  if twin then return {0, first_source, r.received} end
  return 0
end
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('XLEN', KEYS[2]) >= limit then
  return -1
end
local fields = {}
for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
local r
r, list = fresh(KEYS[1], KEYS[3], KEYS[4], ARGV[5], ARGV[6], ARGV[4], ARGV[8], ARGV[7])
if ARGV[9] ~= canonical then r.x.queued_as = ARGV[9] end
rput(KEYS[1], ARGV[6], list)
redis.call('PEXPIREAT', KEYS[1], ARGV[7])
redis.call('HINCRBY', KEYS[5], 'accepted', 1)
redis.call('HINCRBY', KEYS[5], 'queued', 1)
return id
"""
)

_SUPPRESS = Lua(
    receipt_records.LUA
    + _LIVE
    + r"""
-- KEYS: receipts bucket, receipt log, pairs, counters, then the older buckets of the
--       idempotency window
-- ARGV: idempotency ttl s, receipt ttl s, received ms, pixel\31event, event_id,
--       the bucket's expiry (ms), source, reason
local received = tonumber(ARGV[3])
local bucket, list, j = live(KEYS[3], ARGV[4], ARGV[5], received, tonumber(ARGV[1]) * 1000, 5)
if bucket then
  redis.call('HINCRBY', KEYS[4], 'accepted', 1)
  redis.call('HINCRBY', KEYS[4], 'duplicate', 1)
  list[j].dups = tostring(tonumber(list[j].dups or '0') + 1)
  rput(bucket, ARGV[5], list)
  return 0
end
local r
r, list = fresh(KEYS[1], KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[3], ARGV[7], ARGV[6])
r.state = 's'
r.x.reason = ARGV[8]
rput(KEYS[1], ARGV[5], list)
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
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


@lru_cache(maxsize=4)
def _bucket_keys(newest: int, oldest: int, ttl_s: int) -> tuple[str, tuple[str, ...], str, int]:
    """The receipts hash of bucket ``newest``, those of the older buckets of the idempotency
    window down to ``oldest`` (newest first), its log and its expiry: the same strings for
    every event of hours."""
    older = tuple(keys.receipts_key(b) for b in range(newest - 1, oldest - 1, -1))
    return (keys.receipts_key(newest), older, keys.receipt_log_key(newest),
            keys.bucket_expiry_ms(newest, ttl_s))  # fmt: skip


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
        buckets = keys.idempotency_buckets(received_ms)
        bucket, older, log, expire_at = _bucket_keys(
            buckets[0], buckets[-1], max(receipt_ttl_s, keys.IDEMPOTENCY_TTL_S)
        )
        calls: list[LuaCall] = []
        for item in items:
            event = canonical_event(item.event)
            pair = f"{item.pixel}\x1f{event}"
            if item.suppressed is not None:
                calls.append(
                    (
                        _SUPPRESS,
                        [bucket, log, keys.RECEIPT_PAIRS_HASH, keys.COUNTERS_HASH, *older],
                        [
                            keys.IDEMPOTENCY_TTL_S, receipt_ttl_s, received_ms, pair,
                            item.event_id, expire_at, item.source,
                            receipt_records.clean(item.suppressed),
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
                        bucket,
                        keys.EVENTS_STREAM,
                        log,
                        keys.RECEIPT_PAIRS_HASH,
                        keys.COUNTERS_HASH,
                        *older,
                    ],
                    [
                        keys.IDEMPOTENCY_TTL_S, max_events, receipt_ttl_s, received_ms, pair,
                        item.event_id, expire_at, item.source, item.event, *fields,
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
