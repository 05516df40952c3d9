"""``POST /e/shopify-pixel``, the visitor in ``/e``'s answer, ``/c-shopify.js`` and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.cli import main
from gateway.identity.cookies import CookieSigner
from gateway.operate.shopify_pixel import render
from gateway.settings import Settings
from tests.ingest_support import (
    EMAIL,
    EMAIL_HASH,
    GatewayFactory,
    make_gateway,
    queued,
    set_cookies,
    sha,
    track,
)

PIXEL_PATH = "/e/shopify-pixel"


@pytest.fixture
def gateway(
    aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    return make_gateway(aiohttp_client, make_settings, redis_url)


def signer_of(client: TestClient) -> CookieSigner:  # type: ignore[type-arg]
    from gateway.appkeys import SIGNER

    return client.app[SIGNER]  # type: ignore[index]


async def post(client: TestClient, body: Any, **headers: str) -> Any:  # type: ignore[type-arg]
    return await client.post(
        PIXEL_PATH, json=body, headers={"Content-Type": "text/plain", **headers}
    )


async def test_the_e_answer_names_the_browsers_own_visitor(gateway: GatewayFactory) -> None:
    client = await gateway()
    first = await client.post("/e", json={"type": "identify"})
    assert first.status == 202
    visitor = (await first.json())["visitor"]
    assert set_cookies(first)["_ttgw"].startswith(f"_ttgw={visitor};")
    # with the cookie, the same visitor; the answer never names another
    again = await client.post(
        "/e", json={"type": "identify"}, headers={"Cookie": f"_ttgw={visitor}"}
    )
    assert (await again.json())["visitor"] == visitor


async def test_the_pixel_endpoint_takes_origin_null_and_the_signed_visitor(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    signer = signer_of(client)
    visitor_id = signer.new_visitor_id()
    ref = signer.visitor_cookie(visitor_id)
    # /e keeps refusing an opaque origin
    assert (await client.post("/e", json=track(), headers={"Origin": "null"})).status == 403
    event = track(event_id="ord_5551234", anonymous_id=ref,
                  user={"email": EMAIL, "ttp": "01HZTESTTTPVALUE1234567890"},
                  properties={"value": 84.5, "currency": "EUR"},
                  page={"url": "https://shop.example/checkouts/c/1/thank-you"})  # fmt: skip
    response = await post(client, event, Origin="null")
    assert response.status == 202, await response.text()
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Set-Cookie" not in response.headers  # the sandbox keeps no cookie of ours
    (entry,) = await queued(redis)
    sent = entry["data"]
    assert sent["event_id"] == "ord_5551234"
    assert sent["user"]["email"] == [EMAIL_HASH]
    assert sent["user"]["ttp"] == "01HZTESTTTPVALUE1234567890"
    assert sent["user"]["external_id"] == [sha(visitor_id)]  # the signed visitor, verified


async def test_the_pixel_endpoint_ignores_cookies_and_forged_visitors(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    signer = signer_of(client)
    cookie_visitor = signer.new_visitor_id()
    forged = signer.new_visitor_id() + "." + "A" * 43
    headers = {"Origin": "null", "Cookie": f"_ttgw={signer.visitor_cookie(cookie_visitor)}"}
    response = await post(client, track(event_id="e1", anonymous_id=forged), **headers)
    assert response.status == 202
    (entry,) = await queued(redis)
    external = entry["data"]["user"].get("external_id", [])
    assert sha(cookie_visitor) not in external and sha(forged.split(".")[0]) not in external


async def test_the_pixel_endpoint_refuses_foreign_origins(gateway: GatewayFactory) -> None:
    client = await gateway()
    response = await post(client, track(), Origin="https://evil.example")
    assert response.status == 403
    assert (await response.json())["field"] == "Origin"


async def test_the_cart_writer_is_served_cached(gateway: GatewayFactory) -> None:
    client = await gateway()
    response = await client.get("/c-shopify.js")
    assert response.status == 200
    assert response.content_type == "application/javascript"
    assert "cart/update.js" in await response.text()
    cached = await client.get("/c-shopify.js", headers={"If-None-Match": response.headers["ETag"]})
    assert cached.status == 304


def test_the_cli_prints_the_pixel_for_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shopify-pixel", "--url", "https://t.shop.example/"]) == 0
    out = capsys.readouterr().out
    assert "const GATEWAY = 'https://t.shop.example';" in out
    assert "analytics.subscribe" in out and "__TTGW_URL__" not in out
    assert main(["shopify-pixel", "--url", "t.shop.example"]) == 2
    assert "--url" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url", ["ftp://x.example", "https://x.example/?a=1", "https://x.example/'"]
)
def test_render_refuses_urls_that_are_not_a_plain_base(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        render(url)
