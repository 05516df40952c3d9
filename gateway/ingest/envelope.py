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
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from yarl import URL

from gateway.identity.cookies import strip_pixel_click_suffix, ttclid_problem, ttp_problem
from gateway.identity.normalize import redact_url
from gateway.tiktok.spec import (
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


FUTURE_SKEW_S = 300  # clocks a few minutes ahead are clamped to now; further ahead is refused
MAX_WARNINGS = 20  # per event; the rest are summed up in one
_INDEX_RE = re.compile(r"\[\d+\]")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FieldWarning:
    """A field the event could not use: dropped, the event kept, and said in the answer.

    ``label`` is the field without list indexes or free-form names (``user.email``,
    ``properties.*``): what metrics and the dashboard count, a bounded set.
    """

    field: str
    warning: str
    label: str

    @classmethod
    def of(cls, field_name: str, warning: str, label: str | None = None) -> FieldWarning:
        """A warning for ``field_name``, labelled by the field without indexes."""
        return cls(field_name, warning, label or _INDEX_RE.sub("", field_name))


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
    warnings: list[FieldWarning] = field(default_factory=list)


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


def _soft(notes: list[FieldWarning], parse: Callable[[], T]) -> T | None:
    """``parse()``, or None with a warning when the field it reads cannot be used: a field
    that cannot be used is dropped and said, and the event is kept."""
    try:
        return parse()
    except FieldError as exc:
        notes.append(FieldWarning.of(exc.field, f"{exc.error}; dropped"))
        return None


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


def _strings(
    value: Any, name: str, notes: list[FieldWarning], *, numbers: bool = False
) -> list[str]:
    """Identifiers given as one value or a list: each usable one kept (with ``numbers``, a
    number as its decimal string), each blank or unusable one dropped with a warning."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for i, item in enumerate(items):
        where = f"{name}[{i}]" if isinstance(value, list) else name
        if i >= 10:
            notes.append(FieldWarning.of(name, f"at most 10 values; {len(items) - 10} dropped"))
            break
        if numbers and isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        text = _soft(notes, partial(_text, item, where, limit=320))
        if text is not None:
            out.append(text)
    return out


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


def seconds_by_magnitude(number: float) -> float:
    """Unix seconds from a number in seconds, milliseconds, microseconds or nanoseconds, told
    apart by magnitude (a time in seconds stays below 10^11 until the year 5138)."""
    for unit in (1, 1_000, 1_000_000, 1_000_000_000):
        if number / unit < 1e11:
            return number / unit
    return number / 1_000_000_000


def parse_timestamp(value: Any, now: float, max_age_s: int, name: str = "timestamp") -> int:
    """Unix seconds, ms, µs or ns (told apart by magnitude), or ISO-8601 → int seconds.

    A few minutes ahead of our clock (``FUTURE_SKEW_S``) is clamped to now; further ahead, or
    older than ``max_age_s``, is refused naming the field: neither would be the time it happened.
    """
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
    seconds = seconds_by_magnitude(seconds)
    if seconds > now + FUTURE_SKEW_S:
        raise FieldError(
            name,
            f"is {seconds - now:.0f} s in the future (more than {FUTURE_SKEW_S} s ahead); "
            "send Unix seconds, milliseconds or an ISO-8601 time with its offset",
        )
    if seconds > now:  # a clock a little ahead: TikTok takes no future time (reference §3)
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


def _contents(
    items: Any, name: str, *, segment: bool, notes: list[FieldWarning] | None = None
) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise FieldError(name, "must be a list")
    if len(items) > MAX_CONTENTS:
        raise FieldError(name, f"at most {MAX_CONTENTS} items")
    out = []
    for i, raw in enumerate(items):
        where = f"{name}[{i}]"
        if notes is None:
            out.append(_content(raw, where, segment, None))
        else:
            content = _soft(notes, partial(_content, raw, where, segment, notes))
            if content is not None:
                out.append(content)
    return out


def _content(
    raw: Any, where: str, segment: bool, notes: list[FieldWarning] | None
) -> dict[str, Any]:
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
    for key, parse in (("price", _number), ("quantity", _count)):
        if item.get(key) is not None:
            value = _lenient(notes, parse, item[key], f"{where}.{key}")
            if value is not None:
                content[key] = value
    return content


def _lenient(
    notes: list[FieldWarning] | None, parse: Callable[[Any, str], T], value: Any, where: str
) -> T | None:
    """``parse(value, where)``: strict without ``notes``, else dropped with a warning."""
    if notes is None:
        return parse(value, where)
    return _soft(notes, lambda: parse(value, where))


# what parse_properties reads; any other property is dropped (it could carry raw PII) and said
KNOWN_PROPERTIES = frozenset(
    {"contents", "products", "value", "revenue", "total", "currency", "order_id",
     "search_string", "query", "content_ids", "predicted_ltv", "num_items", *PASS_PROPERTIES}
)  # fmt: skip


def parse_properties(
    raw: Any, name: str = "properties", notes: list[FieldWarning] | None = None
) -> dict[str, Any]:
    """TikTok-shaped properties from TikTok or Segment-style input.

    With ``notes``, a property that cannot be used (a value that is no number, a currency
    TikTok does not take, an unknown key) is dropped with a warning there and the rest kept;
    without, the first such problem raises :class:`FieldError`.
    """
    props = _object(raw, name)
    out: dict[str, Any] = {}
    if props.get("contents") is not None:
        contents = _lenient(notes, lambda v, w: _contents(v, w, segment=False, notes=notes),
                            props["contents"], f"{name}.contents")  # fmt: skip
    elif props.get("products") is not None:
        contents = _lenient(notes, lambda v, w: _contents(v, w, segment=True, notes=notes),
                            props["products"], f"{name}.products")  # fmt: skip
    else:
        contents = None
    if contents:
        out["contents"] = contents
    for key in ("value", "revenue", "total"):
        if props.get(key) is not None:
            value = _lenient(notes, _number, props[key], f"{name}.{key}")
            if value is not None:
                out["value"] = value
            break
    else:
        priced = [c for c in out.get("contents", []) if "price" in c]
        if priced:
            total = sum(c["price"] * c.get("quantity", 1) for c in priced)
            if math.isfinite(total):
                out["value"] = round(total, 2)
            elif notes is None:
                raise FieldError(f"{name}.value", "the contents' price x quantity is not finite")
    if props.get("currency") not in (None, ""):
        currency = _lenient(notes, _currency, props["currency"], f"{name}.currency")
        if currency is not None:
            out["currency"] = currency
    if props.get("order_id") not in (None, ""):
        order_id = _lenient(notes, _identifier, props["order_id"], f"{name}.order_id")
        if order_id is not None:
            out["order_id"] = order_id
    for key in ("search_string", "query"):
        if props.get(key) not in (None, ""):
            query = _lenient(notes, lambda v, w: _text(v, w, limit=500), props[key],
                             f"{name}.{key}")  # fmt: skip
            if query is not None:
                out["query"] = out["search_string"] = query
            break
    if props.get("content_ids") is not None:
        ids = _lenient(notes, _id_list, props["content_ids"], f"{name}.content_ids")
        if ids is not None:
            out["content_ids"] = ids
    if "content_ids" not in out and out.get("contents"):
        out["content_ids"] = [c["content_id"] for c in out["contents"]]
    if out.get("contents"):
        out["content_type"] = "product"
    for key in PASS_PROPERTIES:
        if props.get(key) not in (None, ""):
            text = _lenient(notes, lambda v, w: _text(v, w, limit=500), props[key],
                            f"{name}.{key}")  # fmt: skip
            if text is not None:
                out[key] = text
    if out.get("content_type") not in (None, "product", "product_group"):
        if notes is None:
            raise FieldError(f"{name}.content_type", "must be product or product_group")
        notes.append(FieldWarning.of(f"{name}.content_type",
                                     "must be product or product_group; dropped"))  # fmt: skip
        del out["content_type"]
    for key, parse in (("predicted_ltv", _number), ("num_items", _count)):
        if props.get(key) is not None:
            number = _lenient(notes, parse, props[key], f"{name}.{key}")
            if number is not None:
                out[key] = number
    if notes is not None:
        unknown = [k for k in props if k not in KNOWN_PROPERTIES]
        for key in unknown[:MAX_WARNINGS]:
            notes.append(FieldWarning.of(f"{name}.{str(key)[:64]}",
                                         "is not a property TikTok takes; dropped",
                                         label=f"{name}.*"))  # fmt: skip
        if len(unknown) > MAX_WARNINGS:
            notes.append(FieldWarning.of(f"{name}.*", f"{len(unknown) - MAX_WARNINGS} more "
                                         "properties TikTok does not take; dropped"))  # fmt: skip
    return out


def _currency(value: Any, where: str) -> str:
    currency = _text(value, where, limit=3).upper()
    if currency not in SUPPORTED_CURRENCIES:
        raise FieldError(where, f"{currency!r} is not a currency TikTok supports")
    return currency


def _id_list(ids: Any, where: str) -> list[str]:
    if not isinstance(ids, list):
        raise FieldError(where, "must be a list")
    return [_identifier(v, f"{where}[{i}]") for i, v in enumerate(ids)]


def _user(
    raw: Any, context: Mapping[str, Any], traits: Mapping[str, Any], notes: list[FieldWarning]
) -> UserInput:
    user = _object(raw, "user")

    def text(obj: Mapping[str, Any], key: str, where: str, limit: int) -> str | None:
        return _soft(notes, lambda: _opt_text(obj, key, where, limit=limit))

    user_input = UserInput(
        emails=_strings(user.get("email", traits.get("email")), "user.email", notes),
        phones=_strings(
            user.get("phone", user.get("phone_number", traits.get("phone"))),
            "user.phone",
            notes,
            numbers=True,
        ),
        external_ids=_strings(user.get("external_id"), "user.external_id", notes, numbers=True),
        ttclid=_click_id(text(user, "ttclid", "user.ttclid", 1024), notes),
        ttp=_ttp(text(user, "ttp", "user.ttp", 128), notes),
        user_agent=text(user, "user_agent", "user.user_agent", 1024)
        or text(context, "userAgent", "context.userAgent", 1024),
        country=text(user, "country", "user.country", 64),
        locale=text(user, "locale", "user.locale", 35)
        or text(context, "locale", "context.locale", 35),
        first_name=text(user, "first_name", "user.first_name", 200),
        last_name=text(user, "last_name", "user.last_name", 200),
        zip_code=text(user, "zip_code", "user.zip_code", 32),
        city=text(user, "city", "user.city", 200),
        state=text(user, "state", "user.state", 200),
    )
    for source, key, where in ((user, "ip", "user.ip"), (context, "ip", "context.ip")):
        ip = text(source, key, where, 64)
        if ip is not None:
            user_input.ip = _buyer_ip(ip, where, notes)
            if user_input.ip is not None:
                break
    return user_input


def _click_id(value: str | None, notes: list[FieldWarning]) -> str | None:
    """A ``user.ttclid`` that can be a click id; a placeholder is no click (and said)."""
    if value is None:
        return None
    value = strip_pixel_click_suffix(value)
    problem = ttclid_problem(value)
    if problem is not None:
        notes.append(FieldWarning.of("user.ttclid", f"{problem}; ignored (no click)"))
        return None
    return value


def _ttp(value: str | None, notes: list[FieldWarning]) -> str | None:
    if value is None:
        return None
    problem = ttp_problem(value)
    if problem is not None:
        notes.append(FieldWarning.of("user.ttp", f"{problem}; ignored"))
        return None
    return value


_INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def not_the_buyers(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address no shopper on the internet has: loopback, link-local, unspecified,
    multicast, private (RFC 1918, unique-local) or carrier-grade NAT space. Documentation ranges
    (203.0.113.0/24…) pass: examples and tests use them."""
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        return True
    if address.is_multicast:
        return True
    return any(address in network for network in _INTERNAL_NETWORKS)


def _buyer_ip(text: str, where: str, notes: list[FieldWarning]) -> str | None:
    """The buyer's address as TikTok wants it: IPv4-mapped IPv6 (``::ffff:203.0.113.9``, Node's
    default) unwrapped; private, loopback and other non-public addresses dropped with a warning
    (they are the backend's or a proxy's, never a shopper's on the internet)."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        notes.append(FieldWarning.of(where, "is not an IPv4 or IPv6 address; dropped"))
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not_the_buyers(address):
        notes.append(
            FieldWarning.of(
                where,
                f"{address} is a private, loopback or reserved address, not the buyer's public "
                "one (the stitched session's address is used if known); dropped",
            )
        )
        return None
    return str(address)


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
        if obj.get("event") in (None, ""):
            raise FieldError("event", "is required for a track event (its name, e.g. Purchase)")
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
    notes: list[FieldWarning] = []
    page_url = _url(page.get("url"), "page.url")
    _junk_click_in(page_url, "page.url", notes)
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
        user=_user(obj.get("user"), context, _object(obj.get("traits"), "traits"), notes),
        properties=parse_properties(obj.get("properties"), notes=notes),
        page_url=page_url,
        page_referrer=_soft(notes, lambda: _referrer(page.get("referrer"), "page.referrer")),
        consent=_consent(obj.get("consent")),
        message_id=None if message_id in (None, "") else _identifier(message_id, "messageId"),
        limited_data_use=ldu,
        warnings=notes,
    )


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
