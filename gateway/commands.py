"""Operator commands that act on the queue: ``replay`` and ``send-test``."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import datetime

import orjson

from gateway.connections import make_redis
from gateway.delivery import http_session, make_routes
from gateway.replay import dead_letters, replay
from gateway.settings import Settings, SettingsError
from gateway.tiktok import build_body


def parse_time(value: str | None, option: str) -> int | None:
    """Milliseconds since the epoch from Unix seconds or ISO-8601 (with an offset)."""
    if value is None:
        return None
    try:
        return int(float(value) * 1000)
    except ValueError:
        pass
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


async def send_test(settings: Settings, args: argparse.Namespace) -> int:
    """``tt-gateway send-test``: one test event straight to TikTok; print its answer."""
    from gateway.integrations import Integrations

    integrations = Integrations(settings).enabled
    chosen = [i for i in integrations if args.pixel in (None, i.pixel_code)]
    if not chosen:
        raise SettingsError("--pixel", f"no integration has pixel {args.pixel}")
    integration = chosen[0]
    code = args.test_event_code or integration.test_event_code
    if code is None and not settings.sandbox:
        raise SettingsError(
            "TTGW_TEST_EVENT_CODE",
            "send-test needs a test event code (Events Manager > Test events), "
            "or --test-event-code",
        )
    host = integration.hostnames[0] if integration.hostnames else "example.com"
    event = {
        "event": "ViewContent",
        "event_time": int(time.time()),
        "event_id": f"ttgw-test-{uuid.uuid4()}",
        "user": {"ip": "203.0.113.1", "user_agent": "tt-gateway send-test"},
        "properties": {"content_type": "product", "content_ids": ["ttgw-test"]},
        "page": {"url": f"https://{host}/"},
        "limited_data_use": False,
    }
    body = build_body(integration.pixel_code, [orjson.dumps(event)], test_event_code=code)
    assert settings.redis_url is not None
    redis = make_redis(settings.redis_url)
    session = http_session()
    try:
        route = make_routes(settings, redis, session)(integration.pixel_code)
        assert route is not None
        answer = await route.destination.send(body, integration.access_token)
    finally:
        await session.close()
        await redis.aclose()
    print(orjson.dumps({
        "pixel": integration.pixel_code, "test_event_code": code, "event_id": event["event_id"],
        "verdict": answer.verdict.value, "http_status": answer.http_status, "code": answer.code,
        "message": answer.message, "request_id": answer.request_id,
    }, option=orjson.OPT_INDENT_2).decode())  # fmt: skip
    return 0 if answer.verdict.value == "delivered" else 1
