"""Reading receipts: what happened to each event, by event id.

A receipt is a Redis hash per ``(pixel, event, event_id)``, written at ingest and updated at
every settlement, kept ``TTGW_RECEIPT_TTL_S``: ``state`` (``queued``, ``retrying``,
``delivered``, ``dead`` or ``suppressed``), ``reason``, ``attempts``, ``first_try_ms``,
``last_try_ms``, TikTok's ``http_status``, ``code``, ``message`` and ``request_id``, and the
``payload`` sent (the event object with hashed identifiers; the access token is never part of
it). ``event`` is the canonical name (``gateway.tiktok.names.canonical_event``: one receipt for
``CompletePayment`` and ``Purchase``); ``queued_as`` is the name the queued copy carries when it
is another alias, and ``send_as`` the page's name it is to be sent under (see ``queue.py``).
A repeat of the same event (at ingest, or a copy found already delivered before sending) does
not overwrite the receipt: it is counted in its ``duplicates`` field.

The receipt doubles as the ingest idempotency marker (see ``queue.py``). Receipts are found by
event_id through ``keys.RECEIPT_IDS_HASH`` and listed newest first through
``keys.RECEIPT_LOG_STREAM``; the hash itself holds no pixel, canonical event name or event_id
(its key does).
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from gateway.store import keys
from gateway.store.connections import RedisClient

INTEGER_FIELDS = (
    "received_ms", "attempts", "first_try_ms", "last_try_ms", "delivered_ms", "dead_ms",
    "next_try_ms", "http_status", "code", "replayed_ms", "duplicates",
)  # fmt: skip


def decode_receipt(raw: dict[bytes, bytes], dedup: str) -> dict[str, Any]:
    """A receipt hash as a dict, with its pixel, event and event_id (from its key's
    ``dedup``), numbers as ints and the payload parsed."""
    pixel, event, event_id = keys.split_dedup_id(dedup)
    receipt: dict[str, Any] = {"pixel": pixel, "event": event, "event_id": event_id}
    receipt.update((k.decode(), v.decode()) for k, v in raw.items())
    for name in INTEGER_FIELDS:
        value = receipt.get(name)
        receipt[name] = int(value) if value not in (None, "") else None
    if receipt.get("payload"):
        receipt["payload"] = orjson.loads(receipt["payload"])
    return receipt


async def receipts_for(redis: RedisClient, event_id: str) -> list[dict[str, Any]]:
    """Every receipt with ``event_id`` (one per pixel and event name), oldest first."""
    raw = cast("bytes | None", await redis.hget(keys.RECEIPT_IDS_HASH, event_id))
    pairs = (raw or b"").decode().split("\x1e")
    members = sorted(f"{pair}\x1f{event_id}" for pair in pairs if pair)
    pipe = redis.pipeline(transaction=False)
    for member in members:
        pipe.hgetall(keys.receipt_key(*keys.split_dedup_id(member)))
    found = [
        decode_receipt(raw, member)
        for member, raw in zip(members, await pipe.execute(), strict=True)
        if raw
    ]
    return sorted(found, key=lambda r: r.get("received_ms") or 0)


async def counters(redis: RedisClient) -> dict[str, int]:
    """The queue's lifetime counters: accepted, queued, duplicate, suppressed, delivered, ..."""
    raw = cast("dict[bytes, bytes]", await redis.hgetall(keys.COUNTERS_HASH))
    return {k.decode(): int(v) for k, v in raw.items()}
