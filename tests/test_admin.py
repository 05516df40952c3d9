"""The admin API through real HTTP, on the real test Redis, with the emulator as TikTok."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.operate.stats import hour
from gateway.settings import Settings
from gateway.store import keys
from tests.delivery_support import (
    PIXEL,
    TOKEN,
    delivery_env,
    enqueue,
    running_emulator,
    running_worker,
    wait_until,
)

MakeSettings = Callable[..., Settings]
NEW_PIXEL = "CNEWNEWNEWNEWNEWNEW0"
NEW_TOKEN = "brand-new-access-token-7777"


async def admin_client(aiohttp_client, settings: Settings) -> TestClient:  # type: ignore[type-arg]
    client = await aiohttp_client(create_app(settings))
    client.session.headers["Authorization"] = f"Bearer {settings.admin_token}"
    return client  # type: ignore[no-any-return]


async def test_every_admin_route_needs_the_token(
    aiohttp_client, make_settings: MakeSettings, redis_url: str
) -> None:
    client = await aiohttp_client(create_app(make_settings(TTGW_REDIS_URL=redis_url)))
    routes = [
        ("GET", "/v1/admin/stats"),
        ("GET", "/v1/admin/integrations"),
        ("POST", "/v1/admin/integrations"),
        ("GET", "/v1/admin/events"),
        ("GET", "/v1/admin/events/x"),
        ("POST", "/v1/admin/replay"),
        ("POST", "/v1/admin/test-event"),
        ("DELETE", "/v1/admin/integrations/X"),
    ]
    for headers in ({}, {"Authorization": "Bearer wrong-token-123456"}, {"Authorization": "x"}):
        for method, path in routes:
            response = await client.request(method, path, headers=headers)
            assert response.status == 401, (method, path)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert (await response.json())["field"] == "Authorization"
    assert (await client.get("/v1/admin/openapi.json")).status == 200


async def test_integrations_lifecycle_and_write_only_tokens(
    aiohttp_client, make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    settings = make_settings(
        TTGW_REDIS_URL=redis_url, TTGW_PIXEL_CODE=PIXEL, TTGW_ACCESS_TOKEN="configured-token-123"
    )
    client = await admin_client(aiohttp_client, settings)
    body = {
        "name": "FR shop",
        "pixel_code": NEW_PIXEL,
        "access_token": NEW_TOKEN,
        "hostnames": ["shop.fr"],
        "default_phone_region": "fr",
        "required_consent": ["ad_storage"],
        "event_overrides": {"Order Completed": "CompletePayment"},
        "test_event_code": "TEST1",
    }
    created = await client.post("/v1/admin/integrations", json=body)
    assert created.status == 201
    integration = await created.json()
    assert integration["access_token_hint"] == "…7777"
    assert integration["default_phone_region"] == "FR"
    assert integration["source"] == "api"
    listed = await (await client.get("/v1/admin/integrations")).json()
    assert {i["pixel_code"]: i["source"] for i in listed["integrations"]} == {
        PIXEL: "config",
        NEW_PIXEL: "api",
    }
    everything = orjson.dumps(listed) + orjson.dumps(integration)
    assert NEW_TOKEN.encode() not in everything and b"configured-token-123" not in everything
    stored = await redis.hget(keys.INTEGRATIONS_HASH, NEW_PIXEL)
    assert NEW_TOKEN.encode() not in stored  # encrypted at rest
    # errors name the field
    for bad, field in (
        ({**body, "pixel_code": "lower"}, "pixel_code"),
        ({**body, "pixel_code": "CZZZZZZZZZZZZZZZZZZ0", "access_token": ""}, "access_token"),
        ({**body, "pixel_code": "CZZZZZZZZZZZZZZZZZZ0", "colour": 1}, "colour"),
        (
            {**body, "pixel_code": "CZZZZZZZZZZZZZZZZZZ0", "required_consent": ["x"]},
            "required_consent",
        ),
    ):
        response = await client.post("/v1/admin/integrations", json=bad)
        assert response.status == 400
        assert (await response.json())["field"] == field
    duplicate = await client.post("/v1/admin/integrations", json=body)
    assert duplicate.status == 409
    configured = await client.patch(f"/v1/admin/integrations/{PIXEL}", json={"enabled": False})
    assert configured.status == 409
    # a paused integration resumes at once when its token is replaced
    await redis.hset(keys.PAUSED_HASH, NEW_PIXEL, orjson.dumps({"reason": "auth", "code": 40105}))
    patched = await client.patch(
        f"/v1/admin/integrations/{NEW_PIXEL}", json={"access_token": "another-token-8888"}
    )
    assert (await patched.json())["access_token_hint"] == "…8888"
    assert not await redis.hexists(keys.PAUSED_HASH, NEW_PIXEL)
    disabled = await client.post(f"/v1/admin/integrations/{NEW_PIXEL}/disable")
    assert (await disabled.json())["enabled"] is False
    assert (await client.delete(f"/v1/admin/integrations/{NEW_PIXEL}")).status == 204
    assert (await client.get(f"/v1/admin/integrations/{NEW_PIXEL}")).status == 404


async def test_a_new_integration_serves_its_host_and_delivers_with_its_token(
    aiohttp_client, make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with running_emulator() as tiktok:
        tiktok.state.restore(NEW_TOKEN, {NEW_PIXEL})
        settings = make_settings(**delivery_env(tiktok, redis_url))
        client = await admin_client(aiohttp_client, settings)
        async with running_worker(settings):
            created = await client.post(
                "/v1/admin/integrations",
                json={"pixel_code": NEW_PIXEL, "access_token": NEW_TOKEN, "hostnames": ["shop.fr"]},
            )
            assert created.status == 201
            sent = await client.post(
                "/e", json={"event": "Purchase", "event_id": "fr-1"}, headers={"Host": "t.shop.fr"}
            )
            assert sent.status == 202
            (event,) = await tiktok.state.wait_for_events(1)
        assert (event.pixel_code, event.event_id) == (NEW_PIXEL, "fr-1")


async def test_events_filters_cursor_and_receipts(
    aiohttp_client, make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with running_emulator(max_event_age_s=86400) as tiktok:
        settings = make_settings(**delivery_env(tiktok, redis_url))
        client = await admin_client(aiohttp_client, settings)
        await enqueue(redis_url, [f"ok-{i}" for i in range(7)])
        await enqueue(redis_url, ["too-old"], age_s=2 * 86400)
        async with running_worker(settings):
            await wait_until(lambda: _settled(redis, 8))
        dead = await (await client.get("/v1/admin/events?state=dead")).json()
        assert [e["event_id"] for e in dead["events"]] == ["too-old"]
        assert dead["events"][0]["code"] == 40002
        pages, cursor = [], None
        while True:
            url = "/v1/admin/events?state=delivered&limit=3" + (
                f"&cursor={cursor}" if cursor else ""
            )
            page = await (await client.get(url)).json()
            pages.append([e["event_id"] for e in page["events"]])
            cursor = page["next_cursor"]
            if not cursor:
                break
        ids = [i for p in pages for i in p]
        assert sorted(ids) == sorted(f"ok-{i}" for i in range(7)) and len(set(ids)) == 7
        assert max(len(p) for p in pages) == 3
        receipts = await (await client.get("/v1/admin/events/ok-3")).json()
        (receipt,) = receipts["receipts"]
        assert receipt["state"] == "delivered" and receipt["request_id"]
        assert TOKEN not in orjson.dumps(receipts).decode()
        assert (await client.get("/v1/admin/events/nope")).status == 404
        assert (await client.get("/v1/admin/events?state=bogus")).status == 400
        assert (await client.get("/v1/admin/events?limit=0")).status == 400


async def _settled(redis: Redis, n: int) -> bool:
    raw = await redis.hgetall(keys.COUNTERS_HASH)
    return int(raw.get(b"delivered", 0)) + int(raw.get(b"dead", 0)) >= n


async def test_replay_through_the_api(
    aiohttp_client, make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with running_emulator(max_event_age_s=86400) as tiktok:
        settings = make_settings(**delivery_env(tiktok, redis_url))
        client = await admin_client(aiohttp_client, settings)
        await enqueue(redis_url, ["d1", "d2", "d3"], age_s=2 * 86400)
        async with running_worker(settings):
            await wait_until(lambda: _settled(redis, 3))
            assert (await client.post("/v1/admin/replay", json={})).status == 400
            tiktok.state.config.max_event_age_s = 7 * 86400
            one = await (await client.post("/v1/admin/replay", json={"event_ids": ["d2"]})).json()
            assert one == {"queued": 1}
            await tiktok.state.wait_for_events(1)
            rest = await (await client.post("/v1/admin/replay", json={"all": True})).json()
            assert rest == {"queued": 2}
            await tiktok.state.wait_for_events(3)
        assert sorted(e.event_id or "" for e in tiktok.state.accepted) == ["d1", "d2", "d3"]
        assert tiktok.state.duplicates == 0


async def test_stats_report_flow_coverage_and_drop_alerts(
    aiohttp_client, make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with running_emulator() as tiktok:
        settings = make_settings(**delivery_env(tiktok, redis_url))
        client = await admin_client(aiohttp_client, settings)
        async with running_worker(settings):
            events = [
                {
                    "event": "Purchase",
                    "event_id": f"s{i}",
                    "user": {"email": f"u{i}@example.com"} if i % 2 else {},
                }
                for i in range(10)
            ]
            await client.post("/e", json={"events": events})
            await tiktok.state.wait_for_events(10)
            await wait_until(lambda: _settled(redis, 10))
        # yesterday every Purchase carried a phone; today one in ten does
        now_hour = hour()
        await redis.hset(
            keys.coverage_key(now_hour - 30), mapping={"Purchase|total": 50, "Purchase|phone": 50}
        )
        await redis.hset(
            keys.coverage_key(now_hour - 2), mapping={"Purchase|total": 40, "Purchase|phone": 4}
        )
        stats = await (await client.get("/v1/admin/stats")).json()
    assert stats["sandbox"] is False
    assert stats["queue"]["depth"] == 0 and stats["queue"]["dead"] == 0
    assert stats["counters"]["delivered"] == 10
    assert sum(m["delivered"] for m in stats["minutes"]) == 10
    assert sum(m["accepted"] for m in stats["minutes"]) == 10
    assert len(stats["minutes"]) == 60 and len(stats["coverage"]["hours"]) == 168
    purchase = stats["coverage"]["events"]["Purchase"]
    assert purchase["total"][-1] == 10
    assert purchase["email"][-1] == pytest.approx(0.5)
    assert purchase["ip"][-1] == pytest.approx(1.0)
    alert = next(a for a in stats["alerts"] if a["key"] == "phone")
    assert alert["event"] == "Purchase"
    assert alert["yesterday"] == pytest.approx(1.0) and alert["today"] < 0.2


async def test_test_event_from_the_api(
    aiohttp_client, make_settings: MakeSettings, redis_url: str
) -> None:
    async with running_emulator() as tiktok:
        settings = make_settings(**delivery_env(tiktok, redis_url, TTGW_TEST_EVENT_CODE="TEST9"))
        client = await admin_client(aiohttp_client, settings)
        answer = await (await client.post("/v1/admin/test-event", json={})).json()
        assert answer["verdict"] == "delivered" and answer["code"] == 0
        (event,) = tiktok.state.accepted
        assert event.test_event_code == "TEST9"
        unknown = await client.post("/v1/admin/test-event", json={"pixel": "CNOPENOPENOPENOPENO0"})
        assert unknown.status == 404
