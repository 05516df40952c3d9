"""What the ingest routes share: the body read within limits, the events parsed, queued, answered.

A route reads its body (:func:`read_json`: size, content type, JSON), parses its events (a bad
one becomes an error entry and the others go on), finds the integration, and hands the valid
events to :func:`queue_events`, which builds each TikTok event, applies consent and queues them
in one round trip, answering a status per event. A refusal of the whole request is a
:class:`Problem` (a 4xx or 503 with ``{"error", "field"}``); Redis being unreachable, full or the
queue at ``TTGW_QUEUE_MAX_EVENTS`` is a 503 with ``Retry-After``: nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.appkeys import COALESCER, INGEST, INTEGRATIONS, SETTINGS, SIGNER, VISITORS
from gateway.config import Integration
from gateway.identity.consent import decide
from gateway.identity.visitors import LinkSource, Session, StitchRequest
from gateway.ingest.build import HashedUser, Origin, build_event, encode, hash_user
from gateway.ingest.enqueue import Outgoing, QueueFull, Status
from gateway.ingest.envelope import Envelope, EventType, derive_event_id, parse_event, split_batch
from gateway.ingest.fields import FieldError, FieldWarning
from gateway.logs import get_logger
from gateway.operate.metrics import (
    EVENTS_REJECTED,
    FIELD_WARNINGS,
    INGESTED_BY,
    MATCH_KEYS_BY,
    event_label,
    field_label,
)
from gateway.operate.stats import WARNING_PREFIX, present_keys
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
    media = _media_type(request)
    if media not in types and not (media == "application/octet-stream" and "" in types):
        raise Problem(415, f"Content-Type must be one of {', '.join(t for t in types if t)}",
                      "Content-Type")  # fmt: skip
    raw = await read_body(request, limit)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Problem(400, "body is not valid JSON", "body") from None


_MEDIA_TYPE_RE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+")


def _media_type(request: web.Request) -> str:
    """``request.content_type`` without its e-mail header parser (measured: 9 µs of every
    request) for the plain form ``type/subtype[; parameters]``; other forms go to aiohttp's."""
    raw = request.headers.get("Content-Type")
    if raw is not None:
        media = raw.partition(";")[0].strip().lower()
        if _MEDIA_TYPE_RE.fullmatch(media):
            return media
    return request.content_type


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body's bytes, within ``limit`` bytes and ``BODY_TIMEOUT_S``."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    content = request.content
    if content.is_eof():  # all of it arrived with the headers, as a small body mostly does
        body = content.read_nowait()
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):  # a trickled body must not hold a handler
            async for chunk in content.iter_chunked(16384):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise Problem(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s", "body") from None
    except ConnectionResetError:
        raise Problem(400, "the client went away before sending the whole body", "body") from None
    return b"".join(chunks)


def _too_large(limit: int) -> Problem:
    return Problem(413, f"body is larger than {limit} bytes", "body")


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


def integration_for(request: web.Request) -> Integration:
    integration = request.app[INTEGRATIONS].for_host(request.host)
    if integration is None:
        raise Problem(404, "no integration serves this host", "Host")
    return integration


async def queue_events(
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
            INGESTED_BY(status.value, origin.source).inc()
            if status is Status.QUEUED:
                label = event_label(event["event"])
                MATCH_KEYS_BY(label, "total").inc()
                for key in present_keys(event):
                    MATCH_KEYS_BY(label, key).inc()
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


def answer_events(
    answers: list[dict[str, Any]], errors: list[dict[str, Any]], **extra: str
) -> web.Response:
    if not answers and errors:
        first = errors[0]
        body = {"error": first["error"], "field": first["field"], "errors": errors, "accepted": []}
        return web.Response(status=400, body=orjson.dumps(body), content_type="application/json")
    body = {"accepted": answers, "errors": errors, **extra}
    return web.Response(status=202, body=orjson.dumps(body), content_type="application/json")


# what failed() answers: a client's problem, or Redis away
FAILURES: tuple[type[Exception], ...] = (Problem, *REDIS_ERRORS)


def failed(exc: Exception, headers: dict[str, str] | None = None) -> web.Response:
    """The answer to a :class:`Problem`, or to a Redis outage (503), met while taking events;
    ``Retry-After`` where trying again can help, beside ``headers``."""
    sent = dict(headers or {})
    if isinstance(exc, Problem):
        if exc.extra.pop("retry", None):
            sent["Retry-After"] = RETRY_AFTER_S
        return exc.response(sent or None)
    sent["Retry-After"] = RETRY_AFTER_S
    return unavailable(exc).response(sent)


def unavailable(exc: Exception) -> Problem:
    log.warning("redis_unavailable", error=type(exc).__name__)
    return Problem(503, "the event queue is unavailable; retry later", None)


def count_rejections(errors: list[dict[str, Any]], source: str) -> None:
    for error in errors:
        EVENTS_REJECTED.labels(field_label(error["field"]), source).inc()


async def server_sessions(
    request: web.Request, integration: Integration, parsed: Parsed, now_ms: int
) -> list[Session]:
    """The stitched session of each event a backend sent, in one round trip.

    A backend vouches for a visitor it names (a signed ``_ttgw`` value as ``anonymous_id``; any
    other value names no visitor); one it does not name is only read, through its identifiers.
    """
    signer = request.app[SIGNER]
    stitches = []
    for (_, envelope), hashed in zip(parsed.envelopes, parsed.hashed, strict=True):
        visitor = signer.read_visitor(envelope.anonymous_id) if envelope.anonymous_id else None
        keep = decide(envelope.consent, integration.required_consent).keep_personal_data
        links = hashed.links() if keep else []
        stitches.append(StitchRequest(visitor, links, source=LinkSource.VERIFIED))
    return await request.app[VISITORS].stitch_many(stitches, now_ms)
