"""Shopify in real Chromium: the cart writer on the storefront, the Custom Pixel in a sandbox.

The pixel runs in an iframe with ``sandbox="allow-scripts"`` (an opaque origin, as Shopify's
sandbox), against a stand-in of Shopify's ``analytics``, ``browser`` and ``init`` API whose
``browser.cookie`` and ``browser.localStorage`` answer with what the storefront's own storage holds.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from playwright.async_api import BrowserContext, Page, Route

from gateway.operate.shopify_pixel import render
from gateway.settings import Settings
from tests.browser_support import Stack, chromium, sha, storefront_stack
from tests.test_webhooks import SHOPIFY_SECRET, shopify_headers, shopify_order

MakeSettings = Callable[..., Settings]
TTCLID = "E.C.P.CsQBshopifyPixelClick-abc_123"
ORDER_ID = "5551234"
SHOPIFY = "<script>window.Shopify = {shop: 'test.myshopify.com', routes: {root: '/'}};</script>"

STAND_IN = """
<script>
const subscribers = {};
const analytics = {subscribe(name, callback) {
  (subscribers[name] = subscribers[name] || []).push(callback);
}};
const STORAGE = %(storage)s;  // the storefront's cookies and localStorage, as Shopify proxies them
const browser = {
  cookie: {get: async (name) => STORAGE.cookies[name] || ''},
  localStorage: {getItem: async (key) => (key in STORAGE.local ? STORAGE.local[key] : null)},
};
const PAGE = %(page)s;
const init = {context: {document: {location: {href: PAGE}, referrer: ''}}};
let seq = 0;
function fire(name, data) {
  seq += 1;
  const event = {id: 'sh-' + seq + '-' + name, name, type: 'standard', clientId: 'client-1', seq,
                 timestamp: new Date().toISOString(),
                 context: {document: {location: {href: PAGE}, referrer: ''}}, data};
  (subscribers[name] || []).forEach((callback) => callback(event));
}
</script>
"""

VARIANT = {
    "id": "gid://shopify/ProductVariant/4001",
    "title": "M",
    "price": {"amount": 30.0, "currencyCode": "EUR"},
    "product": {"id": "gid://shopify/Product/9001", "title": "Linen shirt", "type": "shirts"},
}
CHECKOUT: dict[str, Any] = {
    "token": "ck-token-1",
    "currencyCode": "EUR",
    "email": " Shopper@Example.com ",
    "phone": "+33 6 12 34 56 78",
    "totalPrice": {"amount": 84.5, "currencyCode": "EUR"},
    "subtotalPrice": {"amount": 80.0, "currencyCode": "EUR"},
    "billingAddress": {
        "firstName": "Ada",
        "lastName": "Lovelace",
        "zip": "75001",
        "city": "Paris",
        "countryCode": "FR",
        "phone": None,
    },
    "lineItems": [
        {
            "id": "gid://shopify/CheckoutLineItem/1",
            "title": "Linen shirt",
            "quantity": 2,
            "variant": VARIANT,
        },
        {
            "id": "gid://shopify/CheckoutLineItem/2",
            "title": "Socks",
            "quantity": 1,
            "variant": {
                "id": "gid://shopify/ProductVariant/4002",
                "title": "One size",
                "price": {"amount": 20.0, "currencyCode": "EUR"},
                "product": {"id": "gid://shopify/Product/9002", "title": "Socks"},
            },
        },
    ],
    "order": {"id": f"gid://shopify/OrderIdentity/{ORDER_ID}"},
}
FUNNEL = f"""
// what the sandbox is: an opaque origin, which POST /e refuses
fetch(GATEWAY + '/e', {{method: 'POST', body: '{{"type": "identify"}}'}}).catch(() => {{}});
fire('product_viewed', {{productVariant: {json.dumps(VARIANT)}}});
fire('checkout_started', {{checkout: Object.assign({{}}, CHECKOUT, {{order: null}})}});
fire('payment_info_submitted', {{checkout: Object.assign({{}}, CHECKOUT, {{order: null}})}});
fire('checkout_completed', {{checkout: CHECKOUT}});
"""


class Cart:
    """Shopify's ``/cart/update.js``, intercepted: what the storefront wrote into the cart."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

    async def handle(self, route: Route) -> None:
        self.updates.append(json.loads(route.request.post_data or "{}"))
        await route.fulfill(
            status=200,
            content_type="application/json",
            headers={"Set-Cookie": "cart=c1-cart-token; Path=/"},
            body=json.dumps({"token": "c1-cart-token", "attributes": self.updates[-1]}),
        )


async def land(stack: Stack, context: BrowserContext, cart: Cart) -> Page:
    """A TikTok click lands (nginx's /landing), then two storefront pages with the collector."""
    await context.route("**/cart/update.js", cart.handle)
    landing = await context.request.get(
        stack.gateway_url + "/landing",
        headers={"X-Original-URI": f"/products/linen-shirt?ttclid={TTCLID}"},
    )
    assert landing.status == 204
    head = SHOPIFY + f'<script src="{stack.gateway_url}/c-shopify.js" async></script>'
    product = stack.serve("/products/linen-shirt", "ttq.page();", head=head)
    page = await context.new_page()
    stack.watch(page)
    for _ in range(2):
        await page.goto(f"{product}?ttclid={TTCLID}")
        await page.wait_for_function("localStorage.getItem('_ttgw_cart') !== null")
    return page


