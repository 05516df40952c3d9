"""Data at the edges, through real HTTP and Redis (issue 13): junk click ids, timestamps in other
units or far ahead, IPv4-mapped and private addresses, and fields dropped with a warning."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.appkeys import SETTINGS
from gateway.identity.cookies import CLICK_COOKIE
from gateway.settings import Settings
from tests.delivery_support import wait_until
from tests.ingest_support import (
    TTCLID,
    GatewayFactory,
    make_gateway,
    queued,
    set_cookies,
    track,
)

JUNK = ["undefined", "null", "1", "__CLICKID__", "None", "{{ttclid}}"]


@pytest.fixture
def gateway(
    aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    return make_gateway(aiohttp_client, make_settings, redis_url)


def keep_cookies(client: TestClient, response: Any) -> None:  # type: ignore[type-arg]
    cookies = set_cookies(response)
    client.session.cookie_jar.update_cookies(
        {k: v.split(";")[0].split("=", 1)[1] for k, v in cookies.items()}
    )


def click_in(response: Any) -> str | None:
    """The ttclid a response's click cookie carries (``<ttclid>.<ms>.<signature>``), if set."""
    header = set_cookies(response).get(CLICK_COOKIE)
    if header is None:
        return None
    return header.split(";")[0].split("=", 1)[1].rsplit(".", 2)[0]


async def server(client: TestClient, body: object) -> dict[str, Any]:  # type: ignore[type-arg]
    auth = {"Authorization": f"Bearer {client.server.app[SETTINGS].write_key}"}
    response = await client.post("/v1/track", json=body, headers=auth)
    answer: dict[str, Any] = await response.json()
    answer["status"] = response.status
    return answer


# --- 1. a junk ttclid is no click ----------------------------------------------------------------


@pytest.mark.parametrize("junk", JUNK)
async def test_a_junk_ttclid_never_replaces_the_real_click(
    gateway: GatewayFactory, redis: Redis, junk: str
) -> None:
    client = await gateway()
    landed = await client.get("/landing", headers={"X-Original-URI": f"/p?ttclid={TTCLID}"})
    keep_cookies(client, landed)
    # a later page opened with a placeholder click: the click cookie still holds the real one
    later = await client.get("/landing", headers={"X-Original-URI": f"/p2?ttclid={junk}"})
    assert click_in(later) in (None, TTCLID)
    keep_cookies(client, later)
    # and a page URL with one on /e: said in the answer, the real click kept
    page = {"url": f"https://shop.example/thanks?ttclid={junk}"}
    response = await client.post("/e", json=track("Purchase", event_id="o1", page=page))
    (answer,) = (await response.json())["accepted"]
    assert [w["field"] for w in answer["warnings"]] == ["page.url.ttclid"]
    assert click_in(response) in (None, TTCLID)
    (entry,) = await queued(redis)
    assert entry["data"]["user"]["ttclid"] == TTCLID


@pytest.mark.parametrize("junk", ["null", "None", "undefined", "__CLICKID__"])
async def test_a_backends_junk_ttclid_and_ttp_give_way_to_the_stored_ones(
    gateway: GatewayFactory, redis: Redis, junk: str
) -> None:
    client = await gateway()
    landed = await client.get("/landing", headers={"X-Original-URI": f"/p?ttclid={TTCLID}"})
    visitor = set_cookies(landed)["_ttgw"].split(";")[0].split("=", 1)[1]
    ttp = set_cookies(landed)["_ttp"].split(";")[0].split("=", 1)[1]
    answer = await server(
        client,
        track("Purchase", event_id="o2", anonymous_id=visitor, user={"ttclid": junk, "ttp": junk}),
    )
    assert answer["status"] == 202
    fields = {w["field"] for w in answer["accepted"][0]["warnings"]}
    assert fields == {"user.ttclid", "user.ttp"}
    (entry,) = await queued(redis)
    assert entry["data"]["user"]["ttclid"] == TTCLID
    assert entry["data"]["user"]["ttp"] == ttp


# --- 3. timestamps: units by magnitude, no far future --------------------------------------------


@pytest.mark.parametrize("unit", [1_000, 1_000_000, 1_000_000_000])
async def test_a_stale_order_in_any_unit_is_refused(gateway: GatewayFactory, unit: int) -> None:
    client = await gateway()
    thirty_days_ago = int(time.time()) - 30 * 86400
    answer = await server(
        client, track("Purchase", event_id="old", timestamp=thirty_days_ago * unit)
    )
    assert answer["status"] == 400
    assert answer["field"] == "timestamp" and "old" in answer["error"]


