"""Attribution health (issue 17, point 2): a known mix of delivered events and of mirrored pixel
events gives exactly the expected shares per source, through the admin API."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.ingest.enqueue import IngestQueue, Outgoing, Status
from gateway.operate.health import count_delivered
from gateway.settings import Settings
from tests.delivery_support import PIXEL
from tests.test_openapi import component_errors

MakeSettings = Callable[..., Settings]
ADMIN_TOKEN = "health-test-admin-token"
CLICK = {"ttclid": "E.C.P.abc"}
EMAIL = {"email": ["a" * 64]}
IPUA = {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0"}

# 10 purchases: 6 with a ttclid, 8 with an email, 5 with IP and user agent
BROWSER_PURCHASES: list[dict[str, Any]] = [
    {**CLICK, **EMAIL, **IPUA},
    {**CLICK, **IPUA},
    {**CLICK, **EMAIL, **IPUA},
    {**CLICK, "ip": "203.0.113.9"},  # IP without user agent: not ip + UA
]
SERVER_PURCHASES: list[dict[str, Any]] = [
    {**CLICK, **EMAIL, **IPUA},
    {**CLICK, **EMAIL, **IPUA},
    EMAIL,
    EMAIL,
    {**EMAIL, "user_agent": "Mozilla/5.0"},
    EMAIL,
]


def delivered(name: str, source: str, users: list[dict[str, Any]]) -> list[Any]:
    return [(name, source, {"event": name, "user": user}) for user in users]


def item(event: str, event_id: str, source: str) -> Outgoing:
    data = orjson.dumps({"event": event, "event_id": event_id, "user": {}})
    return Outgoing(PIXEL, event, event_id, data, source)


async def test_a_known_mix_gives_exact_shares_per_source_and_server_twins(
    aiohttp_client: Any, make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN)
    client: TestClient = await aiohttp_client(create_app(settings))  # type: ignore[type-arg]

    # delivery counts what the worker delivered, by the entry's source (CompletePayment is a
    # Purchase: the worker passes the canonical name)
    await count_delivered(
        redis,
        delivered("Purchase", "browser", BROWSER_PURCHASES)
        + delivered("Purchase", "server", SERVER_PURCHASES),
    )

    # ingest: 4 pixel purchases; 3 of them get a server twin (one twice: counted once), the
    # fourth only a repeat from the page (not a twin)
    queue = IngestQueue(redis)
    pixel_ids = ["ord_1", "ord_2", "ord_3", "ord_4"]
    first = await queue.submit(
        [item("CompletePayment", i, "browser") for i in pixel_ids], max_events=0
    )
    assert first == [Status.QUEUED] * 4
    later = await queue.submit(
        [
            item("Purchase", "ord_1", "server"),
            item("Purchase", "ord_2", "webhook"),
            item("Purchase", "ord_3", "segment"),
            item("Purchase", "ord_3", "server"),
            item("CompletePayment", "ord_4", "browser"),
        ],
        max_events=0,
    )
    assert later == [Status.DUPLICATE] * 5
    # the backend first, then the page: a pixel event with its twin; a webhook retry is not one
    await queue.submit([item("AddToCart", "cart_1", "server")], max_events=0)
    await queue.submit([item("AddToCart", "cart_1", "server")], max_events=0)
    await queue.submit([item("AddToCart", "cart_1", "browser")], max_events=0)
    await queue.submit([item("AddToCart", "cart_2", "webhook")], max_events=0)

    response = await client.get(
        "/v1/admin/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status == 200
    health = (await response.json())["health"]
    assert component_errors(health, "Health") == []
    assert health["first_hour"] == int(time.time() // 3600)
    purchase = health["events"]["Purchase"]

    def shares(summary: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(summary[f"{s}_share"] for s in ("ttclid", "strong", "ipua"))

    week = purchase["week"]
    assert set(week) == {"all", "browser", "server"}
    assert week["all"]["total"] == 10
    assert (week["all"]["ttclid"], week["all"]["strong"], week["all"]["ipua"]) == (6, 8, 5)
    assert shares(week["all"]) == (0.6, 0.8, 0.5)
    assert shares(week["browser"]) == (1.0, 0.5, 0.75)
    assert shares(week["server"]) == (0.3333, 1.0, 0.3333)
    assert purchase["day"] == week
    assert purchase["sources"]["server"]["total"][-1] == 6
    assert sum(purchase["sources"]["all"]["ttclid"]) == 6

    assert purchase["mirror_week"] == {"pixel": 4, "twin": 3, "twin_share": 0.75}
    assert health["events"]["AddToCart"]["mirror_week"] == {
        "pixel": 1,
        "twin": 1,
        "twin_share": 1.0,
    }
    assert health["alerts"] == []


async def test_a_drop_in_a_share_raises_an_alert_naming_event_source_and_share(
    aiohttp_client: Any, make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN)
    client: TestClient = await aiohttp_client(create_app(settings))  # type: ignore[type-arg]
    now = time.time()
    clicked = delivered("Purchase", "browser", [{**CLICK, **EMAIL}] * 30)
    await count_delivered(redis, clicked, now=now - 30 * 3600)
    await count_delivered(redis, delivered("Purchase", "browser", [EMAIL] * 30), now=now)
    response = await client.get(
        "/v1/admin/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    alerts = (await response.json())["health"]["alerts"]
    expected = {"event": "Purchase", "key": "ttclid", "yesterday": 1.0, "today": 0.0, "drop": 1.0}
    assert alerts == [{**expected, "source": "browser"}, {**expected, "source": "all"}]
