"""The delivery side of the queue: read with a consumer group, settle every entry in one script.

Each entry read is settled exactly one way, atomically (XACK + XDEL + receipt + counter in one
Lua script, all keys under ``{q}``; the scripts are in :mod:`gateway.delivery.outbox_scripts`):

* **delivered** — TikTok accepted it: its receipt says so, and a receipt that says so is the
  "sent" marker: a retry, a reclaim, a replay or a late duplicate of the same
  ``(pixel, event, event_id)`` is never sent again. The entries of one request are settled by one
  script call, which stores the request's events once, compressed, with TikTok's answer; each
  receipt names its line in it;
* **already sent** — its receipt said delivered before sending: settled as a duplicate, not sent;
* **retrying** — moved to the retry sorted set (score = due time, the entry itself in a hash)
  and brought back into the stream by :meth:`Outbox.move_due` when due;
* **dead** — appended to the dead-letter stream with the reason and TikTok's last answer.

A worker killed mid-batch leaves its entries pending in the group; :meth:`Outbox.reclaim_page`
(XAUTOCLAIM) hands them to a live worker once idle for longer than any send can take.
Redis 6.2 (the embedded server) and 7.0 are both supported: XAUTOCLAIM's third reply element
(7.0) is ignored, and entries trimmed under a pending id (never done here) are skipped.
"""

from __future__ import annotations

import math
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.delivery.entry import Entry, Outcome
from gateway.delivery.outbox_scripts import ALREADY_SENT, DEAD, DELIVERED, EXPEDITE, MOVE_DUE, RETRY
from gateway.delivery.sent import already_sent_in, look_up_sent
from gateway.store import keys
from gateway.store.connections import LuaCall, RedisClient, eval_many
from gateway.store.receipt_records import clean

COMPRESS_LEVEL = 1  # measured on 1,000-event requests: 48 B an event at 2 µs; level 6, 44 at 3.5


