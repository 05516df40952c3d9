"""Signed order webhooks: Shopify's and WooCommerce's orders, through HTTP, Redis and the emulator.

The orders are written here, shaped after the platforms' documented order resources (Shopify's
REST Admin API order, WooCommerce's REST API v3 order), with values of our own, and signed as the
platforms sign them: base64 of HMAC-SHA256 of the raw body with the webhook's secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from gateway.config import SettingsError
from gateway.delivery.receipts import receipt
from gateway.identity.cookies import TTP_COOKIE, VISITOR_COOKIE
from gateway.ingest import shopify, woocommerce
from gateway.settings import Settings
from tests.delivery_support import delivery_env, running_emulator, running_worker, wait_until
from tests.ingest_support import (
    EMAIL,
    EMAIL_HASH,
    PHONE_HASH,
    PIXEL,
    TTCLID,
    make_gateway,
    queued,
    set_cookies,
    sha,
)

SHOPIFY_SECRET = "shpss_5d1c0ffee0123456789abcdef0123456"
WOO_SECRET = "wc-secret: a phrase, typed by the merchant"
SHOP = "ttgw-demo.myshopify.com"
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148"


def iso(offset_s: float = -60, *, zone: str = "-04:00", gmt: bool = False) -> str:
    """A time ``offset_s`` from now, as Shopify writes it (local, with offset) or WooCommerce's
    ``date_created_gmt`` (UTC, no offset)."""
    at = datetime.fromtimestamp(time.time() + offset_s, UTC)
    if gmt:
        return at.strftime("%Y-%m-%dT%H:%M:%S")
    hours = int(zone[:3])
    local = datetime.fromtimestamp(time.time() + offset_s + hours * 3600, UTC)
    return local.strftime("%Y-%m-%dT%H:%M:%S") + zone


def shopify_order(**over: Any) -> dict[str, Any]:
    """An order as ``orders/create`` carries it (the fields we read, and some we do not)."""
    order: dict[str, Any] = {
        "id": 5813209874562,
        "admin_graphql_api_id": "gid://shopify/Order/5813209874562",
        "name": "#1042",
        "order_number": 1042,
        "email": EMAIL,
        "contact_email": EMAIL,
        "phone": None,
        "created_at": iso(),
        "processed_at": iso(),
        "currency": "EUR",
        "presentment_currency": "EUR",
        "total_price": "184.50",
        "subtotal_price": "169.50",
        "total_tax": "30.75",
        "financial_status": "paid",
        "test": False,
        "browser_ip": "203.0.113.24",
        "client_details": {
            "accept_language": "fr-FR",
            "browser_ip": "203.0.113.24",
            "user_agent": UA,
        },
        "customer_locale": "fr-FR",
        "landing_site": f"/products/linen-shirt?ttclid={TTCLID}&utm_source=tiktok",
        "referring_site": "https://www.tiktok.com/",
        "note_attributes": [{"name": "gift_wrap", "value": "no"}],
        "customer": {
            "id": 7301845622914,
            "email": EMAIL,
            "first_name": "Jane",
            "last_name": "Doe",
            "phone": None,
        },
        "billing_address": {
            "first_name": "Jane",
            "last_name": "Doe",
            "address1": "12 rue de la Paix",
            "city": "Paris",
            "zip": "75002",
            "province_code": None,
            "country_code": "FR",
            "phone": "06 12 34 56 78",
        },
        "shipping_address": {"city": "Paris", "zip": "75002", "country_code": "FR"},
        "line_items": [
            {
                "id": 14120598732930,
                "product_id": 8901234567890,
                "variant_id": 45123456789012,
                "sku": "LIN-SHIRT-M",
                "title": "Linen shirt",
                "price": "129.00",
                "quantity": 1,
            },
            {
                "id": 14120598765698,
                "product_id": 8901234500001,
                "variant_id": 45123400000001,
                "sku": "SOCK-3",
                "title": "Socks, three pairs",
                "price": "20.25",
                "quantity": 2,
            },
        ],
    }
    order.update(over)
    return order


def woo_order(**over: Any) -> dict[str, Any]:
    """An order as WooCommerce's ``order.created`` (API v3) carries it."""
    order: dict[str, Any] = {
        "id": 727,
        "parent_id": 0,
        "number": "727",
        "order_key": "wc_order_58d2d042d1d",
        "created_via": "checkout",
        "status": "processing",
        "currency": "EUR",
        "date_created": iso(zone="+02:00")[:19],
        "date_created_gmt": iso(gmt=True),
        "total": "59.90",
        "total_tax": "9.98",
        "customer_id": 26,
        "billing": {
            "first_name": "Jane",
            "last_name": "Doe",
            "address_1": "12 rue de la Paix",
            "city": "Paris",
            "state": "",
            "postcode": "75002",
            "country": "FR",
            "email": EMAIL,
            "phone": "06 12 34 56 78",
        },
        "shipping": {"city": "Paris", "postcode": "75002", "country": "FR"},
        "payment_method": "bacs",
        "customer_ip_address": "198.51.100.7",
        "customer_user_agent": UA,
        "meta_data": [{"id": 13106, "key": "_wc_order_attribution_source_type", "value": "utm"}],
        "line_items": [
            {
                "id": 315,
                "name": "Woo mug",
                "product_id": 93,
                "variation_id": 0,
                "quantity": 2,
                "sku": "MUG-1",
                "price": 24.95,
                "total": "49.90",
            }
        ],
    }
    order.update(over)
    return order


