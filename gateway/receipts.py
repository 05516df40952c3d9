"""Reading receipts: what happened to each event, by event id.

A receipt is a Redis hash per ``(pixel, event, event_id)``, written at ingest and updated at
every settlement, kept ``TTGW_RECEIPT_TTL_S``: ``state`` (``queued``, ``retrying``,
``delivered``, ``dead`` or ``suppressed``), ``reason``, ``attempts``, ``first_try_ms``,
``last_try_ms``, TikTok's ``http_status``, ``code``, ``message`` and ``request_id``, and the
``payload`` sent (the event object with hashed identifiers; the access token is never part of
it). A repeat of the same event (at ingest, or a copy found already delivered before sending)
does not overwrite the receipt: it is counted in its ``duplicates`` field.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from gateway import keys
from gateway.connections import RedisClient

INTEGER_FIELDS = (
    "received_ms", "attempts", "first_try_ms", "last_try_ms", "delivered_ms", "dead_ms",
    "next_try_ms", "http_status", "code", "replayed_ms", "duplicates",
)  # fmt: skip


def decode_receipt(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A receipt hash as a dict, numbers as ints and the payload parsed."""
    receipt: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for name in INTEGER_FIELDS:
        value = receipt.get(name)
        receipt[name] = int(value) if value not in (None, "") else None
    if receipt.get("payload"):
        receipt["payload"] = orjson.loads(receipt["payload"])
    return receipt


async def receipts_for(redis: RedisClient, event_id: str) -> list[dict[str, Any]]:
    """Every receipt with ``event_id`` (one per pixel and event name), oldest first."""
    raw = cast("set[bytes]", await redis.smembers(keys.receipt_ids_key(event_id)))
    members = sorted(m.decode() for m in raw)
    pipe = redis.pipeline(transaction=False)
    for member in members:
        pixel, event, eid = member.split("\x1f", 2)
        pipe.hgetall(keys.receipt_key(pixel, event, eid))
    found = [decode_receipt(raw) for raw in await pipe.execute() if raw]
    return sorted(found, key=lambda r: r.get("received_ms") or 0)


async def counters(redis: RedisClient) -> dict[str, int]:
    """The queue's lifetime counters: accepted, queued, duplicate, suppressed, delivered, ..."""
    raw = cast("dict[bytes, bytes]", await redis.hgetall(keys.COUNTERS_HASH))
    return {k.decode(): int(v) for k, v in raw.items()}
