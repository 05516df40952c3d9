"""Identity claims: what a browser that names someone else's e-mail, phone or customer id gets.

A claim (``ttq.identify`` or any ``POST /e`` event carrying an identifier) is unverified: anyone
can type anyone's e-mail. The rule under test (README, "What the gateway trusts for stitching"):
a claim never reveals anything stored for the identifier to the claimant (no click, click time,
visitor id or ``_ttp`` in a cookie or an answer), may attach a stored click on the server to the
claimant's own events, and never moves another person's order onto the claimant's session.
Real redis-server, real HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.appkeys import SETTINGS, SIGNER
from gateway.identity.cookies import CLICK_COOKIE, TTP_COOKIE, VISITOR_COOKIE
from gateway.settings import Settings
from gateway.store import keys
from tests.ingest_support import (
    EMAIL,
    PHONE,
    GatewayFactory,
    make_gateway,
    queued,
    set_cookies,
    sha,
    track,
)

# shaped like the ttclid TikTok appends to an ad's landing URL
VICTIM_TTCLID = "E.C.P.CqgBkXv3Tq1sL0bY8Jr6Wm2Zc9HnA4uPd7Ke5Gi-Qo_Vx1Ry3Ut0Sw8Fj2Mb6Nh4Ea9Ic7Lk5Op"
STRANGER_TTCLID = "E.C.P.CrABm3Hq7Yt2Wd9Lk4Pj6Sx1Fb8Nc5Gv0Ze3Ra7Ku2Mi9Tw4Oy6Qh1Xs8Dl5Jg0Un3Ep7Vf2Ab"
CUSTOMER_ID = "cust_34982"
VICTIM = {"User-Agent": "Mozilla/5.0 (Victim; iPhone)", "X-Forwarded-For": "198.51.100.7"}
STRANGER = {"User-Agent": "Mozilla/5.0 (Stranger; X11)", "X-Forwarded-For": "203.0.113.66"}
CLAIMS: dict[str, dict[str, Any]] = {
    "email": {"user": {"email": EMAIL}},
    "phone": {"user": {"phone": PHONE, "country": "FR"}},
    "customer id": {"user_id": CUSTOMER_ID},
}


@pytest.fixture
def gateway(
    aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    return make_gateway(aiohttp_client, make_settings, redis_url)


def cookie(client: TestClient, name: str) -> str | None:  # type: ignore[type-arg]
    return next((c.value for c in client.session.cookie_jar if c.key == name), None)


def visitor_of(client: TestClient) -> str:  # type: ignore[type-arg]
    visitor = client.server.app[SIGNER].read_visitor(cookie(client, VISITOR_COOKIE))
    assert visitor is not None
    return visitor


async def land(client: TestClient, ttclid: str, headers: dict[str, str]) -> None:  # type: ignore[type-arg]
    """The browser lands from an ad (nginx's /landing capture); cookies kept as nginx sets them."""
    response = await client.get(
        "/landing", headers={"X-Original-URI": f"/products/tee?ttclid={ttclid}", **headers}
    )
    assert response.status == 204
    assert CLICK_COOKIE in set_cookies(response)
    client.session.cookie_jar.update_cookies(
        {k: v.split(";")[0].split("=", 1)[1] for k, v in set_cookies(response).items()}
    )


async def server_order(client: TestClient, order_id: str, **fields: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    """The shop's backend posts an order (no visitor named unless given); the event as queued."""
    headers = {"Authorization": f"Bearer {client.server.app[SETTINGS].write_key}"}
    body = track("Order Completed", properties={"order_id": order_id, "value": 42,
                                                "currency": "EUR"}, **fields)  # fmt: skip
    response = await client.post("/v1/track", json=body, headers=headers)
    assert response.status == 202, await response.text()
    return await queued_event(client, f"ord_{order_id}")


async def queued_event(client: TestClient, event_id: str) -> dict[str, Any]:  # type: ignore[type-arg]
    redis = Redis.from_url(client.server.app[SETTINGS].redis_url)
    try:
        return next(e for e in await queued(redis) if e["event_id"] == event_id)
    finally:
        await redis.aclose()


async def victim_identifies(gateway: GatewayFactory, redis: Redis) -> dict[str, Any]:
    """A shopper lands from an ad and identifies with e-mail, phone and customer id."""
    victim = await gateway()
    await land(victim, VICTIM_TTCLID, VICTIM)
    identify = {"type": "identify", "user_id": CUSTOMER_ID,
                "user": {"email": EMAIL, "phone": PHONE, "country": "FR"}}  # fmt: skip
    assert (await victim.post("/e", json=identify, headers=VICTIM)).status == 202
    record = await redis.hgetall(keys.visitor_key(visitor_of(victim)))
    click = orjson.loads(record[b"click"])
    assert click["ttclid"] == VICTIM_TTCLID
    return {
        "client": victim,
        "visitor": visitor_of(victim),
        "ttp": cookie(victim, TTP_COOKIE),
        "click_ms": str(click["click_ms"]),
    }


def revealed(responses: list[tuple[ClientResponse, str]], victim: dict[str, Any]) -> list[str]:
    """What of the victim's appears in the answers' Set-Cookie headers or bodies."""
    secrets = {"ttclid": VICTIM_TTCLID, "click time": victim["click_ms"],
               "visitor id": victim["visitor"], "_ttp": victim["ttp"]}  # fmt: skip
    found = []
    for response, body in responses:
        text = "\n".join(response.headers.getall("Set-Cookie", [])) + "\n" + body
        found += [f"{name} in {response.url.path}" for name, value in secrets.items()
                  if value in text]  # fmt: skip
        if CLICK_COOKIE in set_cookies(response):
            found.append(f"a {CLICK_COOKIE} cookie from {response.url.path}")
    return found


@pytest.mark.parametrize("kind", list(CLAIMS))
async def test_a_claim_reveals_nothing_stored_for_it(
    gateway: GatewayFactory, redis: Redis, kind: str
) -> None:
    victim = await victim_identifies(gateway, redis)
    stranger = await gateway()  # a fresh browser: no cookies at all
    claim = CLAIMS[kind]
    responses = []
    for body in (
        {"type": "identify", **claim},  # ttq.identify(...)
        track("ViewContent", event_id="s-view", **claim),  # any event carrying the identifier
        track("AddToCart", event_id="s-cart"),  # the claimant's next page
    ):
        response = await stranger.post("/e", json=body, headers=STRANGER)
        assert response.status == 202
        responses.append((response, await response.text()))
    response = await stranger.get("/landing", headers={"X-Original-URI": "/cart", **STRANGER})
    responses.append((response, await response.text()))

    assert revealed(responses, victim) == []
    assert cookie(stranger, CLICK_COOKIE) is None
    assert visitor_of(stranger) != victim["visitor"]
    assert cookie(stranger, TTP_COOKIE) != victim["ttp"]
    # on the server, the claimant's own events carry the stored click (DESIGN §3: the in-app
    # browser's hop to Safari) with the claimant's own IP, user agent, _ttp and visitor
    user = (await queued_event(stranger, "s-cart"))["data"]["user"]
    assert user["ttclid"] == VICTIM_TTCLID
    assert (user["ip"], user["user_agent"]) == ("203.0.113.66", STRANGER["User-Agent"])
    assert user["ttp"] == cookie(stranger, TTP_COOKIE)
    assert user["external_id"] == [sha(visitor_of(stranger))]


async def test_claims_of_all_three_in_turn_reveal_nothing(
    gateway: GatewayFactory, redis: Redis
) -> None:
    victim = await victim_identifies(gateway, redis)
    stranger = await gateway()
    responses = []
    for claim in CLAIMS.values():
        response = await stranger.post("/e", json={"type": "identify", **claim}, headers=STRANGER)
        responses.append((response, await response.text()))
        answer = orjson.loads(responses[-1][1])
        # the answer names the stranger's own visitor, never the one its claims point at
        assert answer.pop("visitor").split(".")[0] == visitor_of(stranger)
        assert answer == {"accepted": [{"index": 0, "status": "identified"}], "errors": []}
    assert revealed(responses, victim) == []
    assert cookie(stranger, CLICK_COOKIE) is None


async def test_a_claim_does_not_move_the_victims_order_onto_the_claimant(
    gateway: GatewayFactory, redis: Redis
) -> None:
    victim = await victim_identifies(gateway, redis)
    stranger = await gateway()
    await stranger.post("/e", json={"type": "identify", **CLAIMS["email"]}, headers=STRANGER)
    await stranger.post("/e", json=track("ViewContent", event_id="s1"), headers=STRANGER)
    # the victim's order, posted by the shop's backend with only the e-mail
    order = await server_order(await gateway(), "9001", user={"email": EMAIL})
    user = order["data"]["user"]
    stranger_values = {"203.0.113.66", STRANGER["User-Agent"], cookie(stranger, TTP_COOKIE),
                       sha(visitor_of(stranger))}  # fmt: skip
    assert not stranger_values & {user.get("ip"), user.get("user_agent"), user.get("ttp"),
                                  *user.get("external_id", [])}  # fmt: skip
    # two browsers claim the e-mail: nobody's IP, user agent or _ttp, only the click both carry
    assert user["ttclid"] == VICTIM_TTCLID
    assert not {"ip", "user_agent", "ttp", "external_id"} & set(user)
    assert victim["visitor"] != visitor_of(stranger)


async def test_a_claimant_with_a_click_of_its_own_cannot_push_it_onto_the_victim(
    gateway: GatewayFactory, redis: Redis
) -> None:
    victim = await victim_identifies(gateway, redis)
    stranger = await gateway()
    await land(stranger, STRANGER_TTCLID, STRANGER)  # a newer click than the victim's
    await stranger.post("/e", json={"type": "identify", **CLAIMS["email"]}, headers=STRANGER)
    await stranger.post("/e", json={"type": "identify", **CLAIMS["phone"]}, headers=STRANGER)
    # the victim comes back, is recognised again, and buys in the browser
    client = victim["client"]
    again = await client.post("/e", json={"type": "identify", **CLAIMS["email"]}, headers=VICTIM)
    buy = await client.post("/e", json=track("Purchase", event_id="v-buy"), headers=VICTIM)
    for response in (again, buy):
        assert STRANGER_TTCLID not in "".join(response.headers.getall("Set-Cookie", []))
    kept = client.server.app[SIGNER].read_click(cookie(client, CLICK_COOKIE))
    assert kept is not None and kept[0] == VICTIM_TTCLID
    assert (await queued_event(client, "v-buy"))["data"]["user"]["ttclid"] == VICTIM_TTCLID
    # and the e-mail-only order gets neither the stranger's click nor its session
    user = (await server_order(await gateway(), "9002", user={"email": EMAIL}))["data"]["user"]
    assert user.get("ttclid") != STRANGER_TTCLID
    assert not {"ip", "user_agent", "ttp"} & set(user)


async def test_a_visitor_the_backend_vouched_for_beats_any_claim(
    gateway: GatewayFactory, redis: Redis
) -> None:
    victim = await victim_identifies(gateway, redis)
    backend = await gateway()
    # the shop's backend saw the victim log in, with the _ttgw cookie it received
    signed = cookie(victim["client"], VISITOR_COOKIE)
    await server_order(backend, "login", user={"email": EMAIL}, anonymous_id=signed)
    for n in range(3):  # strangers claim the e-mail afterwards, from fresh browsers
        stranger = await gateway()
        await stranger.post("/e", json={"type": "identify", **CLAIMS["email"]}, headers=STRANGER)
        await stranger.post("/e", json=track("ViewContent", event_id=f"s{n}"), headers=STRANGER)
    user = (await server_order(backend, "9003", user={"email": EMAIL}))["data"]["user"]
    assert user["ttclid"] == VICTIM_TTCLID
    assert (user["ip"], user["user_agent"]) == ("198.51.100.7", VICTIM["User-Agent"])
    assert user["ttp"] == victim["ttp"]
    assert user["external_id"] == [sha(victim["visitor"])]


async def test_an_order_keeps_the_buyer_ip_and_user_agent_it_carries(
    gateway: GatewayFactory, redis: Redis
) -> None:
    victim = await victim_identifies(gateway, redis)
    given = {"email": EMAIL, "ip": "192.0.2.44", "user_agent": "Checkout/1"}
    user = (await server_order(await gateway(), "9004", user=given))["data"]["user"]
    assert (user["ip"], user["user_agent"]) == ("192.0.2.44", "Checkout/1")
    assert user["ttp"] == victim["ttp"] and user["ttclid"] == VICTIM_TTCLID  # only filled in


async def test_a_claim_of_another_identifier_leaves_the_order_to_its_buyer(
    gateway: GatewayFactory, redis: Redis
) -> None:
    victim = await victim_identifies(gateway, redis)
    stranger = await gateway()
    await stranger.post("/e", json={"type": "identify", **CLAIMS["phone"]}, headers=STRANGER)
    user = (await server_order(await gateway(), "9005", user={"email": EMAIL}))["data"]["user"]
    assert (user["ip"], user["ttp"]) == ("198.51.100.7", victim["ttp"])
    assert user["external_id"] == [sha(victim["visitor"])]


async def test_no_click_is_borrowed_when_the_linked_browsers_disagree(
    gateway: GatewayFactory, redis: Redis
) -> None:
    await victim_identifies(gateway, redis)
    other = await gateway()
    await land(other, STRANGER_TTCLID, STRANGER)
    await other.post("/e", json={"type": "identify", **CLAIMS["email"]}, headers=STRANGER)
    third = await gateway()
    await third.post("/e", json={"type": "identify", **CLAIMS["email"]})
    await third.post("/e", json=track("Purchase", event_id="t-buy"))
    assert "ttclid" not in (await queued_event(third, "t-buy"))["data"]["user"]
    # and the order of the e-mail gets no click either: nobody's is more believable
    order = await server_order(third, "9006", user={"email": EMAIL})
    assert "ttclid" not in order["data"]["user"]


async def test_the_browser_hop_the_stitching_is_for(gateway: GatewayFactory, redis: Redis) -> None:
    in_app = await gateway()  # the in-app browser the ad opened
    await land(in_app, VICTIM_TTCLID, VICTIM)
    await in_app.post("/e", json={"type": "identify", **CLAIMS["email"]}, headers=VICTIM)
    safari = await gateway()  # the shopper hops to Safari and logs in
    headers = {"User-Agent": "Safari/17", "X-Forwarded-For": "198.51.100.2"}
    hop = await safari.post("/e", json={"type": "identify", **CLAIMS["email"]}, headers=headers)
    assert CLICK_COOKIE not in set_cookies(hop)  # Safari did not land: no click in its cookies
    await safari.post("/e", json=track("Purchase", event_id="ord_1"), headers=headers)
    user = (await queued_event(safari, "ord_1"))["data"]["user"]
    assert (user["ttclid"], user["ip"], user["user_agent"]) == (
        VICTIM_TTCLID, "198.51.100.2", "Safari/17"
    )  # fmt: skip
    # an e-mail-only order after the hop: two browsers claimed the address, both carry one click
    order = (await server_order(safari, "9007", user={"email": EMAIL}))["data"]["user"]
    assert order["ttclid"] == VICTIM_TTCLID
    assert not {"ip", "user_agent", "ttp"} & set(order)
