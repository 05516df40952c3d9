"""The gateway's first-party cookies: what they hold, how they are signed, read and written.

Three cookies, all set server-side (script-written cookies are capped to 7 days by Safari ITP),
``Path=/``, ``SameSite=Lax``, ``Max-Age`` just under Chrome's 400-day cap, ``Secure`` on https,
``Domain`` when a cookie domain is configured, and refreshed on every response:

* :data:`VISITOR_COOKIE` (``_ttgw``) — the visitor id, HMAC-signed, HttpOnly.
* :data:`TTP_COOKIE` (``_ttp``) — TikTok's browser id. Read when the pixel set one, else minted here
  in the pixel's current format. Not HttpOnly, so a co-existing pixel picks up the same value, and
  not signed, because the pixel writes it too.
* :data:`CLICK_COOKIE` (``_ttgw_clk``) — the captured click: ``ttclid`` and click time in ms,
  HMAC-signed, HttpOnly.

A cookie that is tampered with or malformed is never trusted and never an error: the readers return
``None`` and the caller mints a new value. Everything here is pure: no I/O, no logging.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from gateway.store.keys import COOKIE_MAX_AGE_S

VISITOR_COOKIE = "_ttgw"
TTP_COOKIE = "_ttp"
CLICK_COOKIE = "_ttgw_clk"

COOKIE_HEADER_MAX_CHARS = 64 * 1024  # a Cookie header is read up to here, the rest is ignored

_KEY_INFO = b"ttgw cookies v1"
_VISITOR_CONTEXT = b"v1|visitor|"
_CLICK_CONTEXT = b"v1|click|"
_SIG_BYTES = 16

# All patterns are matched with fullmatch and spell out ASCII classes: \d and \w would also match
# non-ASCII digits and letters.
_VISITOR_ID_RE = re.compile(r"[A-Za-z0-9_-]{22}")
_SIG_RE = re.compile(r"[A-Za-z0-9_-]{22}")  # 16 bytes, base64url without padding
_TTP_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
# '=' is base64 padding; at least one alphanumeric so "." or "--" do not pass as a click id.
_TTCLID_RE = re.compile(r"(?=[^A-Za-z0-9]*[A-Za-z0-9])[A-Za-z0-9._=-]{1,1024}")
# Canonical decimal only: one click time has exactly one spelling, so one signed text.
_CLICK_MS_RE = re.compile(r"0|[1-9][0-9]{0,15}")
_PIXEL_CLICK_RE = re.compile(r"(.+)\.[0-9]{13}", re.DOTALL)
# RFC 7230 token (the RFC 6265 cookie-name) and RFC 6265 cookie-octet.
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_COOKIE_VALUE_RE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

_CROCKFORD32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS = [high + low for high in _CROCKFORD32 for low in _CROCKFORD32]  # by 10 bits
_PAIR_SHIFTS = range(120, -1, -10)
_ULID_RANDOM_BITS = 80
_TTP_SUFFIX = "_.tt.1"

_VISITOR_COOKIE_MAX_CHARS = 22 + 1 + 22
_CLICK_COOKIE_MAX_CHARS = 1024 + 1 + 16 + 1 + 22


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class CookieSigner:
    """Signs and verifies the gateway's own cookie values with a key derived from the secret.

    The HMAC key is derived from ``TTGW_SECRET_KEY`` with a fixed label, so the same secret can
    serve other purposes (token encryption) without one use ever producing the other's output.
    """

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("secret_key must not be empty")
        self._key = hmac.new(secret_key.encode("utf-8"), _KEY_INFO, hashlib.sha256).digest()

    def _sign(self, context: bytes, message: str) -> str:
        mac = hmac.digest(self._key, context + message.encode("ascii"), "sha256")  # one C call
        return _b64url(mac[:_SIG_BYTES])

    def _verify(self, context: bytes, message: str, signature: str) -> bool:
        # Both sides are ASCII by the time we get here (checked by regex), so encode() is safe.
        expected = self._sign(context, message).encode("ascii")
        return hmac.compare_digest(expected, signature.encode("ascii"))

    def new_visitor_id(self) -> str:
        """A fresh visitor id: 16 random bytes as 22 base64url characters."""
        return _b64url(random_bytes(16))

    def visitor_cookie(self, visitor_id: str) -> str:
        """The ``_ttgw`` cookie value for a visitor id: ``<id>.<signature>``.

        Raises :class:`ValueError` for an id that :func:`valid_visitor_id` rejects.
        """
        if not valid_visitor_id(visitor_id):
            raise ValueError("not a visitor id")
        return f"{visitor_id}.{self._sign(_VISITOR_CONTEXT, visitor_id)}"

    def read_visitor(self, value: str | None) -> str | None:
        """The visitor id in a ``_ttgw`` value signed with this secret, else ``None``."""
        if not isinstance(value, str) or len(value) > _VISITOR_COOKIE_MAX_CHARS:
            return None
        visitor_id, dot, signature = value.partition(".")
        if not dot or not valid_visitor_id(visitor_id) or not _SIG_RE.fullmatch(signature):
            return None
        if not self._verify(_VISITOR_CONTEXT, visitor_id, signature):
            return None
        return visitor_id

    def click_cookie(self, ttclid: str, click_ms: int) -> str:
        """The ``_ttgw_clk`` cookie value: ``<ttclid>.<click_ms>.<signature>``.

        Raises :class:`ValueError` for a ttclid that :func:`read_ttclid` rejects or a click time
        that is negative or not an int.
        """
        if read_ttclid(ttclid) is None:
            raise ValueError("not a ttclid")
        if isinstance(click_ms, bool) or not isinstance(click_ms, int):
            raise ValueError("click_ms must be an int")
        ms = str(click_ms)
        if not _CLICK_MS_RE.fullmatch(ms):
            raise ValueError("click_ms out of range")
        return f"{ttclid}.{ms}.{self._sign(_CLICK_CONTEXT, f'{ttclid}|{ms}')}"

    def read_click(self, value: str | None) -> tuple[str, int] | None:
        """``(ttclid, click_ms)`` from a ``_ttgw_clk`` value signed with this secret, or None."""
        if not isinstance(value, str) or len(value) > _CLICK_COOKIE_MAX_CHARS:
            return None
        # The ttclid itself may contain dots; the last two fields never do.
        parts = value.rsplit(".", 2)
        if len(parts) != 3:
            return None
        ttclid, ms, signature = parts
        if (
            read_ttclid(ttclid) is None
            or not _CLICK_MS_RE.fullmatch(ms)
            or not _SIG_RE.fullmatch(signature)
        ):
            return None
        if not self._verify(_CLICK_CONTEXT, f"{ttclid}|{ms}", signature):
            return None
        return ttclid, int(ms)


def valid_visitor_id(value: str) -> bool:
    """Whether ``value`` has the shape of a visitor id: 22 base64url characters."""
    return isinstance(value, str) and _VISITOR_ID_RE.fullmatch(value) is not None


_RANDOM_POOL_BYTES = 4096
_random_pool = memoryview(b"")


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the OS's random source (as ``secrets.token_bytes``), read 4 KiB at a
    time: one ``getrandom`` call per few hundred new visitors instead of one per value. Used
    from the event loop's thread; a forked child starts with an empty pool."""
    global _random_pool
    if len(_random_pool) < n:
        _random_pool = memoryview(os.urandom(max(n, _RANDOM_POOL_BYTES)))
    taken, _random_pool = _random_pool[:n], _random_pool[n:]
    return taken.tobytes()


