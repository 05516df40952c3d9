"""The admin API, ``/v1/admin/…``: integrations, events and receipts, replay, stats, test events.

Every route but ``openapi.json`` needs ``Authorization: Bearer <admin token>`` (compared in
constant time; 401 otherwise). Answers are JSON; a bad request names the field. Access tokens are
write-only: stored encrypted, shown as their last four characters, never returned or logged.
The contract is ``gateway/admin_openapi.json``, served at ``/v1/admin/openapi.json``.
"""

from __future__ import annotations

import base64
import hmac
import re
import time
from dataclasses import asdict
from importlib.resources import files
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from gateway.appkeys import HTTP, INTEGRATIONS, REDIS, SETTINGS, STORE
from gateway.delivery.receipts import counters, decode_receipt, receipts_for
from gateway.delivery.replay import dead_letters, replay
from gateway.integrations import token_hint
from gateway.operate.commands import parse_time, send_test_event
from gateway.operate.stats import coverage, drop_alerts, flow, warnings_by_field
from gateway.settings import CONSENT_CATEGORIES, SANDBOX_PIXEL_CODE, Integration, SettingsError
from gateway.store import keys
from gateway.store.connections import REDIS_ERRORS
from gateway.tiktok.names import canonical_event, event_name_problem

PIXEL_RE = re.compile(r"^[A-Z0-9]{10,40}$")
HOST_RE = re.compile(r"^(?!-)[a-z0-9.-]{1,253}$")
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
STATES = ("queued", "retrying", "delivered", "dead", "suppressed")
PAGE_MAX = 200


