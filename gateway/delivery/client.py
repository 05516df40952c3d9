"""The Events API client: the ``/event/track/`` body, batching and sending; what an answer means
is :mod:`gateway.delivery.verdicts`. Events arrive here already serialized (the queue holds their
JSON) and are spliced into the envelope without being decoded again.

Nothing here ever logs, raises or returns the access token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import orjson

from gateway.delivery.sandbox import Sandbox
from gateway.delivery.verdicts import Answer, Classification, Verdict, classify
from gateway.logs import get_logger
from gateway.store import keys
from gateway.store.connections import REDIS_ERRORS
from gateway.tiktok.api import API_PREFIX, TRACK_PATH
from gateway.tiktok.validation import DefaultLimits, validate_body

PARTNER_NAME = "TikTokGateway"
# The envelope around data[] with a 20-character pixel, the partner name and a test code of up to
# 100 characters is at most ~230 bytes; chunks() budgets this much unless given envelope_size().
ENVELOPE_MAX_BYTES = 256

_log = get_logger("tiktok")
_LIMITS = DefaultLimits()
_TRACK = TRACK_PATH.removeprefix(API_PREFIX)  # "event/track/", relative to the API base URL


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