class Outbox:
    """The worker's side of the delivery stream."""

    dead_script = DEAD  # lets callers tell dead-letter calls from the others

    def __init__(self, redis: RedisClient, *, receipt_ttl_s: int = keys.RECEIPT_TTL_S) -> None:
        self.redis = redis
        self.receipt_ttl_s = receipt_ttl_s
        self._raw = _unparsed_reads(redis)

    async def ensure_group(self) -> None:
        """Create the consumer group (from the stream's start, so nothing queued is skipped)."""
        try:
            await self.redis.xgroup_create(
                keys.EVENTS_STREAM, keys.DELIVERY_GROUP, "0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries for this consumer (blocks up to ``block_ms`` when there are none)."""
        if self._raw is None:  # Cluster: redis-py's parsed reply
            reply = await self.redis.xreadgroup(
                keys.DELIVERY_GROUP, consumer, {keys.EVENTS_STREAM: ">"}, count=count,
                block=block_ms,
            )  # fmt: skip
            entries: list[Entry] = []
            for _, items in cast("list[tuple[bytes, list[Any]]]", reply or []):
                entries.extend(await self._usable(items))
            return entries
        execute = cast("Callable[..., Awaitable[Any]]", self._raw.execute_command)
        raw = await execute(
            "XREADGROUP", "GROUP", keys.DELIVERY_GROUP, consumer, "COUNT", count,
            "BLOCK", block_ms, "STREAMS", keys.EVENTS_STREAM, ">",
        )  # fmt: skip
        pages = raw.values() if isinstance(raw, dict) else [page for _, page in raw or []]
        return await self._usable([item for page in pages for item in page])

    async def reclaim_page(
        self, consumer: str, min_idle_ms: int, start: str, count: int
    ) -> tuple[list[Entry], str]:
        """One XAUTOCLAIM step from ``start``: the entries and the cursor ("0-0" at the end)."""
        reply = await self.redis.xautoclaim(
            keys.EVENTS_STREAM, keys.DELIVERY_GROUP, consumer, min_idle_ms, start, count=count
        )
        cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        return await self._usable(reply[1]), cursor

    async def claim(self, consumer: str, stream_ids: Sequence[str]) -> list[Entry]:
        """Entries pending for ``consumer`` by id, with their data (parked ones taken back)."""
        entries: list[Entry] = []
        for start in range(0, len(stream_ids), 1000):
            reply = await self.redis.xclaim(
                keys.EVENTS_STREAM, keys.DELIVERY_GROUP, consumer, 0,
                list(stream_ids[start : start + 1000]),
            )  # fmt: skip
            entries.extend(await self._usable([item for item in reply if item]))
        return entries

    async def own_pending(
        self, consumer: str, after: str, count: int
    ) -> tuple[list[Entry], str | None]:
        """Entries read by ``consumer`` and not settled, after ``after``; the next cursor, or
        None at the end. Their idle time is not reset (XREADGROUP with an id reads history)."""
        reply = await self.redis.xreadgroup(
            keys.DELIVERY_GROUP, consumer, {keys.EVENTS_STREAM: after}, count=count
        )
        items: list[Any] = []
        for _, page in cast("list[tuple[bytes, list[Any]]]", reply or []):
            items.extend(page)
        if not items:
            return [], None
        last = items[-1][0]
        cursor = last.decode() if isinstance(last, bytes) else str(last)
        return await self._usable(items), cursor if len(items) >= count else None

    async def _usable(self, items: Sequence[Any]) -> list[Entry]:
        entries, broken = [], []
        for stream_id, fields in items:
            if not fields:
                entry = None
            elif isinstance(fields, list):
                entry = Entry.from_flat(stream_id, fields)
            else:
                entry = Entry.from_stream(stream_id, fields)
            if entry is None:
                broken.append(stream_id)
            else:
                entries.append(entry)
        if broken:  # unreadable or trimmed: ack so they do not cycle forever
            await self.redis.xack(keys.EVENTS_STREAM, keys.DELIVERY_GROUP, *broken)
        return entries

    async def touch(self, consumer: str, stream_ids: Sequence[str]) -> None:
        """Reset the idle time of entries still in flight here, so nobody reclaims them."""
        for start in range(0, len(stream_ids), 1000):
            await self.redis.xclaim(
                keys.EVENTS_STREAM, keys.DELIVERY_GROUP, consumer, 0,
                list(stream_ids[start : start + 1000]), justid=True,
            )  # fmt: skip

    async def already_sent(self, entries: Sequence[Entry]) -> list[bool]:
        """Which entries TikTok already accepted (their receipt says ``delivered``), read in one
        round trip (one HMGET per receipt bucket) that also reads the name each entry is to be
        sent under: an entry whose page copy, under another alias, arrived while it was queued
        (the receipt's ``send_as``) is renamed to the page's name here, so TikTok pairs it with
        the pixel's copy."""
        if not entries:
            return []
        pipe = self.redis.pipeline(transaction=False)
        lookup = look_up_sent(pipe, entries)
        return already_sent_in(entries, lookup, await pipe.execute())

    def _receipt(self, entry: Entry, now_ms: int) -> list[str | int]:
        """The receipt arguments of RETRY and DEAD (see ``_ATTEMPT`` in outbox_scripts)."""
        return [
            entry.event_id,
            entry.pair,
            entry.receipt_ms or entry.received_ms,
            entry.source,
            entry.attempts,
            entry.first_try_ms or now_ms,
            _click(entry.data),
            self.receipt_ttl_s * 1000,
            keys.RECEIPT_BUCKET_MS,
            "last_try_ms",
            now_ms,
            "payload",
            entry.data.decode(),
        ]

    async def settle(self, calls: Sequence[LuaCall]) -> None:
        """Run settlement calls built by the methods below in one round trip."""
        if calls:
            await eval_many(self.redis, calls)

    def delivered(self, entries: Sequence[Entry], outcome: Outcome, now_ms: int) -> LuaCall:
        """Settle the entries of one request TikTok accepted, in one script call.

        The events' JSON, as sent and in order, is stored once for the whole request, compressed
        (``keys.request_key``), with TikTok's answer; each receipt names its line in it.
        """
        body = zlib.compress(b"\n".join(e.data for e in entries), COMPRESS_LEVEL)
        request = f"{now_ms:x}{secrets.token_hex(3)}"  # ingest reads the time from it
        buckets: dict[str, int] = {}
        args: list[str | bytes | int] = [
            keys.DELIVERY_GROUP, self.receipt_ttl_s * 1000, keys.RECEIPT_BUCKET_MS,
            (self.receipt_ttl_s + keys.RECEIPT_BUCKET_S) * 1000, body, request, now_ms,
            *_answer(outcome),
        ]  # fmt: skip
        for e in entries:
            bucket = buckets.setdefault(e.receipts_key, len(buckets) + 1)
            args += (
                e.stream_id, bucket, e.event_id, e.pair, e.attempts, e.first_try_ms or now_ms,
                e.receipt_ms or e.received_ms, e.source, _click(e.data),
            )  # fmt: skip
        batch_keys = [
            keys.EVENTS_STREAM, keys.COUNTERS_HASH, keys.request_key(request),
            keys.RECEIPT_PAIRS_HASH, *buckets,
        ]  # fmt: skip
        return (DELIVERED, batch_keys, args)

    def skip_sent(self, entry: Entry) -> LuaCall:
        """Settle an entry whose event was already delivered: not sent again."""
        return (
            ALREADY_SENT,
            [keys.EVENTS_STREAM, keys.COUNTERS_HASH, entry.receipts_key, keys.RECEIPT_PAIRS_HASH],
            [entry.stream_id, keys.DELIVERY_GROUP, entry.event_id, entry.pair],
        )

    def retry(
        self, entry: Entry, due_ms: int, outcome: Outcome, now_ms: int, *, count: bool = True
    ) -> LuaCall:
        """Put an entry back for later (``count``: an attempt that failed, not a pause)."""
        again = Entry(**{**_plain(entry), "first_try_ms": entry.first_try_ms or now_ms})
        return (
            RETRY,
            [
                keys.EVENTS_STREAM,
                keys.RETRY_ZSET,
                keys.RETRY_DATA_HASH,
                entry.receipts_key,
                keys.COUNTERS_HASH,
                keys.RECEIPT_PAIRS_HASH,
            ],
            [
                entry.stream_id,
                keys.DELIVERY_GROUP,
                entry.dedup,
                due_ms,
                orjson.dumps(again.as_fields()),
                "1" if count else "0",
                *self._receipt(entry, now_ms),
                "next_try_ms",
                due_ms,
                *outcome.fields(),
            ],
        )

    def dead(self, entry: Entry, reason: str, outcome: Outcome, now_ms: int) -> LuaCall:
        """Dead-letter an entry with the reason and TikTok's last answer."""
        dead_fields: list[str] = []
        for name, value in entry.as_fields().items():
            dead_fields += [name, value]
        dead_fields += ["reason", reason[:1000], "dead_ms", str(now_ms), *outcome.fields()]
        return (
            DEAD,
            [
                keys.EVENTS_STREAM,
                keys.DEAD_STREAM,
                entry.receipts_key,
                keys.COUNTERS_HASH,
                keys.RECEIPT_PAIRS_HASH,
            ],
            [
                entry.stream_id,
                keys.DELIVERY_GROUP,
                len(dead_fields),
                *dead_fields,
                *self._receipt(entry, now_ms),
                "reason",
                clean(reason[:1000]),
                "dead_ms",
                now_ms,
                *outcome.fields(),
            ],
        )

    async def move_due(
        self, now_ms: int | None = None, limit: int = keys.RETRY_SCAN_COUNT,
        pace: RetryPace | None = None,
    ) -> tuple[int, int]:  # fmt: skip
        """Bring retries whose time has come back into the stream, each pixel's as far as
        ``pace`` allows (none: all of them); how many moved, and how many due ones were looked
        at (``limit``: maybe more are due)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        pace = pace or RetryPace(allowance=0, step_ms=0.0)
        call_keys = [
            keys.RETRY_ZSET, keys.RETRY_DATA_HASH, keys.EVENTS_STREAM, keys.RETRY_PACE_HASH,
        ]  # fmt: skip
        args: list[str | int] = [
            now, limit, keys.RETRY_MOVED_PREFIX, pace.allowance, repr(pace.step_ms),
            int(keys.RETRY_POLL_INTERVAL_S * 1000), int(keys.RETRY_MOVED_STALE_S * 1000),
        ]  # fmt: skip
        (reply,) = await eval_many(self.redis, [(MOVE_DUE, call_keys, args)])
        return int(reply[0]), int(reply[1])

    async def expedite(self, limit: int = 10_000) -> int:
        """Make every scheduled retry due now (TikTok recovered); how many."""
        now = int(time.time() * 1000)
        (moved,) = await eval_many(
            self.redis, [(EXPEDITE, [keys.RETRY_ZSET, keys.RETRY_PACE_HASH], [now, limit])]
        )
        return int(moved)


@dataclass(frozen=True, slots=True)
class RetryPace:
    """How fast a pixel's due retries go back into the stream: as fast as its rate limiter lets
    them be sent, not faster (after an outage, a flood of retries would hold the stream and the
    pixel's new events behind them)."""

    allowance: int  # moved retries a pixel may have in the stream, not settled yet
    step_ms: float  # between two of its retries at the limiter's pace

    @classmethod
    def of(
        cls, requests_per_s: float, burst: int, batch_events: int, interval_s: float
    ) -> RetryPace:
        """What a limiter of ``requests_per_s`` and ``burst``, with ``batch_events`` a request,
        sends in one interval of ``interval_s`` from rest; and its pace, event by event."""
        requests = burst + math.ceil(requests_per_s * interval_s)
        return cls(requests * batch_events, 1000 / (requests_per_s * batch_events))


def _unparsed_reads(redis: RedisClient) -> Redis | None:
    """A client on ``redis``'s connections whose XREADGROUP replies redis-py leaves as Redis sent
    them: the entries' field lists are read by position (:meth:`Entry.from_flat`), not made into
    dicts first (measured: a quarter of the worker's CPU went to reading and parsing the stream).
    None on Cluster, whose client routes by command and parses as usual."""
    if not isinstance(redis, Redis):
        return None
    raw = Redis(connection_pool=redis.connection_pool)
    raw.set_response_callback("XREADGROUP", _as_sent)
    return raw


def _as_sent(response: Any, **kwargs: Any) -> Any:
    return response


def _answer(outcome: Outcome) -> list[str]:
    """TikTok's answer as DELIVERED stores it: http status, code, message, request_id."""
    fields = dict(zip(outcome.fields()[::2], outcome.fields()[1::2], strict=True))
    return [fields["http_status"], fields["code"], fields["message"], fields["request_id"]]


def _click(data: bytes) -> str:
    """``1`` when the event carries a click id (the explorer's "with click"), else ``0``."""
    return "1" if b'"ttclid"' in data else "0"


def _plain(entry: Entry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in Entry.__dataclass_fields__ if name != "shape"}