class BadRequest(Exception):
    """A client mistake: 4xx naming the field."""

    def __init__(self, error: str, field: str | None, status: int = 400) -> None:
        super().__init__(error)
        self.error, self.field, self.status = error, field, status


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer admin token on everything but the OpenAPI document; JSON errors."""
    if request.path != "/v1/admin/openapi.json":
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = request.config_dict[SETTINGS].admin_token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            response = _json(
                {"error": "a valid admin token is required", "field": "Authorization"}, 401
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
    try:
        return await handler(request)
    except BadRequest as exc:
        return _json({"error": exc.error, "field": exc.field}, exc.status)
    except REDIS_ERRORS:
        return _json({"error": "Redis is unavailable; retry later", "field": None}, 503)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("body is not valid JSON", "body") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", "body")
    return body


# --- integrations -----------------------------------------------------------------------------


async def _paused(request: web.Request) -> dict[str, Any]:
    raw = cast("dict[bytes, bytes]", await request.config_dict[REDIS].hgetall(keys.PAUSED_HASH))
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


def _public(integration: Integration, source: str, paused: dict[str, Any]) -> dict[str, Any]:
    data = asdict(integration)
    token = data.pop("access_token")
    data["access_token_hint"] = token_hint(token)
    data["event_overrides"] = dict(integration.event_overrides)
    data["source"] = source
    data["paused"] = paused.get(integration.pixel_code)
    return data


async def list_integrations(request: web.Request) -> web.Response:
    """Every integration: from configuration (read-only here) and from this API."""
    registry = request.config_dict[INTEGRATIONS]
    await registry.refresh(request.config_dict[STORE], force=True)
    paused = await _paused(request)
    items = [
        _public(i, "config" if registry.is_configured(i.pixel_code) else "api", paused)
        for i in registry.all
    ]
    return _json({"integrations": items, "sandbox": registry.sandbox})


def _strings(body: dict[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("must be a list of strings", name)
    return tuple(value)


def _integration(body: dict[str, Any], base: Integration | None) -> Integration:
    """Validate a create (no base) or update (base) body into an Integration."""
    allowed = {
        "name",
        "pixel_code",
        "access_token",
        "test_event_code",
        "hostnames",
        "default_phone_region",
        "required_consent",
        "event_overrides",
        "enabled",
    }
    for name in body:
        if name not in allowed:
            raise BadRequest("unknown field", name)
    fields: dict[str, Any] = {} if base is None else asdict(base)
    if base is None:
        pixel = body.get("pixel_code")
        if not isinstance(pixel, str) or not PIXEL_RE.fullmatch(pixel):
            raise BadRequest("a pixel code is 10-40 upper-case letters and digits", "pixel_code")
        if pixel == SANDBOX_PIXEL_CODE:
            raise BadRequest("reserved for the sandbox", "pixel_code")
        fields["pixel_code"] = pixel
    elif "pixel_code" in body and body["pixel_code"] != base.pixel_code:
        raise BadRequest("the pixel code of an integration cannot change", "pixel_code")
    for name in ("name", "access_token", "test_event_code", "default_phone_region"):
        if name in body:
            value = body[name]
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise BadRequest("must be a non-empty string or null", name)
            fields[name] = value.strip() if isinstance(value, str) else None
    if not fields.get("access_token"):
        raise BadRequest("is required", "access_token")
    if any(c.isspace() for c in fields["access_token"]):
        raise BadRequest("must not contain spaces", "access_token")
    fields["name"] = fields.get("name") or fields["pixel_code"]
    if "hostnames" in body:
        hosts = tuple(h.strip().lower().lstrip(".") for h in _strings(body, "hostnames"))
        if not all(HOST_RE.fullmatch(h) for h in hosts):
            raise BadRequest("each must be a host name", "hostnames")
        fields["hostnames"] = hosts
    if "required_consent" in body:
        consent = _strings(body, "required_consent")
        if not set(consent) <= CONSENT_CATEGORIES:
            raise BadRequest(
                f"categories: {', '.join(sorted(CONSENT_CATEGORIES))}", "required_consent"
            )
        fields["required_consent"] = consent
    if "event_overrides" in body:
        overrides = body["event_overrides"]
        if not isinstance(overrides, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in overrides.items()
        ):
            raise BadRequest("must be an object of name: name strings", "event_overrides")
        for target in overrides.values():
            problem = event_name_problem(target)
            if problem is not None:
                raise BadRequest(problem, "event_overrides")
        fields["event_overrides"] = tuple(sorted(overrides.items()))
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise BadRequest("must be true or false", "enabled")
        fields["enabled"] = body["enabled"]
    region = fields.get("default_phone_region")
    if region is not None:
        import phonenumbers

        if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise BadRequest("not a supported ISO 3166 region", "default_phone_region")
        fields["default_phone_region"] = region.upper()
    fields.setdefault("enabled", True)
    return Integration(**{k: v for k, v in fields.items() if k in Integration.__dataclass_fields__})


def _stored_or_error(request: web.Request) -> Integration:
    pixel = request.match_info["pixel"]
    registry = request.config_dict[INTEGRATIONS]
    if registry.is_configured(pixel):
        raise BadRequest(
            "configured in the environment or TTGW_CONFIG: change it there", "pixel_code", 409
        )
    stored = registry.stored.get(pixel)
    if stored is None:
        raise BadRequest("no such integration", "pixel_code", 404)
    return stored.integration


async def create_integration(request: web.Request) -> web.Response:
    """Create an integration; 409 when the pixel exists already."""
    registry, store = request.config_dict[INTEGRATIONS], request.config_dict[STORE]
    await registry.refresh(store, force=True)
    integration = _integration(await _body(request), None)
    if integration.pixel_code in {i.pixel_code for i in registry.all}:
        raise BadRequest("an integration with this pixel exists", "pixel_code", 409)
    await store.save(integration)
    await registry.refresh(store, force=True)
    return _json(_public(integration, "api", {}), 201)


async def read_integration(request: web.Request) -> web.Response:
    """One integration."""
    registry = request.config_dict[INTEGRATIONS]
    await registry.refresh(request.config_dict[STORE], force=True)
    pixel = request.match_info["pixel"]
    for integration in registry.all:
        if integration.pixel_code == pixel:
            source = "config" if registry.is_configured(pixel) else "api"
            return _json(_public(integration, source, await _paused(request)))
    raise BadRequest("no such integration", "pixel_code", 404)


async def update_integration(request: web.Request) -> web.Response:
    """Change fields; a new access token lifts a pause at once."""
    registry, store = request.config_dict[INTEGRATIONS], request.config_dict[STORE]
    await registry.refresh(store, force=True)
    base = _stored_or_error(request)
    body = {"enabled": False} if request.path.endswith("/disable") else await _body(request)
    updated = _integration(body, base)
    await store.save(updated)
    if updated.access_token != base.access_token or (updated.enabled and not base.enabled):
        await request.config_dict[REDIS].hdel(keys.PAUSED_HASH, updated.pixel_code)
    await registry.refresh(store, force=True)
    return _json(_public(updated, "api", await _paused(request)))


async def delete_integration(request: web.Request) -> web.Response:
    """Remove an integration created through this API."""
    registry, store = request.config_dict[INTEGRATIONS], request.config_dict[STORE]
    await registry.refresh(store, force=True)
    integration = _stored_or_error(request)
    await store.delete(integration.pixel_code)
    await request.config_dict[REDIS].hdel(keys.PAUSED_HASH, integration.pixel_code)
    await registry.refresh(store, force=True)
    return web.Response(status=204)


# --- events, replay, stats, test events -------------------------------------------------------


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
    )
    return {name: receipt.get(name) for name in names}


async def list_events(request: web.Request) -> web.Response:
    """Receipts, newest first, filtered by state, pixel, event name and time, with a cursor."""
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise BadRequest(f"one of {', '.join(STATES)}", "state")
    pixel, event = request.query.get("pixel"), request.query.get("event")
    if event:  # aliases are one event: CompletePayment finds the receipt keyed by Purchase
        event = canonical_event(event)
    limit = _int_param(request, "limit", 50, 1, PAGE_MAX)
    since, until = _time_param(request, "since"), _time_param(request, "until")
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
    redis = request.config_dict[REDIS]
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
        pipe = redis.pipeline(transaction=False)
        members = []
        for raw_id, fields in page:
            member = fields.get(b"d", b"").decode()
            p, e, i = keys.split_dedup_id(member)
            if (pixel and p != pixel) or (event and canonical_event(e) != event):
                continue
            members.append((member, raw_id.decode()))
            pipe.hgetall(keys.receipt_key(p, e, i))
        for (member, entry_id), raw in zip(members, await pipe.execute(), strict=True):
            if not raw:
                continue
            receipt = decode_receipt(raw, member)
            if state and receipt.get("state") != state:
                continue
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


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this API."""
    return web.Response(
        body=(files("gateway.operate") / "admin_openapi.json").read_bytes(),
        content_type="application/json",
    )


def create_admin_app() -> web.Application:
    """The admin API as a sub-application, mounted at ``/v1/admin``."""
    app = web.Application(middlewares=[guard])
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/integrations", list_integrations)
    app.router.add_post("/integrations", create_integration)
    app.router.add_get("/integrations/{pixel}", read_integration)
    app.router.add_patch("/integrations/{pixel}", update_integration)
    app.router.add_post("/integrations/{pixel}/disable", update_integration)
    app.router.add_delete("/integrations/{pixel}", delete_integration)
    app.router.add_get("/events", list_events)
    app.router.add_get("/events/{event_id}", event_receipts)
    app.router.add_post("/replay", replay_dead_letters)
    app.router.add_get("/stats", stats)
    app.router.add_post("/test-event", test_event)
    return app
