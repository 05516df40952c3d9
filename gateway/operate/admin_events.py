"""The admin API's events: receipts and their search, replay of dead letters, stats, test events."""

from __future__ import annotations

import base64
import re
import time
from typing import Any, cast

from aiohttp import web
from redis.exceptions import RedisError

from gateway.appkeys import HTTP, INTEGRATIONS, REDIS, SETTINGS, STORE
from gateway.config import SettingsError
from gateway.delivery.receipts import Found, assemble, counters, pair_names, receipts_for
from gateway.delivery.replay import dead_letters, replay
from gateway.operate.admin_http import BadRequest, _body, _json
from gateway.operate.admin_integrations import _paused
from gateway.operate.commands import parse_time, send_test_event
from gateway.operate.health import health as attribution_health
from gateway.operate.stats import coverage, drop_alerts, flow, warnings_by_field
from gateway.store import keys
from gateway.store.connections import RedisClient
from gateway.store.receipt_records import STATES as STATE_NAMES
from gateway.store.receipt_records import Record, decode
from gateway.tiktok.names import canonical_event

_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
STATES = ("queued", "retrying", "delivered", "dead", "suppressed")
PAGE_MAX = 200
SEARCH_MAX = 1000  # receipts a search by ``q`` reads at most
SEARCH_TEXT_MAX = 200


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("must be an integer", name) from None
    if not low <= value <= high:
        raise BadRequest(f"must be between {low} and {high}", name)
    return value


def _time_param(request: web.Request, name: str) -> int | None:
    try:
        return parse_time(request.query.get(name), name)
    except SettingsError as exc:
        raise BadRequest(str(exc).split(": ", 1)[-1], name) from None


def _summary(receipt: dict[str, Any]) -> dict[str, Any]:
    names = (
        "pixel",
        "event",
        "event_id",
        "state",
        "reason",
        "attempts",
        "http_status",
        "code",
        "message",
        "request_id",
        "received_ms",
        "first_try_ms",
        "last_try_ms",
        "duplicates",
        "source",
    )
    summary = {name: receipt.get(name) for name in names}
    click = receipt.get("click")  # stored with the receipt: a list reads no payload
    summary["click"] = None if not click else click == "1"
    return summary


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


async def _search(redis: RedisClient, text: str, buckets: list[int]) -> list[Found]:
    """Receipt records whose event_id contains ``text`` (``1042`` finds ``ord_1042``), from the
    receipt buckets, newest first; at most ``SEARCH_MAX``."""
    found: list[Found] = []
    pattern = f"*{_glob_escape(text)}*"
    for bucket in buckets:
        async for raw_id, value in redis.hscan_iter(keys.receipts_key(bucket), pattern, count=1000):
            found.extend((raw_id.decode(), record) for record in decode(value))
            if len(found) >= SEARCH_MAX:
                return found[:SEARCH_MAX]
    return found


def _cursor(text: str) -> tuple[int, str]:
    """A cursor from a previous page: the bucket and the log entry id to continue below."""
    try:
        decoded = base64.urlsafe_b64decode(text.encode() + b"==").decode()
    except (ValueError, UnicodeDecodeError):
        decoded = ""
    bucket, _, entry_id = decoded.partition("/")
    if not bucket.isdigit() or len(bucket) > 20 or not _STREAM_ID.fullmatch(entry_id):
        raise BadRequest("not a cursor from a previous page", "cursor")
    return int(bucket), entry_id


