"""Segment's HTTP Tracking API, read into our envelope: one message in, one envelope dict out.

The Segment and RudderStack server SDKs post ``{"batch": [...], "context": {...}, "sentAt": ...}``
to ``/v1/batch``; a single message may also come to ``/v1/track``, ``/v1/page`` or
``/v1/identify``. Everything here is pure: :func:`batch_messages` splits a batch (its ``context``
merged under each message's, its ``sentAt`` given to each), and :func:`to_envelope` turns one
message into the envelope :func:`~gateway.ingest.envelope.parse_event` reads, remembering which
Segment field each envelope field came from so that a refusal names the field the sender wrote.

Segment's fields and ours:

* ``type``: ``track``, ``page`` (TikTok's ``Pageview``) and ``identify`` are ours; ``screen`` (an
  app's view: TikTok's web events take pages), ``group`` and ``alias`` have no TikTok event and
  are accepted and ignored (:func:`to_envelope` returns ``None``).
* ``userId`` → ``user_id``; ``anonymousId`` → ``anonymous_id`` (a signed ``_ttgw`` value names the
  visitor; any other value names nobody and is not an identifier TikTok is sent); ``messageId``
  is the event id when neither ``properties.event_id`` nor ``properties.order_id`` gives one, so
  an SDK's retry of a message is the same event.
* Time: ``timestamp``; else ``originalTimestamp`` moved by the sender's clock error (our receive
  time minus ``sentAt``: Segment's own rule); else ``sentAt`` when it reads as a time; else now.
* ``context.ip``, ``context.userAgent``, ``context.locale``, ``context.page.url``/``referrer``
  (for a ``page`` call also ``properties.url``/``referrer``) are the buyer's.
* The person: ``traits`` (identify) over ``context.traits``: ``email``, ``phone``,
  ``firstName``/``lastName``, ``address.postalCode``/``city``/``state``/``country``;
  ``properties.email``/``phone`` first, as Segment's TikTok destination reads them;
  ``properties.ttclid``/``ttp``. Raw e-mail and phone are hashed by the ingest handler, as for the
  envelope.
* ``properties`` pass through (``products`` become contents); ``integrations``, ``channel``,
  ``context.library`` and the body's ``writeKey`` are not read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.ingest.fields import FieldError, parse_object
from gateway.ingest.timestamps import seconds_by_magnitude

MAX_MESSAGES = 1000

ENVELOPE_TYPES = ("track", "page", "identify")
IGNORED_TYPES = ("screen", "group", "alias")

# Keys only Segment's messages have, and keys only our envelope has (DESIGN §2).
SEGMENT_KEYS = frozenset(
    ("messageId", "userId", "anonymousId", "sentAt", "originalTimestamp", "writeKey",
     "integrations")
)  # fmt: skip
ENVELOPE_KEYS = frozenset(
    ("events", "event_id", "eventId", "message_id", "user_id", "anonymous_id", "user", "page",
     "consent", "limited_data_use")
)  # fmt: skip

MAX_ANONYMOUS_ID_CHARS = 128  # a signed _ttgw value is shorter; a longer id names nobody here

Places = list[tuple[str, Mapping[str, Any]]]  # (where, object): the places a field is read from

# The page call's own properties: the page, said by Segment's libraries; not TikTok properties.
PAGE_PROPERTIES = ("url", "referrer", "path", "search", "title", "name", "category")


def is_message(body: Any) -> bool:
    """Whether a ``/v1/track`` body is a Segment message rather than our envelope.

    It is when it is one object that carries a key only Segment's messages have (``messageId``,
    ``userId``, ``anonymousId``, ``sentAt``, ``originalTimestamp``, ``writeKey``,
    ``integrations``) and none that only our envelope has (``events``, ``event_id``, ``user_id``,
    ``anonymous_id``, ``user``, ``page``, ``consent``, ...).
    """
    if not isinstance(body, dict):
        return False
    present = body.keys()
    return not ENVELOPE_KEYS & present and bool(SEGMENT_KEYS & present)


def batch_messages(body: Any) -> list[Any]:
    """The messages of a ``/v1/batch`` body, each with the batch's ``context`` merged under its
    own and the batch's ``sentAt``; a malformed batch is a FieldError naming the field."""
    if not isinstance(body, dict):
        raise FieldError("body", 'must be {"batch": [...]}')
    batch = body.get("batch")
    if not isinstance(batch, list):
        raise FieldError("batch", "must be a list of messages")
    if len(batch) > MAX_MESSAGES:
        raise FieldError("batch", f"must hold at most {MAX_MESSAGES} messages")
    context = parse_object(body.get("context"), "context")
    sent_at = body.get("sentAt")
    messages: list[Any] = []
    for message in batch:
        if isinstance(message, dict):
            message = dict(message)
            if context:
                message["context"] = _merged(context, message.get("context"))
            if sent_at is not None:
                message.setdefault("sentAt", sent_at)
        messages.append(message)
    return messages


