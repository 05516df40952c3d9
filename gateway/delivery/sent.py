"""Whether queued entries were delivered already: their receipts read before sending.

A delivered receipt is the "sent" marker (see :mod:`gateway.delivery.outbox`). The reads are
queued in a pipeline the sender makes anyway (with the pixel's pause record) and answered from
its replies; a receipt's ``send_as`` (the page's name for an event a backend queued under another
alias) renames the entry here, so TikTok pairs it with the pixel's copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.asyncio.cluster import ClusterPipeline

from gateway.delivery.entry import Entry
from gateway.store import keys
from gateway.store.receipt_records import decode

Pipeline: TypeAlias = AsyncPipeline | ClusterPipeline  # a round trip several parts fill


@dataclass(frozen=True, slots=True)
class SentLookup:
    """What :func:`look_up_sent` queued: the pairs asked, the entries of each bucket."""

    pairs: list[str]
    buckets: list[list[int]]


def look_up_sent(pipe: Pipeline, entries: Sequence[Entry]) -> SentLookup:
    """Queue ``Outbox.already_sent``'s reads in ``pipe`` (the pair numbers, then one HMGET per
    receipt bucket), for :func:`already_sent_in`."""
    by_bucket: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        by_bucket.setdefault(e.receipts_key, []).append(i)
    pairs = sorted({e.pair for e in entries})
    if not entries:
        return SentLookup(pairs, [])
    pipe.hmget(keys.RECEIPT_PAIRS_HASH, pairs)
    for bucket, idx in by_bucket.items():
        pipe.hmget(bucket, [entries[i].event_id for i in idx])
    return SentLookup(pairs, list(by_bucket.values()))


def already_sent_in(
    entries: Sequence[Entry], lookup: SentLookup, replies: Sequence[Any]
) -> list[bool]:
    """``Outbox.already_sent``'s answer from the replies of :func:`look_up_sent`'s reads
    (renaming entries as their receipts say)."""
    if not entries:
        return []
    numbers = {p: n.decode() for p, n in zip(lookup.pairs, replies[0], strict=True) if n}
    records: list[bytes | None] = [None] * len(entries)
    for idx, values in zip(lookup.buckets, replies[1:], strict=True):
        for i, value in zip(idx, values, strict=True):
            records[i] = value
    sent = []
    for entry, value in zip(entries, records, strict=True):
        number = numbers.get(entry.pair)
        record = next((r for r in decode(value) if r.pair == number), None)
        if record is not None and record.extras.get("send_as"):
            entry.data = renamed(entry.data, record.extras["send_as"])
        sent.append(record is not None and record.state == "d")
    return sent


def renamed(data: bytes, name: str) -> bytes:
    """The queued event JSON ``data`` with its ``event`` set to ``name`` (unchanged if it is)."""
    event = orjson.loads(data)
    if not isinstance(event, dict) or event.get("event") == name:
        return data
    event["event"] = name
    return orjson.dumps(event)
