"""The event envelope of ``POST /e`` and ``POST /v1/track``: parsing and validation.

Everything here is pure: a JSON value goes in, a typed :class:`Envelope` (or a
:class:`~gateway.ingest.fields.FieldError` naming the bad field) comes out. Raw e-mail and phone
numbers are still in the envelope: the ingest handler hashes them (``gateway.identity``) before
anything is written anywhere. The parts of an event have their own modules: the event name goes
through the name table (``name_table``), the time through ``timestamps``, the person through
``user``, the properties through ``properties``; the page, consent and event id are read here.

event_id: kept exactly as given (a JSON number becomes its decimal string). When missing or blank,
it is ``ord_<order_id>`` for any event that carries ``properties.order_id`` (the same rule the
collector uses, so a purchase sent by the browser and by the backend deduplicate), else the
Segment ``messageId``, else a random UUID.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from yarl import URL

from gateway.identity.cookies import ttclid_problem
from gateway.identity.redaction import redact_url
from gateway.ingest.fields import (
    FieldError,
    FieldWarning,
    parse_identifier,
    parse_object,
    parse_optional_text,
    parse_text,
    soft,
)
from gateway.ingest.name_table import NameTable
from gateway.ingest.properties import parse_properties
from gateway.ingest.timestamps import parse_timestamp
from gateway.ingest.user import UserInput, parse_user
from gateway.tiktok.names import PAGEVIEW

MAX_EVENTS = 1000
MAX_URL_CHARS = 4096

CONSENT_VALUES = {"granted": True, "denied": False}
CONSENT_KEYS = ("ad_user_data", "ad_personalization", "ad_storage", "analytics_storage")

# The client never chooses where events go: these fields are refused, not ignored.
FORBIDDEN_FIELDS = ("pixel_code", "pixel", "access_token", "event_source_id", "test_event_code",
                    "api_url", "destination")  # fmt: skip


class EventType(StrEnum):
    """The envelope's ``type``."""

    TRACK = "track"
    PAGE = "page"
    IDENTIFY = "identify"


_EVENT_TYPES = {kind.value: kind for kind in EventType}
_FORBIDDEN = frozenset(FORBIDDEN_FIELDS)


@dataclass(slots=True)
class Envelope:
    """One validated event as the client sent it, with the TikTok event name resolved."""

    type: EventType
    event: str | None  # None for identify
    event_id: str | None  # as given; None when the client gave none
    timestamp_s: int
    anonymous_id: str | None
    user_id: str | None
    user: UserInput
    properties: dict[str, Any]
    page_url: str | None
    page_referrer: str | None
    consent: dict[str, bool]
    message_id: str | None
    limited_data_use: bool | None
    warnings: list[FieldWarning] = field(default_factory=list)


