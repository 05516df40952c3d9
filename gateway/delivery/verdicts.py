"""What TikTok's answer means: the body ``code`` (TikTok answers almost every error with HTTP
200; the code is authoritative, ``reference/tiktok-events-api.md`` §4), else the HTTP status, else
the failure to get one, turned into a :class:`Verdict` the delivery worker acts on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import orjson

MESSAGE_MAX_CHARS = 300


class Verdict(StrEnum):
    """What the delivery worker does with the events of one request."""

    DELIVERED = "delivered"  # accepted (or already accepted): settle the events
    RETRY = "retry"  # transient or unknown: send again later, same event_ids
    THROTTLED = "throttled"  # rate limited: send again later and slow the pixel's limiter down
    INVALID = "invalid"  # the payload is bad: split the batch to find the bad event
    AUTH = "auth"  # token, permission or URL is wrong: pause the integration, keep its events
    REJECTED = "rejected"  # refused for good, no split: dead-letter the events


DELIVERED_CODES = frozenset({0, 20001, 40050})  # 20001 partial success, 40050 duplicated request
THROTTLED_CODES = frozenset({40016, 40100, 40132, 40133, 51021})
INVALID_CODES = frozenset({40000, 40002})
AUTH_CODES = frozenset(
    {
        40001,  # no permission to operate the pixel
        40101,  # invalid auth parameters
        40102,  # access token expired
        40104,  # access token missing
        40105,  # access token incorrect or revoked
        40106,  # core user invalid
        40113,  # app blocked
        40118,  # not allowlisted
        40119,  # developer and advertiser in different companies
        40125,  # no developer permission
        # Wrong API version / domain: the configured URL is wrong for every event, as with HTTP
        # 404, so the integration pauses instead of dead-lettering everything it has.
        40006,
        40010,
        40051,
    }
)
RETRY_CODES = frozenset({50000, 50002, 51001, 51039, 51305, 60001})  # and any other 5xxxx

RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
INVALID_STATUSES = frozenset({413})
# 404 (and 405) mean the URL is wrong: TikTok answers them before any API logic. Redirects are
# not followed (a POST must not silently become a GET), so a 3xx is a wrong URL too.
AUTH_STATUSES = frozenset({401, 403, 404, 405})

_TITLE = re.compile(rb"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Classification:
    """What :func:`classify` makes of an answer; ``code`` is None when the body had none."""

    verdict: Verdict
    code: int | None
    message: str
    request_id: str | None


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one request; never carries the access token or the payload."""

    verdict: Verdict
    http_status: int | None
    code: int | None
    message: str
    request_id: str | None
    elapsed_ms: float


def code_verdict(code: int) -> Verdict:
    """The verdict for a body ``code`` (reference §4.2); unknown codes go by their range."""
    for table, verdict in (
        (DELIVERED_CODES, Verdict.DELIVERED),
        (THROTTLED_CODES, Verdict.THROTTLED),
        (INVALID_CODES, Verdict.INVALID),
        (AUTH_CODES, Verdict.AUTH),
        (RETRY_CODES, Verdict.RETRY),
    ):
        if code in table:
            return verdict
    if 40000 <= code <= 49999:
        return Verdict.REJECTED
    # 5xxxx is a service error; a code from no documented range is retried too rather than
    # dropped (the worker dead-letters events still failing after its retry horizon).
    return Verdict.RETRY


def status_verdict(http_status: int | None) -> Verdict:
    """The verdict for an HTTP status whose body carried no code."""
    if http_status is None or http_status in RETRY_STATUSES or http_status >= 500:
        return Verdict.RETRY
    if http_status in INVALID_STATUSES:
        return Verdict.INVALID
    if http_status in AUTH_STATUSES or 300 <= http_status < 400:
        return Verdict.AUTH
    if 400 <= http_status < 500:
        return Verdict.REJECTED
    return Verdict.RETRY  # a 2xx without an API answer: nothing says TikTok took the events


def _clip(text: str) -> str:
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= MESSAGE_MAX_CHARS else text[: MESSAGE_MAX_CHARS - 1] + "…"


def _describe_page(http_status: int | None, body: bytes) -> str:
    if not body.strip():
        return f"HTTP {http_status}, empty answer"
    title = _TITLE.search(body)
    text = (title.group(1) if title else body[:MESSAGE_MAX_CHARS]).decode("utf-8", "replace")
    return _clip(f"HTTP {http_status}, not an API answer: {text}")


def classify(
    http_status: int | None, body: bytes | None, error: BaseException | None = None
) -> Classification:
    """Classify one request's outcome; pure.

    ``error`` (a time-out, a connection error) wins over everything else: RETRY, with the error's
    class name in the message. Otherwise a JSON object with an integer ``code`` decides, whatever
    the HTTP status; without one (an HTML proxy page, an empty or non-JSON body) the HTTP status
    decides, and a 2xx is retried because nothing says the events were taken.
    """
    if error is not None:
        name, detail = type(error).__name__, str(error)
        if not detail and isinstance(error, TimeoutError):
            detail = "no complete answer in time (TikTok may still have accepted the events)"
        return Classification(
            Verdict.RETRY, None, _clip(f"{name}: {detail}" if detail else name), None
        )
    parsed: object = None
    if body:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
    if isinstance(parsed, dict):
        code, message, rid = parsed.get("code"), parsed.get("message"), parsed.get("request_id")
        request_id = rid if isinstance(rid, str) and rid else None
        text = _clip(message) if isinstance(message, str) else ""
        if isinstance(code, int) and not isinstance(code, bool):
            return Classification(code_verdict(code), code, text, request_id)
        return Classification(
            status_verdict(http_status),
            None,
            _clip(f"HTTP {http_status}, JSON answer without an integer code: {text}"),
            request_id,
        )
    return Classification(
        status_verdict(http_status), None, _describe_page(http_status, body or b""), None
    )
