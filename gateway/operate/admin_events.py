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
from gateway.delivery.receipts import counters, decode_receipt, receipts_for
from gateway.delivery.replay import dead_letters, replay
from gateway.operate.admin_http import BadRequest, _body, _json
from gateway.operate.admin_integrations import _paused
from gateway.operate.commands import parse_time, send_test_event
from gateway.operate.health import health as attribution_health
from gateway.operate.stats import coverage, drop_alerts, flow, warnings_by_field
from gateway.store import keys
from gateway.store.connections import RedisClient
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
    payload = receipt.get("payload")
    user = payload.get("user") if isinstance(payload, dict) else None
    summary["click"] = bool(user.get("ttclid")) if isinstance(user, dict) else None
    return summary


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


async def _search(redis: RedisClient, text: str) -> list[tuple[str, str]]:
    """Receipt members whose event_id contains ``text`` (``1042`` finds ``ord_1042``), from the
    event_id index; at most ``SEARCH_MAX`` receipts, each with log id "0-0" (a search has no
    cursor)."""
    found: list[tuple[str, str]] = []
    pattern = f"*{_glob_escape(text)}*"
    async for raw_id, raw_pairs in redis.hscan_iter(keys.RECEIPT_IDS_HASH, pattern, count=1000):
        event_id = raw_id.decode()
        found.extend(
            (f"{pair}\x1f{event_id}", "0-0") for pair in raw_pairs.decode().split("\x1e") if pair
        )
        if len(found) >= SEARCH_MAX:
            break
    return found


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

    async def matching(members: list[tuple[str, str]]) -> list[tuple[dict[str, Any], str]]:
        pipe = redis.pipeline(transaction=False)
        kept = []
        for member, entry_id in members:
            p, e, i = keys.split_dedup_id(member)
            if (pixel and p != pixel) or (event and canonical_event(e) != event):
                continue
            kept.append((member, entry_id))
            pipe.hgetall(keys.receipt_key(p, e, i))
        out = []
        for (member, entry_id), raw in zip(kept, await pipe.execute(), strict=True):
            receipt = decode_receipt(raw, member) if raw else None
            if receipt is not None and (not state or receipt.get("state") == state):
                out.append((receipt, entry_id))
        return out

    if text:
        received = [r for r, _ in await matching(await _search(redis, text))]
        received = [
            r
            for r in received
            if (since is None or (r.get("received_ms") or 0) >= since)
            and (until is None or (r.get("received_ms") or 0) <= until)
        ]
        received.sort(key=lambda r: r.get("received_ms") or 0, reverse=True)
        return _json({"events": [_summary(r) for r in received[:limit]], "next_cursor": None})
    cursor = request.query.get("cursor")
    high = str(until) if until is not None else "+"
    if cursor:
        try:
            decoded = base64.urlsafe_b64decode(cursor.encode() + b"==").decode()
        except (ValueError, UnicodeDecodeError):
            decoded = ""
        if not _STREAM_ID.fullmatch(decoded):
            raise BadRequest("not a cursor from a previous page", "cursor")
        high = f"({decoded}"
    low = str(since) if since is not None else "-"
    found: list[dict[str, Any]] = []
    next_cursor: str | None = None
    while len(found) < limit:
        page = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await redis.xrevrange(keys.RECEIPT_LOG_STREAM, high, low, count=500),
        )
        if not page:
            break
        high = f"({page[-1][0].decode()}"
        members = [(f.get(b"d", b"").decode(), raw_id.decode()) for raw_id, f in page]
        for receipt, entry_id in await matching(members):
            found.append(_summary(receipt))
            if len(found) == limit:
                next_cursor = base64.urlsafe_b64encode(entry_id.encode()).decode().rstrip("=")
                break
    return _json({"events": found, "next_cursor": next_cursor})


async def event_receipts(request: web.Request) -> web.Response:
    """Every receipt of one event id (one per pixel and event name)."""
    receipts = await receipts_for(request.config_dict[REDIS], request.match_info["event_id"])
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
