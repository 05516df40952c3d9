"""Prometheus metrics of the gateway (served at ``/metrics``).

Counters carry no identifiers and no user data: only event names, reasons and key names.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

EVENTS_INGESTED = Counter(
    "ttgw_events_ingested_total",
    "Events answered 202 at ingest, by outcome (queued, duplicate, suppressed) and source",
    ["status", "source"],
)
EVENTS_REJECTED = Counter(
    "ttgw_events_rejected_total", "Events refused at ingest, by reason", ["reason", "source"]
)
IDENTIFIERS_DROPPED = Counter(
    "ttgw_identifiers_dropped_total",
    "Identifiers that could not be normalized (e.g. invalid phone numbers) and were not sent",
    ["kind"],
)
CLICKS_CAPTURED = Counter(
    "ttgw_clicks_captured_total", "TikTok clicks (ttclid) captured, by where", ["via"]
)


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics`` in Prometheus' text format."""
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


DELIVERY_OUTCOMES = Counter(
    "ttgw_delivery_events_total",
    "Events settled by the delivery worker, by outcome (delivered, retry, throttled, invalid, "
    "auth, rejected, dead, duplicate)",
    ["outcome"],
)
DELIVERY_SECONDS = Histogram(
    "ttgw_delivery_request_seconds",
    "Time of one Events API request, from send to answer",
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
)
REQUEST_EVENTS = Histogram(
    "ttgw_delivery_request_events",
    "Events per Events API request",
    buckets=(1, 2, 5, 10, 50, 100, 250, 500, 1000),
)

INTEGRATION_PAUSES = Counter(
    "ttgw_integration_pauses_total",
    "Integrations paused because TikTok refused the token or permission, by pixel",
    ["pixel"],
)

MATCH_KEYS_SEEN = Counter(
    "ttgw_match_keys_total",
    "Queued events by event name and match key present (email, phone, external_id, ttclid, ttp, "
    "ip, user_agent; 'total' counts every queued event)",
    ["event", "key"],
)
RATE_LIMIT_WAIT_SECONDS = Histogram(
    "ttgw_rate_limit_wait_seconds",
    "Time a request waited for the shared rate limiter",
    buckets=(0, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)
