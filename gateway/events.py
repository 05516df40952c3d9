"""The event envelope of ``POST /e`` and ``POST /v1/track``: parsing, validation, name mapping.

Everything here is pure: a JSON value goes in, a typed :class:`Envelope` (or a :class:`FieldError`
naming the bad field) comes out. Raw e-mail and phone numbers are still in the envelope: the ingest
handler hashes them (``gateway.identity``) before anything is written anywhere.

Event names:

* TikTok's standard and legacy names (``Purchase``, ``CompletePayment``, ``AddToCart``, ...) and
  ``Pageview`` pass exactly as given: the pixel and the server must use the same literal name for
  TikTok to deduplicate them.
* Segment-spec names map through :data:`SEGMENT_NAMES`; ``Order Completed`` becomes the configured
  purchase name (``TTGW_PURCHASE_EVENT``, default ``Purchase``, the current standard name —
  set ``CompletePayment`` when the pixel on the storefront sends that).
* TikTok's reserved names map to the standard event TikTok maps them to (``Checkout`` →
  ``PlaceAnOrder``, ...; the table is ``tiktok_spec.RESERVED_TARGETS``).
* Deduplication treats TikTok's aliases as one event (``tiktok_spec.canonical_event``:
  ``CompletePayment`` = ``Purchase``), while the name resolved here is the one sent.
* Anything else passes as a custom event when it meets TikTok's rules (at most 50 letters, digits,
  ``_`` or ``-``, starting with a letter); a name that differs from a standard one only in case,
  or breaks the rules, is refused with a clear error.

event_id: kept exactly as given (a JSON number becomes its decimal string). When missing, it is
``ord_<order_id>`` for any event that carries ``properties.order_id`` (the same rule the collector
uses, so a purchase sent by the browser and by the backend deduplicate), else the Segment
``messageId``, else a random UUID.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from yarl import URL

from gateway.identity import redact_url
from gateway.tiktok_spec import (
    ACCEPTED_EVENTS,
    PAGEVIEW,
    RESERVED_TARGETS,
    SUPPORTED_CURRENCIES,
    event_name_problem,
)

MAX_EVENTS = 1000
MAX_STRING_CHARS = 2048
MAX_URL_CHARS = 4096
MAX_CONTENTS = 200
MAX_COUNT = 2**53

CONSENT_VALUES = {"granted": True, "denied": False}
CONSENT_KEYS = ("ad_user_data", "ad_personalization", "ad_storage", "analytics_storage")

SEGMENT_NAMES: Mapping[str, str] = {
    "order completed": "<purchase>",
    "product viewed": "ViewContent",
    "product added": "AddToCart",
    "product added to wishlist": "AddToWishlist",
    "checkout started": "InitiateCheckout",
    "payment info entered": "AddPaymentInfo",
    "products searched": "Search",
    "signed up": "CompleteRegistration",
    "lead generated": "Lead",
    "form submitted": "Lead",
    "subscribed": "Subscribe",
    "trial started": "StartTrial",
    "page viewed": PAGEVIEW,
    "application submitted": "SubmitApplication",
}

# The client never chooses where events go: these fields are refused, not ignored.
FORBIDDEN_FIELDS = ("pixel_code", "pixel", "access_token", "event_source_id", "test_event_code",
                    "api_url", "destination")  # fmt: skip

# Properties TikTok uses; anything else is dropped rather than sent (it could carry raw PII).
PASS_PROPERTIES = ("content_type", "description", "delivery_category", "shop_id")


class FieldError(ValueError):
    """A client mistake in one field; answered 4xx with ``{"error": ..., "field": ...}``."""

    def __init__(self, field_name: str, error: str) -> None:
        super().__init__(f"{field_name}: {error}")
        self.field = field_name
        self.error = error


class EventType(StrEnum):
    """The envelope's ``type``."""

    TRACK = "track"
    PAGE = "page"
    IDENTIFY = "identify"


