"""Erasure of one person's identity records (DESIGN §9): stitching links, visitors and clicks.

The person is named by hashed identifiers (``(kind, hash)`` as :class:`StitchRequest` links them)
and visitor ids. Their visitors are the named ones and every visitor linked to one of their
identifiers, claimed or verified. Then, in this order:

1. their visitors are taken out of every link set (there is no visitor → identifiers index: the
   link keys are walked with SCAN, in batches). The identifiers of the sets they were in (the
   phone a browser named with the e-mail erased) are theirs too. The link sets of all their
   identifiers are deleted, claimed and verified, whoever else they still link: other visitors
   keep their own records but no link to these identifiers. :class:`Traces` carries the
   identifiers on, so receipts and queued events naming them are scrubbed
   (:mod:`gateway.delivery.scrub`);
2. their visitor records (own click, borrowed click, ``_ttp``, IP, user agent, page) are deleted;
3. a click another visitor borrowed from them (field ``borrowed``, same ``ttclid``) is deleted
   (the visitor keys are walked with SCAN, one script call per key of a batch).

SCAN makes this an admin operation, not a hot path: it reads every identity key once. It is not
one transaction: a browser of theirs active during the erasure may write a fresh session, which
an erasure run again removes. Every call here is idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from gateway.identity.normalize import sha256_hex
from gateway.identity.visitors import LINK_KINDS, link_keys
from gateway.store import keys
from gateway.store.connections import Lua, RedisClient, eval_many

SCAN_BATCH = 500
_LINK_PREFIX = f"{keys.PREFIX}:{keys.IDENTITY_TAG}:link:"

_DROP_BORROWED = Lua("""
-- KEYS[1]: a visitor; ARGV: the erased ttclids. Drops its borrowed click when it is one of them.
local raw = redis.call('HGET', KEYS[1], 'borrowed')
if not raw then return 0 end
local ok, click = pcall(cjson.decode, raw)
if not ok or type(click) ~= 'table' then return 0 end
for _, ttclid in ipairs(ARGV) do
  if click.ttclid == ttclid then return redis.call('HDEL', KEYS[1], 'borrowed') end
end
return 0
""")


@dataclass(slots=True)
class Traces:
    """What identifies the erased person in the events kept elsewhere (receipts, the queue).

    ``hashes``: hashed e-mails, phones and external ids (their customer ids and their visitors');
    ``ttclids`` of their clicks; ``ttps``; ``sessions``: (IP, user agent) pairs.
    """

    hashes: set[str] = field(default_factory=set)
    ttclids: set[str] = field(default_factory=set)
    ttps: set[str] = field(default_factory=set)
    sessions: set[tuple[str, str]] = field(default_factory=set)


@dataclass(slots=True)
class IdentityErasure:
    """What :func:`forget_identity` removed, and the traces left to find elsewhere."""

    links: int = 0  # (identifier, visitor) pairs unlinked
    visitors: int = 0  # visitor records deleted
    clicks: int = 0  # stored clicks deleted: own, borrowed by them, and copies others borrowed
    traces: Traces = field(default_factory=Traces)


async def forget_identity(
    redis: RedisClient, identifiers: Sequence[tuple[str, str]], visitor_ids: Iterable[str]
) -> IdentityErasure:
    """Erase the person with these hashed identifiers and visitor ids (see the module doc)."""
    done = IdentityErasure()
    named = [key for kind, value in identifiers for key in link_keys(kind, value)]
    visitors = set(visitor_ids)
    pipe = redis.pipeline(transaction=False)
    for key in named:
        pipe.zrange(key, 0, -1)
    for members in cast("list[list[bytes]]", await pipe.execute()):
        visitors.update(member.decode() for member in members)
    ordered = sorted(visitors)
    theirs = set(identifiers)
    if ordered:
        removed, co_linked = await _unlink(redis, ordered)
        done.links += removed
        theirs |= co_linked
        pipe = redis.pipeline(transaction=False)
        for visitor in ordered:
            pipe.hgetall(keys.visitor_key(visitor))
            pipe.delete(keys.visitor_key(visitor))
        replies = await pipe.execute()
        for visitor, record in zip(ordered, replies[::2], strict=True):
            done.traces.hashes.add(sha256_hex(visitor))  # its external_id when no customer id
            if record:
                done.visitors += 1
                done.clicks += _read_traces(cast("dict[bytes, bytes]", record), done.traces)
    done.traces.hashes.update(value for _, value in theirs)
    # the identifiers are theirs: their whole link sets go, whoever else (another browser of
    # theirs, anyone who typed them) they still link, and whatever a stitch linked meanwhile
    theirs_keys = [key for kind, value in sorted(theirs) for key in link_keys(kind, value)]
    if theirs_keys:
        done.links += sum(await _cards_then_delete(redis, theirs_keys))
    if done.traces.ttclids:
        done.clicks += await _drop_borrowed(redis, sorted(done.traces.ttclids))
    return done


async def _unlink(redis: RedisClient, visitors: Sequence[str]) -> tuple[int, set[tuple[str, str]]]:
    """Take ``visitors`` out of every link set: how many links, and the identifiers of the
    sets they were in."""
    removed, found = 0, set()
    batch: list[str] = []

    async def flush() -> int:
        pipe = redis.pipeline(transaction=False)
        for key in batch:
            pipe.zrem(key, *visitors)
        counts = cast("list[int]", await pipe.execute())
        for key, count in zip(batch, counts, strict=True):
            kind, _, value = key.removeprefix(_LINK_PREFIX).rpartition(":")
            if count and kind.removesuffix(":verified") in LINK_KINDS:
                found.add((kind.removesuffix(":verified"), value))
        batch.clear()
        return sum(counts)

    async for raw in redis.scan_iter(match=_LINK_PREFIX + "*", count=SCAN_BATCH):
        batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        if len(batch) >= SCAN_BATCH:
            removed += await flush()
    if batch:
        removed += await flush()
    return removed, found


async def _cards_then_delete(redis: RedisClient, link_keys_: Sequence[str]) -> list[int]:
    pipe = redis.pipeline(transaction=True)
    for key in link_keys_:
        pipe.zcard(key)
    pipe.delete(*link_keys_)
    replies = await pipe.execute()
    return cast("list[int]", replies[:-1])


def _read_traces(record: dict[bytes, bytes], traces: Traces) -> int:
    """Add a visitor record's click ids, ``_ttp``, IP and user agent; its number of clicks."""
    fields = {k.decode(): v.decode() for k, v in record.items()}
    clicks = 0
    for name in ("click", "borrowed"):
        raw = fields.get(name)
        if not raw:
            continue
        clicks += 1
        try:
            click: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(click, dict) and click.get("ttclid"):
            traces.ttclids.add(str(click["ttclid"]))
    if fields.get("ttp"):
        traces.ttps.add(fields["ttp"])
    if fields.get("ip") and fields.get("user_agent"):
        traces.sessions.add((fields["ip"], fields["user_agent"]))
    return clicks


async def _drop_borrowed(redis: RedisClient, ttclids: Sequence[str]) -> int:
    """Delete every other visitor's borrowed copy of one of these clicks; how many."""
    dropped = 0
    batch: list[str] = []
    async for raw in redis.scan_iter(match=keys.visitor_key("*"), count=SCAN_BATCH):
        batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        if len(batch) >= SCAN_BATCH:
            dropped += sum(await eval_many(redis, [(_DROP_BORROWED, [k], ttclids) for k in batch]))
            batch.clear()
    if batch:
        dropped += sum(await eval_many(redis, [(_DROP_BORROWED, [k], ttclids) for k in batch]))
    return dropped
