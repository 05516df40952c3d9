"""Ingest routes: ``POST /e`` (the browser collector) and ``POST /v1/track`` (merchant backends).

Both take the design's envelope — one event, or ``{"events": [...]}`` with up to 1000 — and answer
202 with a status per accepted event (``queued``, ``duplicate``, ``suppressed`` or ``identified``)
and an error per rejected index; good events are kept when others are bad. A body that is not JSON,
too large (64 KiB for ``/e``, 1 MiB for ``/v1/track``) or of a content type we do not take is a
4xx with ``{"error", "field"}``. 202 is sent only once every event is in the Redis stream; when
Redis is unreachable, full (``noeviction`` out of memory) or the queue holds
``TTGW_QUEUE_MAX_EVENTS``, the answer is 503 with ``Retry-After`` and nothing is dropped silently.

``/v1/track`` also takes one message of Segment's HTTP Tracking API, told apart by its shape
(:func:`~gateway.ingest.segment.is_message`), and answers it as Segment does
(``gateway.ingest.segment_api``).
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.appkeys import INTEGRATIONS, SETTINGS, SIGNER, VISITORS
from gateway.config import Integration
from gateway.identity.consent import decide
from gateway.identity.visitors import Click, Session, StitchRequest
from gateway.ingest import segment_api, shopify_pixel
from gateway.ingest.browser import BrowserRequest, read_browser, set_cookie_headers
from gateway.ingest.build import Origin, click_from_page
from gateway.ingest.cors import allowed_origin, cors_headers, preflight, refuse
from gateway.ingest.intake import (
    BROWSER_TYPES,
    FAILURES,
    SERVER_TYPES,
    Parsed,
    Problem,
    answer_events,
    count_rejections,
    failed,
    integration_for,
    parse_events,
    queue_events,
    read_json,
    server_sessions,
)
from gateway.ingest.segment import is_message
from gateway.ingest.write_key import authorized, refusal
from gateway.operate.metrics import CLICKS_CAPTURED
from gateway.store import keys


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
        integration = integration_for(request)
        body = await read_json(request, keys.COLLECT_BODY_MAX_BYTES, BROWSER_TYPES)
        names = app[INTEGRATIONS].names(integration)
        parsed = parse_events(body, integration, names, settings.event_max_age_s, now,
                              settings.default_phone_region)  # fmt: skip
        count_rejections(parsed.errors, "browser")
        session, click = await _browser_session(request, integration, browser, parsed, now_ms)
        origin = Origin(
            source="browser",
            host=browser.host,
            ip=browser.ip,
            user_agent=browser.user_agent,
            ttp=browser.ttp,
            click=browser.click,
        )
        answers = await queue_events(
            request, integration, parsed, [session] * len(parsed.envelopes), origin
        )
    except FAILURES as exc:
        return failed(exc, headers)
    # the browser's own signed visitor, never a stitched one: c-shopify.js writes it into the cart
    cookies = set_cookie_headers(settings, signer, browser, click)
    response = answer_events(answers, parsed.errors, visitor=cookies.visitor)
    response.headers.update(headers)
    for value in cookies.headers:
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


async def collect_server(request: web.Request) -> web.Response:
    """``POST /v1/track``: server events from the merchant's backend, or one Segment message."""
    if not authorized(request):
        return refusal(basic_first=False)
    app = request.app
    settings = app[SETTINGS]
    try:
        integration = integration_for(request)
        body = await read_json(request, keys.TRACK_BODY_MAX_BYTES, SERVER_TYPES)
    except Problem as problem:
        return problem.response()
    if is_message(body):
        return await segment_api.answer(request, integration, body, "track")
    now = time.time()
    try:
        parsed = parse_events(body, integration, app[INTEGRATIONS].names(integration),
                              settings.event_max_age_s, now,
                              settings.default_phone_region)  # fmt: skip
        count_rejections(parsed.errors, "server")
        sessions = await server_sessions(request, integration, parsed, int(now * 1000))
        origin = Origin(source="server", host=request.host)
        answers = await queue_events(request, integration, parsed, sessions, origin)
    except FAILURES as exc:
        return failed(exc)
    return answer_events(answers, parsed.errors)


def add_routes(app: web.Application) -> None:
    """Mount the ingest routes."""
    app.router.add_post("/e", collect_browser)
    app.router.add_route("OPTIONS", "/e", preflight_browser)
    app.router.add_post("/v1/track", collect_server)
    shopify_pixel.add_routes(app)