def _merged(under: Mapping[str, Any], over: Any) -> Any:
    """``over`` with what ``under`` has and it lacks, objects merged key by key."""
    if over is None:
        return dict(under)
    if not isinstance(over, dict):
        return over  # refused by to_envelope, naming the message's own context
    out = dict(under)
    for key, value in over.items():
        below = out.get(key)
        out[key] = _merged(below, value) if isinstance(below, dict) else value
    return out


@dataclass(slots=True)
class Translation:
    """One message as our envelope, and the Segment field each envelope field came from."""

    envelope: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def segment_field(self, name: str) -> str:
        """The field the sender wrote for the envelope's field ``name`` (``user.ip`` →
        ``context.ip``; ``user.email[1]`` → ``traits.email[1]``)."""
        for ours, theirs in self.sources.items():
            if name == ours or name.startswith((ours + ".", ours + "[")):
                return theirs + name[len(ours) :]
        return name


def to_envelope(message: Any, received_s: float, kind: str | None = None) -> Translation | None:
    """Our envelope for one Segment message, or ``None`` for a type we accept and ignore.

    ``kind`` is the type a single-message endpoint implies (``/v1/page`` is a page call
    whatever the body says). A message that cannot be read raises FieldError naming the
    Segment field.
    """
    if not isinstance(message, dict):
        raise FieldError("message", "must be an object")
    kind = kind or _type(message.get("type"))
    if kind in IGNORED_TYPES:
        return None
    context = parse_object(message.get("context"), "context")
    properties = dict(parse_object(message.get("properties"), "properties"))
    translation = Translation({"type": kind})
    envelope, sources = translation.envelope, translation.sources
    if kind == "track":
        envelope["event"] = message.get("event")
    for ours, theirs in (("user_id", "userId"), ("messageId", "messageId")):
        if message.get(theirs) not in (None, ""):
            envelope[ours] = message[theirs]
            sources[ours] = theirs
    anonymous_id = message.get("anonymousId")
    if isinstance(anonymous_id, str) and 0 < len(anonymous_id) <= MAX_ANONYMOUS_ID_CHARS:
        envelope["anonymous_id"] = anonymous_id
        sources["anonymous_id"] = "anonymousId"
    for key in ("event_id", "eventId"):
        value = properties.pop(key, None)
        if value not in (None, "") and "event_id" not in envelope:
            envelope["event_id"] = value
            sources["event_id"] = f"properties.{key}"
    limited = properties.pop("limited_data_use", None)
    if isinstance(limited, bool):
        envelope["limited_data_use"] = limited
    envelope["timestamp"], sources["timestamp"] = _time(message, received_s)
    envelope["user"] = _user(message, context, properties, sources)
    envelope["page"] = _page(kind, context, properties, sources)
    if kind == "page":
        for key in PAGE_PROPERTIES:
            properties.pop(key, None)
    envelope["properties"] = properties
    return translation


