"""The dashboard: its files and headers, and the page in real Chromium against a real gateway,
real Redis and the emulator as TikTok — data produced here shows up, and Replay replays."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.async_api import Page, ViewportSize, expect
from redis.asyncio import Redis

from gateway import dashboard
from gateway.settings import Settings
from gateway.stats import count_coverage
from tests.browser_support import Stack, chromium, storefront_stack
from tests.delivery_support import PIXEL, enqueue, wait_until

MakeSettings = Callable[..., Settings]
ADMIN_TOKEN = "dashboard-test-admin-token"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
DAY_S = 86400


async def test_files_are_served_from_an_allow_list_with_strict_headers(
    aiohttp_client: Any,
) -> None:
    app = web.Application()
    dashboard.add_routes(app)
    client: TestClient = await aiohttp_client(app)  # type: ignore[type-arg]
    for path, content_type in [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "application/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
    ]:
        response = await client.get(path)
        assert response.status == 200, path
        assert response.content_type == content_type
        assert response.headers["Content-Security-Policy"] == dashboard.CONTENT_SECURITY_POLICY
        assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-cache"
        again = await client.get(path, headers={"If-None-Match": response.headers["ETag"]})
        assert again.status == 304
    for path in ["/dashboard/index.html", "/dashboard/__init__.py", "/dashboard/%2e%2e%2fapp.py"]:
        assert (await client.get(path)).status == 404, path
    slash = await client.get("/dashboard/", allow_redirects=False)
    assert slash.status == 302
    assert slash.headers["Location"] == "../dashboard"
    page = await (await client.get("/dashboard")).text()
    assert "<script>" not in page and "style=" not in page  # the CSP would block them
    assert "http://" not in page and "https://" not in page  # nothing from a CDN


async def admin_get(session: aiohttp.ClientSession, stack: Stack, path: str) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with session.get(f"{stack.gateway_url}/v1/admin/{path}", headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def open_dashboard(page: Page, stack: Stack) -> str:
    url = f"{stack.gateway_url}/dashboard"
    response = await page.goto(url)
    assert response is not None and response.ok, "create_app must call dashboard.add_routes"
    return url


async def sign_in(page: Page, token: str) -> None:
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Open the dashboard").click()


def purchase(n: int, **user: str) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Purchase",
        "event_id": f"dash-{n}",
        "user": user,
        "properties": {"value": 10 + n, "currency": "EUR"},
        "page": {"url": "https://shop.example/thank-you"},
    }


async def test_dashboard_shows_the_flow_and_replays_a_dead_letter(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with (
        storefront_stack(make_settings, redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN) as stack,
        chromium() as browser,
        aiohttp.ClientSession() as session,
    ):
        events = [
            purchase(1, email="one@example.com", phone="+33612345671"),
            purchase(2, email="two@example.com", phone="+33612345672"),
            purchase(3, email="three@example.com"),
            purchase(4, email="four@example.com"),
        ]
        async with session.post(f"{stack.gateway_url}/e", json={"events": events}) as response:
            assert response.status == 202, await response.text()
        await stack.tiktok.state.wait_for_events(4)
        # TikTok takes only a day-old event now: a two-day-old one is refused with 40002
        stack.tiktok.state.config.max_event_age_s = DAY_S
        await enqueue(redis_url, ["dash-old"], age_s=2 * DAY_S)
        # phone numbers stopped arriving on CompletePayment between yesterday and today
        with_phone = {"user": {"email": ["e"], "phone": ["p"], "ip": "203.0.113.9"}}
        without = {"user": {"email": ["e"], "ip": "203.0.113.9"}}
        now = time.time()
        await count_coverage(redis, [{"event": "CompletePayment", **with_phone}] * 30, now - DAY_S)
        await count_coverage(redis, [{"event": "CompletePayment", **without}] * 30, now)

        async def settled() -> bool:
            stats = await admin_get(session, stack, "stats")
            return bool(stats["queue"]["dead"] == 1 and stats["counters"]["delivered"] == 4)

        await wait_until(settled)

        context = await browser.new_context(viewport=VIEWPORT)
        page = await context.new_page()
        stack.watch(page)
        await open_dashboard(page, stack)
        await sign_in(page, ADMIN_TOKEN)

        await expect(page.locator("#status")).to_have_text(re.compile(r"^Stuck: 1 dead letter\b"))
        await expect(page.locator("#status")).to_have_class(re.compile(r"\bstatus-bad\b"))
        figure = page.locator("#queue .figure")
        await expect(figure.filter(has_text="Dead letters").locator(".value")).to_have_text("1")
        await expect(figure.filter(has_text="In the queue").locator(".value")).to_have_text("0")
        await expect(page.locator("#deliveries-legend .d-delivered")).to_have_text("delivered 4")
        await expect(page.locator("#deliveries-legend .d-dead")).to_have_text("dead 1")
        await expect(page.locator("#deliveries-chart svg path.line")).to_have_count(4)

        alert = "phone numbers stopped arriving on CompletePayment: 100% → 0%"
        await expect(page.locator("#coverage-alerts li")).to_have_text([alert])
        await expect(page.locator("#coverage-event")).to_have_value("CompletePayment")
        flagged = page.locator("#coverage-table tbody tr.alert-row")
        await expect(flagged).to_have_count(1)
        await expect(flagged).to_contain_text("phone")

        await expect(page.locator("#paused-empty")).to_be_visible()
        row = page.locator('#failures-table tbody tr[data-event-id="dash-old"]')
        await expect(row).to_contain_text("Purchase")
        await expect(row).to_contain_text("code 40002")
        await expect(page.locator("#failures-table tbody tr")).to_have_count(1)
        await expect(page.locator("#test-pixel")).to_have_value(PIXEL)
        await expect(page.locator("#sandbox")).to_be_hidden()  # a real pixel is configured

        await page.mouse.move(0, 0)  # no hover highlight in the picture
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # coverage of the four delivered Purchases: all had an email, half a phone, no click id
        await page.get_by_label("Event", exact=True).select_option("Purchase")
        paths = page.locator("#coverage-chart svg path.line")
        await expect(paths).to_have_count(7)
        drawn = await paths.evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
        assert all(re.match(r"^M\d", d) and d != "M0 0" for d in drawn), drawn
        rows = page.locator("#coverage-table tbody tr")
        await expect(rows.filter(has_text="email").locator("td").first).to_have_text("100%")
        await expect(rows.filter(has_text="phone").locator("td").first).to_have_text("50%")
        await expect(rows.filter(has_text="ttclid").locator("td").first).to_have_text("0%")
        await expect(page.locator("#coverage-table tbody tr.alert-row")).to_have_count(0)

        stack.tiktok.state.config.max_event_age_s = 7 * DAY_S  # TikTok takes it now
        await row.get_by_role("button", name="Replay").click()
        await expect(page.locator("#replay-result")).to_have_text(
            "Replay: 1 event queued for delivery."
        )
        accepted = await stack.tiktok.state.wait_for_events(5)
        assert "dash-old" in {e.event_id for e in accepted}
        await expect(page.locator("#failures-table tbody tr")).to_have_count(0)
        await expect(page.locator("#failures-empty")).to_be_visible()
        await expect(page.locator("#status")).to_have_text(f"Match keys dropped: {alert}")

        await page.get_by_label("Test event code").fill("TEST12345")
        await page.get_by_role("button", name="Send a test event").click()
        result = page.locator("#test-result")
        await expect(result).to_contain_text("TikTok accepted the test event.")
        tested = [e for e in stack.tiktok.state.accepted if e.test_event_code == "TEST12345"]
        assert len(tested) == 1
        await expect(result).to_contain_text(tested[0].event_id or "missing")
        await expect(result).to_contain_text(tested[0].request_id)
        await context.close()
    assert stack.console_errors == []


async def test_a_wrong_token_is_asked_again_and_the_token_lives_in_the_tab_only(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with (
        storefront_stack(make_settings, redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN) as stack,
        chromium() as browser,
    ):
        context = await browser.new_context(viewport=VIEWPORT)
        page = await context.new_page()
        stack.watch(page)
        url = await open_dashboard(page, stack)
        await sign_in(page, "not-the-admin-token")
        await expect(page.locator("#sign-in-error")).to_have_text(re.compile("not accepted"))
        await expect(page.get_by_label("Admin token")).to_be_visible()
        await expect(page.locator("#dashboard")).to_be_hidden()
        assert await page.locator("#queue .figure").count() == 0
        assert await page.evaluate("sessionStorage.length") == 0
        expected_errors = len(stack.console_errors)  # Chromium logs each 401 answer

        await sign_in(page, ADMIN_TOKEN)
        await expect(page.locator("#status")).to_have_text("Idle: no conversions in the last hour")
        await expect(page.locator("#sign-in")).to_be_hidden()

        await page.reload()  # the tab keeps the token
        await expect(page.locator("#queue .figure")).to_have_count(6)
        await expect(page.locator("#sign-in")).to_be_hidden()

        other = await (await browser.new_context()).new_page()  # another tab does not
        stack.watch(other)
        await other.goto(url)
        await expect(other.get_by_label("Admin token")).to_be_visible()
        await expect(other.locator("#dashboard")).to_be_hidden()

        await page.get_by_role("link", name="Sign out").click()
        await expect(page.get_by_label("Admin token")).to_be_visible()
        await expect(page.locator("#queue .figure")).to_have_count(0)
        await page.reload()
        await expect(page.get_by_label("Admin token")).to_be_visible()
        await context.close()
    # one refused request, and nothing else went wrong
    assert len(stack.console_errors) == expected_errors == 1
    assert "status of 401" in stack.console_errors[0]
