"""Reading receipts: what happened to each event, by event id.

Every ``(pixel, event, event_id)`` has a receipt, written at ingest and updated at every
settlement, kept ``TTGW_RECEIPT_TTL_S``: ``state`` (``queued``, ``retrying``, ``delivered``,
``dead`` or ``suppressed``), ``reason``, ``attempts``, ``first_try_ms``, ``last_try_ms``, TikTok's
``http_status``, ``code``, ``message`` and ``request_id``, and the ``payload`` sent (the event
object with hashed identifiers; the access token is never part of it). ``event`` is the canonical
name (``gateway.tiktok.names.canonical_event``: one receipt for ``CompletePayment`` and
``Purchase``); ``queued_as`` is the name the queued copy carries when it is another alias, and
``send_as`` the page's name it is to be sent under (see ``ingest/enqueue.py``). A repeat of the
same event (at ingest, or a copy found already delivered before sending) does not overwrite the
receipt: it is counted in its ``duplicates`` field.

Stored compactly (``gateway/store/receipt_records.py``): a record in the hash of its time bucket
under its event_id; a delivered receipt's payload and TikTok's answer are its request's, stored
once for up to 1,000 events (``keys.request_key``). This module puts the pieces back together
into the receipt above.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, cast

import orjson

from gateway.store import keys
from gateway.store.connections import RedisClient
from gateway.store.receipt_records import STATES, Record, decode

INTEGER_FIELDS = (
    "received_ms", "attempts", "first_try_ms", "last_try_ms", "delivered_ms", "dead_ms",
    "next_try_ms", "http_status", "code", "replayed_ms", "duplicates",
)  # fmt: skip
REQUEST_FIELDS = ("t", "h", "c", "m", "r")

Found = tuple[str, Record]  # an event_id and one of its records


async def pair_names(redis: RedisClient) -> dict[str, tuple[str, str]]:
    """Pair number → ``(pixel, event)``."""
    raw = cast("dict[bytes, bytes]", await redis.hgetall(keys.RECEIPT_PAIRS_HASH))
    names: dict[str, tuple[str, str]] = {}
    for name, value in raw.items():
        if name.startswith(b"="):
            pixel, _, event = value.decode().partition("\x1f")
            names[name[1:].decode()] = (pixel, event)
    return names


async def assemble(
    redis: RedisClient,
    found: Sequence[Found],
    names: dict[str, tuple[str, str]] | None = None,
    *,
    payloads: bool = True,
) -> list[dict[str, Any]]:
    """The receipts of ``found`` records, in order, with TikTok's answer from their requests
    and (``payloads``) the payloads sent."""
    if names is None:
        names = await pair_names(redis)
    requests = sorted({r.request[0] for _, r in found if r.request is not None})
    meta: dict[str, dict[str, str]] = {}
    bodies: dict[str, list[bytes]] = {}
    if requests:
        pipe = redis.pipeline(transaction=False)
        for request in requests:
            pipe.hmget(keys.request_key(request), [*REQUEST_FIELDS, *(("b",) if payloads else ())])
        for request, values in zip(requests, await pipe.execute(), strict=True):
            meta[request] = {
                k: v.decode() for k, v in zip(REQUEST_FIELDS, values, strict=False) if v is not None
            }
            if payloads and values[-1] is not None:
                bodies[request] = zlib.decompress(values[-1]).split(b"\n")
    out = [_receipt(event_id, r, names, meta, bodies) for event_id, r in found]
    if not payloads:  # a list: whether the payload carried a click, without the payload
        for receipt, (_, record) in zip(out, found, strict=True):
            receipt["click"] = record.click
    return out


def _receipt(
    event_id: str,
    record: Record,
    names: dict[str, tuple[str, str]],
    meta: dict[str, dict[str, str]],
    bodies: dict[str, list[bytes]],
) -> dict[str, Any]:
    pixel, event = names.get(record.pair, ("", ""))
    receipt: dict[str, Any] = {
        "pixel": pixel,
        "event": event,
        "event_id": event_id,
        "state": STATES.get(record.state, record.state),
        "source": record.source,
        "received_ms": record.received_ms,
        "attempts": record.attempts,
        "duplicates": record.duplicates,
    }
    if record.first_try_delta:
        receipt["first_try_ms"] = record.received_ms + int(record.first_try_delta)
    receipt.update(record.extras)
    request = record.request
    if request is not None:
        answer = meta.get(request[0], {})
        sent_ms = answer.get("t")
        receipt.update(
            last_try_ms=sent_ms, delivered_ms=sent_ms, http_status=answer.get("h"),
            code=answer.get("c"), message=answer.get("m", ""), request_id=answer.get("r") or None,
        )  # fmt: skip
        lines = bodies.get(request[0])
        if lines is not None and request[1] < len(lines) and lines[request[1]]:
            receipt["payload"] = lines[request[1]]
    for name in INTEGER_FIELDS:
        value = receipt.get(name)
        receipt[name] = int(value) if value not in (None, "") else None
    if receipt.get("request_id") == "":
        receipt["request_id"] = None
    if receipt.get("payload"):
        receipt["payload"] = orjson.loads(receipt["payload"])
    return receipt


def _newest_per_pair(found: Iterable[Found]) -> list[Found]:
    """One record per pair: a receipt received again past the 48 h window, or after one that
    was suppressed, is a new receipt in a newer bucket; the older one is history."""
    newest: dict[str, Found] = {}
    for event_id, record in found:
        kept = newest.get(record.pair)
        if kept is None or record.received_ms > kept[1].received_ms:
            newest[record.pair] = (event_id, record)
    return list(newest.values())


async def records_for(
    redis: RedisClient, event_id: str, receipt_ttl_s: int = keys.RECEIPT_TTL_S
) -> list[Found]:
    """Every record of ``event_id`` in the buckets of the retention, newest per pair."""
    buckets = keys.retention_buckets(int(time.time() * 1000), receipt_ttl_s)
    pipe = redis.pipeline(transaction=False)
    for bucket in buckets:
        pipe.hget(keys.receipts_key(bucket), event_id)
    found = [(event_id, r) for value in await pipe.execute() for r in decode(value)]
    return _newest_per_pair(found)


async def receipts_for(
    redis: RedisClient, event_id: str, receipt_ttl_s: int = keys.RECEIPT_TTL_S
) -> list[dict[str, Any]]:
    """Every receipt with ``event_id`` (one per pixel and event name), oldest first."""
    found = await assemble(redis, await records_for(redis, event_id, receipt_ttl_s))
    return sorted(found, key=lambda r: (r.get("received_ms") or 0, r["pixel"], r["event"]))


async def receipt(
    redis: RedisClient, pixel: str, event: str, event_id: str
) -> dict[str, Any] | None:
    """The receipt of one ``(pixel, canonical event, event_id)``, or None."""
    for found in await receipts_for(redis, event_id):
        if found["pixel"] == pixel and found["event"] == event:
            return found
    return None


async def counters(redis: RedisClient) -> dict[str, int]:
    """The queue's lifetime counters: accepted, queued, duplicate, suppressed, delivered, ..."""
    raw = cast("dict[bytes, bytes]", await redis.hgetall(keys.COUNTERS_HASH))
    return {k.decode(): int(v) for k, v in raw.items()}
