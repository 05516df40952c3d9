"""Replaying dead letters: back into the delivery stream with their original ``event_id``.

Dead letters are selected all at once, by event id, or by the time they were dead-lettered
(``since``/``until``). Each one is moved by one Lua script: read from the dead stream, appended to
the delivery stream with its attempts reset and a fresh arrival time (so the retry horizon starts
again; the entry names its receipt's time, ``receipt_ms``, so the receipt is found in its bucket),
removed from the dead stream, its receipt set back to ``queued`` and the counters moved from
``dead`` to ``replayed``. The ``event_id`` is kept, so TikTok deduplicates a replay of an
event it did accept within 48 hours — and the gateway itself never sends an event again that it
knows was delivered (its receipt says so). Events older than TikTok attributes are dead-lettered
again as stale rather than sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import cast

from gateway.store import keys
from gateway.store.connections import Lua, LuaCall, RedisClient, eval_many
from gateway.store.receipt_records import LUA
from gateway.tiktok.names import canonical_event

_REPLAY = Lua(
    LUA
    + r"""
-- KEYS: dead stream, events stream, counters, the receipt's bucket, pairs
-- ARGV: dead id, now ms
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return 0 end
local raw = found[1][2]
local f = {}
for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
redis.call('XADD', KEYS[2], '*', 'pixel', f.pixel, 'event', f.event, 'event_id', f.event_id,
  'source', f.source or 'server', 'received_ms', ARGV[2], 'data', f.data, 'attempts', '0',
  'first_try_ms', '0', 'receipt_ms', f.receipt_ms or f.received_ms)
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'dead', -1)
redis.call('HINCRBY', KEYS[3], 'replayed', 1)
local pid = pair_id(KEYS[5], f.pixel .. '\31' .. f.event, false)
local list = rget(KEYS[4], f.event_id)
local j = pid and rfind(list, pid)
if j and list[j].state ~= 'd' then  -- a delivered one stays so: the worker will skip it
  list[j].state = 'q'
  list[j].x.replayed_ms = ARGV[2]
  list[j].x.reason = nil
  rput(KEYS[4], f.event_id, list)
end
return 1
"""
)

PAGE = 500


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter, as listed before a replay."""

    dead_id: str
    pixel: str
    event: str
    event_id: str
    reason: str
    dead_ms: int
    receipt_ms: int = 0  # when its receipt was received (the bucket it is in)


async def dead_letters(
    redis: RedisClient,
    *,
    event_ids: Collection[str] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
    pixel: str | None = None,
    event: str | None = None,
) -> list[DeadLetter]:
    """The dead letters matching the filter (all when none is given), oldest first.

    ``event`` matches any of TikTok's aliases of it (``CompletePayment`` finds ``Purchase``).
    """
    wanted = None if event is None else canonical_event(event)
    start = "-" if since_ms is None else str(since_ms)
    end = "+" if until_ms is None else str(until_ms)
    found: list[DeadLetter] = []
    while True:
        page = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await redis.xrange(keys.DEAD_STREAM, start, end, count=PAGE),
        )
        for dead_id, fields in page:
            text = {k.decode(): v.decode() for k, v in fields.items() if k != b"data"}
            if event_ids and text.get("event_id") not in event_ids:
                continue
            if pixel is not None and text.get("pixel") != pixel:
                continue
            if wanted is not None and canonical_event(text.get("event", "")) != wanted:
                continue
            found.append(
                DeadLetter(
                    dead_id=dead_id.decode(),
                    pixel=text.get("pixel", ""),
                    event=text.get("event", ""),
                    event_id=text.get("event_id", ""),
                    reason=text.get("reason", ""),
                    dead_ms=int(dead_id.split(b"-")[0]),
                    receipt_ms=int(text.get("receipt_ms") or text.get("received_ms") or 0),
                )
            )
        if len(page) < PAGE:
            return found
        start = "(" + page[-1][0].decode()


async def replay(
    redis: RedisClient,
    letters: Collection[DeadLetter],
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 200,
) -> int:
    """Move ``letters`` back into the delivery stream; how many were moved."""
    items = list(letters)
    moved = 0
    for start in range(0, len(items), batch):
        now_ms = int(time.time() * 1000)
        calls: list[LuaCall] = [
            (_REPLAY, [keys.DEAD_STREAM, keys.EVENTS_STREAM, keys.COUNTERS_HASH,
                       keys.receipts_key(keys.receipt_bucket(letter.receipt_ms)),
                       keys.RECEIPT_PAIRS_HASH],
             [letter.dead_id, now_ms])
            for letter in items[start : start + batch]
        ]  # fmt: skip
        moved += sum(int(r) for r in await eval_many(redis, calls))
        if progress is not None:
            progress(min(start + batch, len(items)), len(items))
    return moved
