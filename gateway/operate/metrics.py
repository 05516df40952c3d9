"""Prometheus metrics of the gateway (served at ``/metrics``).

Counters carry no identifiers and no user data: only event names, reasons and key names. Every
label value comes from a fixed set, whatever a request says: a label per custom event name or per
list index would let any client add series (memory and scrape size) without bound.
"""

from __future__ import annotations

import contextlib
import re
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from gateway.appkeys import REDIS
from gateway.store import keys
from gateway.store.connections import REDIS_ERRORS, RedisClient
from gateway.tiktok.names import ACCEPTED_EVENTS

CUSTOM_EVENT_LABEL = "custom"
_INDEX_RE = re.compile(r"\[[0-9]+\]")

EVENTS_INGESTED = Counter(
    "ttgw_events_ingested_total",
    "Events accepted at ingest, by outcome (queued, duplicate, suppressed; ignored: a Segment "
    "call with no TikTok event) and source (browser, server, segment)",
    ["status", "source"],
)
EVENTS_REJECTED = Counter(
    "ttgw_events_rejected_total", "Events refused at ingest, by reason", ["reason", "source"]
)
FIELD_WARNINGS = Counter(
    "ttgw_field_warnings_total",
    "Fields dropped with a warning at ingest (the event kept), by field without list indexes "
    "(unknown properties as properties.*) and source",
    ["field", "source"],
)
IDENTIFIERS_DROPPED = Counter(
    "ttgw_identifiers_dropped_total",
    "Identifiers that could not be normalized (e.g. invalid phone numbers) and were not sent",
    ["kind"],
)
CLICKS_CAPTURED = Counter(
    "ttgw_clicks_captured_total", "TikTok clicks (ttclid) captured, by where", ["via"]
)


class Children:
    """A counter's children, each looked up once per label combination and kept (``labels()``
    takes a lock and builds a key on every call). Only for bounded label sets: every value here
    comes from a fixed set, as the module says."""

    __slots__ = ("_bound", "_metric")

    def __init__(self, metric: Counter) -> None:
        self._metric = metric
        self._bound: dict[tuple[str, ...], Counter] = {}

    def __call__(self, *labels: str) -> Counter:
        child = self._bound.get(labels)
        if child is None:
            child = self._bound[labels] = self._metric.labels(*labels)
        return child


def event_label(name: str) -> str:
    """The ``event`` label of ``name``: a TikTok standard name as it is, any other ``custom``."""
    return name if name in ACCEPTED_EVENTS else CUSTOM_EVENT_LABEL


def field_label(field: str) -> str:
    """The ``reason`` label of a refused field: its last part without list indexes
    (``events[3].properties.contents[7].price`` → ``price``, ``user.email[2]`` → ``email``)."""
    return _INDEX_RE.sub("", field.rsplit(".", 1)[-1])


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics`` in Prometheus' text format (queue gauges sampled at scrape time)."""
    with contextlib.suppress(*REDIS_ERRORS):  # in an outage, the counters still count
        await sample_queue(request.app[REDIS])
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
    "Queued events by event name (TikTok's standard names; every custom name is 'custom') and "
    "match key present (email, phone, external_id, ttclid, ttp, ip, user_agent; 'total' counts "
    "every queued event)",
    ["event", "key"],
)
# pre-bound children of the ingest path's counters (every label from a fixed set)
INGESTED_BY = Children(EVENTS_INGESTED)
MATCH_KEYS_BY = Children(MATCH_KEYS_SEEN)
RATE_LIMIT_WAIT_SECONDS = Histogram(
    "ttgw_rate_limit_wait_seconds",
    "Time a request waited for the shared rate limiter",
    buckets=(0, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)

QUEUE_DEPTH = Gauge("ttgw_queue_depth", "Events waiting in the delivery stream")
QUEUE_OLDEST_AGE = Gauge(
    "ttgw_queue_oldest_age_seconds", "Age of the oldest event in the delivery stream (0 if none)"
)
QUEUE_RETRYING = Gauge("ttgw_queue_retrying", "Events scheduled for a retry")
QUEUE_DEAD = Gauge("ttgw_queue_dead_letters", "Events in the dead-letter stream")
INTEGRATIONS_PAUSED = Gauge(
    "ttgw_integrations_paused", "Integrations paused for token or permission errors"
)


async def sample_queue(redis: RedisClient) -> None:
    """Refresh the queue gauges from Redis (the web process does it every few seconds)."""
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(keys.EVENTS_STREAM)
    pipe.zcard(keys.RETRY_ZSET)
    pipe.xlen(keys.DEAD_STREAM)
    pipe.hlen(keys.PAUSED_HASH)
    pipe.xrange(keys.EVENTS_STREAM, count=1)
    depth, retrying, dead, paused, first = await pipe.execute()
    QUEUE_DEPTH.set(depth)
    QUEUE_RETRYING.set(retrying)
    QUEUE_DEAD.set(dead)
    INTEGRATIONS_PAUSED.set(paused)
    oldest_ms = int(first[0][0].split(b"-")[0]) if first else None
    QUEUE_OLDEST_AGE.set(max(0.0, time.time() - oldest_ms / 1000) if oldest_ms else 0.0)