@dataclass(slots=True)
class UserInput:
    """What the client says about the person; raw values, hashed by the ingest handler."""

    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    external_ids: list[str] = field(default_factory=list)
    ttclid: str | None = None
    ttp: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    country: str | None = None
    locale: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    zip_code: str | None = None
    city: str | None = None
    state: str | None = None


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


@dataclass(frozen=True, slots=True)
class NameTable:
    """How client event names become TikTok names for one integration."""

    purchase_event: str = "Purchase"
    overrides: tuple[tuple[str, str], ...] = ()

    def resolve(self, name: str, field_name: str = "event") -> str:
        """The TikTok name for ``name``, or a FieldError explaining why it cannot be sent."""
        for source, target in self.overrides:
            if source == name:
                return target
        if name in ACCEPTED_EVENTS:
            return name
        segment = SEGMENT_NAMES.get(" ".join(name.split()).casefold())
        if segment is not None:
            return self.purchase_event if segment == "<purchase>" else segment
        if name in RESERVED_TARGETS:
            return RESERVED_TARGETS[name]
        problem = event_name_problem(name)
        if problem is not None:
            raise FieldError(field_name, problem)
        return name


def _text(value: Any, name: str, *, limit: int = MAX_STRING_CHARS) -> str:
    if not isinstance(value, str):
        raise FieldError(name, "must be a string")
    text = value.strip()
    if not text:
        raise FieldError(name, "must not be empty")
    if len(text) > limit:
        raise FieldError(name, f"must be at most {limit} characters")
    return text


