"""Ingest routes: ``POST /e`` (the browser collector) and ``POST /v1/track`` (merchant backends).

Both take the design's envelope — one event, or ``{"events": [...]}`` with up to 1000 — and answer
202 with a status per accepted event (``queued``, ``duplicate``, ``suppressed`` or ``identified``)
and an error per rejected index; good events are kept when others are bad. A body that is not JSON,
too large (64 KiB for ``/e``, 1 MiB for ``/v1/track``) or of a content type we do not take is a
4xx with ``{"error", "field"}``. 202 is sent only once every event is in the Redis stream; when
Redis is unreachable, full (``noeviction`` out of memory) or the queue holds
``TTGW_QUEUE_MAX_EVENTS``, the answer is 503 with ``Retry-After`` and nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.appkeys import COALESCER, INGEST, INTEGRATIONS, SETTINGS, SIGNER, VISITORS
from gateway.config import Integration
from gateway.identity.consent import decide
from gateway.identity.visitors import Click, LinkSource, Session, StitchRequest
from gateway.ingest.browser import BrowserRequest, read_browser, set_cookie_headers
from gateway.ingest.build import HashedUser, Origin, build_event, click_from_page, encode, hash_user
from gateway.ingest.cors import allowed_origin, cors_headers, preflight, refuse
from gateway.ingest.enqueue import Outgoing, QueueFull, Status
from gateway.ingest.envelope import Envelope, EventType, derive_event_id, parse_event, split_batch
from gateway.ingest.fields import FieldError, FieldWarning
from gateway.logs import get_logger
from gateway.operate.metrics import (
    CLICKS_CAPTURED,
    EVENTS_INGESTED,
    EVENTS_REJECTED,
    FIELD_WARNINGS,
    MATCH_KEYS_SEEN,
    event_label,
    field_label,
)
from gateway.operate.stats import WARNING_PREFIX, present_keys
from gateway.store import keys
from gateway.store.connections import REDIS_ERRORS

log = get_logger("gateway.collect")

BROWSER_TYPES = ("application/json", "text/plain", "application/octet-stream", "")
SERVER_TYPES = ("application/json",)
RETRY_AFTER_S = "5"
BODY_TIMEOUT_S = 10.0


class Problem(Exception):
    """A request-level refusal: status, message and the field to blame."""

    def __init__(self, status: int, error: str, field: str | None, **extra: Any) -> None:
        super().__init__(error)
        self.status, self.error, self.field, self.extra = status, error, field, extra

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        """The JSON answer."""
        body = {"error": self.error, "field": self.field, **self.extra}
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=headers,
        )


@dataclass(slots=True)
class Parsed:
    """The events of a request: valid envelopes by index, their hashed identifiers, errors."""

    envelopes: list[tuple[int, Envelope]]
    errors: list[dict[str, Any]]
    hashed: list[HashedUser] = field(default_factory=list)
    batch: bool = False  # {"events": [...]}: fields are named events[i].…

    def warnings(self, index: int, envelope: Envelope, hashed: HashedUser) -> list[FieldWarning]:
        """What one event could not use, each named as the answer names fields."""
        prefix = f"events[{index}]." if self.batch else ""
        return [
            FieldWarning(prefix + w.field, w.warning, w.label)
            for w in (*envelope.warnings, *hashed.warnings)
        ]


async def read_json(request: web.Request, limit: int, types: tuple[str, ...]) -> Any:
    """The request body as JSON, within ``limit`` bytes and of an accepted content type."""
    if request.content_type not in types and not (
        request.content_type == "application/octet-stream" and "" in types
    ):
        raise Problem(415, f"Content-Type must be one of {', '.join(t for t in types if t)}",
                      "Content-Type")  # fmt: skip
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, f"body is larger than {limit} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):  # a trickled body must not hold a handler
            async for chunk in request.content.iter_chunked(16384):
                size += len(chunk)
                if size > limit:
                    raise Problem(413, f"body is larger than {limit} bytes", "body")
                chunks.append(chunk)
    except TimeoutError:
        raise Problem(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s", "body") from None
    except ConnectionResetError:
        raise Problem(400, "the client went away before sending the whole body", "body") from None
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise Problem(400, "body is not valid JSON", "body") from None


def parse_events(
    body: Any,
    integration: Integration,
    names: Any,
    max_age_s: int,
    now: float,
    default_region: str | None = None,
) -> Parsed:
    """Validate each event; a bad one becomes an error entry, the others go on."""
    try:
        raw_events = split_batch(body)
    except FieldError as exc:
        raise Problem(400, exc.error, exc.field) from None
    batch = isinstance(body, dict) and "events" in body
    parsed = Parsed([], [], batch=batch)
    for index, raw in enumerate(raw_events):
        try:
            parsed.envelopes.append((index, parse_event(raw, names, now=now, max_age_s=max_age_s)))
        except FieldError as exc:
            prefix = f"events[{index}]." if batch else ""
            parsed.errors.append({"index": index, "error": exc.error, "field": prefix + exc.field})
    region = integration.default_phone_region or default_region
    parsed.hashed = [hash_user(envelope, region) for _, envelope in parsed.envelopes]
    return parsed


def _integration(request: web.Request) -> Integration:
    integration = request.app[INTEGRATIONS].for_host(request.host)
    if integration is None:
        raise Problem(404, "no integration serves this host", "Host")
    return integration


async def _queue(
    request: web.Request,
    integration: Integration,
    parsed: Parsed,
    sessions: list[Session],
    origin: Origin,
) -> list[dict[str, Any]]:
    """Hash, enrich, apply consent and queue every valid event; their answer entries."""
    settings = request.app[SETTINGS]
    outgoing: list[Outgoing] = []
    built: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    tracked: list[dict[str, Any]] = []
    warned: Counter[str] = Counter()
    for (index, envelope), hashed, session in zip(
        parsed.envelopes, parsed.hashed, sessions, strict=True
    ):
        notes = parsed.warnings(index, envelope, hashed)
        said = _said(notes, warned, origin.source)
        if envelope.type is EventType.IDENTIFY:
            answers.append({"index": index, "status": "identified", **said})
            continue
        assert envelope.event is not None
        decision = decide(envelope.consent, integration.required_consent, envelope.limited_data_use)
        event_id = derive_event_id(envelope)
        event = build_event(envelope, event_id, hashed, session, origin, decision)
        built.append(event)
        outgoing.append(
            Outgoing(
                pixel=integration.pixel_code,
                event=envelope.event,
                event_id=event_id,
                data=encode(event),
                source=origin.source,
                suppressed=decision.reason if not decision.send else None,
            )
        )
        entry = {"index": index, "event": envelope.event, "event_id": event_id, **said}
        answers.append(entry)
        tracked.append(entry)
    if outgoing:
        try:
            statuses = await request.app[INGEST].submit(
                outgoing,
                max_events=settings.queue_max_events,
                receipt_ttl_s=settings.receipt_ttl_s,
            )
        except QueueFull as exc:
            raise Problem(503, str(exc) + "; retry later", None, retry=True) from None
        for entry, status, event in zip(tracked, statuses, built, strict=True):
            entry["status"] = status.value
            EVENTS_INGESTED.labels(status.value, origin.source).inc()
            if status is Status.QUEUED:
                label = event_label(event["event"])
                MATCH_KEYS_SEEN.labels(label, "total").inc()
                for key in present_keys(event):
                    MATCH_KEYS_SEEN.labels(label, key).inc()
        # written with the next round trip; a chart may miss a count, never an event
        request.app[COALESCER].count({"accepted": sum(1 for s in statuses if s is Status.QUEUED)})
    if warned:
        request.app[COALESCER].count({WARNING_PREFIX + label: n for label, n in warned.items()})
    answers.sort(key=lambda a: int(a["index"]))
    return answers


def _said(notes: list[FieldWarning], warned: Counter[str], source: str) -> dict[str, Any]:
    """The answer's ``warnings`` of one event (nothing when it has none), counted by field."""
    if not notes:
        return {}
    for note in notes:
        warned[note.label] += 1
        FIELD_WARNINGS.labels(note.label, source).inc()
    return {"warnings": [{"field": n.field, "warning": n.warning} for n in notes]}


