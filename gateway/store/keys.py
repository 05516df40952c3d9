"""Every Redis key and every tunable of the gateway, in one place, with units in the names.

Keys touched together by one operation (one Lua script or MULTI/EXEC) share one hash tag, so the
operation is legal on Redis Cluster:

* ``{q}`` — the delivery queue: the event stream, its retry set, dead letters, receipts (packed
  in time buckets; they double as the ingest idempotency markers and the "sent" markers), their
  time-ordered logs, the delivered requests' bodies, the sandbox's record and queue counters.
  Ingest (receipt check + XADD + receipt, or the ``send_as`` name of a duplicate) and settlement
  (XACK + XDEL + receipts + the request's body, or ZADD retry, or XADD dead) are single scripts
  over these keys.
* ``{id}`` — identity: visitors (click, ``_ttp``, IP, user agent), and the links from hashed
  email / phone / customer id to visitors. Stitching reads and writes these in one script.
* ``{rl:<pixel>}`` — one rate limiter per pixel (its own tag: it is hot and touched alone).
* ``{cfg}`` — integrations, their pause state and alerts.
* ``{stats}`` — per-minute and per-hour counters for the dashboard.

All keys start with :data:`PREFIX` so the gateway can share a Redis with other applications.
"""

from __future__ import annotations

PREFIX = "ttgw"

# --- the delivery queue: hash tag {q} -------------------------------------------------------
QUEUE_TAG = "{q}"
EVENTS_STREAM = f"{PREFIX}:{QUEUE_TAG}:events"
DELIVERY_GROUP = "delivery"
RETRY_ZSET = f"{PREFIX}:{QUEUE_TAG}:retry"
DEAD_STREAM = f"{PREFIX}:{QUEUE_TAG}:dead"
SANDBOX_STREAM = f"{PREFIX}:{QUEUE_TAG}:sandbox"
COUNTERS_HASH = f"{PREFIX}:{QUEUE_TAG}:counters"


def dedup_id(pixel_code: str, event: str, event_id: str) -> str:
    """The identity an event is delivered once by: pixel, event name, event_id.

    ``event`` is the canonical name (``tiktok.names.canonical_event``): TikTok's aliases, such as
    ``CompletePayment`` and ``Purchase``, are one event. Receipts and retries are found by it
    with the canonical name too; the name sent to TikTok may differ (the receipt's ``send_as``).
    """
    return f"{pixel_code}\x1f{event}\x1f{event_id}"


def split_dedup_id(dedup: str) -> tuple[str, str, str]:
    """``(pixel, event, event_id)`` of a :func:`dedup_id`."""
    pixel, event, event_id = dedup.split("\x1f", 2)
    return pixel, event, event_id


# Receipts (``gateway/store/receipt_records.py`` has their format). They are packed by the time
# they were received: one hash per bucket of RECEIPT_BUCKET_S, field = event_id, value = the
# compact records of that event_id (one per pixel and canonical event name), expiring as a whole
# RECEIPT_TTL_S after the bucket's end. The receipt doubles as the ingest idempotency marker and
# the "sent" marker: ingest looks in the buckets of the last 48 h, the worker in its entry's.
RECEIPT_BUCKET_S = 6 * 3600
RECEIPT_BUCKET_MS = RECEIPT_BUCKET_S * 1000
RECEIPTS_PREFIX = f"{PREFIX}:{QUEUE_TAG}:rc:"  # + bucket
RECEIPT_LOG_PREFIX = f"{PREFIX}:{QUEUE_TAG}:rlog:"  # + bucket
# ``pixel\x1fevent`` → a small number, and ``=<number>`` → the pair: receipts and log entries
# name the pair by its number (a few bytes instead of ~30 per event). Never expires: it holds one
# field per pixel and event name, no identifier of anyone.
RECEIPT_PAIRS_HASH = f"{PREFIX}:{QUEUE_TAG}:rpairs"
REQUEST_PREFIX = f"{PREFIX}:{QUEUE_TAG}:req:"  # + request id: one delivered request, see below


def receipt_bucket(ms: int) -> int:
    """The receipt bucket of a time (Unix ms)."""
    return ms // RECEIPT_BUCKET_MS


def receipts_key(bucket: int) -> str:
    """The hash of the receipts received in one bucket: field event_id, value its records."""
    return f"{RECEIPTS_PREFIX}{bucket}"