def _opt_text(
    obj: Mapping[str, Any], key: str, name: str, limit: int = MAX_STRING_CHARS
) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    return _text(value, name, limit=limit)


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError(name, "must be an object")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise FieldError(name, "must be a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise FieldError(name, "must be a number") from None
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise FieldError(name, "must be a finite number >= 0")
    return float(value)


def _count(value: Any, name: str) -> int:
    """A quantity: a number >= 0, at most 2**53 (an exact integer in JSON everywhere)."""
    number = _number(value, name)
    if number > MAX_COUNT:
        raise FieldError(name, f"must be at most {MAX_COUNT}")
    return int(number)


def _identifier(value: Any, name: str) -> str:
    """An id as a string: strings kept exactly, JSON integers as their decimal string."""
    if isinstance(value, bool):
        raise FieldError(name, "must be a string")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        value = str(int(value))
    if isinstance(value, str) and value and len(value) <= 256:
        return value
    raise FieldError(name, "must be a non-empty string (at most 256 characters) or an integer")


def _strings(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else [value]
    if len(items) > 10:
        raise FieldError(name, "at most 10 values")
    return [_text(v, f"{name}[{i}]" if isinstance(value, list) else name, limit=320)
            for i, v in enumerate(items)]  # fmt: skip


def _seconds_from_text(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise FieldError(name, "must be Unix seconds or an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        raise FieldError(name, "an ISO-8601 date-time needs a UTC offset")
    return parsed.timestamp()


def parse_timestamp(value: Any, now: float, max_age_s: int, name: str = "timestamp") -> int:
    """Unix seconds (milliseconds tolerated) or ISO-8601 → int seconds; future clamped to now."""
    if value is None:
        return int(now)
    if isinstance(value, bool):
        raise FieldError(name, "must be Unix seconds or an ISO-8601 date-time")
    seconds: float
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _seconds_from_text(value.strip(), name)
    else:
        raise FieldError(name, "must be Unix seconds or an ISO-8601 date-time")
    if not math.isfinite(seconds) or seconds <= 0:
        raise FieldError(name, "must be a positive time")
    if seconds > 1e11:  # milliseconds: a browser's Date.now()
        seconds /= 1000
    if seconds > now:  # TikTok has no documented skew tolerance: clamp (reference §3)
        return int(now)
    if seconds < now - max_age_s:
        raise FieldError(name, f"is more than {max_age_s} s old; TikTok would not attribute it")
    return int(seconds)


def _url(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    url = _text(value, name, limit=MAX_URL_CHARS)
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
    text = _text(value, name, limit=MAX_URL_CHARS)
    try:
        return redact_url(text)
    except ValueError:
        return text


def _contents(items: Any, name: str, *, segment: bool) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise FieldError(name, "must be a list")
    if len(items) > MAX_CONTENTS:
        raise FieldError(name, f"at most {MAX_CONTENTS} items")
    out = []
    for i, raw in enumerate(items):
        where = f"{name}[{i}]"
        item = _object(raw, where)
        keys = ("product_id", "sku", "id", "content_id") if segment else ("content_id",)
        content_id = next((item[k] for k in keys if item.get(k) not in (None, "")), None)
        if content_id is None:
            raise FieldError(f"{where}.content_id", "is required")
        content: dict[str, Any] = {"content_id": _identifier(content_id, f"{where}.content_id")}
        for source, target in (("content_name", "content_name"), ("name", "content_name"),
                               ("content_category", "content_category"),
                               ("category", "content_category"), ("brand", "brand")):  # fmt: skip
            if target not in content and item.get(source) not in (None, ""):
                content[target] = _text(item[source], f"{where}.{source}", limit=500)
        if item.get("price") is not None:
            content["price"] = _number(item["price"], f"{where}.price")
        if item.get("quantity") is not None:
            content["quantity"] = _count(item["quantity"], f"{where}.quantity")
        out.append(content)
    return out


def parse_properties(raw: Any, name: str = "properties") -> dict[str, Any]:
    """TikTok-shaped properties from TikTok or Segment-style input."""
    props = _object(raw, name)
    out: dict[str, Any] = {}
    if props.get("contents") is not None:
        out["contents"] = _contents(props["contents"], f"{name}.contents", segment=False)
    elif props.get("products") is not None:
        out["contents"] = _contents(props["products"], f"{name}.products", segment=True)
    for key in ("value", "revenue", "total"):
        if props.get(key) is not None:
            out["value"] = _number(props[key], f"{name}.{key}")
            break
    else:
        priced = [c for c in out.get("contents", []) if "price" in c]
        if priced:
            total = sum(c["price"] * c.get("quantity", 1) for c in priced)
            if not math.isfinite(total):
                raise FieldError(f"{name}.value", "the contents' price x quantity is not finite")
            out["value"] = round(total, 2)
    if props.get("currency") not in (None, ""):
        currency = _text(props["currency"], f"{name}.currency", limit=3).upper()
        if currency not in SUPPORTED_CURRENCIES:
            raise FieldError(f"{name}.currency", f"{currency!r} is not a currency TikTok supports")
        out["currency"] = currency
    if props.get("order_id") not in (None, ""):
        out["order_id"] = _identifier(props["order_id"], f"{name}.order_id")
    for key in ("search_string", "query"):
        if props.get(key) not in (None, ""):
            out["query"] = out["search_string"] = _text(props[key], f"{name}.{key}", limit=500)
            break
    if props.get("content_ids") is not None:
        ids = props["content_ids"]
        if not isinstance(ids, list):
            raise FieldError(f"{name}.content_ids", "must be a list")
        out["content_ids"] = [_identifier(v, f"{name}.content_ids[{i}]") for i, v in enumerate(ids)]
    elif out.get("contents"):
        out["content_ids"] = [c["content_id"] for c in out["contents"]]
    if out.get("contents"):
        out["content_type"] = "product"
    for key in PASS_PROPERTIES:
        if props.get(key) not in (None, ""):
            out[key] = _text(props[key], f"{name}.{key}", limit=500)
    if out.get("content_type") not in (None, "product", "product_group"):
        raise FieldError(f"{name}.content_type", "must be product or product_group")
    if props.get("predicted_ltv") is not None:
        out["predicted_ltv"] = _number(props["predicted_ltv"], f"{name}.predicted_ltv")
    if props.get("num_items") is not None:
        out["num_items"] = _count(props["num_items"], f"{name}.num_items")
    return out


def _user(raw: Any, context: Mapping[str, Any], traits: Mapping[str, Any]) -> UserInput:
    user = _object(raw, "user")
    user_input = UserInput(
        emails=_strings(user.get("email", traits.get("email")), "user.email"),
        phones=_strings(
            user.get("phone", user.get("phone_number", traits.get("phone"))), "user.phone"
        ),
        external_ids=_strings(user.get("external_id"), "user.external_id"),
        ttclid=_opt_text(user, "ttclid", "user.ttclid", limit=1024),
        ttp=_opt_text(user, "ttp", "user.ttp", limit=128),
        user_agent=_opt_text(user, "user_agent", "user.user_agent", limit=1024)
        or _opt_text(context, "userAgent", "context.userAgent", limit=1024),
        country=_opt_text(user, "country", "user.country", limit=64),
        locale=_opt_text(user, "locale", "user.locale", limit=35)
        or _opt_text(context, "locale", "context.locale", limit=35),
        first_name=_opt_text(user, "first_name", "user.first_name", limit=200),
        last_name=_opt_text(user, "last_name", "user.last_name", limit=200),
        zip_code=_opt_text(user, "zip_code", "user.zip_code", limit=32),
        city=_opt_text(user, "city", "user.city", limit=200),
        state=_opt_text(user, "state", "user.state", limit=200),
    )
    for source, key, where in ((user, "ip", "user.ip"), (context, "ip", "context.ip")):
        ip = _opt_text(source, key, where, limit=64)
        if ip is None:
            continue
        try:
            user_input.ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise FieldError(where, "must be an IPv4 or IPv6 address") from None
        break
    return user_input


def _consent(raw: Any) -> dict[str, bool]:
    consent = _object(raw, "consent")
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
    obj = _object(raw, "event")
    for forbidden in FORBIDDEN_FIELDS:
        if forbidden in obj:
            raise FieldError(
                forbidden, "is not accepted: the pixel and token come from configuration"
            )
    kind_raw = obj.get("type", "track")
    try:
        kind = EventType(kind_raw)
    except ValueError:
        raise FieldError("type", "must be track, page or identify") from None
    event: str | None = None
    if kind is EventType.TRACK:
        event = names.resolve(_text(obj.get("event"), "event", limit=100))
    elif kind is EventType.PAGE:
        event = PAGEVIEW
    context = _object(obj.get("context"), "context")
    page = _object(obj["page"] if "page" in obj else context.get("page"), "page")
    ldu = obj.get("limited_data_use")
    if ldu is not None and not isinstance(ldu, bool):
        raise FieldError("limited_data_use", "must be true or false")
    event_id = obj.get("event_id", obj.get("eventId"))
    message_id = obj.get("messageId", obj.get("message_id"))
    return Envelope(
        type=kind,
        event=event,
        event_id=None if event_id in (None, "") else _identifier(event_id, "event_id"),
        timestamp_s=parse_timestamp(obj.get("timestamp"), now, max_age_s),
        anonymous_id=_opt_text(obj, "anonymous_id", "anonymous_id", limit=128)
        or _opt_text(obj, "anonymousId", "anonymousId", limit=128),
        user_id=None
        if obj.get("user_id", obj.get("userId")) in (None, "")
        else _identifier(obj.get("user_id", obj.get("userId")), "user_id"),
        user=_user(obj.get("user"), context, _object(obj.get("traits"), "traits")),
        properties=parse_properties(obj.get("properties")),
        page_url=_url(page.get("url"), "page.url"),
        page_referrer=_referrer(page.get("referrer"), "page.referrer"),
        consent=_consent(obj.get("consent")),
        message_id=None if message_id in (None, "") else _identifier(message_id, "messageId"),
        limited_data_use=ldu,
    )


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