async def list_events(request: web.Request) -> web.Response:
    """Receipts, newest first, filtered by state, pixel, event name and time, with a cursor;
    or, with ``q``, the receipts whose event_id contains it (a search, not paged)."""
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise BadRequest(f"one of {', '.join(STATES)}", "state")
    pixel, event = request.query.get("pixel"), request.query.get("event")
    if event:  # aliases are one event: CompletePayment finds the receipt keyed by Purchase
        event = canonical_event(event)
    limit = _int_param(request, "limit", 50, 1, PAGE_MAX)
    since, until = _time_param(request, "since"), _time_param(request, "until")
    text = request.query.get("q", "").strip()
    if len(text) > SEARCH_TEXT_MAX:
        raise BadRequest(f"at most {SEARCH_TEXT_MAX} characters", "q")
    redis = request.config_dict[REDIS]
    buckets = keys.retention_buckets(
        int(time.time() * 1000), request.config_dict[SETTINGS].receipt_ttl_s
    )
    names = await pair_names(redis)

    def wanted(record: Record) -> bool:
        p, e = names.get(record.pair, ("", ""))
        return (
            (not pixel or p == pixel)
            and (not event or canonical_event(e) == event)
            and (not state or STATE_NAMES.get(record.state) == state)
        )

    if text:
        found = [f for f in await _search(redis, text, buckets) if wanted(f[1])]
        found = [
            (i, r)
            for i, r in found
            if (since is None or r.received_ms >= since)
            and (until is None or r.received_ms <= until)
        ]
        found.sort(key=lambda f: f[1].received_ms, reverse=True)
        received = await assemble(redis, found[:limit], names, payloads=False)
        return _json({"events": [_summary(r) for r in received], "next_cursor": None})
    cursor = request.query.get("cursor")
    high = str(until) if until is not None else "+"
    low = str(since) if since is not None else "-"
    if cursor:
        start, entry_id = _cursor(cursor)
        buckets = [b for b in buckets if b <= start]
        high = f"({entry_id}"
    elif until is not None:
        buckets = [b for b in buckets if b <= keys.receipt_bucket(until) + 1]
    if since is not None:
        buckets = [b for b in buckets if b >= keys.receipt_bucket(since) - 1]
    chosen: list[Found] = []
    next_cursor: str | None = None
    for bucket in buckets:
        while len(chosen) < limit and next_cursor is None:
            page = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                await redis.xrevrange(keys.receipt_log_key(bucket), high, low, count=500),
            )
            if not page:
                break
            high = f"({page[-1][0].decode()}"
            members = []
            for raw_id, f in page:
                number, _, event_id = f.get(b"d", b"").decode().partition("\x1f")
                members.append((raw_id.decode(), number, event_id))
            pipe = redis.pipeline(transaction=False)
            for _, _, event_id in members:
                pipe.hget(keys.receipts_key(bucket), event_id)
            for (entry_id, number, event_id), value in zip(
                members, await pipe.execute(), strict=True
            ):
                record = next((r for r in decode(value) if r.pair == number), None)
                if record is None or not wanted(record):
                    continue
                chosen.append((event_id, record))
                if len(chosen) == limit:
                    token = f"{bucket}/{entry_id}".encode()
                    next_cursor = base64.urlsafe_b64encode(token).decode().rstrip("=")
                    break
        if len(chosen) >= limit:
            break
        high = str(until) if until is not None else "+"
    found_receipts = await assemble(redis, chosen, names, payloads=False)
    return _json({"events": [_summary(r) for r in found_receipts], "next_cursor": next_cursor})


async def event_receipts(request: web.Request) -> web.Response:
    """Every receipt of one event id (one per pixel and event name)."""
    receipts = await receipts_for(
        request.config_dict[REDIS],
        request.match_info["event_id"],
        request.config_dict[SETTINGS].receipt_ttl_s,
    )
    if not receipts:
        raise BadRequest(
            "no receipt for this event_id (unknown, or older than the retention)", "event_id", 404
        )
    return _json({"receipts": receipts})


