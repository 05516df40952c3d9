"""``GET /landing``: zero-JavaScript click capture behind nginx's ``auth_request``.

nginx (path mode) sends a subrequest here for every storefront request whose query carries
``ttclid``, with the original URI in ``X-Original-URI`` and the shopper's own headers (Cookie,
User-Agent, Referer, X-Forwarded-For). The gateway stores the click against the visitor and answers
204 with the Set-Cookie headers nginx copies onto the storefront's response, so the click is kept
even when the page's JavaScript never runs.

This route must never break the shop: nginx turns any answer other than 2xx/401/403 into an error
page. So it always answers 204 — when Redis is down the click still travels in the signed
``_ttgw_clk`` cookie, and a malformed request just gets fresh cookies.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from aiohttp import web

from gateway.appkeys import SETTINGS, SIGNER, VISITORS
from gateway.identity.redaction import redact_url
from gateway.identity.visitors import Click, StitchRequest
from gateway.ingest.browser import read_browser, set_cookie_headers
from gateway.ingest.build import click_from_query
from gateway.logs import get_logger
from gateway.operate.metrics import CLICKS_CAPTURED

log = get_logger("gateway.landing")

ORIGINAL_URI_HEADER = "X-Original-URI"


def click_from_uri(uri: str, base: str, referrer: str | None, now_ms: int) -> Click | None:
    """The click in an original request URI (path and query), if it carries a ttclid.

    Any URI, Referer or Host a client sends gives a click or None — never an error (``/landing``
    must always answer 204, or nginx shows the shop an error page).
    """
    try:
        return _click_from_uri(uri, base, referrer, now_ms)
    except (ValueError, IndexError):  # malformed brackets, non-UTF-8 bytes (UnicodeError)
        return None


def _click_from_uri(uri: str, base: str, referrer: str | None, now_ms: int) -> Click | None:
    parts = urlsplit(uri)
    if "ttclid" not in parts.query:
        return None
    path = parts.path if parts.path.startswith("/") else "/" + parts.path
    landing = redact_url(f"{base}{path}" + (f"?{parts.query}" if parts.query else ""))
    return click_from_query(parts.query, landing, _safe_referrer(referrer), now_ms)


def _safe_referrer(referrer: str | None) -> str | None:
    if not referrer:
        return None
    try:
        return redact_url(referrer)[:2048]
    except (ValueError, IndexError):
        return None


async def landing(request: web.Request) -> web.Response:
    """Capture the click of a landing request; always 204 with the cookies to set."""
    app = request.app
    settings, signer = app[SETTINGS], app[SIGNER]
    now_ms = int(time.time() * 1000)
    browser = read_browser(request, settings, signer, now_ms)
    uri = request.headers.get(ORIGINAL_URI_HEADER, "")[:8192]
    click = click_from_uri(uri, browser.origin, request.headers.get("Referer"), now_ms)
    if click is not None:
        CLICKS_CAPTURED.labels("landing").inc()
        session_fields = browser.session_fields(now_ms, click.landing_url)
        try:
            session = await app[VISITORS].stitch(
                StitchRequest(browser.visitor_id, (), session_fields, click), now_ms
            )
            click = session.click or click  # the same click seen again keeps its first time
        except Exception as exc:  # never fail the shop's page: the cookie still carries the click
            log.warning("landing_store_failed", error=type(exc).__name__)
    response = web.Response(status=204)
    for value in set_cookie_headers(settings, signer, browser, click or browser.click).headers:
        response.headers.add("Set-Cookie", value)
    response.headers["Cache-Control"] = "no-store"
    return response


def add_routes(app: web.Application) -> None:
    """Mount ``/landing``."""
    app.router.add_get("/landing", landing)