def _type(value: Any) -> str:
    kinds = (*ENVELOPE_TYPES, *IGNORED_TYPES)
    kind = value.strip().lower() if isinstance(value, str) else ""
    if kind not in kinds:
        raise FieldError("type", f"must be one of {', '.join(kinds)}")
    return kind


def _time(message: Mapping[str, Any], received_s: float) -> tuple[Any, str]:
    """The event's time and the field it came from, by Segment's rule."""
    if message.get("timestamp") not in (None, ""):
        return message["timestamp"], "timestamp"
    original = message.get("originalTimestamp")
    if original not in (None, ""):
        at, sent = _instant(original), _instant(message.get("sentAt"))
        if at is not None and sent is not None:
            return at + (received_s - sent), "originalTimestamp"  # the sender's clock error out
        return original, "originalTimestamp"
    sent = _instant(message.get("sentAt"))  # when the SDK sent it: a time only when readable
    return (sent, "sentAt") if sent is not None else (None, "timestamp")


def _instant(value: Any) -> float | None:
    """Unix seconds of a Segment time (ISO-8601 with an offset, or a number), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(value.strip())
            except ValueError:
                return None
            return parsed.timestamp() if parsed.tzinfo is not None else None
    if not math.isfinite(value) or value <= 0:
        return None
    return seconds_by_magnitude(float(value))


def _user(
    message: Mapping[str, Any],
    context: Mapping[str, Any],
    properties: dict[str, Any],
    sources: dict[str, str],
) -> dict[str, Any]:
    """The envelope's ``user``: for each field, the first of its Segment places with a value."""
    traits: Places = [
        ("traits", parse_object(message.get("traits"), "traits")),
        ("context.traits", parse_object(context.get("traits"), "context.traits")),
    ]
    addresses: Places = [
        (f"{where}.address", found["address"])
        for where, found in traits
        if isinstance(found.get("address"), dict)
    ]
    moved: dict[str, Any] = {k: properties.pop(k) for k in ("email", "phone", "ttclid", "ttp")
                             if k in properties}  # fmt: skip
    given: Places = [("properties", moved)]
    about: Places = [("context", context)]
    places: tuple[tuple[str, Places, tuple[str, ...]], ...] = (
        ("email", given + traits, ("email",)),
        ("phone", given + traits, ("phone",)),
        ("first_name", traits, ("firstName", "first_name")),
        ("last_name", traits, ("lastName", "last_name")),
        ("zip_code", addresses + traits, ("postalCode", "postal_code", "zip", "zipCode")),
        ("city", addresses + traits, ("city",)),
        ("state", addresses + traits, ("state",)),
        ("country", addresses + traits, ("country",)),
        ("ttclid", given, ("ttclid",)),
        ("ttp", given, ("ttp",)),
        ("ip", about, ("ip",)),
        ("user_agent", about, ("userAgent",)),
        ("locale", about, ("locale",)),
    )
    user: dict[str, Any] = {}
    for ours, candidates, names in places:
        found = next(((where, obj, name) for where, obj in candidates for name in names
                      if obj.get(name) not in (None, "")), None)  # fmt: skip
        if found is not None:
            where, obj, name = found
            user[ours] = obj[name]
            sources[f"user.{ours}"] = f"{where}.{name}"
    return user


def _page(
    kind: str, context: Mapping[str, Any], properties: Mapping[str, Any], sources: dict[str, str]
) -> dict[str, Any]:
    """The envelope's ``page``: ``context.page``, else a page call's own properties."""
    page = parse_object(context.get("page"), "context.page")
    places: Places = [("context.page", page)]
    if kind == "page":
        places.append(("properties", properties))
    out: dict[str, Any] = {}
    for key in ("url", "referrer"):
        for prefix, obj in places:
            if obj.get(key) not in (None, ""):
                out[key] = obj[key]
                sources[f"page.{key}"] = f"{prefix}.{key}"
                break
    return out
