"""c.js in real Chromium: a storefront with TikTok's base code, the gateway, the emulator."""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from gateway.settings import Settings
from gateway.tiktok.emulator_state import AcceptedEvent
from tests.browser_support import chromium, sent, sha, storefront_stack

MakeSettings = Callable[..., Settings]
TTCLID = "E.C.P.CsQBbrowserTestClickId-abc_123"


def by_id(events: list[AcceptedEvent]) -> dict[str, AcceptedEvent]:
    return {e.event_id or "": e for e in events}


async def test_replace_mode_from_landing_to_purchase(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with storefront_stack(make_settings, redis_url) as stack, chromium() as browser:
        landing = stack.serve("/product", "ttq.page();")
        second = stack.serve(
            "/checkout/thank-you",
            """ttq.page();
            ttq.identify({email: ' Shopper@Example.com ', phone_number: '+33 6 12 34 56 78',
                          external_id: 'cust-42'});
            ttq.track('CompletePayment', {value: 42.5, currency: 'EUR',
                      contents: [{content_id: 'SKU-1', quantity: 1, price: 42.5}]},
                      {event_id: 'ord_777'});
            ttq.track('ViewContent', {content_id: 'SKU-2'});""",
        )
        context = await browser.new_context()
        page = await context.new_page()
        stack.watch(page)
        await page.goto(f"{landing}?ttclid={TTCLID}&utm_source=tiktok")
        await stack.tiktok.state.wait_for_events(1)
        await page.goto(second)  # a second page, without ttclid
        events = by_id(await stack.tiktok.state.wait_for_events(4))
        cookies = {c["name"]: c["value"] for c in await context.cookies()}
        agent = await page.evaluate("navigator.userAgent")
        purchase = events["ord_777"]
        assert purchase.event == "CompletePayment"
        user = purchase.payload["user"]
        assert user["ttclid"] == TTCLID  # captured on the landing page, kept by the gateway
        assert user["ttp"] == cookies["_ttp"]  # the same browser id the page's cookie holds
        assert user["email"] == [sha("shopper@example.com")]
        assert user["phone"] == [sha("+33612345678")]
        assert user["external_id"] == [sha("cust-42")]
        assert user["user_agent"] == agent
        assert user["ip"] == "127.0.0.1"
        assert purchase.payload["properties"]["value"] == 42.5
        assert purchase.payload["page"]["url"] == second
        view = next(e for e in events.values() if e.event == "ViewContent")
        assert view.payload["user"]["ttclid"] == TTCLID
        assert len(view.event_id or "") == 36  # a random UUID: nothing stable to derive from
        pageviews = [e for e in events.values() if e.event == "Pageview"]
        assert len(pageviews) == 2
        assert "_ttgw" in cookies and "_ttgw_clk" in cookies
        await context.close()
    assert stack.console_errors == []


async def test_calls_made_before_c_js_loads_keep_their_order(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with storefront_stack(make_settings, redis_url) as stack, chromium() as browser:
        url = stack.serve(
            "/early",
            """ttq.track('AddToCart', {value: 1, currency: 'USD'}, {event_id: 'early-1'});
            ttq.instance('CXXXXXXXXXXXXXXXXXX0').track('Lead', {}, {event_id: 'early-2'});
            ttq.track('Purchase', {order_id: 5150, value: 9, currency: 'USD'});""",
        )
        page = await browser.new_page()
        stack.watch(page)
        await page.goto(url)
        await page.wait_for_function("window.__sent.length >= 3")
        await page.evaluate(
            "ttq.instance('CXXXXXXXXXXXXXXXXXX0').track('Lead', {}, {event_id: 'late'})"
        )
        events = await stack.tiktok.state.wait_for_events(4)
        order = [e["event_id"] for e in await sent(page)]
        # ttq's own queue keeps its order; the snippet keeps instance calls in a separate queue,
        # with nothing to interleave them by, so they follow (as they would in TikTok's pixel)
        assert order[:3] == ["early-1", "ord_5150", "early-2"]
        assert {e.event_id for e in events} == {"early-1", "early-2", "ord_5150", "late"}
    assert stack.console_errors == []


async def test_consent_hold_grant_revoke_and_consent_mode(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with storefront_stack(make_settings, redis_url) as stack, chromium() as browser:
        url = stack.serve(
            "/consent",
            """ttq.holdConsent();
            ttq.track('AddToCart', {value: 3, currency: 'EUR'}, {event_id: 'held-1'});""",
            head="""<script>window.dataLayer = window.dataLayer || [];
            function gtag(){dataLayer.push(arguments);}
            gtag('consent', 'default', {ad_user_data: 'denied', ad_personalization: 'denied',
                                        ad_storage: 'denied'});
            gtag('consent', 'update', {ad_personalization: 'granted'});</script>""",
        )
        page = await browser.new_page()
        stack.watch(page)
        await page.goto(url)
        await page.wait_for_function("typeof ttq.grantConsent === 'function' && ttq._ttgw")
        await page.evaluate("identify = ttq.identify({email: 'held@example.com'})")
        await page.evaluate("window.dispatchEvent(new Event('pagehide'))")  # a flush attempt
        assert await sent(page) == []  # held: nothing leaves the page
        await page.evaluate("ttq.grantConsent()")
        assert [e.get("event_id") for e in await sent(page)][:1] == ["held-1"]
        (held,) = [e for e in await stack.tiktok.state.wait_for_events(1) if e.event_id == "held-1"]
        first = (await sent(page))[0]
        assert first["consent"] == {"ad_user_data": "denied", "ad_personalization": "granted",
                                    "ad_storage": "denied"}  # fmt: skip
        assert "email" not in held.payload["user"]  # ad_user_data denied: stripped by the gateway
        assert held.payload["limited_data_use"] is True
        count = len(await sent(page))
        await page.evaluate("""ttq.revokeConsent();
            ttq.track('AddToCart', {value: 1, currency: 'EUR'}, {event_id: 'revoked-1'});
            window.dispatchEvent(new Event('pagehide'));""")
        assert len(await sent(page)) == count  # revoked: nothing more leaves the page
    assert stack.console_errors == []


async def test_spa_route_changes_give_one_page_event_each(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with storefront_stack(make_settings, redis_url) as stack, chromium() as browser:
        url = stack.serve("/spa", "ttq.page();")
        page = await browser.new_page()
        stack.watch(page)
        await page.goto(url)
        await page.wait_for_function("window.__sent.length >= 1")
        await page.evaluate("""history.pushState({}, '', '/spa/cart');
            history.replaceState({}, '', '/spa/cart');
            history.pushState({}, '', '/spa/checkout');""")
        await page.wait_for_function("window.__sent.length >= 3")
        await page.go_back()  # popstate back to /spa/cart
        await page.wait_for_function("window.__sent.length >= 4")
        urls = [e["page"]["url"].removeprefix(stack.shop_url) for e in await sent(page)]
        assert urls == ["/spa", "/spa/cart", "/spa/checkout", "/spa/cart"]
        assert {e["type"] for e in await sent(page)} == {"page"}
        events = await stack.tiktok.state.wait_for_events(4)
        assert [e.event for e in events] == ["Pageview"] * 4
    assert stack.console_errors == []


async def test_the_collector_is_small_cached_and_compressed(
    make_settings: MakeSettings, redis_url: str
) -> None:
    import aiohttp

    async with (
        storefront_stack(make_settings, redis_url) as stack,
        aiohttp.ClientSession(auto_decompress=False) as http,
    ):
        url = f"{stack.gateway_url}/c.js"
        async with http.get(url, headers={"Accept-Encoding": "br, gzip"}) as br:
            assert br.headers["Content-Encoding"] == "br"
            assert br.headers["Content-Type"].startswith("application/javascript")
            assert "max-age" in br.headers["Cache-Control"]
            assert br.headers["Vary"] == "Accept-Encoding"
            etag = br.headers["ETag"]
            brotli_size = len(await br.read())
        async with http.get(url, headers={"Accept-Encoding": "gzip"}) as gz:
            assert gz.headers["Content-Encoding"] == "gzip"
            assert len(await gz.read()) <= 1536
        async with http.get(url, headers={"Accept-Encoding": "identity"}) as plain:
            assert "Content-Encoding" not in plain.headers
            assert (await plain.read()).startswith(b"(")
        async with http.get(url, headers={"If-None-Match": etag}) as cached:
            assert cached.status == 304
        assert brotli_size <= 1536


async def test_mirror_mode_gives_the_pixel_and_the_gateway_the_same_event_ids(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with storefront_stack(make_settings, redis_url) as stack, chromium() as browser:
        url = stack.serve(
            "/mirror",
            """ttq.page();
            ttq.track('AddToCart', {value: 1, currency: 'USD'});
            ttq.track('Purchase', {order_id: 99, value: 5, currency: 'USD'});""",
            script="c.js?mode=mirror",
        )
        page = await browser.new_page()
        stack.watch(page)
        await page.goto(f"{url}?ttclid={TTCLID}")
        await page.wait_for_function("window.__pixelLoaded === true")  # through the /tt/ proxy
        await page.evaluate("""
            ttq.track('ViewContent', {value: 2, currency: 'USD'}, {event_id: 'given-1'});
            ttq.track('Lead', {});""")
        pixel_calls = await page.evaluate("window.__pixel")
        pixel_ids = [call[3]["event_id"] for call in pixel_calls if call[0] == "track"]
        assert len(pixel_ids) == 4 and all(pixel_ids)
        assert pixel_ids[1] == "ord_99" and pixel_ids[2] == "given-1"
        assert ["page"] in pixel_calls  # the pixel still sends its own Pageview
        events = await stack.tiktok.state.wait_for_events(4)
        assert sorted(e.event_id or "" for e in events) == sorted(pixel_ids)
        assert "Pageview" not in {e.event for e in events}  # no uncountable server copy
        assert all(e.payload["user"]["ttclid"] == TTCLID for e in events)
        gateway_script = await page.evaluate(
            "[...document.scripts].map(s => s.src).find(s => s.includes('/tt/'))"
        )
        assert gateway_script.startswith(stack.gateway_url + "/tt/i18n/pixel/events.js?sdkid=")
    assert stack.console_errors == []


async def test_a_failed_post_is_retried_and_leaving_the_page_flushes_by_beacon(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with storefront_stack(make_settings, redis_url) as stack, chromium() as browser:
        url = stack.serve("/flaky", "")
        page = await browser.new_page()
        stack.watch(page)
        failures: list[str] = []

        async def fail_once(route) -> None:  # type: ignore[no-untyped-def]
            if route.request.method == "POST" and not failures:
                failures.append(route.request.url)
                await route.abort("connectionreset")
            else:
                await route.continue_()

        await page.route(f"{stack.gateway_url}/e", fail_once)
        await page.goto(url)
        await page.wait_for_function("typeof ttq.track === 'function' && ttq._ttgw")
        await page.evaluate(
            "ttq.track('AddToCart', {value: 1, currency: 'USD'}, {event_id: 'retry-1'})"
        )
        (event,) = await stack.tiktok.state.wait_for_events(1)
        assert event.event_id == "retry-1"
        assert len(failures) == 1  # the first attempt really failed
        stack.console_errors.clear()  # the aborted request is logged by Chromium itself
        # leaving the page before the 50 ms batch timer: the beacon carries it
        await page.evaluate("""ttq.track('Lead', {}, {event_id: 'beacon-1'});
            window.dispatchEvent(new Event('pagehide'));""")
        assert {"beacon": True} in await sent(page)
        events = await stack.tiktok.state.wait_for_events(2)
        assert "beacon-1" in {e.event_id for e in events}
    assert stack.console_errors == []
