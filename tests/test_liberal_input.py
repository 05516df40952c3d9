"""Liberal in what is accepted, strict in what is sent (issue 15), through real HTTP and Redis.

A server event's page gives its click; one product at the top level of ``properties`` and GA4's
``items[]`` become contents; ids given as numbers and numbers given as strings are converted; a
blank or unusable identifier is dropped with a warning and the event kept; Segment's traits are
read; no page is made up, and an event without one is still delivered to the strict emulator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.appkeys import SETTINGS
from gateway.delivery.receipts import counters
from gateway.settings import Settings
from tests.delivery_support import delivery_env, running_emulator, running_worker, wait_until
from tests.ingest_support import (
    EMAIL,
    EMAIL_HASH,
    PHONE_HASH,
    TTCLID,
    GatewayFactory,
    make_gateway,
    queued,
    sha,
    track,
)

SHOP = "https://shop.example"


@pytest.fixture
def gateway(
    aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    return make_gateway(aiohttp_client, make_settings, redis_url)


async def server(client: TestClient, *events: dict[str, Any]) -> list[dict[str, Any]]:  # type: ignore[type-arg]
    """Post ``events`` to /v1/track as one batch; the answer's accepted entries, in order."""
    auth = {"Authorization": f"Bearer {client.server.app[SETTINGS].write_key}"}
    response = await client.post("/v1/track", json={"events": list(events)}, headers=auth)
    assert response.status == 202, await response.text()
    answer = await response.json()
    assert answer["errors"] == []
    return answer["accepted"]  # type: ignore[no-any-return]


async def sent(redis: Redis) -> dict[str, dict[str, Any]]:
    """What was queued, by event_id."""
    return {entry["event_id"]: entry["data"] for entry in await queued(redis)}


def warned(entry: dict[str, Any]) -> list[str]:
    return [w["field"] for w in entry.get("warnings", [])]


# --- the click in a server event's page ---------------------------------------------------------