def _answer(answers: list[dict[str, Any]], errors: list[dict[str, Any]]) -> web.Response:
    if not answers and errors:
        first = errors[0]
        body = {"error": first["error"], "field": first["field"], "errors": errors, "accepted": []}
        return web.Response(status=400, body=orjson.dumps(body), content_type="application/json")
    body = {"accepted": answers, "errors": errors}
    return web.Response(status=202, body=orjson.dumps(body), content_type="application/json")


def _unavailable(exc: Exception) -> Problem:
    log.warning("redis_unavailable", error=type(exc).__name__)
    return Problem(503, "the event queue is unavailable; retry later", None)


def _count_rejections(errors: list[dict[str, Any]], source: str) -> None:
    for error in errors:
        EVENTS_REJECTED.labels(field_label(error["field"]), source).inc()


async def collect_browser(request: web.Request) -> web.Response:
    """``POST /e``: events from the collector on the storefront."""
    app = request.app
    settings, signer = app[SETTINGS], app[SIGNER]
    now = time.time()
    now_ms = int(now * 1000)
    browser = read_browser(request, settings, signer, now_ms)
    origin_header = request.headers.get("Origin")
    if not allowed_origin(origin_header, settings.allowed_origins, browser.origin):
        return refuse(origin_header, settings.allowed_origins, browser.origin, "POST /e")
    headers = cors_headers(origin_header)
    try:
        integration = _integration(request)
        body = await read_json(request, keys.COLLECT_BODY_MAX_BYTES, BROWSER_TYPES)
        names = app[INTEGRATIONS].names(integration)
        parsed = parse_events(body, integration, names, settings.event_max_age_s, now,
                              settings.default_phone_region)  # fmt: skip
        _count_rejections(parsed.errors, "browser")
        session, click = await _browser_session(request, integration, browser, parsed, now_ms)
        origin = Origin(
            source="browser",
            host=browser.host,
            ip=browser.ip,
            user_agent=browser.user_agent,
            ttp=browser.ttp,
            click=browser.click,
        )
        answers = await _queue(
            request, integration, parsed, [session] * len(parsed.envelopes), origin
        )
    except Problem as problem:
        retry = problem.extra.pop("retry", None)
        if retry:
            headers["Retry-After"] = RETRY_AFTER_S
        return problem.response(headers)
    except REDIS_ERRORS as exc:
        headers["Retry-After"] = RETRY_AFTER_S
        return _unavailable(exc).response(headers)
    response = _answer(answers, parsed.errors)
    response.headers.update(headers)
    for value in set_cookie_headers(settings, signer, browser, click):
        response.headers.add("Set-Cookie", value)
    return response