def sign(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shopify_headers(
    body: bytes, *, topic: str = "orders/create", secret: str = SHOPIFY_SECRET, shop: str = SHOP
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": sign(body, secret),
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-API-Version": "2025-07",
        "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    }


def woo_headers(
    body: bytes, *, topic: str = "order.created", secret: str = WOO_SECRET
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "WooCommerce/9.8.0 Hookshot (WordPress/6.8)",
        "X-WC-Webhook-Source": "https://shop.example/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": topic.split(".")[0],
        "X-WC-Webhook-Event": topic.split(".")[1],
        "X-WC-Webhook-Signature": sign(body, secret),
        "X-WC-Webhook-ID": "12",
        "X-WC-Webhook-Delivery-ID": "a1b2c3",
    }


SECRETS = {
    "TTGW_SHOPIFY_WEBHOOK_SECRET": SHOPIFY_SECRET,
    "TTGW_WOOCOMMERCE_WEBHOOK_SECRET": WOO_SECRET,
}


@pytest.fixture
def gateway(aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str) -> Any:
    factory = make_gateway(aiohttp_client, make_settings, redis_url)

    async def make(**env: str) -> Any:
        return await factory(**{**SECRETS, **env})

    return make


async def _delivered(redis: Redis, event_id: str) -> bool:
    found = await receipt(redis, PIXEL, "Purchase", event_id)
    return found is not None and found["state"] == "delivered"


async def test_a_shopify_order_reaches_tiktok_once_with_every_field(
    gateway: Any, make_settings: Callable[..., Settings], redis_url: str, redis: Redis
) -> None:
    body = orjson.dumps(shopify_order())
    async with running_emulator() as tiktok:
        env = delivery_env(tiktok, redis_url, **SECRETS,
                           TTGW_SHOPIFY_TOPICS="orders/create,orders/paid")  # fmt: skip
        client = await gateway(**{k: v for k, v in env.items() if k != "TTGW_REDIS_URL"})
        async with running_worker(make_settings(**env)):
            answers = []
            # Shopify retries a delivery; orders/paid follows orders/create
            for topic in ("orders/create", "orders/create", "orders/paid"):
                response = await client.post(
                    "/v1/webhooks/shopify", data=body, headers=shopify_headers(body, topic=topic)
                )
                assert response.status == 200
                answers.append(await response.json())
            await tiktok.state.wait_for_events(1)
            await wait_until(lambda: _delivered(redis, "ord_5813209874562"))
    assert [a["status"] for a in answers] == ["queued", "duplicate", "duplicate"]
    assert {a["event_id"] for a in answers} == {"ord_5813209874562"}
    (accepted,) = tiktok.state.accepted
    sent = accepted.payload
    assert sent["event"] == "Purchase" and sent["event_id"] == "ord_5813209874562"
    user = sent["user"]
    assert user["email"] == [EMAIL_HASH]
    assert user["phone"] == [PHONE_HASH]  # 06 12 34 56 78 read in FR: +33612345678
    assert user["external_id"] == [sha("7301845622914")]
    assert user["ip"] == "203.0.113.24" and user["user_agent"] == UA
    assert user["ttclid"] == TTCLID  # from landing_site
    props = sent["properties"]
    assert props["value"] == 184.5 and props["currency"] == "EUR"
    assert props["contents"] == [
        {"content_id": "8901234567890", "content_name": "Linen shirt", "price": 129.0,
         "quantity": 1},
        {"content_id": "8901234500001", "content_name": "Socks, three pairs", "price": 20.25,
         "quantity": 2},
    ]  # fmt: skip
    assert sent["page"]["url"].startswith(f"https://{SHOP}/products/linen-shirt?ttclid=")
    assert abs(sent["event_time"] - (time.time() - 60)) < 5  # created_at, not the arrival
    found = await receipt(redis, PIXEL, "Purchase", "ord_5813209874562")
    assert found is not None
    assert found["source"] == "webhook"


async def test_a_woocommerce_order_reaches_tiktok_once(
    gateway: Any, make_settings: Callable[..., Settings], redis_url: str, redis: Redis
) -> None:
    body = orjson.dumps(woo_order())
    async with running_emulator() as tiktok:
        env = delivery_env(tiktok, redis_url, **SECRETS)
        client = await gateway(**{k: v for k, v in env.items() if k != "TTGW_REDIS_URL"})
        async with running_worker(make_settings(**env)):
            statuses = []
            for topic in ("order.created", "order.created", "order.updated"):
                response = await client.post(
                    "/v1/webhooks/woocommerce", data=body, headers=woo_headers(body, topic=topic)
                )
                assert response.status == 200
                statuses.append((await response.json())["status"])
            await tiktok.state.wait_for_events(1)
            await wait_until(lambda: _delivered(redis, "ord_727"))
    assert statuses == ["queued", "duplicate", "duplicate"]
    (accepted,) = tiktok.state.accepted
    sent = accepted.payload
    assert sent["event"] == "Purchase" and sent["event_id"] == "ord_727"
    user = sent["user"]
    assert user["email"] == [EMAIL_HASH] and user["phone"] == [PHONE_HASH]
    assert user["external_id"] == [sha("26")]
    assert user["ip"] == "198.51.100.7" and user["user_agent"] == UA
    props = sent["properties"]
    assert props["value"] == 59.9 and props["currency"] == "EUR"
    assert props["contents"] == [
        {"content_id": "93", "content_name": "Woo mug", "price": 24.95, "quantity": 2}
    ]
    assert abs(sent["event_time"] - (time.time() - 60)) < 5


@pytest.mark.parametrize("platform", ["shopify", "woocommerce"])
@pytest.mark.parametrize("signature", ["missing", "wrong secret", "other body"])
async def test_an_unsigned_order_is_401_and_nothing_is_queued(
    gateway: Any, redis: Redis, platform: str, signature: str
) -> None:
    client = await gateway()
    order = shopify_order() if platform == "shopify" else woo_order()
    body = orjson.dumps(order)
    make = shopify_headers if platform == "shopify" else woo_headers
    header = "X-Shopify-Hmac-Sha256" if platform == "shopify" else "X-WC-Webhook-Signature"
    headers = make(body)
    if signature == "missing":
        del headers[header]
    elif signature == "wrong secret":
        headers = make(body, secret="not-the-secret")
    else:
        headers = make(orjson.dumps({**order, "total": "0.01", "total_price": "0.01"}))
    response = await client.post(f"/v1/webhooks/{platform}", data=body, headers=headers)
    assert response.status == 401
    answer = await response.json()
    assert answer["field"] == header
    assert SHOPIFY_SECRET not in await response.text() and WOO_SECRET not in await response.text()
    assert await queued(redis) == []


async def test_without_a_secret_configured_every_order_is_401(gateway: Any, redis: Redis) -> None:
    client = await gateway(TTGW_SHOPIFY_WEBHOOK_SECRET="")
    body = orjson.dumps(shopify_order())
    response = await client.post(
        "/v1/webhooks/shopify", data=body, headers=shopify_headers(body, secret="")
    )
    assert response.status == 401
    assert "no Shopify webhook secret is configured" in (await response.json())["error"]
    assert await queued(redis) == []


@pytest.mark.parametrize("signed", [False, True])
async def test_the_woocommerce_ping_is_200_and_queues_nothing(
    gateway: Any, redis: Redis, signed: bool
) -> None:
    client = await gateway()
    body = b"webhook_id=12"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signed:
        headers["X-WC-Webhook-Signature"] = sign(body, WOO_SECRET)
    response = await client.post("/v1/webhooks/woocommerce", data=body, headers=headers)
    assert response.status == 200
    assert await response.json() == {"status": "ignored", "reason": "ping"}
    assert await queued(redis) == []


@pytest.mark.parametrize(
    ("order", "topic", "reason"),
    [
        (woo_order(status="pending"), "order.created", "status"),
        (woo_order(status="on-hold"), "order.updated", "status"),
        (woo_order(status="cancelled"), "order.updated", "status"),
        (woo_order(), "order.deleted", "topic"),
        (woo_order(date_created_gmt=iso(-30 * 86400, gmt=True)), "order.updated", "unusable"),
    ],
)
async def test_a_woocommerce_order_that_is_no_purchase_is_200_and_not_queued(
    gateway: Any, redis: Redis, order: dict[str, Any], topic: str, reason: str
) -> None:
    client = await gateway()
    body = orjson.dumps(order)
    response = await client.post(
        "/v1/webhooks/woocommerce", data=body, headers=woo_headers(body, topic=topic)
    )
    assert response.status == 200
    assert (await response.json())["reason"] == reason
    assert await queued(redis) == []


@pytest.mark.parametrize(
    ("topic", "topics"),
    [("orders/paid", "orders/create"), ("orders/updated", "orders/create,orders/paid"),
     ("orders/create", "orders/paid")],
)  # fmt: skip
async def test_a_shopify_topic_not_configured_is_200_and_not_queued(
    gateway: Any, redis: Redis, topic: str, topics: str
) -> None:
    client = await gateway(TTGW_SHOPIFY_TOPICS=topics)
    body = orjson.dumps(shopify_order())
    response = await client.post(
        "/v1/webhooks/shopify", data=body, headers=shopify_headers(body, topic=topic)
    )
    assert response.status == 200
    assert await response.json() == {"status": "ignored", "reason": "topic", "topic": topic}
    assert await queued(redis) == []


async def test_the_visitor_in_note_attributes_brings_its_click_ttp_and_session(
    gateway: Any, redis: Redis
) -> None:
    client = await gateway()
    landing = await client.get(
        "/landing",
        headers={
            "X-Original-URI": "/products/linen-shirt?ttclid=E.C.P.visitor-click-0001",
            "Host": "shop.example",
            "User-Agent": UA,
            "X-Forwarded-For": "203.0.113.99",
        },
    )
    assert landing.status == 204
    cookies = set_cookies(landing)
    visitor = cookies[VISITOR_COOKIE].split(";")[0].split("=", 1)[1]
    ttp = cookies[TTP_COOKIE].split(";")[0].split("=", 1)[1]
    # the checkout ran without the storefront's script: no browser_ip, user agent or click
    order = shopify_order(
        note_attributes=[{"name": "_ttgw_visitor", "value": visitor}],
        landing_site="/",
        browser_ip=None,
        client_details=None,
    )
    body = orjson.dumps(order)
    response = await client.post("/v1/webhooks/shopify", data=body, headers=shopify_headers(body))
    assert (await response.json())["status"] == "queued"
    (entry,) = await queued(redis)
    user = entry["data"]["user"]
    assert user["ttclid"] == "E.C.P.visitor-click-0001"
    assert user["ttp"] == ttp
    assert user["ip"] == "203.0.113.99" and user["user_agent"] == UA


async def test_an_unsigned_visitor_value_names_nobody(gateway: Any, redis: Redis) -> None:
    client = await gateway()
    order = shopify_order(
        note_attributes=[{"name": "_ttgw_visitor", "value": "forged.visitor"}], landing_site=None
    )
    body = orjson.dumps(order)
    response = await client.post("/v1/webhooks/shopify", data=body, headers=shopify_headers(body))
    assert (await response.json())["status"] == "queued"
    (entry,) = await queued(redis)
    assert "ttclid" not in entry["data"]["user"] and "ttp" not in entry["data"]["user"]


async def test_a_shopify_test_order_is_queued_and_marked_in_its_receipt(
    gateway: Any, redis: Redis
) -> None:
    client = await gateway()
    body = orjson.dumps(shopify_order(test=True, id=1001))
    response = await client.post("/v1/webhooks/shopify", data=body, headers=shopify_headers(body))
    assert (await response.json()) == {"status": "queued", "event_id": "ord_1001"}
    (entry,) = await queued(redis)
    assert entry["source"] == "webhook-test"
    found = await receipt(redis, entry["pixel"], "Purchase", "ord_1001")
    assert found is not None
    assert found["source"] == "webhook-test"


async def test_a_shop_domain_picks_its_integration_and_secret(
    gateway: Any, redis: Redis, tmp_path: Path
) -> None:
    config = tmp_path / "integrations.toml"
    config.write_text(
        '[[integrations]]\npixel_code = "CAAAAAAAAAAAAAAAAAA1"\naccess_token = "token-a-000001"\n'
        'hostnames = ["t.shop-a.example"]\n'
        '[[integrations]]\npixel_code = "CBBBBBBBBBBBBBBBBBB2"\naccess_token = "token-b-000002"\n'
        'hostnames = ["t.shop-b.example"]\nshopify_shop_domain = "shop-b.myshopify.com"\n'
        'shopify_webhook_secret = "secret-of-shop-b"\nshopify_topics = ["orders/paid"]\n'
    )
    client = await gateway(TTGW_CONFIG=str(config))
    body = orjson.dumps(shopify_order())
    url = "/v1/webhooks/shopify"
    # the shared secret is not shop B's
    headers = shopify_headers(body, topic="orders/paid", shop="shop-b.myshopify.com")
    assert (await client.post(url, data=body, headers=headers)).status == 401
    headers = shopify_headers(
        body, topic="orders/paid", shop="shop-b.myshopify.com", secret="secret-of-shop-b"
    )
    response = await client.post(url, data=body, headers=headers)
    assert (await response.json())["status"] == "queued"
    (entry,) = await queued(redis)
    assert entry["pixel"] == "CBBBBBBBBBBBBBBBBBB2"
    # another shop: the integration of the Host, with the shared secret and topics
    headers = {**shopify_headers(body, shop="shop-a.myshopify.com"), "Host": "t.shop-a.example"}
    response = await client.post(url, data=body, headers=headers)
    assert (await response.json())["status"] == "queued"
    assert [e["pixel"] for e in await queued(redis)][-1] == "CAAAAAAAAAAAAAAAAAA1"


def test_the_order_mappings_read_the_documented_fields() -> None:
    shop = shopify.to_envelope(
        shopify_order(customer=None, email=None, contact_email="b@example.com",
                      landing_site="https://other.example/p?ttclid=X"),
        SHOP,
    )  # fmt: skip
    assert "user_id" not in shop and shop["user"]["email"] == "b@example.com"
    assert shop["page"]["url"] == "https://other.example/p?ttclid=X"
    assert shop["user"]["phone"] == "06 12 34 56 78" and shop["user"]["country"] == "FR"
    guest = woocommerce.to_envelope(woo_order(customer_id=0, meta_data=[
        {"id": 1, "key": "_ttgw_visitor", "value": "v.sig"}]))  # fmt: skip
    assert "user_id" not in guest and guest["anonymous_id"] == "v.sig"
    assert guest["timestamp"].endswith("+00:00")
    assert woocommerce.is_purchase(woo_order(status="completed"))
    assert not woocommerce.is_purchase(woo_order(status="refunded"))


def test_the_shopify_topics_setting_is_checked(make_settings: Callable[..., Settings]) -> None:
    assert make_settings().shopify_topics == ("orders/create",)
    both = make_settings(TTGW_SHOPIFY_TOPICS="orders/create, orders/paid").shopify_topics
    assert both == ("orders/create", "orders/paid")
    with pytest.raises(SettingsError, match="TTGW_SHOPIFY_TOPICS"):
        make_settings(TTGW_SHOPIFY_TOPICS="orders/updated")
    settings = make_settings(**SECRETS)
    assert SHOPIFY_SECRET not in repr(settings) and WOO_SECRET not in repr(settings)
