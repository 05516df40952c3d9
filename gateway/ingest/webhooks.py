"""Signed order webhooks: ``POST /v1/webhooks/shopify`` and ``POST /v1/webhooks/woocommerce``.

Both platforms sign the raw body: base64 of HMAC-SHA256 with the webhook's secret, in
``X-Shopify-Hmac-Sha256`` or ``X-WC-Webhook-Signature``. A missing or wrong signature is 401 and
nothing is queued; the secrets are compared in constant time and never logged or answered.

A signed order becomes one purchase (``gateway.ingest.shopify``, ``gateway.ingest.woocommerce``)
and goes through what ``/v1/track`` does: the envelope's checks, the visitor it names (a signed
``_ttgw`` value), stitching by e-mail, phone and customer id, consent, and the idempotent queue —
so a webhook the platform sends again, or ``orders/paid`` after ``orders/create``, is answered
``duplicate`` and reaches TikTok once. Everything signed is answered 200, even what is not sent
(another topic, a status that is no purchase, an order too old to attribute, WooCommerce's
creation ping): both platforms retry any other status and end by disabling the webhook. Only an
unreadable body (400) and an unavailable queue (503, retried by the platform) are not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from gateway.appkeys import INTEGRATIONS, SETTINGS
from gateway.config import Integration, ShopWebhooks
from gateway.ingest import shopify, woocommerce
from gateway.ingest.build import Origin, hash_user
from gateway.ingest.envelope import parse_event
from gateway.ingest.fields import FieldError
from gateway.ingest.intake import (
    FAILURES,
    Parsed,
    Problem,
    count_rejections,
    failed,
    integration_for,
    queue_events,
    read_body,
    server_sessions,
)
from gateway.logs import get_logger
from gateway.operate.metrics import EVENTS_INGESTED
from gateway.store import keys

log = get_logger("gateway.webhooks")

SOURCE = "webhook"
TEST_SOURCE = "webhook-test"  # a Shopify order with "test": true, marked in its receipt
_PING = re.compile(rb"^webhook_id=\d+$")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def signed(body: bytes, signature: str | None, secret: str | None) -> bool:
    """Whether ``signature`` is base64(HMAC-SHA256(secret, body)), compared in constant time."""
    if not signature or not secret:
        return False
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(expected, signature.strip().encode())


def _answer(status: str, **fields: Any) -> web.Response:
    return web.Response(body=orjson.dumps({"status": status, **fields}),
                        content_type="application/json")  # fmt: skip


def _ignored(platform: str, reason: str, **fields: Any) -> web.Response:
    EVENTS_INGESTED.labels("ignored", SOURCE).inc()
    said = {k: _QUOTED.sub("…", v) if isinstance(v, str) else v for k, v in fields.items()}
    log.info("webhook_ignored", platform=platform, reason=reason, **said)  # no value it quotes
    return _answer("ignored", reason=reason, **fields)


def _unsigned(platform: str, header: str, secret: str | None) -> web.Response:
    log.warning("webhook_unsigned", platform=platform, configured=secret is not None)
    error = (
        f"{header} is missing or wrong"
        if secret
        else f"no {platform} webhook secret is configured (see the README)"
    )
    return Problem(401, error, header).response()


def _hooks_of(request: web.Request, pixel: str) -> ShopWebhooks | None:
    return next((h for h in request.app[SETTINGS].webhooks if h.pixel_code == pixel), None)


def _bound(request: web.Request, matches: Any) -> tuple[Integration, ShopWebhooks | None]:
    """The integration whose webhooks ``matches``, else the one serving the Host."""
    registry = request.app[INTEGRATIONS]
    for hooks in request.app[SETTINGS].webhooks:
        integration = registry.by_pixel(hooks.pixel_code)
        if integration is not None and matches(hooks):
            return integration, hooks
    integration = integration_for(request)
    return integration, _hooks_of(request, integration.pixel_code)


async def take_order(
    request: web.Request,
    integration: Integration,
    raw: dict[str, Any],
    source: str,
    platform: str,
) -> web.Response:
    """Parse, stitch and queue one order's envelope as ``/v1/track`` does; the platform's 200."""
    settings = request.app[SETTINGS]
    now = time.time()
    names = request.app[INTEGRATIONS].names(integration)
    try:
        envelope = parse_event(raw, names, now=now, max_age_s=settings.event_max_age_s)
    except FieldError as exc:
        count_rejections([{"field": exc.field}], SOURCE)
        return _ignored(platform, "unusable", field=exc.field, error=exc.error,
                        event_id=raw.get("event_id"))  # fmt: skip
    parsed = Parsed([(0, envelope)], [])
    region = integration.default_phone_region or settings.default_phone_region
    parsed.hashed = [hash_user(envelope, region)]
    try:
        sessions = await server_sessions(request, integration, parsed, int(now * 1000))
        answers = await queue_events(
            request, integration, parsed, sessions, Origin(source=source, host=request.host)
        )
    except FAILURES as exc:
        return failed(exc)
    entry = answers[0]
    log.info("webhook_order", platform=platform, event_id=entry["event_id"],
             status=entry["status"], pixel=integration.pixel_code)  # fmt: skip
    return _answer(entry["status"], event_id=entry["event_id"],
                   **({"warnings": entry["warnings"]} if "warnings" in entry else {}))  # fmt: skip


def _order(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Problem(400, "body is not valid JSON", "body") from None


async def shopify_webhook(request: web.Request) -> web.Response:
    """``POST /v1/webhooks/shopify``: ``orders/create`` (and ``orders/paid`` where configured)."""
    settings = request.app[SETTINGS]
    domain = request.headers.get("X-Shopify-Shop-Domain", "").strip().lower() or None
    try:
        integration, hooks = _bound(
            request, lambda h: domain is not None and h.shopify_shop_domain == domain
        )
        body = await read_body(request, keys.TRACK_BODY_MAX_BYTES)
    except Problem as problem:
        return problem.response()
    secret = (hooks.shopify_webhook_secret if hooks else None) or settings.shopify_webhook_secret
    header = "X-Shopify-Hmac-Sha256"
    if not signed(body, request.headers.get(header), secret):
        return _unsigned("Shopify", header, secret)
    topic = request.headers.get("X-Shopify-Topic", "").strip().lower()
    topics = (hooks.shopify_topics if hooks else ()) or settings.shopify_topics
    if topic not in topics:
        return _ignored("shopify", "topic", topic=topic[:64])
    try:
        order = _order(body)
        raw = shopify.to_envelope(order, domain)
    except Problem as problem:
        return problem.response()
    except FieldError as exc:
        return _ignored("shopify", "unusable", field=exc.field, error=exc.error)
    source = TEST_SOURCE if order.get("test") is True else SOURCE
    return await take_order(request, integration, raw, source, "shopify")


async def woocommerce_webhook(request: web.Request) -> web.Response:
    """``POST /v1/webhooks/woocommerce``: ``order.created``/``order.updated`` of a paid order."""
    settings = request.app[SETTINGS]
    site = urlsplit(request.headers.get("X-WC-Webhook-Source", "")).hostname
    try:
        integration, hooks = _bound(
            request, lambda h: site is not None and h.woocommerce_source == site
        )
        body = await read_body(request, keys.TRACK_BODY_MAX_BYTES)
    except Problem as problem:
        return problem.response()
    header = "X-WC-Webhook-Signature"
    signature = request.headers.get(header)
    if signature is None and _PING.match(body.strip()):
        # the creation ping: sent unsigned (WC_Webhook::deliver_ping); it must get a 200
        return _ignored("woocommerce", "ping")
    secret = (
        hooks.woocommerce_webhook_secret if hooks else None
    ) or settings.woocommerce_webhook_secret
    if not signed(body, signature, secret):
        return _unsigned("WooCommerce", header, secret)
    if _PING.match(body.strip()):
        return _ignored("woocommerce", "ping")
    topic = request.headers.get("X-WC-Webhook-Topic", "").strip().lower()
    if topic not in woocommerce.TOPICS:
        return _ignored("woocommerce", "topic", topic=topic[:64])
    try:
        order = _order(body)
        if not woocommerce.is_purchase(order):
            status = order.get("status") if isinstance(order, dict) else None
            return _ignored("woocommerce", "status", order_status=str(status)[:32])
        raw = woocommerce.to_envelope(order)
    except Problem as problem:
        return problem.response()
    except FieldError as exc:
        return _ignored("woocommerce", "unusable", field=exc.field, error=exc.error)
    return await take_order(request, integration, raw, SOURCE, "woocommerce")


def add_routes(app: web.Application) -> None:
    """Mount the order webhooks."""
    app.router.add_post("/v1/webhooks/shopify", shopify_webhook)
    app.router.add_post("/v1/webhooks/woocommerce", woocommerce_webhook)
