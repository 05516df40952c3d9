"""Cookies, click capture, /landing and stitching, end to end through HTTP and Redis."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.appkeys import SETTINGS, SIGNER
from gateway.identity.cookies import CLICK_COOKIE, TTP_COOKIE, VISITOR_COOKIE
from gateway.settings import Settings
from gateway.store import keys
from tests.ingest_support import (
    EMAIL,
    EMAIL_HASH,
    TTCLID,
    GatewayFactory,
    make_gateway,
    queued,
    set_cookies,
    sha,
    track,
)
from tests.support import free_port

ULID_TTP = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}_\.tt\.1$")
PIXEL_TTP = "01K0T8BYGJH63785W68YS5NN1R_.tt.1"


@pytest.fixture
def gateway(
    aiohttp_client, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    return make_gateway(aiohttp_client, make_settings, redis_url)


def cookie_value(client: TestClient, name: str) -> str | None:  # type: ignore[type-arg]
    for cookie in client.session.cookie_jar:
        if cookie.key == name:
            return cookie.value
    return None


def visitor_of(client: TestClient) -> str:  # type: ignore[type-arg]
    value = cookie_value(client, VISITOR_COOKIE)
    assert value is not None
    visitor = client.server.app[SIGNER].read_visitor(value)
    assert visitor is not None
    return visitor


async def server_post(client: TestClient, body: object) -> dict:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {client.server.app[SETTINGS].write_key}"}
    response = await client.post("/v1/track", json=body, headers=headers)
    assert response.status == 202, await response.text()
    return await response.json()  # type: ignore[no-any-return]


# --- cookies ----------------------------------------------------------------------------------


async def test_cookies_are_set_refreshed_and_reused(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    first = await client.post("/e", json=track("ViewContent", event_id="1"))
    cookies = set_cookies(first)
    assert set(cookies) == {VISITOR_COOKIE, TTP_COOKIE}
    visitor = cookies[VISITOR_COOKIE]
    assert "HttpOnly" in visitor and "SameSite=Lax" in visitor and "Path=/" in visitor
    max_age = int(re.search(r"Max-Age=(\d+)", visitor).group(1))  # type: ignore[union-attr]
    assert 395 * 86400 < max_age < 400 * 86400
    assert "Secure" not in visitor  # plain http here
    assert "HttpOnly" not in cookies[TTP_COOKIE]  # the pixel may read it
    assert ULID_TTP.match(cookie_value(client, TTP_COOKIE) or "")
    id_before, ttp_before = visitor_of(client), cookie_value(client, TTP_COOKIE)

    second = await client.post("/e", json=track("ViewContent", event_id="2"))
    assert set(set_cookies(second)) == {VISITOR_COOKIE, TTP_COOKIE}  # refreshed on every answer
    assert (visitor_of(client), cookie_value(client, TTP_COOKIE)) == (id_before, ttp_before)
    users = [e["data"]["user"] for e in await queued(redis)]
    assert users[0]["external_id"] == users[1]["external_id"] == [sha(id_before)]
    assert users[0]["ttp"] == users[1]["ttp"] == ttp_before


async def test_the_pixels_ttp_is_kept(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    client.session.cookie_jar.update_cookies({TTP_COOKIE: PIXEL_TTP})
    response = await client.post("/e", json=track(event_id="p"))
    assert f"{TTP_COOKIE}={PIXEL_TTP};" in set_cookies(response)[TTP_COOKIE]
    (entry,) = await queued(redis)
    assert entry["data"]["user"]["ttp"] == PIXEL_TTP


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        '"quoted;value"',
        "a.b.c",
        "é" * 10,
    ],
)
async def test_a_tampered_visitor_cookie_is_replaced_not_an_error(
    gateway: GatewayFactory, redis: Redis, bad: str
) -> None:
    client = await gateway()
    response = await client.post(
        "/e", json=track(event_id="t"), headers={"Cookie": f"{VISITOR_COOKIE}={bad}"}
    )
    assert response.status == 202
    new = set_cookies(response)[VISITOR_COOKIE]
    assert bad not in new
    assert client.server.app[SIGNER].read_visitor(new.split(";")[0].split("=", 1)[1]) is not None


async def test_forged_click_cookie_is_ignored(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    forged = f"{TTCLID}.{int(time.time() * 1000)}.AAAAAAAAAAAAAAAAAAAAAA"
    await client.post(
        "/e", json=track(event_id="f"), headers={"Cookie": f"{CLICK_COOKIE}={forged}"}
    )
    (entry,) = await queued(redis)
    assert "ttclid" not in entry["data"]["user"]


async def test_cookie_domain_and_secure_behind_an_https_proxy(gateway: GatewayFactory) -> None:
    client = await gateway(TTGW_COOKIE_DOMAIN="shop.example")
    headers = {"Host": "t.shop.example", "X-Forwarded-Proto": "https"}
    cookies = set_cookies(await client.post("/e", json=track(event_id="d"), headers=headers))
    assert "Domain=shop.example" in cookies[VISITOR_COOKIE]
    assert "Secure" in cookies[VISITOR_COOKIE]
    # a host outside the cookie domain gets host-only cookies (a browser would refuse the domain)
    other = set_cookies(await client.post("/e", json=track(event_id="e")))
    assert "Domain=" not in other[VISITOR_COOKIE]


# --- click capture ------------------------------------------------------------------------------


async def test_ttclid_in_the_page_url_is_captured_and_kept(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    url = f"https://shop.example/p/1?ttclid={TTCLID}&utm_source=tiktok&utm_campaign=spring"
    response = await client.post("/e", json=track("ViewContent", event_id="1", page={"url": url}))
    assert CLICK_COOKIE in set_cookies(response)
    stored = await redis.hget(keys.visitor_key(visitor_of(client)), "click")
    click = orjson.loads(stored)
    assert click["ttclid"] == TTCLID
    assert click["utm_source"] == "tiktok" and click["utm_campaign"] == "spring"
    assert click["landing_url"] == url
    # a later page without ttclid still carries the click
    await client.post(
        "/e", json=track("AddToCart", event_id="2", page={"url": "https://shop.example/cart"})
    )
    users = [e["data"]["user"] for e in await queued(redis)]
    assert users[0]["ttclid"] == users[1]["ttclid"] == TTCLID
    ttl = await redis.ttl(keys.visitor_key(visitor_of(client)))
    assert 0 < ttl <= keys.VISITOR_TTL_S


async def test_same_host_referrer_counts_a_foreign_one_does_not(
    gateway: GatewayFactory, redis: Redis
) -> None:
    same = await gateway()
    page = {"url": "https://shop.example/p/2", "referrer": f"https://shop.example/?ttclid={TTCLID}"}
    await same.post("/e", json=track(event_id="s", page=page))
    foreign = await gateway()
    page = {
        "url": "https://shop.example/p/2",
        "referrer": f"https://other.example/?ttclid={TTCLID}",
    }
    await foreign.post("/e", json=track(event_id="f", page=page))
    users = {e["event_id"]: e["data"]["user"] for e in await queued(redis)}
    assert users["s"]["ttclid"] == TTCLID
    assert "ttclid" not in users["f"]


async def test_a_newer_click_replaces_an_older_one(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    for n, clickid in enumerate(("E.C.P.first", "E.C.P.second", "E.C.P.second")):
        url = f"https://shop.example/?ttclid={clickid}"
        await client.post("/e", json=track("ViewContent", event_id=f"v{n}", page={"url": url}))
    users = [e["data"]["user"]["ttclid"] for e in await queued(redis)]
    assert users == ["E.C.P.first", "E.C.P.second", "E.C.P.second"]


async def test_landing_captures_the_click_without_javascript(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    response = await client.get(
        "/landing",
        headers={
            "X-Original-URI": f"/products/tee?ttclid={TTCLID}&utm_source=tiktok",
            "Host": "shop.example",
            "Referer": "https://www.tiktok.com/",
            "User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X)",
            "X-Forwarded-For": "203.0.113.24",
        },
    )
    assert response.status == 204
    cookies = set_cookies(response)
    assert set(cookies) == {VISITOR_COOKIE, TTP_COOKIE, CLICK_COOKIE}
    assert response.headers["Cache-Control"] == "no-store"
    visitor = client.server.app[SIGNER].read_visitor(
        cookies[VISITOR_COOKIE].split(";")[0].split("=", 1)[1]
    )
    record = await redis.hgetall(keys.visitor_key(visitor or ""))
    click = orjson.loads(record[b"click"])
    assert click["ttclid"] == TTCLID
    assert (
        click["landing_url"]
        == f"http://shop.example/products/tee?ttclid={TTCLID}&utm_source=tiktok"
    )
    assert click["referrer"] == "https://www.tiktok.com/"
    assert click["utm_source"] == "tiktok"
    assert record[b"ip"] == b"203.0.113.24"
    # the shop's next page posts an event with the cookies nginx passed on: the click is attached
    client.session.cookie_jar.update_cookies(
        {k: v.split(";")[0].split("=", 1)[1] for k, v in cookies.items()}
    )
    await client.post("/e", json=track("ViewContent", event_id="after-landing"))
    (entry,) = await queued(redis)
    assert entry["data"]["user"]["ttclid"] == TTCLID


@pytest.mark.parametrize(
    "uri", ["", "/no-click", "/?ttclid=", "/?ttclid=%00%01", "not a uri ?ttclid=<script>"]
)
async def test_landing_always_answers_204(gateway: GatewayFactory, uri: str) -> None:
    client = await gateway()
    response = await client.get("/landing", headers={"X-Original-URI": uri})
    assert response.status == 204
    assert CLICK_COOKIE not in set_cookies(response)


async def test_landing_with_redis_down_still_answers_and_keeps_the_click_in_the_cookie(
    aiohttp_client, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(TTGW_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/landing", headers={"X-Original-URI": f"/?ttclid={TTCLID}"})
    assert response.status == 204
    value = set_cookies(response)[CLICK_COOKIE].split(";")[0].split("=", 1)[1]
    assert client.server.app[SIGNER].read_click(value)[0] == TTCLID  # type: ignore[index]


# --- stitching ------------------------------------------------------------------------------------


async def test_an_order_webhook_with_only_an_email_gets_the_session(
    gateway: GatewayFactory, redis: Redis
) -> None:
    browser = await gateway()
    url = f"https://shop.example/?ttclid={TTCLID}"
    headers = {"User-Agent": "Mozilla/5.0 (Shopper)", "X-Forwarded-For": "198.51.100.7"}
    await browser.post(
        "/e", json=track("ViewContent", event_id="v", page={"url": url}), headers=headers
    )
    await browser.post("/e", json={"type": "identify", "user": {"email": EMAIL}}, headers=headers)
    ttp = cookie_value(browser, TTP_COOKIE)
    # hours later the shop's backend posts the order with just the e-mail, from its own address
    backend = await gateway()
    answer = await server_post(
        backend,
        track("Order Completed", user={"email": EMAIL.upper()},
              properties={"order_id": "9001", "value": 42, "currency": "EUR"}),
    )  # fmt: skip
    assert answer["accepted"][0]["status"] == "queued"
    order = next(e for e in await queued(redis) if e["event_id"] == "ord_9001")
    user = order["data"]["user"]
    assert user["ttclid"] == TTCLID
    assert user["ttp"] == ttp
    assert user["ip"] == "198.51.100.7"  # the buyer's, not the backend's 127.0.0.1
    assert user["user_agent"] == "Mozilla/5.0 (Shopper)"
    assert user["email"] == [EMAIL_HASH]
    assert user["external_id"] == [sha(visitor_of(browser))]
    assert order["data"]["page"]["url"] == url


async def test_anonymous_id_selects_the_visitor_and_a_bad_one_is_ignored(
    gateway: GatewayFactory, redis: Redis
) -> None:
    browser = await gateway()
    headers = {"User-Agent": "Browser/1", "X-Forwarded-For": "192.0.2.10"}
    await browser.post(
        "/e",
        json=track(
            "ViewContent", event_id="v", page={"url": f"https://s.example/?ttclid={TTCLID}"}
        ),
        headers=headers,
    )
    signed = cookie_value(browser, VISITOR_COOKIE)
    backend = await gateway()
    await server_post(backend, track("AddToCart", event_id="good", anonymous_id=signed))
    await server_post(
        backend,
        track(
            "AddToCart",
            event_id="forged",
            anonymous_id=visitor_of(browser) + ".AAAAAAAAAAAAAAAAAAAAAA",
        ),
    )
    users = {e["event_id"]: e["data"]["user"] for e in await queued(redis)}
    assert users["good"]["ttclid"] == TTCLID
    assert users["good"]["ip"] == "192.0.2.10"
    assert users["good"]["external_id"] == [sha(visitor_of(browser))]
    assert "ttclid" not in users["forged"] and "ip" not in users["forged"]


async def test_the_backend_can_pass_the_buyers_ip_and_user_id(
    gateway: GatewayFactory, redis: Redis
) -> None:
    backend = await gateway()
    await server_post(
        backend,
        track(
            "Purchase",
            event_id="b1",
            user_id="cust_34982",
            user={
                "ip": "2001:db8::1",
                "user_agent": "Buyer/2",
                "ttclid": f"{TTCLID}.1788558088324",
            },
        ),
    )
    (entry,) = await queued(redis)
    user = entry["data"]["user"]
    assert user["external_id"] == [sha("cust_34982")]
    assert (user["ip"], user["user_agent"]) == ("2001:db8::1", "Buyer/2")
    assert user["ttclid"] == TTCLID  # the pixel cookie's ".<ms>" suffix removed


async def test_a_new_browser_that_identifies_gets_the_click_back(
    gateway: GatewayFactory, redis: Redis
) -> None:
    tiktok_app = await gateway()  # the in-app browser the ad opened
    await tiktok_app.post(
        "/e",
        json={"events": [
            track("ViewContent", event_id="in-app", page={"url": f"https://s.example/?ttclid={TTCLID}"}),
            {"type": "identify", "user": {"email": EMAIL}},
        ]},
        headers={"User-Agent": "TikTok In-App", "X-Forwarded-For": "198.51.100.1"},
    )  # fmt: skip
    safari = await gateway()  # the shopper hops to Safari and logs in
    headers = {"User-Agent": "Safari/17", "X-Forwarded-For": "198.51.100.2"}
    await safari.post(
        "/e", json={"type": "identify", "user": {"email": f" {EMAIL} "}}, headers=headers
    )
    await safari.post("/e", json=track("Purchase", event_id="ord_1"), headers=headers)
    purchase = next(e for e in await queued(redis) if e["event_id"] == "ord_1")
    user = purchase["data"]["user"]
    assert user["ttclid"] == TTCLID
    assert (user["ip"], user["user_agent"]) == ("198.51.100.2", "Safari/17")  # its own
    assert visitor_of(safari) != visitor_of(tiktok_app)


async def test_an_unknown_customer_gets_no_borrowed_session(
    gateway: GatewayFactory, redis: Redis
) -> None:
    backend = await gateway()
    await server_post(
        backend, track("Purchase", event_id="u1", user={"email": "nobody@example.com"})
    )
    (entry,) = await queued(redis)
    user = entry["data"]["user"]
    assert set(user) == {"email"}  # no click, no IP or UA of anyone else, no visitor id
    assert entry["data"]["page"] == {}  # none is made up from the gateway's host (issue 15)


async def test_expired_clicks_are_not_attached(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    await client.post(
        "/e", json=track(event_id="1", page={"url": f"https://s.example/?ttclid={TTCLID}"})
    )
    old = orjson.dumps(
        {"ttclid": TTCLID, "click_ms": int((time.time() - keys.CLICK_TTL_S - 60) * 1000)}
    )
    await redis.hset(keys.visitor_key(visitor_of(client)), "click", old)
    client.session.cookie_jar.clear(lambda c: c.key == CLICK_COOKIE)
    await client.post("/e", json=track(event_id="2"))
    users = {e["event_id"]: e["data"]["user"] for e in await queued(redis)}
    assert users["1"]["ttclid"] == TTCLID
    assert "ttclid" not in users["2"]
