"""Helpers for the ingest tests: a gateway app on the test Redis, and reading what it queued."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.settings import Settings
from gateway.store import keys

PIXEL = "CXXXXXXXXXXXXXXXXXX0"
EMAIL = "Jane.Doe+shop@Example.com"
PHONE = "06 12 34 56 78"
EMAIL_HASH = hashlib.sha256(b"jane.doe+shop@example.com").hexdigest()
PHONE_HASH = hashlib.sha256(b"+33612345678").hexdigest()
TTCLID = "E.C.P.CsQBExampleOnly-NotARealClickId_abc"

GatewayFactory = Callable[..., Awaitable[TestClient]]  # type: ignore[type-arg]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def queued(redis: Redis) -> list[dict[str, Any]]:
    """Every entry of the delivery stream, with ``data`` decoded."""
    out = []
    for _, fields in await redis.xrange(keys.EVENTS_STREAM):
        entry = {k.decode(): v.decode() for k, v in fields.items()}
        entry["data"] = orjson.loads(entry["data"])
        out.append(entry)
    return out


def make_gateway(
    aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    """A factory of test clients for gateways configured with extra TTGW_* variables."""

    async def factory(**env: str) -> TestClient:  # type: ignore[type-arg]
        settings = make_settings(TTGW_REDIS_URL=redis_url, **env)
        return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]

    return factory


def track(event: str = "Purchase", **fields: Any) -> dict[str, Any]:
    """A small valid track event."""
    body: dict[str, Any] = {"type": "track", "event": event}
    body.update(fields)
    return body


def set_cookies(response: Any) -> dict[str, str]:
    """name -> full Set-Cookie header of a response."""
    return {h.split("=", 1)[0]: h for h in response.headers.getall("Set-Cookie", [])}
