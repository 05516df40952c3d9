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
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Page, ViewportSize, expect
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.operate import dashboard
from gateway.operate.stats import count_coverage
from gateway.settings import Settings
from gateway.store import keys
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
        ("/dashboard/explorer.js", "application/javascript"),
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


async def delivery_lines(page: Page) -> dict[str, dict[str, Any]]:
    """Each series of the deliveries chart: its path, drawn length, style and drawing order."""
    lines: dict[str, dict[str, Any]] = await page.evaluate(
        """() => {
          const out = {};
          document.querySelectorAll('#deliveries-chart svg g.series').forEach((g, order) => {
            const path = g.querySelector('path.line');
            const style = getComputedStyle(path);
            const name = [...g.classList].find(c => c.startsWith('d-')).slice(2);
            out[name] = {
              d: path.getAttribute('d'), length: path.getTotalLength(), order: order,
              dash: style.strokeDasharray, width: parseFloat(style.strokeWidth),
              opacity: style.strokeOpacity
            };
          });
          return out;
        }"""
    )
    return lines


async def legend_swatches(page: Page) -> dict[str, str]:
    """The look of each legend swatch of the deliveries chart."""
    swatches: dict[str, str] = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#deliveries-legend li')]
          .map(li => {
            const s = getComputedStyle(li.querySelector('.swatch'));
            return [li.className.slice(2), [s.backgroundImage, s.height, s.opacity].join(' ')];
          }))"""
    )
    return swatches


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
        async with session.post(f"{stack.gateway_url}/e", json=events[0]) as response:
            assert (await response.json())["accepted"][0]["status"] == "duplicate"
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
        await expect(page.locator("#deliveries-legend .d-accepted")).to_have_text("accepted 4")
        # accepted equals delivered minute by minute: both must still be seen
        drawn = await delivery_lines(page)
        accepted, delivered = drawn["accepted"], drawn["delivered"]
        assert accepted["d"] == delivered["d"]  # the same points...
        assert accepted["length"] > 0 and delivered["length"] > 0
        assert accepted["order"] > delivered["order"]  # ...accepted on top,
        assert accepted["dash"] != "none" and delivered["dash"] == "none"  # dashed,
        assert delivered["width"] >= 3 * accepted["width"]  # over a band wider than it
        swatches = await legend_swatches(page)
        assert swatches["accepted"] != swatches["delivered"]  # the legend shows the two styles
        totals = page.locator("#deliveries-totals")
        await expect(totals).to_contain_text("· 1 duplicate ·")
        await expect(totals).not_to_contain_text("duplicates")

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
        await page.locator("#deliveries-section").screenshot(
            path=str(ARTIFACTS / "dashboard-deliveries.png")
        )

        # CompletePayment has two hours a day apart: lines over the day since the first
        paths = page.locator("#coverage-chart svg path.line")
        await expect(paths).to_have_count(7)
        drawn = await paths.evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
        assert all(re.match(r"^M\d", d) and d != "M0 0" for d in drawn), drawn
        await expect(page.locator("#coverage-note")).to_contain_text("the first 25 hours")
        # coverage of the four delivered Purchases: all had an email, half a phone, no click id;
        # one hour of them, so one bar per key
        await page.get_by_label("Event", exact=True).select_option("Purchase")
        bars = page.locator("#coverage-chart svg rect.share-bar")
        await expect(bars).to_have_count(7)
        await expect(page.locator("#coverage-chart svg .bar-value")).to_have_text(
            ["100%", "50%", "100%", "0%", "100%", "100%", "100%"]
        )
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

        # this integration has no test event code of its own: the form asks for one, as the API
        code_label = page.locator("label[for=test-code]")
        await expect(code_label).to_have_text("Test event code (required)")
        await expect(page.get_by_label("Test event code")).to_have_attribute("required", "")
        before = len(stack.tiktok.state.accepted)
        await page.get_by_role("button", name="Send a test event").click()
        result = page.locator("#test-result")
        await expect(result).to_have_text(re.compile(r"^Not sent: enter a test event code"))
        await expect(page.get_by_label("Test event code")).to_be_focused()
        assert len(stack.tiktok.state.accepted) == before
        await page.get_by_label("Test event code").fill("TEST12345")
        await page.get_by_role("button", name="Send a test event").click()
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


def points(d: str) -> list[tuple[float, float]]:
    """The vertices of an SVG path made of M and L commands."""
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+) (-?[\d.]+)", d)]


async def test_a_new_install_reads_well_and_sends_a_sandbox_test_event_without_a_code(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    """Sandbox mode, one hour of data: bars across the width, then lines across it; the test
    event form needs no code, as the admin API."""
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN)
    gateway = TestServer(create_app(settings), host="127.0.0.1")
    await gateway.start_server()
    now = time.time()
    user = {"user": {"email": ["e"], "ip": "203.0.113.9", "user_agent": "ua"}}
    await count_coverage(redis, [{"event": "Purchase", **user}] * 3, now)
    try:
        async with chromium() as browser:
            context = await browser.new_context(viewport=VIEWPORT)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            response = await page.goto(str(gateway.make_url("/dashboard")))
            assert response is not None and response.ok
            await sign_in(page, ADMIN_TOKEN)
            await expect(page.locator("#sandbox")).to_be_visible()

            # (1) one hour of coverage: one bar per key, spread over the chart, not a stack of dots
            note = page.locator("#coverage-note")
            await expect(note).to_be_visible()
            await expect(note).to_contain_text("Collecting data: Purchase events in one hour")
            bars = page.locator("#coverage-chart svg rect.share-bar")
            await expect(bars).to_have_count(7)
            xs = [
                float(x) for x in await bars.evaluate_all("rs => rs.map(r => r.getAttribute('x'))")
            ]
            assert len(set(xs)) == 7 and max(xs) - min(xs) > 400, xs
            heights = await bars.evaluate_all("rs => rs.map(r => r.getBBox().height)")
            assert heights[0] > 100 and heights[2] <= 1  # email 100 %, external id 0 %
            await expect(page.locator("#coverage-chart svg path.line")).to_have_count(0)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.mouse.move(0, 0)
            await page.locator("#coverage-section").screenshot(
                path=str(ARTIFACTS / "dashboard-coverage-first-hour.png")
            )

            # (2) a second hour: lines over the hours since the first, across the whole width
            await count_coverage(redis, [{"event": "Purchase", **user}] * 2, now - 3 * 3600)
            await page.get_by_role("button", name="Refresh now").click()
            lines = page.locator("#coverage-chart svg path.line")
            await expect(lines).to_have_count(7)
            await expect(note).to_contain_text("Collecting data: the first 4 hours")
            drawn = await lines.evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
            xs = [x for d in drawn for x, _ in points(d)]
            assert max(xs) - min(xs) > 400, drawn  # first to last hour: most of the 660 px
            await page.locator("#coverage-section").screenshot(
                path=str(ARTIFACTS / "dashboard-coverage-first-hours.png")
            )

            # (3) the test event: no code needed in sandbox mode, and none asked for
            code_label = page.locator("label[for=test-code]")
            await expect(code_label).to_have_text("Test event code (optional)")
            await expect(page.get_by_label("Test event code")).not_to_have_attribute("required", "")
            await expect(page.get_by_label("Pixel", exact=True)).to_have_value("")
            await page.get_by_role("button", name="Send a test event").click()
            result = page.locator("#test-result")
            await expect(result).to_contain_text(
                "The sandbox accepted the test event (nothing was sent to TikTok)."
            )
            (entry,) = await redis.xrange(keys.SANDBOX_STREAM)
            assert entry[1][b"event"] == b"ViewContent"
            assert entry[1][b"test_event_code"] == b""
            await expect(result).to_contain_text(entry[1][b"event_id"].decode())
            await page.locator("#test-section").screenshot(
                path=str(ARTIFACTS / "dashboard-test-event-sandbox.png")
            )
            await context.close()
        assert errors == []
    finally:
        await gateway.close()


async def test_dropped_fields_are_counted_by_field(
    make_settings: MakeSettings, redis_url: str
) -> None:
    """Issue 13: a field ingest drops with a warning is counted by field on the dashboard."""
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN)
    gateway = TestServer(create_app(settings), host="127.0.0.1")
    await gateway.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {settings.write_key}"}
            events = [
                {**purchase(n, phone="12"), "properties": {"value": 1, "currency": "EUR",
                                                          "coupon": "X"}}
                for n in range(3)
            ]  # fmt: skip
            async with session.post(
                str(gateway.make_url("/v1/track")), json={"events": events}, headers=headers
            ) as response:
                assert response.status == 202
        async with chromium() as browser:
            page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(str(gateway.make_url("/dashboard")))
            await sign_in(page, ADMIN_TOKEN)
            table = page.locator("#warnings-table")
            await expect(table).to_be_visible()
            rows = table.locator("tbody tr")
            await expect(rows).to_have_count(2)
            texts = sorted(await rows.all_inner_texts())
            assert [t.split() for t in texts] == [["properties.*", "3"], ["user.phone", "3"]]
            await expect(page.locator("#warnings-empty")).to_be_hidden()
            ARTIFACTS.mkdir(exist_ok=True)
            await page.locator("#warnings-section").screenshot(
                path=str(ARTIFACTS / "dashboard-dropped-fields.png")
            )
            assert errors == []
    finally:
        await gateway.close()