def _forget_random_pool() -> None:
    global _random_pool
    _random_pool = memoryview(b"")  # a forked child must never hand out its parent's bytes


os.register_at_fork(after_in_child=_forget_random_pool)


def mint_ttp(now_ms: int) -> str:
    """A new ``_ttp`` in the pixel's current format: a ULID for ``now_ms`` followed by ``_.tt.1``.

    The ULID is 26 Crockford base32 characters: 10 for the 48-bit millisecond time, 16 for 80
    random bits, so values sort by creation time as the pixel's own do.
    """
    if isinstance(now_ms, bool) or not isinstance(now_ms, int) or not 0 <= now_ms < 1 << 48:
        raise ValueError("now_ms must be an int in the 48-bit ULID time range")
    value = (now_ms << _ULID_RANDOM_BITS) | int.from_bytes(random_bytes(_ULID_RANDOM_BITS // 8))
    # 26 base32 digits (130 bits, the top two zero), two at a time: 13 table look-ups
    pairs = [_CROCKFORD_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS]
    return "".join(pairs) + _TTP_SUFFIX


# What page script, templates and ad platforms put where an id was meant to be: never an id.
JUNK_VALUES = frozenset(
    {"undefined", "null", "none", "nil", "nan", "true", "false", "0", "1", "-1", "unknown",
     "(not set)", "not set", "(none)", "n/a", "na", "test", "ttclid", "clickid", "click_id",
     "ttp", "_ttp", "[object object]", "object"}
)  # fmt: skip
# an unexpanded macro: TikTok's __CLICKID__, {{…}} and ${…} of templates, [..] of some platforms
_MACRO_RE = re.compile(r".*(__[A-Za-z_]+__|\{\{|\}\}|\$\{|%7B|%7D|\[|\]).*", re.DOTALL)
# A real click id is ``E.C.P.`` and a long base64url blob (325 characters seen); anything this
# short is a placeholder or a test value, never a click TikTok issued.
TTCLID_MIN_CHARS = 16  # without TikTok's prefix; with it, whatever follows
TTCLID_PREFIX = "E.C.P."


def junk_reason(value: str) -> str | None:
    """Why ``value`` is a placeholder rather than an id (``"undefined"``, an unexpanded macro…)."""
    if value.strip().casefold() in JUNK_VALUES:
        return f"{value[:40]!r} is a placeholder, not an id"
    if _MACRO_RE.fullmatch(value):
        return f"{value[:40]!r} is an unexpanded macro, not an id"
    return None


def read_ttp(value: str | None) -> str | None:
    """``value`` when it looks like a ``_ttp`` (1-128 of ``[A-Za-z0-9._-]``), else ``None``.

    TikTok's format has changed several times (27-char base62 or base64url, with or without
    ``.tt.1``, ULID forms, a ms suffix), so the value is treated as opaque and only its alphabet,
    its length and that it is no placeholder (``undefined``…) are checked; it is passed on
    unchanged.
    """
    return None if ttp_problem(value) else value


def _id_problem(value: str | None, pattern: re.Pattern[str], unlike: str) -> str | None:
    """Why ``value`` cannot be an id of ``pattern``: empty, a placeholder, or ``unlike``."""
    if not isinstance(value, str) or not value:
        return "is empty"
    junk = junk_reason(value)
    if junk is not None:
        return junk
    return None if pattern.fullmatch(value) else unlike


def ttp_problem(value: str | None) -> str | None:
    """Why ``value`` cannot be a ``_ttp``; None when it can."""
    return _id_problem(
        value, _TTP_RE, "is not a _ttp value (1-128 characters of A-Z a-z 0-9 . _ -)"
    )


def read_ttclid(value: str | None) -> str | None:
    """``value`` when it can be a ``ttclid``, else ``None``: a value that cannot be a click id
    (``undefined``, ``null``, ``1``, TikTok's unexpanded ``__CLICKID__`` macro…) is no click,
    and never replaces one.

    Real click ids are ``E.C.P.`` followed by URL-safe base64 (reference: M to H), but the prefix is
    not documented as stable, so it is not required: the alphabet (URL-safe base64, ``=``,
    ``.``), the length (at most 1024; at least 16 without the prefix) and the placeholders are
    checked.
    """
    return None if ttclid_problem(value) else value


def ttclid_problem(value: str | None) -> str | None:
    """Why ``value`` cannot be a click id; None when it can."""
    problem = _id_problem(
        value, _TTCLID_RE, "is not a click id (letters, digits, '.', '_', '-', '=')"
    )
    short = value is not None and len(value) < TTCLID_MIN_CHARS
    if problem is None and short and not str(value).startswith(TTCLID_PREFIX):
        return "is too short for a click id (real ones start E.C.P. and run to ~300 characters)"
    return problem


def strip_pixel_click_suffix(value: str) -> str:
    """Remove the ``.<13-digit ms>`` the pixel appends to the click id in its ``ttclid`` cookie."""
    match = _PIXEL_CLICK_RE.fullmatch(value)
    return value if match is None else match.group(1)


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    """The attributes every gateway cookie gets, from the settings and the request's scheme."""

    domain: str | None
    secure: bool
    max_age_s: int = COOKIE_MAX_AGE_S


def set_cookie_header(name: str, value: str, policy: CookiePolicy, *, http_only: bool) -> str:
    """The full ``Set-Cookie`` header value for one cookie under ``policy``.

    Raises :class:`ValueError` when the name is not a token or the value (or domain) holds a
    character outside RFC 6265 cookie-octets: values built here never do, and refusing them stops
    header and attribute injection.
    """
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError("cookie name must be an RFC 7230 token")
    if not _COOKIE_VALUE_RE.fullmatch(value):
        raise ValueError("cookie value holds characters outside RFC 6265 cookie-octets")
    if isinstance(policy.max_age_s, bool) or not isinstance(policy.max_age_s, int):
        raise ValueError("max_age_s must be an int")
    parts = [f"{name}={value}", f"Max-Age={policy.max_age_s}", "Path=/"]
    if policy.domain is not None:
        if not policy.domain or not _COOKIE_VALUE_RE.fullmatch(policy.domain):
            raise ValueError("cookie domain holds characters outside RFC 6265 cookie-octets")
        parts.append(f"Domain={policy.domain}")
    parts.append("SameSite=Lax")
    if policy.secure:
        parts.append("Secure")
    if http_only:
        parts.append("HttpOnly")
    return "; ".join(parts)


def parse_cookie_header(header: str | None) -> dict[str, str]:
    """The cookies of a request's ``Cookie`` header, tolerating junk.

    Unlike :mod:`http.cookies`, which drops every cookie when one is malformed, each pair stands
    alone: pairs without ``=``, with a name that is not a token, or with control characters are
    skipped. Surrounding whitespace and one pair of double quotes are removed from values. The
    first occurrence of a name wins (browsers send the most specific cookie first). Only the first
    :data:`COOKIE_HEADER_MAX_CHARS` characters are read, and a pair cut by that limit is dropped.
    """
    if not isinstance(header, str):
        return {}
    if len(header) > COOKIE_HEADER_MAX_CHARS:
        header = header[:COOKIE_HEADER_MAX_CHARS]
        # A value cut short could still look valid (a _ttp, say); drop the cut pair.
        header = header[: header.rfind(";") + 1]
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, eq, value = pair.partition("=")
        name = name.strip(" \t")
        if not eq or not _TOKEN_RE.fullmatch(name) or name in cookies:
            continue
        value = value.strip(" \t")
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        if _CONTROL_RE.search(value):
            continue
        cookies[name] = value
    return cookies
