"""Doctor's check of the access tokens: one test event per integration with a test code.

Each is sent through the integration's own delivery route, so TikTok's answer is what delivery
would get. Tokens are never printed.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson

from gateway.config import Integration
from gateway.delivery.client import build_body
from gateway.delivery.destinations import http_session, make_routes
from gateway.delivery.verdicts import Answer, Verdict
from gateway.integrations import Integrations
from gateway.operate.doctor_check import Check, Level
from gateway.settings import Settings
from gateway.store.connections import RedisClient

_AUTH_HINTS = {
    40001: "the token has no permission on this pixel: use a token generated for it",
    40104: "the access token is empty",
    40105: "access token is incorrect or revoked: generate a new one in Events Manager",
}
_NO_TEST_CODE = (
    "no test_event_code: token not checked (set one to let doctor check it without live data)"
)


def _test_body(integration: Integration, test_event_code: str) -> bytes:
    host = integration.hostnames[0] if integration.hostnames else "example.com"
    event = {
        "event": "ViewContent",
        "event_time": int(time.time()),
        "event_id": f"ttgw-doctor-{uuid.uuid4()}",
        "user": {"ip": "203.0.113.1", "user_agent": "tt-gateway doctor"},
        "properties": {"content_type": "product", "content_ids": ["ttgw-test"]},
        "page": {"url": f"https://{host}/"},
        "limited_data_use": False,
    }
    return build_body(
        integration.pixel_code, [orjson.dumps(event)], test_event_code=test_event_code
    )


def _token_check(who: str, answer: Answer) -> Check:
    if answer.verdict is Verdict.DELIVERED:
        accepted = f"test event accepted (request_id {answer.request_id}), see Test events"
        return Check("token", Level.OK, f"{who}: {accepted}")
    said = f"{answer.code} {answer.message}" if answer.code is not None else answer.message
    if answer.http_status is not None and answer.code is None:
        said = f"HTTP {answer.http_status} {said}"
    hint = _AUTH_HINTS.get(answer.code or 0)
    if hint is None:
        hint = {
            Verdict.AUTH: "check the access token and TTGW_TIKTOK_API_URL",
            Verdict.RETRY: "TikTok could not be reached or failed: try again",
            Verdict.THROTTLED: "rate limited: try again in a few minutes",
        }.get(answer.verdict, "the test event was refused")
    return Check("token", Level.FAIL, f"{who}: TikTok answered {said.strip()} ({hint})")


async def check_tokens(client: RedisClient, settings: Settings) -> list[Check]:
    """Send one test event per integration with a test code, through its delivery route."""
    if settings.sandbox:
        return [Check("token", Level.OK, "sandbox: nothing is sent")]
    enabled = Integrations(settings).enabled
    session = http_session()
    try:
        routes = make_routes(settings, client, session)

        async def check(integration: Integration) -> Check:
            who = f"pixel {integration.pixel_code} ({integration.name})"
            if not integration.test_event_code:
                return Check("token", Level.WARN, f"{who}: {_NO_TEST_CODE}")
            route = routes(integration.pixel_code)
            assert route is not None  # make_routes has a route for every enabled integration
            body = _test_body(integration, integration.test_event_code)
            answer = await route.destination.send(body, integration.access_token)
            return _token_check(who, answer)

        return list(await asyncio.gather(*(check(i) for i in enabled)))
    finally:
        await session.close()