async def _browser_session(
    request: web.Request,
    integration: Integration,
    browser: BrowserRequest,
    parsed: Parsed,
    now_ms: int,
) -> tuple[Session, Click | None]:
    """One stitch for the whole request: the session, and the click the browser's cookie keeps.

    The identifiers the events carry are the browser's claims: whatever is stored for them (a
    click, a ``_ttp``, a visitor) may be attached on the server to this browser's events, but
    never reaches its cookies or the answer. The cookie's click is the browser's own, from its
    own landing: one in this request's page URL (or same-host referrer), the one stored for this
    visitor, else the one its cookie already carries.
    """
    click = None
    links: list[tuple[str, str]] = []
    page_url = None
    for (_, envelope), hashed in zip(parsed.envelopes, parsed.hashed, strict=True):
        page_url = envelope.page_url or page_url
        click = click_from_page(envelope.page_url, envelope.page_referrer, now_ms) or click
        if decide(envelope.consent, integration.required_consent).keep_personal_data:
            for link in hashed.links():
                if link not in links:
                    links.append(link)
    if click is not None:
        CLICKS_CAPTURED.labels("collector").inc()
    request_ = StitchRequest(
        browser.visitor_id, links, browser.session_fields(now_ms, page_url), click
    )
    session = await request.app[VISITORS].stitch(request_, now_ms)
    return session, session.click or browser.click  # never session.borrowed_click


async def preflight_browser(request: web.Request) -> web.Response:
    """``OPTIONS /e``."""
    settings = request.app[SETTINGS]
    browser = read_browser(request, settings, request.app[SIGNER], int(time.time() * 1000))
    return preflight(request.headers.get("Origin"), settings.allowed_origins, browser.origin)


def _authorized(request: web.Request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = request.app[SETTINGS].write_key.encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


async def collect_server(request: web.Request) -> web.Response:
    """``POST /v1/track``: server events from the merchant's backend."""
    if not _authorized(request):
        return Problem(401, "a valid write key is required: Authorization: Bearer <key>",
                       "Authorization").response({"WWW-Authenticate": "Bearer"})  # fmt: skip
    app = request.app
    settings, signer = app[SETTINGS], app[SIGNER]
    now = time.time()
    now_ms = int(now * 1000)
    try:
        integration = _integration(request)
        body = await read_json(request, keys.TRACK_BODY_MAX_BYTES, SERVER_TYPES)
        parsed = parse_events(body, integration, app[INTEGRATIONS].names(integration),
                              settings.event_max_age_s, now,
                              settings.default_phone_region)  # fmt: skip
        _count_rejections(parsed.errors, "server")
        stitches = []
        for (_, envelope), hashed in zip(parsed.envelopes, parsed.hashed, strict=True):
            visitor = signer.read_visitor(envelope.anonymous_id) if envelope.anonymous_id else None
            keep = decide(envelope.consent, integration.required_consent).keep_personal_data
            links = hashed.links() if keep else []
            # the backend vouches for a visitor it names; one it does not name is only read
            stitches.append(StitchRequest(visitor, links, source=LinkSource.VERIFIED))
        sessions = await app[VISITORS].stitch_many(stitches, now_ms)
        origin = Origin(source="server", host=request.host)
        answers = await _queue(request, integration, parsed, sessions, origin)
    except Problem as problem:
        headers = {"Retry-After": RETRY_AFTER_S} if problem.extra.pop("retry", None) else None
        return problem.response(headers)
    except REDIS_ERRORS as exc:
        return _unavailable(exc).response({"Retry-After": RETRY_AFTER_S})
    return _answer(answers, parsed.errors)


def add_routes(app: web.Application) -> None:
    """Mount the ingest routes."""
    app.router.add_post("/e", collect_browser)
    app.router.add_route("OPTIONS", "/e", preflight_browser)
    app.router.add_post("/v1/track", collect_server)