async def replay_dead_letters(request: web.Request) -> web.Response:
    """Replay dead letters: by event ids, by filter (pixel, event, since, until), or all."""
    body = {k: v for k, v in (await _body(request)).items() if v is not None}
    for name in ("pixel", "event"):
        if name in body and not isinstance(body[name], str):
            raise BadRequest("must be a string", name)
    event_ids = body.get("event_ids")
    if event_ids is not None and (
        not isinstance(event_ids, list) or not all(isinstance(i, str) for i in event_ids)
    ):
        raise BadRequest("must be a list of strings", "event_ids")
    if (
        event_ids is None
        and body.get("all") is not True
        and not any(k in body for k in ("pixel", "event", "since", "until"))
    ):
        raise BadRequest(
            "give event_ids, a filter (pixel, event, since, until) or all: true", "body"
        )
    times: dict[str, int | None] = {}
    for name in ("since", "until"):
        value = body.get(name)
        try:
            times[name] = parse_time(None if value is None else str(value), name)
        except SettingsError as exc:
            raise BadRequest(str(exc).split(": ", 1)[-1], name) from None
    redis = request.config_dict[REDIS]
    letters = await dead_letters(
        redis,
        event_ids=set(event_ids or ()),
        since_ms=times["since"],
        until_ms=times["until"],
        pixel=body.get("pixel"),
        event=body.get("event"),
    )
    if event_ids == []:
        letters = []
    return _json({"queued": await replay(redis, letters)})


async def stats(request: web.Request) -> web.Response:
    """Queue health, flow per minute, paused integrations, match-key coverage and its alerts,
    and the fields ingest dropped with a warning in the last 24 hours."""
    redis = request.config_dict[REDIS]
    settings = request.config_dict[SETTINGS]
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(keys.EVENTS_STREAM)
    pipe.zcard(keys.RETRY_ZSET)
    pipe.xlen(keys.DEAD_STREAM)
    pipe.xrange(keys.EVENTS_STREAM, count=1)
    depth, retrying, dead, first = await pipe.execute()
    pending, lag = 0, None
    try:
        for group in await redis.xinfo_groups(keys.EVENTS_STREAM):
            if group.get("name") in (keys.DELIVERY_GROUP, keys.DELIVERY_GROUP.encode()):
                pending, lag = int(group.get("pending", 0)), group.get("lag")
    except RedisError:
        pass  # no stream yet
    oldest = round(time.time() - int(first[0][0].split(b"-")[0]) / 1000, 3) if first else None
    report = await coverage(redis)
    return _json(
        {
            "sandbox": request.config_dict[INTEGRATIONS].sandbox,
            "queue": {
                "depth": depth,
                "pending": pending,
                "retrying": retrying,
                "dead": dead,
                "oldest_age_s": oldest,
                "lag": lag,
            },
            "counters": await counters(redis),
            "minutes": await flow(redis),
            "paused": [{"pixel": k, **v} for k, v in (await _paused(request)).items()],
            "coverage": report,
            "alerts": drop_alerts(report, settings.coverage_drop_alert),
            "warnings": await warnings_by_field(redis),
            "health": await attribution_health(redis, settings.coverage_drop_alert),
        }
    )


async def test_event(request: web.Request) -> web.Response:
    """Send one test event for an integration (its test_event_code) and return TikTok's answer."""
    body = await _body(request)
    registry = request.config_dict[INTEGRATIONS]
    await registry.refresh(request.config_dict[STORE], force=True)
    pixel = body.get("pixel")
    for name in ("pixel", "test_event_code"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise BadRequest("must be a string", name)
    chosen = [i for i in registry.enabled if pixel in (None, i.pixel_code)]
    if not chosen:
        raise BadRequest("no enabled integration has this pixel", "pixel", 404)
    code = body.get("test_event_code") or chosen[0].test_event_code
    if code is None and not registry.sandbox:
        raise BadRequest("the integration has no test_event_code; give one", "test_event_code")
    answer = await send_test_event(
        request.config_dict[SETTINGS],
        registry,
        request.config_dict[REDIS],
        request.config_dict[HTTP],
        chosen[0],
        code,
    )
    return _json(answer)