def _url(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    url = parse_text(value, name, limit=MAX_URL_CHARS)
    try:
        parsed = URL(url)
        host = parsed.host
    except (ValueError, IndexError):  # yarl raises IndexError for some malformed authorities
        host = None
    if host is None or parsed.scheme not in ("http", "https"):
        raise FieldError(name, "must be an absolute http(s) URL")
    return redact_url(url)


def _referrer(value: Any, name: str) -> str | None:
    """document.referrer as the browser gives it: any text (e.g. android-app://…), URLs redacted."""
    if value is None or value == "":
        return None
    text = parse_text(value, name, limit=MAX_URL_CHARS)
    try:
        return redact_url(text)
    except ValueError:
        return text


def _consent(raw: Any) -> dict[str, bool]:
    consent = parse_object(raw, "consent")
    out: dict[str, bool] = {}
    for key in CONSENT_KEYS:
        value = consent.get(key)
        if value is None:
            continue
        state = value if isinstance(value, bool) else None
        if isinstance(value, str):
            state = CONSENT_VALUES.get(value.strip().lower())
        if state is None:
            raise FieldError(f"consent.{key}", "must be 'granted' or 'denied'")
        out[key] = state
    return out


def parse_event(raw: Any, names: NameTable, *, now: float, max_age_s: int) -> Envelope:
    """Validate one event object of the envelope; raise FieldError naming the first bad field."""
    obj = parse_object(raw, "event")
    if not _FORBIDDEN.isdisjoint(obj):
        forbidden = next(name for name in FORBIDDEN_FIELDS if name in obj)
        raise FieldError(forbidden, "is not accepted: the pixel and token come from configuration")
    kind_raw = obj.get("type", "track")
    kind = _EVENT_TYPES.get(kind_raw) if isinstance(kind_raw, str) else None
    if kind is None:
        raise FieldError("type", "must be track, page or identify")
    event: str | None = None
    if kind is EventType.TRACK:
        if obj.get("event") in (None, ""):
            raise FieldError("event", "is required for a track event (its name, e.g. Purchase)")
        event = names.resolve(parse_text(obj.get("event"), "event", limit=100))
    elif kind is EventType.PAGE:
        event = PAGEVIEW
    context = parse_object(obj.get("context"), "context")
    page = parse_object(obj["page"] if "page" in obj else context.get("page"), "page")
    ldu = obj.get("limited_data_use")
    if ldu is not None and not isinstance(ldu, bool):
        raise FieldError("limited_data_use", "must be true or false")
    event_id = obj.get("event_id", obj.get("eventId"))
    message_id = obj.get("messageId", obj.get("message_id"))
    notes: list[FieldWarning] = []
    page_url = _url(page.get("url"), "page.url")
    _junk_click_in(page_url, "page.url", notes)
    return Envelope(
        type=kind,
        event=event,
        event_id=None if _blank(event_id) else parse_identifier(event_id, "event_id"),
        timestamp_s=parse_timestamp(obj.get("timestamp"), now, max_age_s),
        anonymous_id=_anonymous_id(obj, notes),
        user_id=_user_id(obj, notes),
        user=parse_user(obj.get("user"), context, obj.get("traits"), notes),
        properties=parse_properties(obj.get("properties"), notes=notes),
        page_url=page_url,
        page_referrer=soft(notes, lambda: _referrer(page.get("referrer"), "page.referrer")),
        consent=_consent(obj.get("consent")),
        message_id=None if _blank(message_id) else parse_identifier(message_id, "messageId"),
        limited_data_use=ldu,
        warnings=notes,
    )


def _anonymous_id(obj: dict[str, Any], notes: list[FieldWarning]) -> str | None:
    if "anonymous_id" not in obj and "anonymousId" not in obj:
        return None
    return soft(
        notes, lambda: parse_optional_text(obj, "anonymous_id", "anonymous_id", limit=128)
    ) or soft(notes, lambda: parse_optional_text(obj, "anonymousId", "anonymousId", limit=128))


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _user_id(obj: dict[str, Any], notes: list[FieldWarning]) -> str | None:
    """``user_id`` (or Segment's ``userId``) as a string id; a blank or unusable one is dropped
    with a warning, the event kept."""
    key = "user_id" if "user_id" in obj else "userId"
    value = obj.get(key)
    if value is None:
        return None
    if _blank(value):
        notes.append(FieldWarning.of(key, "is blank; dropped"))
        return None
    return soft(notes, lambda: parse_identifier(value, key))


def _junk_click_in(url: str | None, where: str, notes: list[FieldWarning]) -> None:
    """Say so when a page URL's ``ttclid`` is a placeholder (``undefined``, ``__CLICKID__``):
    it is no click and does not replace the visitor's."""
    if not url or "ttclid=" not in url:
        return
    try:
        query = dict(parse_qsl(urlsplit(url).query))
    except ValueError:
        return
    if "ttclid" in query:
        problem = ttclid_problem(query["ttclid"])
        if problem is not None:
            notes.append(FieldWarning.of(f"{where}.ttclid", f"{problem}; ignored (no click)"))


def derive_event_id(envelope: Envelope) -> str:
    """The event_id to use: given, else ``ord_<order_id>``, else messageId, else random."""
    if envelope.event_id is not None:
        return envelope.event_id
    order_id = envelope.properties.get("order_id")
    if order_id is not None:
        return f"ord_{order_id}"
    if envelope.message_id is not None:
        return envelope.message_id
    return str(uuid.uuid4())


def split_batch(body: Any) -> list[Any]:
    """The events of a body: ``{"events": [...]}`` (1 to 1000) or one event object."""
    if isinstance(body, dict) and "events" in body:
        events = body["events"]
        if not isinstance(events, list):
            raise FieldError("events", "must be a list")
        if not 1 <= len(events) <= MAX_EVENTS:
            raise FieldError("events", f"must hold 1 to {MAX_EVENTS} events")
        return events
    if isinstance(body, dict):
        return [body]
    raise FieldError("body", 'must be an event object or {"events": [...]}')
