"""Operator commands that act on the queue: ``replay`` and ``send-test``."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from gateway.config import Integration, SettingsError
from gateway.delivery.client import build_body
from gateway.delivery.destinations import http_session, make_routes
from gateway.delivery.replay import dead_letters, replay
from gateway.integrations import Integrations, IntegrationStore, TokenBox
from gateway.settings import Settings
from gateway.store.connections import RedisClient, make_redis


def parse_time(value: str | None, option: str) -> int | None:
    """Milliseconds since the epoch from Unix seconds or ISO-8601 (with an offset)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not 0 <= seconds < 1e11:
            raise SettingsError(option, f"not a time: {value!r} (Unix seconds or ISO-8601)")
        return int(seconds * 1000)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SettingsError(option, f"not a time: {value!r} (Unix seconds or ISO-8601)") from None
    if parsed.tzinfo is None:
        raise SettingsError(option, "an ISO-8601 time needs a UTC offset, e.g. 2026-11-22T10:00Z")
    return int(parsed.timestamp() * 1000)


def _bar(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


async def replay_command(settings: Settings, args: argparse.Namespace) -> int:
    """``tt-gateway replay``: list (``--dry-run``) or move dead letters back to the queue."""
    since = parse_time(args.since, "--since")
    until = parse_time(args.until, "--until")
    assert settings.redis_url is not None
    redis = make_redis(settings.redis_url)
    try:
        letters = await dead_letters(redis, event_ids=set(args.event_id), since_ms=since,
                                     until_ms=until)  # fmt: skip
        for letter in letters:
            when = datetime.fromtimestamp(letter.dead_ms / 1000).isoformat(timespec="seconds")
            print(f"{when}  {letter.pixel}  {letter.event}  {letter.event_id}  {letter.reason}")
        if args.dry_run or not letters:
            print(f"{len(letters)} dead letter(s){' would be' if args.dry_run else ''} replayed")
            return 0
        moved = await replay(redis, letters, progress=_bar)
        print(f"{moved} dead letter(s) queued again with their original event_id")
        return 0
    finally:
        await redis.aclose()


async def send_test_event(
    settings: Settings,
    registry: Integrations,
    redis: RedisClient,
    session: aiohttp.ClientSession,
    integration: Integration,
    test_event_code: str | None,
) -> dict[str, Any]:
    """Send one ViewContent test event straight to the integration's destination."""
    host = integration.hostnames[0] if integration.hostnames else "example.com"
    event_id = f"ttgw-test-{uuid.uuid4()}"
    event = {
        "event": "ViewContent",
        "event_time": int(time.time()),
        "event_id": event_id,
        "user": {"ip": "203.0.113.1", "user_agent": "tt-gateway send-test"},
        "properties": {"content_type": "product", "content_ids": ["ttgw-test"]},
        "page": {"url": f"https://{host}/"},
        "limited_data_use": False,
    }
    body = build_body(
        integration.pixel_code, [orjson.dumps(event)], test_event_code=test_event_code
    )
    route = make_routes(settings, redis, session, registry)(integration.pixel_code)
    assert route is not None
    answer = await route.destination.send(body, integration.access_token)
    return {
        "pixel": integration.pixel_code,
        "test_event_code": test_event_code,
        "event_id": event_id,
        "verdict": answer.verdict.value,
        "http_status": answer.http_status,
        "code": answer.code,
        "message": answer.message,
        "request_id": answer.request_id,
    }


async def send_test(settings: Settings, args: argparse.Namespace) -> int:
    """``tt-gateway send-test``: one test event straight to TikTok; print its answer."""
    assert settings.redis_url is not None
    redis = make_redis(settings.redis_url)
    session = http_session()
    try:
        registry = Integrations(settings)
        await registry.refresh(IntegrationStore(redis, TokenBox(settings.secret_key)), force=True)
        chosen = [i for i in registry.enabled if args.pixel in (None, i.pixel_code)]
        if not chosen:
            raise SettingsError("--pixel", f"no integration has pixel {args.pixel}")
        code = args.test_event_code or chosen[0].test_event_code
        if code is None and not registry.sandbox:
            raise SettingsError(
                "TTGW_TEST_EVENT_CODE",
                "send-test needs a test event code (Events Manager > Test events), "
                "or --test-event-code",
            )
        answer = await send_test_event(settings, registry, redis, session, chosen[0], code)
    finally:
        await session.close()
        await redis.aclose()
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 0 if answer["verdict"] == "delivered" else 1