@pytest.mark.parametrize("ahead_s", [2 * 86400, 10**9])
async def test_a_far_future_time_is_refused_not_made_now(
    gateway: GatewayFactory, redis: Redis, ahead_s: int
) -> None:
    client = await gateway()
    answer = await server(client, track("Purchase", timestamp=int(time.time()) + ahead_s))
    assert answer["status"] == 400
    assert answer["field"] == "timestamp" and "future" in answer["error"]
    assert await queued(redis) == []


async def test_an_hour_ago_in_microseconds_is_an_hour_ago(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    an_hour_ago = int(time.time()) - 3600
    answer = await server(client, track("Purchase", event_id="us", timestamp=an_hour_ago * 10**6))
    assert answer["status"] == 202
    (entry,) = await queued(redis)
    assert entry["data"]["event_time"] == an_hour_ago


# --- 5. addresses given by a backend -------------------------------------------------------------


async def test_an_ipv4_mapped_address_is_unwrapped(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    await server(client, track("Purchase", event_id="m", user={"ip": "::ffff:203.0.113.9"}))
    await server(client, track("Purchase", event_id="c", context={"ip": "::FFFF:198.51.100.7"}))
    users = {e["event_id"]: e["data"]["user"] for e in await queued(redis)}
    assert users["m"]["ip"] == "203.0.113.9"
    assert users["c"]["ip"] == "198.51.100.7"


@pytest.mark.parametrize("ip", ["10.1.2.3", "192.168.0.8", "127.0.0.1", "::1", "::ffff:10.0.0.1"])
async def test_a_private_or_loopback_address_is_not_taken_for_the_buyers(
    gateway: GatewayFactory, redis: Redis, ip: str
) -> None:
    client = await gateway()
    answer = await server(client, track("Purchase", event_id="p", user={"ip": ip}))
    assert answer["status"] == 202
    (warning,) = answer["accepted"][0]["warnings"]
    assert warning["field"] == "user.ip" and "private" in warning["warning"]
    (entry,) = await queued(redis)
    assert "ip" not in entry["data"]["user"]


# --- 6. nothing dropped is silent ----------------------------------------------------------------


async def test_every_dropped_field_is_said_and_counted_by_field(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    event = track(
        "Purchase",
        event_id="w1",
        user={"email": ["jane@example.com", "not-an-email"], "phone": "12", "ttclid": "undefined"},
        properties={"value": "abc", "currency": "XYZ", "coupon": "SPRING", "order_id": "9"},
    )
    answer = await server(client, {"events": [event, track("Lead", event_id="w2")]})
    assert answer["status"] == 202
    first, second = answer["accepted"]
    warned = {w["field"]: w["warning"] for w in first["warnings"]}
    assert set(warned) == {
        "events[0].user.email[1]",
        "events[0].user.phone",
        "events[0].user.ttclid",
        "events[0].properties.value",
        "events[0].properties.currency",
        "events[0].properties.coupon",
    }
    assert "default_phone_region" in warned["events[0].user.phone"]  # what to do about it
    assert "warnings" not in second
    (kept, _) = await queued(redis)
    assert kept["data"]["user"]["email"] and "phone" not in kept["data"]["user"]
    assert "value" not in kept["data"]["properties"]
    # the dashboard's stats count them by field, without indexes or free-form names
    admin = {"Authorization": f"Bearer {client.server.app[SETTINGS].admin_token}"}
    expected = {
        "user.email": 1,
        "user.phone": 1,
        "user.ttclid": 1,
        "properties.value": 1,
        "properties.currency": 1,
        "properties.*": 1,
    }

    async def counted() -> bool:  # the counts ride along with the next Redis round trip
        stats = await (await client.get("/v1/admin/stats", headers=admin)).json()
        return bool(stats["warnings"] == expected)

    await wait_until(counted)


async def test_a_default_phone_region_reads_national_numbers(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway(TTGW_DEFAULT_PHONE_REGION="FR")
    answer = await server(
        client, track("Purchase", event_id="fr", user={"phone": "06 12 34 56 78"})
    )
    assert "warnings" not in answer["accepted"][0]
    (entry,) = await queued(redis)
    assert entry["data"]["user"]["phone"]
