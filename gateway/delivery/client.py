"""The Events API client: the ``/event/track/`` body, batching, sending, and what an answer means.

TikTok answers almost every error with HTTP 200; the body ``code`` is authoritative
(``reference/tiktok-events-api.md`` §4). :func:`classify` turns an answer, or the failure to get
one, into a :class:`Verdict` the delivery worker acts on. Events arrive here already serialized
(the queue holds their JSON) and are spliced into the envelope without being decoded again.

Nothing here ever logs, raises or returns the access token.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import aiohttp
import orjson

from gateway.delivery.sandbox import Sandbox
from gateway.logs import get_logger
from gateway.store import keys
from gateway.store.connections import REDIS_ERRORS
from gateway.tiktok.api import API_PREFIX, TRACK_PATH
from gateway.tiktok.validation import DefaultLimits, validate_body

PARTNER_NAME = "TikTokGateway"
# The envelope around data[] with a 20-character pixel, the partner name and a test code of up to
# 100 characters is at most ~230 bytes; chunks() budgets this much unless given envelope_size().
ENVELOPE_MAX_BYTES = 256
MESSAGE_MAX_CHARS = 300

_log = get_logger("tiktok")
_LIMITS = DefaultLimits()
_TRACK = TRACK_PATH.removeprefix(API_PREFIX)  # "event/track/", relative to the API base URL


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


def body_prefix(
    pixel_code: str, *, test_event_code: str | None = None, partner_name: str | None = PARTNER_NAME
) -> bytes:
    """:func:`build_body`'s body up to its first event: the events follow, comma-joined, then
    ``]}``. Its length tells where each event's JSON lies in the body."""
    parts = [b'{"event_source":"web","event_source_id":', orjson.dumps(pixel_code)]
    if partner_name:
        parts += (b',"partner_name":', orjson.dumps(partner_name))
    if test_event_code:
        parts += (b',"test_event_code":', orjson.dumps(test_event_code))
    parts.append(b',"data":[')
    return b"".join(parts)


def build_body(
    pixel_code: str,
    events: Sequence[bytes],
    *,
    test_event_code: str | None = None,
    partner_name: str | None = PARTNER_NAME,
) -> bytes:
    """The ``/event/track/`` body for a web pixel, splicing in each event's JSON as it is.

    ``events[i]`` is the serialized ``data[i]`` object; it is not decoded or re-encoded. The
    envelope strings are encoded by orjson. ``test_event_code`` applies to the whole request, so
    test events must be batched apart from live ones.
    """
    prefix = body_prefix(pixel_code, test_event_code=test_event_code, partner_name=partner_name)
    return with_events(prefix, events)


def with_events(prefix: bytes, events: Sequence[bytes]) -> bytes:
    """A :func:`body_prefix` completed with ``events`` (each event's JSON as it is)."""
    return b"".join((prefix, b",".join(events), b"]}"))


def envelope_size(
    pixel_code: str, *, test_event_code: str | None = None, partner_name: str | None = PARTNER_NAME
) -> int:
    """The exact size of :func:`build_body`'s envelope: :func:`chunks`' ``envelope_bytes``."""
    prefix = body_prefix(pixel_code, test_event_code=test_event_code, partner_name=partner_name)
    return len(prefix) + len(b"]}")


def chunks(
    sizes: Sequence[int],
    *,
    max_events: int = keys.BATCH_MAX_EVENTS,
    max_bytes: int = keys.DELIVERY_REQUEST_MAX_BYTES,
    envelope_bytes: int = ENVELOPE_MAX_BYTES,
) -> list[range]:
    """Split events, given their serialized sizes in order, into consecutive request ranges.

    Each range has at most ``max_events`` events and a body (envelope + events + commas) of at
    most ``max_bytes``. An event too large for any request gets a range of its own; the caller
    dead-letters it.
    """
    if max_events < 1 or max_bytes <= envelope_bytes:
        raise ValueError(
            f"need max_events >= 1 and max_bytes > envelope_bytes, got {max_events=}, "
            f"{max_bytes=}, {envelope_bytes=}"
        )
    ranges: list[range] = []
    start = 0
    size = envelope_bytes
    for i, event_size in enumerate(sizes):
        count = i - start
        if count and (count >= max_events or size + 1 + event_size > max_bytes):
            ranges.append(range(start, i))
            start, size, count = i, envelope_bytes, 0
        size += event_size + (1 if count else 0)
    if start < len(sizes):
        ranges.append(range(start, len(sizes)))
    return ranges