def receipt_log_key(bucket: int) -> str:
    """The receipts of one bucket in the order they were received: a stream whose entries hold
    ``<pair number>\x1f<event_id>`` (field ``d``); its ids give the time (Redis's clock)."""
    return f"{RECEIPT_LOG_PREFIX}{bucket}"


def bucket_expiry_ms(bucket: int, receipt_ttl_s: int) -> int:
    """When a bucket's receipts and log expire (Unix ms): ``receipt_ttl_s`` after its end."""
    return (bucket + 1) * RECEIPT_BUCKET_MS + receipt_ttl_s * 1000


def idempotency_buckets(received_ms: int) -> list[int]:
    """The buckets a live receipt can be in, newest first: received less than
    :data:`IDEMPOTENCY_TTL_S` ago, or delivered less than that ago (and so received at most
    :data:`DEAD_LETTER_MAX_S` before its delivery)."""
    first = receipt_bucket(received_ms - (IDEMPOTENCY_TTL_S + DEAD_LETTER_MAX_S) * 1000)
    return list(range(receipt_bucket(received_ms), first - 1, -1))


def retention_buckets(now_ms: int, receipt_ttl_s: int) -> list[int]:
    """Every bucket that can still hold receipts, newest first (one ahead for clock skew)."""
    oldest = receipt_bucket(now_ms - receipt_ttl_s * 1000) - 1
    return list(range(receipt_bucket(now_ms) + 1, oldest - 1, -1))


def request_key(request: str) -> str:
    """One request TikTok accepted: a hash with its events' JSON (``b``: zlib of the events
    joined by newlines, in the order sent) and TikTok's answer (``t`` time, ``h`` HTTP status,
    ``c`` code, ``m`` message, ``r`` request_id). Each delivered receipt names its request and
    line: the payloads of up to 1,000 events are stored once, compressed together."""
    return f"{REQUEST_PREFIX}{request}"


RETRY_DATA_HASH = f"{PREFIX}:{QUEUE_TAG}:retry-data"  # field: dedup id, value: the entry as JSON
PROBE_LOCK_PREFIX = f"{PREFIX}:{QUEUE_TAG}:probe:"  # + pixel: one probe of a paused pixel at once
# Retries moved back at the limiter's pace (``outbox_scripts.MOVE_DUE``): a sorted set per pixel
# of the stream ids moved back and maybe not settled yet (score: when moved, ms), and a hash,
# field pixel, of the time (ms) up to which the pixel's surplus due retries are spread.
RETRY_MOVED_PREFIX = f"{PREFIX}:{QUEUE_TAG}:retry-moved:"  # + pixel
RETRY_PACE_HASH = f"{PREFIX}:{QUEUE_TAG}:retry-pace"


def retry_moved_key(pixel_code: str) -> str:
    """The stream ids of ``pixel_code``'s retries moved back into the stream (see above)."""
    return RETRY_MOVED_PREFIX + pixel_code


# --- identity: hash tag {id} ----------------------------------------------------------------
IDENTITY_TAG = "{id}"


def visitor_key(visitor_id: str) -> str:
    """A hash with the visitor's click, ``_ttp``, landing page, IP and user agent."""
    return f"{PREFIX}:{IDENTITY_TAG}:visitor:{visitor_id}"


def link_key(kind: str, hashed_value: str) -> str:
    """The visitor ids linked to one hashed email, phone or customer id (a sorted set by time)."""
    return f"{PREFIX}:{IDENTITY_TAG}:link:{kind}:{hashed_value}"


# --- rate limiting: one tag per pixel -------------------------------------------------------
def ratelimit_key(pixel_code: str) -> str:
    """The GCRA state (theoretical arrival time) of one pixel's limiter."""
    return f"{PREFIX}:{{rl:{pixel_code}}}:gcra"


def throttle_key(pixel_code: str) -> str:
    """Present while TikTok throttles a pixel; holds the slow-down factor."""
    return f"{PREFIX}:{{rl:{pixel_code}}}:throttled"


# --- configuration: hash tag {cfg} -----------------------------------------------------------
CONFIG_TAG = "{cfg}"
INTEGRATIONS_HASH = f"{PREFIX}:{CONFIG_TAG}:integrations"  # field: pixel code, value: JSON
PAUSED_HASH = f"{PREFIX}:{CONFIG_TAG}:paused"  # field: pixel code, value: JSON reason
ALERTS_STREAM = f"{PREFIX}:{CONFIG_TAG}:alerts"

