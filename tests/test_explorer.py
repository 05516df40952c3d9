"""The event explorer (issue 17): the admin API's search by event id or order id, and the
dashboard's explorer in real Chromium against a real gateway, real Redis and the emulator as
TikTok — "did order 1042 reach TikTok, with its click?"."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from playwright.async_api import expect
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.settings import Settings
from tests.browser_support import chromium, sha, storefront_stack
from tests.delivery_support import enqueue, wait_until
from tests.test_dashboard import ADMIN_TOKEN, ARTIFACTS, DAY_S, VIEWPORT, open_dashboard, sign_in
from tests.test_openapi import conforms

MakeSettings = Callable[..., Settings]
TTCLID = "E.C.P.Cr0ZxWq1042abcDEFghiJKLmnoPQRstuVWXyz"
EMAIL = "ada@example.com"


def order_1042() -> dict[str, Any]:
    """The storefront's purchase of order 1042, on a page reached through an ad click."""
    return {
        "type": "track",
        "event": "Purchase",
        "event_id": "ord_1042",
        "user": {"email": EMAIL},
        "properties": {"value": 42, "currency": "EUR", "order_id": "1042"},
        "page": {"url": f"https://shop.example/thank-you?ttclid={TTCLID}"},
    }


def server_event(event_id: str) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Purchase",
        "event_id": event_id,
        "user": {"email": "bob@example.com"},
        "properties": {"value": 7, "currency": "EUR"},
    }