def event_problem(event: Mapping[str, Any], pixel_code: str, now: float) -> str | None:
    """Why TikTok would refuse this web event alone (its 40002 message), or None if it would not."""
    body = {"event_source": "web", "event_source_id": pixel_code, "data": [dict(event)]}
    rejection = validate_body(body, _LIMITS, now)
    return None if rejection is None else rejection.message


class Destination(Protocol):
    """Where the delivery worker sends a request body: TikTok, or the sandbox."""

    async def send(self, body: bytes, access_token: str) -> Answer:
        """Send one ``/event/track/`` body; transport failures come back as RETRY answers."""
        ...


def _redact(text: str, secret: str) -> str:
    # Real tokens are long; a few characters would mostly match innocent text.
    return text.replace(secret, "[access token]") if len(secret) >= 8 else text


def _has_header_breaks(value: str) -> bool:
    return any(c in value for c in "\r\n\x00")


class TikTokClient:
    """Sends ``/event/track/`` requests to TikTok (or the emulator) at ``api_base_url``.

    :meth:`send` never raises for HTTP errors, network errors or time-outs: they become RETRY
    answers. A time-out after the body was sent is ambiguous — TikTok may have accepted the
    events — and retrying is still right: the retry carries the same ``event`` and ``event_id``,
    and TikTok deduplicates those within 48 h (reference §4.3, §7).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_base_url: str,
        *,
        timeout_s: float = keys.HTTP_TOTAL_TIMEOUT_S,
    ) -> None:
        self._session = session
        base = api_base_url if api_base_url.endswith("/") else api_base_url + "/"
        self.url = base + _TRACK
        self.timeout = aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(keys.HTTP_CONNECT_TIMEOUT_S, timeout_s)
        )

    async def send(self, body: bytes, access_token: str) -> Answer:
        """POST one body with ``access_token``; log one line (no token, no payload)."""
        started = time.perf_counter()
        status: int | None = None
        raw: bytes | None = None
        error: BaseException | None = None
        if _has_header_breaks(access_token):
            result = Classification(
                Verdict.AUTH,
                None,
                "access token has characters not allowed in an HTTP header; not sent",
                None,
            )
        else:
            headers = {"Access-Token": access_token, "Content-Type": "application/json"}
            try:
                async with self._session.post(
                    self.url,
                    data=body,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    raw = await response.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = exc
            result = classify(status, raw, error)
        return _finish(result, status, access_token, started, len(body))


class SandboxDestination:
    """The destination without a pixel: :class:`~gateway.sandbox.Sandbox`, answers classified
    exactly as TikTok's. The access token is not checked (there is none in sandbox mode)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def send(self, body: bytes, access_token: str) -> Answer:
        """Validate and record one body in Redis; a Redis failure is a RETRY answer."""
        started = time.perf_counter()
        status: int | None = None
        raw: bytes | None = None
        error: BaseException | None = None
        try:
            status, parsed = await self.sandbox.post(body)
            raw = orjson.dumps(parsed)
        except REDIS_ERRORS as exc:
            error = exc
        result = classify(status, raw, error)
        return _finish(result, status, access_token, started, len(body), sandbox=True)


def _finish(
    result: Classification,
    http_status: int | None,
    access_token: str,
    started: float,
    size: int,
    *,
    sandbox: bool = False,
) -> Answer:
    """The Answer of one request, logged as one line: no token, no payload."""
    answer = Answer(
        result.verdict,
        http_status,
        result.code,
        _redact(result.message, access_token),
        result.request_id,
        round((time.perf_counter() - started) * 1000, 1),
    )
    fields: dict[str, Any] = {
        "verdict": answer.verdict.value,
        "http_status": answer.http_status,
        "code": answer.code,
        "request_id": answer.request_id,
        "elapsed_ms": answer.elapsed_ms,
        "bytes": size,
    }
    if sandbox:
        fields["sandbox"] = True
    if answer.verdict is Verdict.DELIVERED and answer.code == 0:
        _log.info("tiktok.request", **fields)
    else:
        # Includes 20001 (TikTok does not say which events failed) and 40050 (a resend).
        _log.warning("tiktok.request", message=answer.message, **fields)
    return answer
