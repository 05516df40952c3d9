"""Prometheus metrics of the gateway (served at ``/metrics``).

Counters carry no identifiers and no user data: only event names, reasons and key names.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

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