async def test_the_collector_writes_the_visitor_into_the_cart_once(
    make_settings: MakeSettings, redis_url: str
) -> None:
    async with storefront_stack(make_settings, redis_url) as stack, chromium() as browser:
        context = await browser.new_context()
        cart = Cart()
        page = await land(stack, context, cart)
        cookies = {c["name"]: c["value"] for c in await context.cookies()}
        # the HttpOnly visitor cookie's value, which page script cannot read, named in the cart
        assert cart.updates == [{"attributes": {"_ttgw_visitor": cookies["_ttgw"]}}]
        assert await page.evaluate("localStorage.getItem('_ttgw_visitor')") == cookies["_ttgw"]
        assert "_ttgw=" not in await page.evaluate("document.cookie")
        await context.close()
    assert stack.console_errors == []


async def test_the_journey_from_a_click_through_the_pixel_to_the_twice_sent_webhook(
    make_settings: MakeSettings, redis_url: str
) -> None:
    """A click lands, the cart names the visitor, the pixel reports the purchase from the sandbox,
    the signed order webhook arrives twice: TikTok gets one purchase, with everything."""
    env = {"TTGW_SHOPIFY_WEBHOOK_SECRET": SHOPIFY_SECRET}
    async with storefront_stack(make_settings, redis_url, **env) as stack, chromium() as browser:
        context = await browser.new_context()
        page = await land(stack, context, Cart())
        storage = await page.evaluate(
            """() => ({cookies: {_ttp: document.cookie.match(/_ttp=([^;]*)/)[1]},
                       local: {_ttgw_visitor: localStorage.getItem('_ttgw_visitor')}})"""
        )
        thank_you = f"{stack.shop_url}/checkouts/c/ck-token-1/thank-you"
        frame = (
            STAND_IN % {"storage": json.dumps(storage), "page": json.dumps(thank_you)}
            + f"<script>{render(stack.gateway_url)}</script>"
            + f"<script>const CHECKOUT = {json.dumps(CHECKOUT)};{FUNNEL}</script>"
        )
        stack.pages["/checkout-frame"] = (
            '<!doctype html><html><body><iframe sandbox="allow-scripts" '
            f'srcdoc="{html.escape(frame, quote=True)}"></iframe></body></html>'
        )
        await page.goto(stack.shop_url + "/checkout-frame")
        received = await stack.tiktok.state.wait_for_events(6)  # 2 page views + 4 from the pixel
        events = {e.event: e for e in received}
        agent = await page.evaluate("navigator.userAgent")
        purchase = events["Purchase"]
        assert purchase.event_id == f"ord_{ORDER_ID}"  # the webhook's id: TikTok pairs the two
        user, props = purchase.payload["user"], purchase.payload["properties"]
        assert user["ttclid"] == TTCLID  # the landing's click, through the signed visitor
        assert user["ttp"] == storage["cookies"]["_ttp"]
        assert user["email"] == [sha("shopper@example.com")]
        assert user["phone"] == [sha("+33612345678")]
        assert user["ip"] == "127.0.0.1" and user["user_agent"] == agent
        assert props["value"] == 84.5 and props["currency"] == "EUR"
        assert props["contents"] == [
            {"content_id": "9001", "content_name": "Linen shirt", "price": 30.0, "quantity": 2},
            {"content_id": "9002", "content_name": "Socks", "price": 20.0, "quantity": 1},
        ]
        assert purchase.payload["page"]["url"] == thank_you
        assert {"ViewContent", "InitiateCheckout", "AddPaymentInfo"} <= set(events)
        assert events["ViewContent"].payload["properties"]["contents"][0]["content_id"] == "9001"
        assert events["InitiateCheckout"].payload["user"]["ttclid"] == TTCLID
        # an opaque origin, as in Shopify's sandbox: /e refuses it, the pixel's endpoint takes it
        refused = f"Access to fetch at '{stack.gateway_url}/e' from origin 'null'"
        assert any(e.startswith(refused) for e in stack.console_errors)
        # the signed order webhook, delivered twice: the pixel's purchase already holds the id
        order = shopify_order(
            id=int(ORDER_ID),
            note_attributes=[{"name": "_ttgw_visitor", "value": storage["local"]["_ttgw_visitor"]}],
        )
        body = json.dumps(order).encode()
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(
                    stack.gateway_url + "/v1/webhooks/shopify",
                    data=body,
                    headers=shopify_headers(body),
                ) as answer:
                    assert answer.status == 200, await answer.text()
            marker = {"type": "track", "event": "Search", "event_id": "marker-1"}
            async with http.post(
                stack.gateway_url + "/e/shopify-pixel",
                data=json.dumps(marker),
                headers={"Content-Type": "text/plain"},
            ) as answer:
                assert answer.status == 202
        received = await stack.tiktok.state.wait_for_events(len(received) + 1)
        assert received[-1].event_id == "marker-1"
        assert [e.event_id for e in received if e.event == "Purchase"] == [f"ord_{ORDER_ID}"]
        await context.close()
    errors = [e for e in stack.console_errors if "origin 'null'" not in e]
    assert [e for e in errors if "net::ERR_FAILED" not in e] == []