async def test_a_server_events_page_url_gives_its_click(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    landing = f"{SHOP}/p/1?utm_source=tiktok&ttclid={TTCLID}"
    await server(
        client,
        track(event_id="url", page={"url": landing}),
        track(event_id="context", context={"page": {"url": landing}}),
        track(event_id="referrer", page={"url": f"{SHOP}/cart", "referrer": landing}),
        track(event_id="other-site", page={"url": f"{SHOP}/cart",
                                           "referrer": f"https://elsewhere.example/?ttclid={TTCLID}"}),
        track(event_id="named", user={"ttclid": "E.C.P.TheBackendKeptThisOne-0123"},
              page={"url": landing}),
    )  # fmt: skip
    data = await sent(redis)
    assert data["url"]["user"]["ttclid"] == TTCLID
    assert data["context"]["user"]["ttclid"] == TTCLID
    assert data["referrer"]["user"]["ttclid"] == TTCLID  # a same-host referrer
    assert "ttclid" not in data["other-site"]["user"]
    # the click the event names itself wins over its page's
    assert data["named"]["user"]["ttclid"] == "E.C.P.TheBackendKeptThisOne-0123"


async def test_a_placeholder_click_in_a_server_page_is_no_click(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    (entry,) = await server(
        client, track(event_id="junk", page={"url": f"{SHOP}/?ttclid=dummyclickId"})
    )
    assert entry["status"] == "queued"
    assert "events[0].page.url.ttclid" in warned(entry)
    assert "ttclid" not in (await sent(redis))["junk"]["user"]


# --- contents from one top-level product and from GA4 items -------------------------------------


async def test_one_top_level_product_is_one_content_and_its_value(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    product = {
        "product_id": "P-1",
        "sku": "SKU-1",
        "name": "Tee",
        "price": "12.50",
        "quantity": "2",
        "category": "Apparel",
        "brand": "Acme",
        "currency": "EUR",
    }
    answers = await server(
        client,
        track("Product Added", event_id="added", properties=product),
        track("Product Viewed", event_id="valued", properties={**product, "value": "20.00"}),
        track("Product Added", event_id="sku-only", properties={"sku": 77, "price": 3}),
        track("Product Added", event_id="no-id", properties={"name": "Tee", "price": 3}),
    )
    data = await sent(redis)
    added = data["added"]
    assert added["event"] == "AddToCart"
    assert added["properties"]["contents"] == [
        {"content_id": "P-1", "content_name": "Tee", "content_category": "Apparel",
         "brand": "Acme", "price": 12.5, "quantity": 2}
    ]  # fmt: skip
    assert added["properties"]["value"] == 25.0  # price x quantity, as no value was given
    assert added["properties"]["currency"] == "EUR"
    assert added["properties"]["content_ids"] == ["P-1"]
    assert "warnings" not in answers[0]  # every field of the product was read
    assert data["valued"]["event"] == "ViewContent"
    assert data["valued"]["properties"]["value"] == 20.0
    assert data["sku-only"]["properties"]["contents"] == [{"content_id": "77", "price": 3.0}]
    assert data["sku-only"]["properties"]["value"] == 3.0
    assert "contents" not in data["no-id"]["properties"]
    assert "events[3].properties.product_id" in warned(answers[3])


async def test_ga4_items_become_contents(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    items = [
        {"item_id": "SKU_1", "item_name": "Tee", "item_category": "Apparel", "item_brand": "Acme",
         "price": 10, "quantity": 2, "currency": "USD"},
        {"item_id": 2, "item_name": "Cap", "price": "5.5", "quantity": "1", "currency": "USD"},
    ]  # fmt: skip
    (entry,) = await server(
        client,
        {"event": "purchase", "properties": {"transaction_id": "T-9", "items": items}},
    )
    assert entry["event_id"] == "ord_T-9"
    data = (await sent(redis))["ord_T-9"]
    assert data["event"] == "Purchase"
    assert data["properties"]["contents"] == [
        {"content_id": "SKU_1", "content_name": "Tee", "content_category": "Apparel",
         "brand": "Acme", "price": 10.0, "quantity": 2},
        {"content_id": "2", "content_name": "Cap", "price": 5.5, "quantity": 1},
    ]  # fmt: skip
    assert data["properties"]["currency"] == "USD"  # the items' shared currency
    assert data["properties"]["value"] == 25.5
    assert data["properties"]["order_id"] == "T-9"


# --- ids given as numbers, numbers given as strings ---------------------------------------------


async def test_ids_as_numbers_and_numbers_as_strings_are_converted(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    (entry,) = await server(
        client,
        {
            "event": "Purchase",
            "event_id": 99,
            "user_id": 42,
            "user": {"external_id": 123, "phone": 33612345678, "country": "FR"},
            "properties": {
                "order_id": 100234,
                "shop_id": 5,
                "value": "20.00",
                "num_items": "2",
                "contents": [{"content_id": 7, "price": "12.50", "quantity": "2"}],
                "content_ids": [7],
            },
        },
    )
    assert entry["event_id"] == "99" and "warnings" not in entry
    data = (await sent(redis))["99"]
    assert data["user"]["external_id"] == [sha("42"), sha("123")]
    assert data["user"]["phone"] == [sha("+33612345678")]
    props = data["properties"]
    assert props["order_id"] == "100234" and props["shop_id"] == "5"
    assert props["value"] == 20.0 and props["num_items"] == 2
    assert props["contents"] == [{"content_id": "7", "price": 12.5, "quantity": 2}]
    assert props["content_ids"] == ["7"]


# --- blank and unusable identifiers -------------------------------------------------------------


async def test_blank_and_unusable_identifiers_are_dropped_with_a_warning(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    entry, _ = await server(
        client,
        track(
            event_id="blank",
            user_id="  ",
            anonymous_id=5,
            user={
                "email": "",
                "phone": "",
                "external_id": "",
                "ttclid": "  ",
                "ip": "10.0.0.1",
                "ttp": "undefined",
            },
        ),
        track(event_id="kept", user={"email": EMAIL, "phone": "   "}),
    )
    assert entry["status"] == "queued"
    assert set(warned(entry)) >= {"events[0].user_id", "events[0].anonymous_id",
                                  "events[0].user.email", "events[0].user.phone",
                                  "events[0].user.external_id", "events[0].user.ttclid",
                                  "events[0].user.ip", "events[0].user.ttp"}  # fmt: skip
    data = await sent(redis)
    assert not set(data["blank"]["user"]) & {"email", "phone", "external_id", "ttclid", "ip"}
    assert data["kept"]["user"]["email"] == [EMAIL_HASH]
    assert "phone" not in data["kept"]["user"]


# --- Segment's traits ---------------------------------------------------------------------------


async def test_context_traits_are_read(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    traits = {"email": EMAIL, "phone": "+33 6 12 34 56 78", "firstName": "Jane",
              "lastName": "Doe", "address": {"postalCode": "75001", "city": "Paris",
                                             "state": "IDF", "country": "FR"}}  # fmt: skip
    await server(
        client,
        track(event_id="ctx", context={"traits": traits}),
        # the event's own traits and user win over context.traits
        track(event_id="own", user={"email": "own@example.com"},
              traits={"phone": "+33 6 98 76 54 32"}, context={"traits": traits}),
    )  # fmt: skip
    data = await sent(redis)
    user = data["ctx"]["user"]
    assert user["email"] == [EMAIL_HASH] and user["phone"] == [PHONE_HASH]
    assert user["first_name"] == sha("jane") and user["last_name"] == sha("doe")
    assert user["zip_code"] == sha("75001")
    assert (user["city"], user["state"], user["country"]) == ("paris", "idf", "fr")
    own = data["own"]["user"]
    assert own["email"] == [sha("own@example.com")]
    assert own["phone"] == [sha("+33698765432")]


# --- names over HTTP ----------------------------------------------------------------------------


async def test_names_from_every_table_are_sent_in_tiktoks_spelling(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    names = {"purchase": "Purchase", "ADDTOCART": "AddToCart", "begin_checkout": "InitiateCheckout",
             "Product Clicked": "ClickButton", "Checkout Step Completed": "CheckoutStepCompleted",
             "view_item_list": "view_item_list", "Checkout": "PlaceAnOrder"}  # fmt: skip
    answers = await server(client, *(track(name, event_id=f"n{i}") for i, name in enumerate(names)))
    assert [a["event"] for a in answers] == list(names.values())
    data = await sent(redis)
    assert [data[f"n{i}"]["event"] for i in range(len(names))] == list(names.values())


# --- no page is made up -------------------------------------------------------------------------


async def test_no_page_is_made_up_and_such_an_event_is_delivered(
    make_settings: Callable[..., Settings], aiohttp_client: Any, redis_url: str, redis: Redis
) -> None:
    async with running_emulator() as tiktok:
        settings = make_settings(**delivery_env(tiktok, redis_url))
        client = await make_gateway(aiohttp_client, lambda **_: settings, redis_url)()
        await server(
            client,
            track(event_id="no-page", user={"email": EMAIL}),
            track(event_id="referrer-only", page={"referrer": f"{SHOP}/cart"}),
        )
        data = await sent(redis)
        assert data["no-page"]["page"] == {}
        assert data["referrer-only"]["page"] == {"referrer": f"{SHOP}/cart"}
        host = client.server.host
        assert all(host not in str(d.get("page")) for d in data.values())
        async with running_worker(settings):
            await tiktok.state.wait_for_events(2)

            async def delivered() -> bool:
                return (await counters(redis)).get("delivered", 0) >= 2

            await wait_until(delivered)
    by_id = {e.event_id: e.payload for e in tiktok.state.unique_events()}
    assert by_id["no-page"]["page"] == {}
    assert by_id["referrer-only"]["page"] == {"referrer": f"{SHOP}/cart"}
