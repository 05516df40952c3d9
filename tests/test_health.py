"""Attribution health (issue 17, point 2): a known mix of delivered events and of mirrored pixel
events gives exactly the expected shares per source, through the admin API."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import expect
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.ingest.enqueue import IngestQueue, Outgoing, Status
from gateway.operate.health import count_delivered
from gateway.settings import Settings
from tests.browser_support import chromium
from tests.delivery_support import PIXEL
from tests.test_dashboard import ARTIFACTS, VIEWPORT, points
from tests.test_openapi import component_errors

MakeSettings = Callable[..., Settings]
ADMIN_TOKEN = "health-test-admin-token"
CLICK = {"ttclid": "E.C.P.abc"}
EMAIL = {"email": ["a" * 64]}
IPUA = {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0"}

# 10 purchases: 6 with a ttclid, 8 with an email, 5 with IP and user agent
BROWSER_PURCHASES: list[dict[str, Any]] = [
    {**CLICK, **EMAIL, **IPUA},
    {**CLICK, **IPUA},
    {**CLICK, **EMAIL, **IPUA},
    {**CLICK, "ip": "203.0.113.9"},  # IP without user agent: not ip + UA
]
SERVER_PURCHASES: list[dict[str, Any]] = [
    {**CLICK, **EMAIL, **IPUA},
    {**CLICK, **EMAIL, **IPUA},
    EMAIL,
    EMAIL,
    {**EMAIL, "user_agent": "Mozilla/5.0"},
    EMAIL,
]


def delivered(name: str, source: str, users: list[dict[str, Any]]) -> list[Any]:
    return [(name, source, {"event": name, "user": user}) for user in users]


def item(event: str, event_id: str, source: str) -> Outgoing:
    data = orjson.dumps({"event": event, "event_id": event_id, "user": {}})
    return Outgoing(PIXEL, event, event_id, data, source)


async def test_a_known_mix_gives_exact_shares_per_source_and_server_twins(
    aiohttp_client: Any, make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN)
    client: TestClient = await aiohttp_client(create_app(settings))  # type: ignore[type-arg]

    # delivery counts what the worker delivered, by the entry's source (CompletePayment is a
    # Purchase: the worker passes the canonical name)
    await count_delivered(
        redis,
        delivered("Purchase", "browser", BROWSER_PURCHASES)
        + delivered("Purchase", "server", SERVER_PURCHASES),
    )

    # ingest: 4 pixel purchases; 3 of them get a server twin (one twice: counted once), the
    # fourth only a repeat from the page (not a twin)
    queue = IngestQueue(redis)
    pixel_ids = ["ord_1", "ord_2", "ord_3", "ord_4"]
    first = await queue.submit(
        [item("CompletePayment", i, "browser") for i in pixel_ids], max_events=0
    )
    assert first == [Status.QUEUED] * 4
    later = await queue.submit(
        [
            item("Purchase", "ord_1", "server"),
            item("Purchase", "ord_2", "webhook"),
            item("Purchase", "ord_3", "segment"),
            item("Purchase", "ord_3", "server"),
            item("CompletePayment", "ord_4", "browser"),
        ],
        max_events=0,
    )
    assert later == [Status.DUPLICATE] * 5
    # the backend first, then the page: a pixel event with its twin; a webhook retry is not one
    await queue.submit([item("AddToCart", "cart_1", "server")], max_events=0)
    await queue.submit([item("AddToCart", "cart_1", "server")], max_events=0)
    await queue.submit([item("AddToCart", "cart_1", "browser")], max_events=0)
    await queue.submit([item("AddToCart", "cart_2", "webhook")], max_events=0)

    response = await client.get(
        "/v1/admin/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status == 200
    health = (await response.json())["health"]
    assert component_errors(health, "Health") == []
    assert health["first_hour"] == int(time.time() // 3600)
    purchase = health["events"]["Purchase"]

    def shares(summary: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(summary[f"{s}_share"] for s in ("ttclid", "strong", "ipua"))

    week = purchase["week"]
    assert set(week) == {"all", "browser", "server"}
    assert week["all"]["total"] == 10
    assert (week["all"]["ttclid"], week["all"]["strong"], week["all"]["ipua"]) == (6, 8, 5)
    assert shares(week["all"]) == (0.6, 0.8, 0.5)
    assert shares(week["browser"]) == (1.0, 0.5, 0.75)
    assert shares(week["server"]) == (0.3333, 1.0, 0.3333)
    assert purchase["day"] == week
    assert purchase["sources"]["server"]["total"][-1] == 6
    assert sum(purchase["sources"]["all"]["ttclid"]) == 6

    assert purchase["mirror_week"] == {"pixel": 4, "twin": 3, "twin_share": 0.75}
    assert health["events"]["AddToCart"]["mirror_week"] == {
        "pixel": 1,
        "twin": 1,
        "twin_share": 1.0,
    }
    assert health["alerts"] == []


async def test_a_drop_in_a_share_raises_an_alert_naming_event_source_and_share(
    aiohttp_client: Any, make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN)
    client: TestClient = await aiohttp_client(create_app(settings))  # type: ignore[type-arg]
    now = time.time()
    clicked = delivered("Purchase", "browser", [{**CLICK, **EMAIL}] * 30)
    await count_delivered(redis, clicked, now=now - 30 * 3600)
    await count_delivered(redis, delivered("Purchase", "browser", [EMAIL] * 30), now=now)
    response = await client.get(
        "/v1/admin/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    alerts = (await response.json())["health"]["alerts"]
    expected = {"event": "Purchase", "key": "ttclid", "yesterday": 1.0, "today": 0.0, "drop": 1.0}
    assert alerts == [{**expected, "source": "browser"}, {**expected, "source": "all"}]


async def test_the_health_panel_reads_well_on_the_first_day_and_after_a_month(
    make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    """In Chromium: the known mix as figures and bars on the first day; a month-old install
    (168 hours of counters written directly) as one line per share across the chart."""
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_ADMIN_TOKEN=ADMIN_TOKEN)
    gateway = TestServer(create_app(settings), host="127.0.0.1")
    await gateway.start_server()
    await count_delivered(
        redis,
        delivered("Purchase", "browser", BROWSER_PURCHASES)
        + delivered("Purchase", "server", SERVER_PURCHASES),
    )
    queue = IngestQueue(redis)
    await queue.submit([item("Purchase", f"o{n}", "browser") for n in range(4)], max_events=0)
    await queue.submit([item("Purchase", f"o{n}", "server") for n in range(3)], max_events=0)
    try:
        async with chromium() as browser:
            page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(str(gateway.make_url("/dashboard")))
            await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
            await page.get_by_label("Admin token").press("Enter")
            section = page.locator("#health-section")
            await expect(section).to_be_visible()
            await expect(page.locator("#health-event")).to_have_value("Purchase")
            rows = section.locator("#health-table tbody tr")
            await expect(rows).to_have_count(3)
            expected = {
                "all": ("60 % (6 of 10)", "80 % (8 of 10)", "50 % (5 of 10)"),
                "browser": ("100 % (4 of 4)", "50 % (2 of 4)", "75 % (3 of 4)"),
                "server": ("33 % (2 of 6)", "100 % (6 of 6)", "33 % (2 of 6)"),
            }
            for source, figures in expected.items():
                row = section.locator(f"tr[data-source='{source}']")
                for share, figure in zip(("ttclid", "strong", "ipua"), figures, strict=True):
                    await expect(row.locator(f"td[data-share='{share}']")).to_contain_text(figure)
            await expect(section.locator("#health-mirror")).to_contain_text(
                "75 % — 3 of 4 pixel events"
            )
            await expect(section.locator("#health-note")).to_contain_text("Collecting data: 1 hour")
            bars = section.locator("#health-chart svg rect.health-bar")
            await expect(bars).to_have_count(3)
            heights = await bars.evaluate_all("rs => rs.map(r => r.getBBox().height)")
            assert heights[1] > heights[0] > heights[2] > 0, heights  # 80 %, 60 %, 50 %
            await expect(section.locator("#health-chart path.line")).to_have_count(0)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.mouse.move(0, 0)
            await section.screenshot(path=str(ARTIFACTS / "health-first-day.png"))

            # a month later: every one of the last 168 hours has counts
            now = time.time()
            for h in range(1, 168):
                users = [{**CLICK, **EMAIL, **IPUA}] * (h % 5) + [EMAIL] * 3 + [IPUA] * 2
                await count_delivered(
                    redis, delivered("Purchase", "server", users), now=now - h * 3600
                )
            await page.get_by_role("button", name="Refresh now").click()
            lines = section.locator("#health-chart path.line")
            await expect(lines).to_have_count(3)
            await expect(section.locator("#health-note")).to_be_hidden()
            drawn = await lines.evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
            for d in drawn:
                xs = [x for x, _ in points(d)]
                assert len(xs) == 168 and max(xs) - min(xs) > 600, d  # across the 720 wide chart
            await section.screenshot(path=str(ARTIFACTS / "health-month.png"))
        assert errors == []
    finally:
        await gateway.close()
