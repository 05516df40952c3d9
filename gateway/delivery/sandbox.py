"""The sandbox destination: where events go when no pixel is configured.

``tt-gateway run`` with no ``TTGW_PIXEL_CODE`` delivers here instead of to TikTok. The sandbox
answers exactly as the Events API would — the same strict validation as the emulator
(:mod:`gateway.tiktok.validation`), the same body codes — and records each accepted event in a Redis
stream (the newest :data:`~gateway.keys.SANDBOX_KEEP_EVENTS`), which the dashboard shows. Nothing
leaves the machine. Because it lives in Redis, a separate ``worker`` process records into the same
place the web process reads from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson

from gateway.store import keys
from gateway.store.connections import RedisClient
from gateway.tiktok.api import MSG_OK, new_request_id
from gateway.tiktok.validation import DefaultLimits, Limits, validate_body


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    """One event the sandbox accepted, as it would have reached TikTok."""

    pixel_code: str
    event: str
    event_id: str | None
    request_id: str
    received_ms: int
    test_event_code: str | None
    payload: dict[str, Any]


class Sandbox:
    """A stand-in for ``POST /event/track/`` that validates, records and never sends."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.limits: Limits = limits or DefaultLimits()
        self.clock = clock

    async def post(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer a request body as TikTok would: (HTTP status, JSON body)."""
        now = self.clock()
        request_id = new_request_id(now)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return 200, _answer(
                40000, f"Invalid parameters: body is not valid JSON ({exc}).", request_id
            )
        rejection = validate_body(parsed, self.limits, now)
        if rejection is not None:
            return 200, _answer(rejection.code, rejection.message, request_id)
        pipe = self.redis.pipeline(transaction=False)
        for item in parsed["data"]:
            pipe.xadd(
                keys.SANDBOX_STREAM,
                {
                    "pixel_code": parsed["event_source_id"],
                    "event": item["event"],
                    "event_id": item.get("event_id", ""),
                    "request_id": request_id,
                    "received_ms": int(now * 1000),
                    "test_event_code": parsed.get("test_event_code", ""),
                    "payload": orjson.dumps(item),
                },
                maxlen=keys.SANDBOX_KEEP_EVENTS,
                approximate=True,
            )
        await pipe.execute()
        return 200, _answer(0, MSG_OK, request_id)

    async def recorded(self, count: int = 100) -> list[SandboxRecord]:
        """The newest recorded events, newest first."""
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self.redis.xrevrange(keys.SANDBOX_STREAM, count=count),
        )
        records = []
        for _, fields in entries:
            text = {k.decode(): v.decode() for k, v in fields.items() if k != b"payload"}
            records.append(
                SandboxRecord(
                    pixel_code=text["pixel_code"],
                    event=text["event"],
                    event_id=text["event_id"] or None,
                    request_id=text["request_id"],
                    received_ms=int(text["received_ms"]),
                    test_event_code=text["test_event_code"] or None,
                    payload=orjson.loads(fields[b"payload"]),
                )
            )
        return records


def _answer(code: int, message: str, request_id: str) -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": request_id, "data": {}}
