"""A strict validator of ``/event/track/`` request bodies: what TikTok accepts, field by field.

One definition of what TikTok accepts, from ``reference/tiktok-events-api.md``: the emulator answers
with it, and the gateway checks every payload with it before sending (an event that cannot be valid
is dead-lettered with the reason instead of poisoning a batch). Each check raises
:class:`~gateway.tiktok.api.Rejected`; the first error wins, as TikTok reports one.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from yarl import URL

from gateway.tiktok.api import (
    MAX_EVENTS_PER_REQUEST,
    MSG_BAD_EVENT_ID,
    MSG_BAD_EVENT_SOURCE,
    Rejected,
    Rejection,
)
from gateway.tiktok.names import SUPPORTED_CURRENCIES, event_name_problem

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TTP = re.compile(r"[A-Za-z0-9._+-]{1,128}")

_LEGACY_TOP_LEVEL = ("pixel_code", "event", "context", "timestamp", "batch", "properties")
_ENVELOPE_KEYS = frozenset(
    {"event_source", "event_source_id", "partner_name", "test_event_code", "data"}
)
_EVENT_SOURCES = ("web", "app", "offline", "crm")
# `app`, `ad`, `lead`, `device` are documented event objects that TikTok-authored integrations
# send on web events too (reference §2.2), so they pass as objects without deeper checks.
_EVENT_KEYS = frozenset(
    {
        "event",
        "event_time",
        "event_id",
        "user",
        "properties",
        "page",
        "limited_data_use",
        "app",
        "ad",
        "lead",
        "device",
    }
)
_USER_KEY_HINTS = {
    "phone_number": "the Events API takes `phone`; `phone_number` is the browser (ttq) key",
    "callback": "`callback` belongs to the legacy context.ad object; send `ttclid`",
}


class Limits(Protocol):
    """The strictness knobs :func:`validate_body` reads (``EmulatorConfig`` has them)."""

    @property
    def max_event_age_s(self) -> int: ...
    @property
    def max_future_skew_s(self) -> int: ...
    @property
    def require_page_url(self) -> bool: ...


@dataclass(frozen=True)
class DefaultLimits:
    """The limits the gateway holds itself to before sending.

    ``page.url`` is not required: TikTok's docs (reference §2.2, the Go SDK's copy) ask web events
    for the ``page`` object and recommend its url; TikTok's own sGTM template sends ``page: {}``
    when it knows no page, and RudderStack sends no page. The gateway sends the page it was told
    and never makes one up; ``require_page_url`` is the stricter reading, for the emulator.
    """

    max_event_age_s: int = 7 * 86400
    max_future_skew_s: int = 300
    require_page_url: bool = False


# --- validation: each check raises Rejected; the first error wins, as TikTok reports one ---


def _bad(path: str, reason: str) -> Rejected:
    return Rejected(40002, f"{path}: {reason}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "Not a valid string")
    return value


def _string(value: object, path: str) -> None:
    _as_str(value, path)


def _hashed(value: object, path: str) -> None:
    if not _SHA256.fullmatch(_as_str(value, path)):
        raise _bad(
            path,
            "Not a SHA-256 hex digest (64 lowercase hex characters); "
            "normalise and hash before sending",
        )


def _hashed_list(value: object, path: str) -> None:
    if not isinstance(value, list):
        _hashed(value, path)
        return
    if not value:
        raise _bad(path, "List may not be empty")
    for i, item in enumerate(value):
        _hashed(item, f"{path}.{i}")


def _ttp(value: object, path: str) -> None:
    if not _TTP.fullmatch(_as_str(value, path)):
        raise _bad(path, "Not a valid _ttp value (1-128 characters of A-Z a-z 0-9 . _ + -)")


def _ip(value: object, path: str) -> None:
    try:
        ipaddress.ip_address(_as_str(value, path))
    except ValueError:
        raise _bad(path, "Not a valid IP address") from None


def _number(value: object, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(path, "Not a valid number")
    if value < 0:
        raise _bad(path, "Must be greater than or equal to 0")


def _count(value: object, path: str) -> None:
    if not _is_int(value):
        raise _bad(path, "Not a valid integer")
    _number(value, path)


def _currency(value: object, path: str) -> None:
    _string(value, path)
    if value not in SUPPORTED_CURRENCIES:
        raise _bad(path, f"{value!r} is not a currency TikTok supports (ISO-4217, e.g. USD)")


def _content_type(value: object, path: str) -> None:
    if value not in ("product", "product_group"):
        raise _bad(path, "Must be one of: product, product_group")


def _string_list(value: object, path: str) -> None:
    if not isinstance(value, list):
        raise _bad(path, "Not a valid list")
    for i, item in enumerate(value):
        _string(item, f"{path}.{i}")


def _mapping(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, "Not a valid mapping type")
    return value


def _url(value: object, path: str) -> None:
    try:
        url = URL(_as_str(value, path))
    except (ValueError, IndexError):
        raise _bad(path, "Not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise _bad(path, "Not a valid URL (absolute http(s) URL expected)")


_Check = Callable[[object, str], None]
_USER_FIELDS: dict[str, _Check] = {
    "email": _hashed_list,
    "phone": _hashed_list,
    "external_id": _hashed_list,
    "first_name": _hashed,
    "last_name": _hashed,
    "zip_code": _hashed,
    "ttclid": _string,
    "ttp": _ttp,
    "ip": _ip,
    "user_agent": _string,
    "locale": _string,
    "city": _string,
    "state": _string,
    "country": _string,
}
_PROPERTY_FIELDS: dict[str, _Check] = {
    "value": _number,
    "currency": _currency,
    "content_type": _content_type,
    "content_ids": _string_list,
    "num_items": _count,
    "order_id": _string,
    "shop_id": _string,
    "search_string": _string,
    "query": _string,
    "description": _string,
}
_CONTENT_FIELDS: dict[str, _Check] = {
    "content_id": _string,
    "price": _number,
    "quantity": _count,
    "content_name": _string,
    "content_category": _string,
    "brand": _string,
    "content_type": _string,
}
_PAGE_FIELDS: dict[str, _Check] = {"url": _url, "referrer": _string}


def _check_fields(
    obj: dict[str, Any],
    path: str,
    checks: dict[str, _Check],
    *,
    strict: bool,
    hints: dict[str, str] | None = None,
) -> None:
    for key, value in obj.items():
        check = checks.get(key)
        if check is not None:
            check(value, f"{path}.{key}")
        elif strict:
            hint = (hints or {}).get(key)
            raise _bad(f"{path}.{key}", f"Unknown field ({hint})" if hint else "Unknown field")


def _contents(value: object, path: str) -> None:
    if not isinstance(value, list):
        raise _bad(path, "Not a valid list")
    for i, item in enumerate(value):
        _check_fields(_mapping(item, f"{path}.{i}"), f"{path}.{i}", _CONTENT_FIELDS, strict=False)


_PROPERTY_FIELDS["contents"] = _contents


def _check_event_name(value: object, path: str) -> None:
    problem = event_name_problem(_as_str(value, path))
    if problem is not None:
        raise _bad(path, problem)


def _check_event_time(value: object, path: str, config: Limits, now: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(path, "Not a valid integer (Unix seconds)")
    now_s = int(now)  # event_time has whole seconds; bounds are inclusive
    if value < now_s - config.max_event_age_s:
        raise _bad(path, f"{value} is more than {config.max_event_age_s} s in the past")
    if value > now_s + config.max_future_skew_s:
        hint = " (milliseconds instead of seconds?)" if value > 10**11 else ""
        raise _bad(path, f"{value} is more than {config.max_future_skew_s} s in the future{hint}")


def _check_event(item: object, path: str, config: Limits, now: float) -> None:
    event = _mapping(item, path)
    for key in event:
        if key not in _EVENT_KEYS:
            raise _bad(f"{path}.{key}", "Unknown field")
    for required in ("event", "event_time"):
        if required not in event:
            raise _bad(f"{path}.{required}", "Missing data for required field")
    _check_event_name(event["event"], f"{path}.event")
    _check_event_time(event["event_time"], f"{path}.event_time", config, now)
    if "event_id" in event:
        if not isinstance(event["event_id"], str):
            raise Rejected(40002, MSG_BAD_EVENT_ID)
        if not event["event_id"]:
            raise _bad(f"{path}.event_id", "Field may not be empty")
    if "user" in event:
        user = _mapping(event["user"], f"{path}.user")
        _check_fields(user, f"{path}.user", _USER_FIELDS, strict=True, hints=_USER_KEY_HINTS)
    if "properties" in event:
        props = _mapping(event["properties"], f"{path}.properties")
        _check_fields(props, f"{path}.properties", _PROPERTY_FIELDS, strict=False)
    page = _mapping(event.get("page", {}), f"{path}.page")
    _check_fields(page, f"{path}.page", _PAGE_FIELDS, strict=True)
    if config.require_page_url and "url" not in page:
        raise _bad(f"{path}.page.url", "Missing data for required field (web events)")
    if "limited_data_use" in event and not isinstance(event["limited_data_use"], bool):
        raise _bad(f"{path}.limited_data_use", "Not a valid boolean")
    for key in ("app", "ad", "lead", "device"):
        if key in event:
            _mapping(event[key], f"{path}.{key}")


def _check_envelope(body: dict[str, Any]) -> None:
    for key in _LEGACY_TOP_LEVEL:
        if key in body:
            raise _bad(
                key,
                "Unknown field (legacy Events API 1.0 /pixel/track/ shape; "
                "/event/track/ takes event_source, event_source_id and data[])",
            )
    for key in body:
        if key not in _ENVELOPE_KEYS:
            raise _bad(key, "Unknown field")
    source = body.get("event_source")
    if source not in _EVENT_SOURCES:
        raise Rejected(40002, MSG_BAD_EVENT_SOURCE)
    if source != "web":
        raise _bad("event_source", f"{source!r} is not emulated; this emulator validates web only")
    source_id = body.get("event_source_id")
    if not isinstance(source_id, str) or not source_id.strip():
        raise Rejected(40002, "Invalid value for event_source_id: not a valid string.")
    for key in ("partner_name", "test_event_code"):
        if key in body and not isinstance(body[key], str):
            raise Rejected(40002, f"Invalid value for {key}: not a valid string.")
    if "data" not in body:
        raise _bad("data", "Missing data for required field")
    if not isinstance(body["data"], list):
        raise _bad("data", "Not a valid list")
    if not 1 <= len(body["data"]) <= MAX_EVENTS_PER_REQUEST:
        raise _bad("data", f"Length must be between 1 and {MAX_EVENTS_PER_REQUEST}")


def validate_body(body: object, config: Limits, now: float) -> Rejection | None:
    """Check a parsed request body as TikTok would (auth excluded); None when it is acceptable."""
    try:
        if not isinstance(body, dict):
            raise Rejected(40000, "Invalid parameters: request body must be a JSON object.")
        _check_envelope(body)
        for i, item in enumerate(body["data"]):
            _check_event(item, f"data.{i}", config, now)
    except Rejected as exc:
        return exc.rejection
    return None
