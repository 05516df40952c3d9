"""Shopify's sandboxed checkout: ``POST /e/shopify-pixel`` and ``GET /c-shopify.js``.

Shopify runs a Custom Pixel (``tt-gateway shopify-pixel``) in a sandboxed iframe: its requests
come from an opaque origin (``Origin: null``), carry no cookies, and it reads no HttpOnly cookie.
``POST /e`` refuses ``Origin: null`` (any sandboxed frame on any site sends it), so the pixel has
its own endpoint, which makes the request worth no more than one from a backend with no Origin
at all, which ``/e`` already takes:

- it reads no cookie and sets none: a foreign page that posts here from the shopper's browser
  acts with none of the shopper's state;
- the visitor is the signed ``_ttgw`` value the event names as ``anonymous_id`` (the collector's
  ``c-shopify.js`` keeps it in the storefront's ``localStorage``, where the pixel reads it), and
  only when its signature holds; anything else names nobody and the request only reads identity;
- ``_ttp`` is the event's ``user.ttp`` (the pixel reads the cookie through ``browser.cookie``);
  IP and user agent are the request's own;
- the integration comes from the Host, never from the body: the pixel cannot choose the pixel
  code or the token (no open relay).

``GET /c-shopify.js`` is the storefront's cart writer: on a page with ``window.Shopify`` it asks
``POST /e`` for the browser's own signed visitor (the answer's ``visitor``), writes it into the
cart's attributes as ``_ttgw_visitor`` (so the order's ``note_attributes`` name the visitor for the
order webhook) and keeps it in ``localStorage`` for the pixel. It is a file of its own because
``c.js`` is held to a gzip budget that has no room for it.
"""

from __future__ import annotations

import hashlib
import time
from importlib.resources import files

from aiohttp import web

from gateway.appkeys import INTEGRATIONS, SETTINGS, SIGNER, VISITORS
from gateway.identity.consent import decide
from gateway.identity.cookies import read_ttp
from gateway.identity.visitors import StitchRequest
from gateway.ingest.browser import read_browser
from gateway.ingest.build import Origin, click_from_page
from gateway.ingest.cors import allowed_origin, refuse
from gateway.ingest.intake import (
    BROWSER_TYPES,
    FAILURES,
    answer_events,
    count_rejections,
    failed,
    integration_for,
    parse_events,
    queue_events,
    read_json,
)
from gateway.ingest.script import CACHE_CONTROL
from gateway.operate.metrics import CLICKS_CAPTURED
from gateway.store import keys

PIXEL_PATH = "/e/shopify-pixel"
CART_SCRIPT_PATH = "/c-shopify.js"
CART_ATTRIBUTE = "_ttgw_visitor"  # the order webhook reads the visitor from this note attribute
# the pixel reads no answer it needs; "*" (never with credentials) lets it see refusals
_PIXEL_HEADERS = {"Access-Control-Allow-Origin": "*"}


async def collect_pixel(request: web.Request) -> web.Response:
    """``POST /e/shopify-pixel``: the Custom Pixel's events, from Shopify's sandbox."""
    app = request.app
    settings, signer = app[SETTINGS], app[SIGNER]
    now = time.time()
    now_ms = int(now * 1000)
    # the request's IP, user agent and own origin; its cookies (none from the sandbox) are unused
    browser = read_browser(request, settings, signer, now_ms)
    origin_header = request.headers.get("Origin")
    if origin_header != "null" and not allowed_origin(
        origin_header, settings.allowed_origins, browser.origin
    ):
        return refuse(origin_header, settings.allowed_origins, browser.origin, f"POST {PIXEL_PATH}")
    headers = dict(_PIXEL_HEADERS)
    try:
        integration = integration_for(request)
        body = await read_json(request, keys.COLLECT_BODY_MAX_BYTES, BROWSER_TYPES)
        parsed = parse_events(body, integration, app[INTEGRATIONS].names(integration),
                              settings.event_max_age_s, now,
                              settings.default_phone_region)  # fmt: skip
        count_rejections(parsed.errors, "browser")
        visitor = ttp = page_url = None
        click = None
        links: list[tuple[str, str]] = []
        for (_, envelope), hashed in zip(parsed.envelopes, parsed.hashed, strict=True):
            visitor = visitor or signer.read_visitor(envelope.anonymous_id)
            ttp = ttp or read_ttp(envelope.user.ttp)
            page_url = envelope.page_url or page_url
            click = click_from_page(envelope.page_url, envelope.page_referrer, now_ms) or click
            if decide(envelope.consent, integration.required_consent).keep_personal_data:
                links.extend(link for link in hashed.links() if link not in links)
        if click is not None:
            CLICKS_CAPTURED.labels("shopify_pixel").inc()
        fields = browser.session_fields(now_ms, page_url)
        if ttp:
            fields["ttp"] = ttp
        else:
            del fields["ttp"]  # the request's minted one: no cookie keeps it
        # a visitor the body does not vouch for (no valid signature) is only read, by identifiers
        named = visitor is not None
        stitch = StitchRequest(visitor, links, fields if named else {}, click if named else None)
        session = await app[VISITORS].stitch(stitch, now_ms)
        origin = Origin(source="browser", host=browser.host, ip=browser.ip,
                        user_agent=browser.user_agent, ttp=ttp or session.ttp,
                        click=click)  # fmt: skip
        answers = await queue_events(
            request, integration, parsed, [session] * len(parsed.envelopes), origin
        )
    except FAILURES as exc:
        return failed(exc, headers)
    response = answer_events(answers, parsed.errors)
    response.headers.update(headers)
    return response


_CART_SCRIPT = (files("gateway") / "static" / "c-shopify.js").read_bytes()
_CART_ETAG = '"' + hashlib.sha256(_CART_SCRIPT).hexdigest()[:20] + '"'


async def cart_script(request: web.Request) -> web.Response:
    """``GET /c-shopify.js``: the cart writer, 304 when the browser's copy is current."""
    headers = {"ETag": _CART_ETAG, "Cache-Control": CACHE_CONTROL,
               "X-Content-Type-Options": "nosniff"}  # fmt: skip
    if _CART_ETAG in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=_CART_SCRIPT, headers=headers,
                        content_type="application/javascript", charset="utf-8")  # fmt: skip


def add_routes(app: web.Application) -> None:
    """Mount the pixel's endpoint and the cart writer."""
    app.router.add_post(PIXEL_PATH, collect_pixel)
    app.router.add_get(CART_SCRIPT_PATH, cart_script)