# --- statistics: hash tag {stats} -------------------------------------------------------------
STATS_TAG = "{stats}"


def minute_stats_key(minute: int) -> str:
    """Counters of one minute (Unix minutes): accepted, delivered, retried, dead, ..."""
    return f"{PREFIX}:{STATS_TAG}:m:{minute}"


def warnings_key(hour: int) -> str:
    """Fields dropped with a warning at ingest in one hour (Unix hours), field = the field's
    label (``user.phone``, ``properties.*``: a bounded set)."""
    return f"{PREFIX}:{STATS_TAG}:warn:{hour}"


def coverage_key(hour: int) -> str:
    """Match-key coverage counters of one hour (Unix hours), field ``<event>|<key>``."""
    return f"{PREFIX}:{STATS_TAG}:cov:{hour}"


def health_key(hour: int) -> str:
    """Attribution-health counters of one hour (Unix hours): fields ``<event>|<source>|<share>``
    at delivery and ``<event>|mirror|pixel`` / ``|twin`` at ingest (``operate/health.py``)."""
    return f"{PREFIX}:{STATS_TAG}:health:{hour}"


# --- tunables ---------------------------------------------------------------------------------
# Time windows
IDEMPOTENCY_TTL_S = 48 * 3600  # TikTok's Events API dedup window
CLICK_TTL_S = 28 * 86400  # the longest click-through attribution window TikTok offers
VISITOR_TTL_S = 30 * 86400  # a visitor's session data (IP, UA, click) after its last activity
COOKIE_MAX_AGE_S = 399 * 86400  # browsers cap cookie lifetime at 400 days
RECEIPT_TTL_S = 7 * 86400
MINUTE_STATS_TTL_S = 2 * 86400
COVERAGE_TTL_S = 8 * 86400
DEAD_LETTER_HORIZON_S = 24 * 3600  # give up well before TikTok's 48 h dedup window closes
DEAD_LETTER_MAX_S = 47 * 3600  # the most TTGW_DEAD_LETTER_AFTER_S may be
EVENT_MAX_AGE_S = 7 * 86400  # older events are not worth sending (see the reference, §3)

# Request bodies
COLLECT_BODY_MAX_BYTES = 64 * 1024  # POST /e
TRACK_BODY_MAX_BYTES = 1024 * 1024  # POST /v1/track
BATCH_MAX_EVENTS = 1000  # per ingest request and per TikTok request

# Sandbox (no pixel configured): what would have been sent, newest kept
SANDBOX_KEEP_EVENTS = 10_000

# Delivery
DELIVERY_REQUEST_MAX_BYTES = 900 * 1024  # keep each Events API request under ~1 MB
DELIVERY_READ_COUNT = 1000
DELIVERY_BLOCK_MS = 1000
DELIVERY_CONCURRENCY = 8  # requests in flight per worker
HTTP_CONNECT_TIMEOUT_S = 5.0
HTTP_TOTAL_TIMEOUT_S = 15.0
HTTP_CONNECTIONS_PER_HOST = 16
RETRY_BASE_S = 1.0
RETRY_CAP_S = 300.0
RECLAIM_IDLE_S = 60.0  # above the longest possible send (HTTP_TOTAL_TIMEOUT_S x 2 + margin)
RECLAIM_INTERVAL_S = 15.0
RETRY_POLL_INTERVAL_S = 0.5
RETRY_SCAN_COUNT = 1000  # due retries one MOVE_DUE call looks at (moved, or spread over time)
RETRY_MOVED_STALE_S = 600.0  # a moved retry not settled for this long no longer counts
PAUSED_PROBE_INTERVAL_S = 60.0
SHUTDOWN_GRACE_S = 10.0

# Rate limiting (TikTok: 1,000 QPS per app on /event/track/)
RATE_LIMIT_REQUESTS_PER_S = 50.0
RATE_LIMIT_BURST = 20

# Redis connections
REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 2.0
EMBEDDED_REDIS_START_TIMEOUT_S = 15.0
EMBEDDED_REDIS_STOP_TIMEOUT_S = 10.0
