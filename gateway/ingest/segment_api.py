"""The Segment HTTP Tracking API: ``POST /v1/batch``, and one message at ``/v1/page``,
``/v1/identify``, ``/v1/screen``, ``/v1/group``, ``/v1/alias`` and — when the body is Segment's
(:func:`~gateway.ingest.segment.is_message`) — ``/v1/track``.

The write key comes as HTTP Basic (the key as user name, as the SDKs send it) or Bearer. Bodies
are JSON, plain or gzip. The answer is Segment's: ``200 {"success": true}`` once every usable
message is durably queued — RudderStack's SDK takes any other status, 202 included, for a failure
and sends the batch again. A body that is not JSON or not a batch is a 400 naming the field. In a
batch, a message that cannot be used is counted (``ttgw_events_rejected_total{source="segment"}``)
and logged by index, field and reason (never a value it holds), and the others are queued: a 4xx
would make the SDK drop or resend the good ones with it. A single message that cannot be used is
a 400 naming the field. Every refusal carries Segment's ``code`` and ``message`` beside our
``error`` and ``field`` (RudderStack's Python SDK retries a 4xx whose body lacks them). The event
id of a message without ``properties.event_id`` or ``order_id`` is its ``messageId``, so an SDK's
retry is answered ``duplicate`` at ingest and reaches TikTok once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.appkeys import INTEGRATIONS, SETTINGS
from gateway.config import Integration
from gateway.ingest.build import Origin, hash_user
from gateway.ingest.envelope import parse_event
from gateway.ingest.fields import FieldError
from gateway.ingest.intake import (
    RETRY_AFTER_S,
    SERVER_TYPES,
    Parsed,
    Problem,
    integration_for,
    queue_events,
    read_json,
    server_sessions,
    unavailable,
)
from gateway.ingest.segment import batch_messages, to_envelope
from gateway.ingest.write_key import ERROR, authorized, refusal
from gateway.logs import get_logger
from gateway.operate.metrics import EVENTS_INGESTED, EVENTS_REJECTED, field_label
from gateway.store import keys
from gateway.store.connections import REDIS_ERRORS

log = get_logger("gateway.segment")

SOURCE = "segment"
SUCCESS = orjson.dumps({"success": True})
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
SINGLE_PATHS = ("page", "identify", "screen", "group", "alias")  # and /v1/track, in routes
CODES = {400: "bad_request", 401: "unauthorized", 404: "no_integration", 408: "timeout",
         413: "too_large", 415: "unsupported_media_type", 503: "unavailable"}  # fmt: skip


async def answer(
    request: web.Request, integration: Integration, body: Any, kind: str | None
) -> web.Response:
    """Queue the messages of a body already read: a batch (``kind`` None) or one message of
    ``kind``; Segment's answer."""
    now = time.time()
    try:
        if kind is None:
            messages = batch_messages(body)
        elif isinstance(body, dict):
            messages = [body]
        else:
            raise FieldError("body", "must be a message object")
        parsed = _parse(request, integration, messages, kind, now)
        if kind is not None and parsed.errors:
            first = parsed.errors[0]
            raise Problem(400, first["error"], first["field"])
        sessions = await server_sessions(request, integration, parsed, int(now * 1000))
        origin = Origin(source=SOURCE, host=request.host)
        await queue_events(request, integration, parsed, sessions, origin)
    except FieldError as exc:
        return _refused(Problem(400, exc.error, exc.field))
    except Problem as problem:
        return _refused(problem)
    except REDIS_ERRORS as exc:
        return _refused(unavailable(exc))
    return web.Response(body=SUCCESS, content_type="application/json")


def _parse(
    request: web.Request,
    integration: Integration,
    messages: list[Any],
    kind: str | None,
    now: float,
) -> Parsed:
    """Each message as a validated envelope; one that cannot be used is an error entry, counted
    and logged without its content."""
    settings = request.app[SETTINGS]
    names = request.app[INTEGRATIONS].names(integration)
    parsed = Parsed([], [], batch=kind is None)
    for index, message in enumerate(messages):
        translation = None
        try:
            translation = to_envelope(message, now, kind)
            if translation is None:
                EVENTS_INGESTED.labels("ignored", SOURCE).inc()
                continue
            envelope = parse_event(
                translation.envelope, names, now=now, max_age_s=settings.event_max_age_s
            )
        except FieldError as exc:
            name = translation.segment_field(exc.field) if translation else exc.field
            field = _named(index if kind is None else None, name)
            parsed.errors.append({"index": index, "error": exc.error, "field": field})
            EVENTS_REJECTED.labels(field_label(field), SOURCE).inc()
            log.info(
                "segment_message_refused", index=index, field=field, error=_unquoted(exc.error)
            )
            continue
        parsed.envelopes.append((index, envelope))
    region = integration.default_phone_region or settings.default_phone_region
    parsed.hashed = [hash_user(envelope, region) for _, envelope in parsed.envelopes]
    return parsed


def _unquoted(error: str) -> str:
    """An error without the values it quotes (an event name may hold anything): for the log."""
    return _QUOTED.sub("…", error)


def _named(index: int | None, name: str) -> str:
    """A field as the sender wrote it: ``batch[2].context.ip`` in a batch, ``context.ip`` alone."""
    if index is None:
        return "body" if name == "message" else name
    return f"batch[{index}]" if name == "message" else f"batch[{index}].{name}"


def _refused(problem: Problem) -> web.Response:
    """A refusal with Segment's ``code`` and ``message`` beside ``error`` and ``field``."""
    retry = problem.extra.pop("retry", None) or problem.status == 503
    message = f"{problem.field}: {problem.error}" if problem.field else problem.error
    problem.extra.update(code=CODES.get(problem.status, "error"), message=message)
    return problem.response({"Retry-After": RETRY_AFTER_S} if retry else None)


def _handler(kind: str | None) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def collect(request: web.Request) -> web.Response:
        if not authorized(request):
            return refusal(basic_first=True, code=CODES[401], message=ERROR)
        try:
            integration = integration_for(request)
            body = await read_json(request, keys.TRACK_BODY_MAX_BYTES, SERVER_TYPES)
        except Problem as problem:
            return _refused(problem)
        return await answer(request, integration, body, kind)

    collect.__doc__ = f"``POST /v1/{kind or 'batch'}``: Segment's HTTP Tracking API."
    return collect


def add_routes(app: web.Application) -> None:
    """Mount ``/v1/batch`` and the single-message endpoints (``/v1/track`` is ``routes``')."""
    app.router.add_post("/v1/batch", _handler(None))
    for kind in SINGLE_PATHS:
        app.router.add_post(f"/v1/{kind}", _handler(kind))