async def admin(session: aiohttp.ClientSession, url: str, path: str) -> aiohttp.ClientResponse:
    return await session.get(
        f"{url}/v1/admin/{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )


async def post_events(session: aiohttp.ClientSession, url: str, settings: Settings) -> None:
    async with session.post(f"{url}/e", json=order_1042()) as response:
        assert response.status == 202, await response.text()
    async with session.post(f"{url}/e", json=order_1042()) as response:  # a repeat
        assert (await response.json())["accepted"][0]["status"] == "duplicate"
    headers = {"Authorization": f"Bearer {settings.write_key}"}
    body = {"events": [server_event("srv-7"), server_event("srv-10420")]}
    async with session.post(f"{url}/v1/track", json=body, headers=headers) as response:
        assert response.status == 202, await response.text()


async def test_search_by_order_id_finds_the_event_with_its_source_and_click(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with (
        storefront_stack(make_settings, redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN) as stack,
        aiohttp.ClientSession() as session,
    ):
        settings = make_settings(TTGW_REDIS_URL=redis_url)
        await post_events(session, stack.gateway_url, settings)
        await stack.tiktok.state.wait_for_events(3)

        async def delivered() -> bool:
            page = await (await admin(session, stack.gateway_url, "events?state=delivered")).json()
            return len(page["events"]) == 3

        await wait_until(delivered)
        found = await conforms(
            await admin(session, stack.gateway_url, "events?q=1042"), "GET", "/events"
        )
        by_id = {e["event_id"]: e for e in found["events"]}
        assert set(by_id) == {"ord_1042", "srv-10420"}  # contains, not equals
        assert found["next_cursor"] is None
        assert [e["event_id"] for e in found["events"]] == ["srv-10420", "ord_1042"]  # newest first
        order = by_id["ord_1042"]
        assert (order["state"], order["source"], order["click"]) == ("delivered", "browser", True)
        assert order["duplicates"] == 1 and order["code"] == 0
        assert (by_id["srv-10420"]["source"], by_id["srv-10420"]["click"]) == ("server", False)
        # the other filters still apply; a glob character is a plain character
        narrowed = await (
            await admin(session, stack.gateway_url, "events?q=1042&state=dead")
        ).json()
        assert narrowed["events"] == []
        starred = await (await admin(session, stack.gateway_url, "events?q=*")).json()
        assert starred["events"] == []
        exact = await (await admin(session, stack.gateway_url, "events?q=srv-7")).json()
        assert [e["event_id"] for e in exact["events"]] == ["srv-7"]
        listed = await conforms(await admin(session, stack.gateway_url, "events"), "GET", "/events")
        assert {e["source"] for e in listed["events"]} == {"browser", "server"}
        too_long = await admin(session, stack.gateway_url, "events?q=" + "x" * 201)
        assert (await conforms(too_long, "GET", "/events"))["field"] == "q"


async def test_the_explorer_answers_did_order_1042_reach_tiktok_with_its_click(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with (
        storefront_stack(make_settings, redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN) as stack,
        chromium() as browser,
        aiohttp.ClientSession() as session,
    ):
        settings = make_settings(TTGW_REDIS_URL=redis_url)
        await post_events(session, stack.gateway_url, settings)
        accepted = await stack.tiktok.state.wait_for_events(3)
        tiktok_1042 = next(e for e in accepted if e.event_id == "ord_1042")
        stack.tiktok.state.config.max_event_age_s = DAY_S  # TikTok refuses a two-day-old event
        await enqueue(redis_url, ["dash-old"], age_s=2 * DAY_S)

        async def settled() -> bool:
            dead = await (await admin(session, stack.gateway_url, "events?state=dead")).json()
            return len(dead["events"]) == 1

        await wait_until(settled)

        page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
        stack.watch(page)
        await open_dashboard(page, stack)
        await sign_in(page, ADMIN_TOKEN)
        section = page.locator("#explorer-section")
        rows = page.locator("#explorer-table tbody tr")
        await expect(rows).to_have_count(4)  # recent events, newest first: the dead letter
        await expect(rows.first).to_have_attribute("data-event-id", "dash-old")
        # a real pixel without a test event code: no live tail, and the page says why
        await expect(page.get_by_role("checkbox", name="Live")).to_be_disabled()
        await expect(page.locator("#explorer-live-note")).to_contain_text("sandbox mode")

        await page.get_by_label("Event id or order id").fill("1042")
        await page.get_by_role("button", name="Search").click()
        await expect(rows).to_have_count(2)
        order = page.locator('#explorer-table tbody tr[data-event-id="ord_1042"]')
        await expect(order.locator(".state")).to_have_text("delivered")
        await expect(order.locator(".click")).to_have_text("with click")
        await expect(order).to_contain_text("+1 duplicate")
        await expect(order).to_contain_text("browser")
        server = page.locator('#explorer-table tbody tr[data-event-id="srv-10420"]')
        await expect(server.locator(".click")).to_have_text("no click")
        await expect(server).to_contain_text("server")
        await page.mouse.move(0, 0)
        ARTIFACTS.mkdir(exist_ok=True)
        await section.screenshot(path=str(ARTIFACTS / "explorer-search.png"))

        await order.get_by_role("button", name="Open Purchase ord_1042").click()
        detail = page.locator("#explorer-detail")
        await expect(page.locator("#explorer-detail-title")).to_have_text("Purchase · ord_1042")
        facts = page.locator("#explorer-facts")

        def fact(name: str) -> Any:
            return facts.locator(f'dt:text-is("{name}") + dd')

        await expect(fact("Status")).to_contain_text("delivered")
        await expect(fact("TikTok's code")).to_have_text("0")
        await expect(fact("TikTok's request id")).to_have_text(tiktok_1042.request_id)
        await expect(fact("HTTP status")).to_have_text("200")
        await expect(fact("Source")).to_have_text("browser")
        await expect(fact("Click (ttclid)")).to_have_text("with click")
        await expect(fact("Attempts")).to_have_text("1")
        payload = page.locator("#explorer-payload")
        await expect(payload).to_contain_text(sha(EMAIL))  # hashed, as TikTok got it
        await expect(payload).not_to_contain_text(EMAIL)
        await expect(payload).to_contain_text(TTCLID)
        shown = await payload.text_content()
        assert shown is not None
        assert json.loads(shown) == tiktok_1042.payload  # exactly what TikTok received
        await detail.screenshot(path=str(ARTIFACTS / "explorer-detail.png"))

        # a delivered event is not sent again: the API's answer, and why
        await page.get_by_role("button", name="Replay this event").click()
        result = page.locator("#explorer-replay-result")
        await expect(result).to_contain_text("Not replayed (the API answered queued: 0).")
        await expect(result).to_contain_text("within TikTok's 48 h deduplication window")
        assert len(stack.tiktok.state.accepted) == 3

        # the dead letter, found by its id and replayed from the explorer
        stack.tiktok.state.config.max_event_age_s = 7 * DAY_S  # TikTok takes it now
        await page.get_by_label("Event id or order id").fill("dash-old")
        await page.get_by_role("button", name="Search").click()
        await expect(page.locator("#explorer-detail-title")).to_have_text("Purchase · dash-old")
        await expect(fact("Status")).to_contain_text("dead")
        await expect(fact("TikTok's code")).to_have_text("40002")
        await page.get_by_role("button", name="Replay this event").click()
        await expect(result).to_have_text(
            "Replay: queued for delivery (the API answered queued: 1)."
        )
        assert "dash-old" in {e.event_id for e in await stack.tiktok.state.wait_for_events(4)}
        await page.get_by_role("button", name="Search").click()
        await expect(page.locator("#explorer-facts dt + dd").first).to_contain_text("delivered")
        await page.get_by_role("link", name="Sign out").click()
        await expect(rows).to_have_count(0)
    assert stack.console_errors == []


async def test_the_live_tail_shows_incoming_events_in_sandbox_mode(
    make_settings: MakeSettings, redis_url: str
) -> None:
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN)
    gateway = TestServer(create_app(settings), host="127.0.0.1")
    await gateway.start_server()
    url = str(gateway.make_url("")).rstrip("/")
    try:
        async with chromium() as browser, aiohttp.ClientSession() as session:
            page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{url}/dashboard")
            await sign_in(page, ADMIN_TOKEN)
            live = page.get_by_role("checkbox", name="Live")
            await expect(live).to_be_enabled()
            await expect(page.locator("#explorer-live-note")).to_contain_text("Sandbox mode")
            await live.check()
            await expect(page.locator("#explorer-summary")).to_contain_text("Live: the latest 0")
            headers = {"Authorization": f"Bearer {settings.write_key}"}
            body = {"events": [server_event("live-1")]}
            async with session.post(f"{url}/v1/track", json=body, headers=headers) as response:
                assert response.status == 202
            row = page.locator('#explorer-table tbody tr[data-event-id="live-1"]')
            await expect(row).to_be_visible(timeout=5000)  # within a couple of polls
            await expect(row).to_contain_text("server")
            await expect(page.locator("#explorer-summary")).to_have_text(
                re.compile(r"^Live: the latest 1 event,")
            )
            await live.uncheck()
            await page.locator("#explorer-section").screenshot(
                path=str(ARTIFACTS / "explorer-live.png")
            )
            assert errors == []
    finally:
        await gateway.close()
