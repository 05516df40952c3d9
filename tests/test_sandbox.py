from __future__ import annotations

import hashlib
import time

import orjson
from redis.asyncio import Redis

from gateway.delivery.sandbox import Sandbox
from gateway.settings import SANDBOX_PIXEL_CODE
from gateway.store import keys
from gateway.store.connections import make_redis

NOW = time.time()


def body(*events: dict[str, object], test_code: str | None = None) -> bytes:
    envelope: dict[str, object] = {
        "event_source": "web",
        "event_source_id": SANDBOX_PIXEL_CODE,
        "data": list(events),
    }
    if test_code:
        envelope["test_event_code"] = test_code
    return orjson.dumps(envelope)


def purchase(event_id: str, email: str = "a@b.com") -> dict[str, object]:
    return {
        "event": "Purchase",
        "event_time": int(NOW),
        "event_id": event_id,
        "user": {"email": hashlib.sha256(email.encode()).hexdigest(), "ip": "203.0.113.24"},
        "properties": {
            "value": 184.5,
            "currency": "EUR",
            "contents": [{"content_id": "SKU-1", "quantity": 1, "price": 184.5}],
        },
        "page": {"url": "https://store.example/thank-you"},
    }


async def test_accepted_events_are_recorded_not_sent(redis_url: str, redis: Redis) -> None:
    sandbox = Sandbox(make_redis(redis_url))
    status, answer = await sandbox.post(body(purchase("ord_1"), purchase("ord_2"), test_code="T1"))
    assert status == 200
    assert answer["code"] == 0
    assert answer["message"] == "OK"
    assert len(answer["request_id"]) == 34
    records = await sandbox.recorded()
    assert [r.event_id for r in records] == ["ord_2", "ord_1"]  # newest first
    assert records[0].pixel_code == SANDBOX_PIXEL_CODE
    assert records[0].test_event_code == "T1"
    assert records[0].request_id == answer["request_id"]
    assert records[0].payload["properties"]["value"] == 184.5
    assert await redis.xlen(keys.SANDBOX_STREAM) == 2
    await sandbox.redis.aclose()


async def test_invalid_requests_get_tiktoks_codes_and_record_nothing(
    redis_url: str, redis: Redis
) -> None:
    sandbox = Sandbox(make_redis(redis_url))
    raw_email = purchase("ord_3")
    raw_email["user"] = {"email": "a@b.com"}
    status, answer = await sandbox.post(body(purchase("ord_4"), raw_email))
    assert status == 200
    assert answer["code"] == 40002
    assert "data.1.user.email" in answer["message"]
    numeric_id = purchase("x")
    numeric_id["event_id"] = 84213
    assert (await sandbox.post(body(numeric_id)))[1]["message"] == (
        "Invalid value for event_id: not a valid string."
    )
    assert (await sandbox.post(b"{not json"))[1]["code"] == 40000
    assert await redis.xlen(keys.SANDBOX_STREAM) == 0
    await sandbox.redis.aclose()


async def test_the_record_is_bounded(redis_url: str, redis: Redis, monkeypatch) -> None:
    monkeypatch.setattr(keys, "SANDBOX_KEEP_EVENTS", 100)
    sandbox = Sandbox(make_redis(redis_url))
    for start in range(0, 1000, 250):
        events = [purchase(f"ord_{i}") for i in range(start, start + 250)]
        assert (await sandbox.post(body(*events)))[1]["code"] == 0
    length = await redis.xlen(keys.SANDBOX_STREAM)
    assert 100 <= length < 1000  # trimmed approximately, never unbounded
    assert (await sandbox.recorded(1))[0].event_id == "ord_999"
    await sandbox.redis.aclose()
