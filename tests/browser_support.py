"""A storefront, the gateway and TikTok's stand-in on loopback ports, and Chromium to drive them."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from gateway.app import create_app
from gateway.settings import Settings
from tests.delivery_support import PIXEL, Emulator, delivery_env, running_emulator, running_worker
from tests.support import require_binary

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]  # fmt: skip

# Counts what the collector hands to the network, synchronously, before anything else loads.
INSTRUMENT = """
<script>
window.__sent = [];
const realFetch = window.fetch;
window.fetch = function (url, options) {
  if (String(url).endsWith('/e')) window.__sent.push(...JSON.parse(options.body).events);
  return realFetch.apply(this, arguments);
};
const realBeacon = navigator.sendBeacon.bind(navigator);
navigator.sendBeacon = function (url, body) { window.__sent.push({beacon: true}); return realBeacon(url, body); };
</script>
"""

# TikTok's current base code, with only the script URL changed to the gateway's c.js.
SNIPPET = """
<script>
!function (w, d, t) {
  w.TiktokAnalyticsObject=t;var ttq=w[t]=w[t]||[];ttq.methods=["page","track","identify","instances","debug","on","off","once","ready","alias","group","enableCookie","disableCookie","holdConsent","revokeConsent","grantConsent"],ttq.setAndDefer=function(t,e){t[e]=function(){t.push([e].concat(Array.prototype.slice.call(arguments,0)))}};for(var i=0;i<ttq.methods.length;i++)ttq.setAndDefer(ttq,ttq.methods[i]);ttq.instance=function(t){for(var e=ttq._i[t]||[],n=0;n<ttq.methods.length;n++)ttq.setAndDefer(e,ttq.methods[n]);return e},ttq.load=function(e,n){var r="%(script)s",o=n&&n.partner;ttq._i=ttq._i||{},ttq._i[e]=[],ttq._i[e]._u=r,ttq._t=ttq._t||{},ttq._t[e]=+new Date,ttq._o=ttq._o||{},ttq._o[e]=n||{};n=document.createElement("script");n.type="text/javascript",n.async=!0,n.src=r+"?sdkid="+e+"&lib="+t;e=document.getElementsByTagName("script")[0];e.parentNode.insertBefore(n,e)};
  ttq.load('%(pixel)s');
  %(calls)s
}(window, document, 'ttq');
</script>
"""

# A stand-in for TikTok's events.js: takes over ttq like the pixel does and records every call.
STAND_IN_PIXEL = """
(function () {
  var ttq = window[window.TiktokAnalyticsObject || 'ttq'];
  window.__pixel = [];
  function record(args) { window.__pixel.push(JSON.parse(JSON.stringify(args))); }
  ttq.slice().forEach(record);
  Object.keys(ttq._i || {}).forEach(function (id) { (ttq._i[id] || []).forEach(record); });
  ['page', 'track', 'identify'].forEach(function (m) {
    ttq[m] = function () { record([m].concat([].slice.call(arguments))); };
  });
  window.__pixelLoaded = true;
})();
"""


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass
class Stack:
    """Everything a browser test talks to."""

    tiktok: Emulator
    gateway_url: str
    shop_url: str
    pages: dict[str, str]
    console_errors: list[str] = field(default_factory=list)

    def page_html(self, calls: str, *, head: str = "", script: str = "c.js", body: str = "") -> str:
        src = f"{self.gateway_url}/{script}"
        snippet = SNIPPET % {"script": src, "pixel": PIXEL, "calls": calls}
        return f"<!doctype html><html><head><title>shop</title>{INSTRUMENT}{head}{snippet}</head>" \
               f"<body><h1>shop</h1>{body}</body></html>"  # fmt: skip

    def serve(self, path: str, calls: str, **options: str) -> str:
        """Put a storefront page at ``path``; returns its URL."""
        self.pages[path] = self.page_html(calls, **options)
        return self.shop_url + path

    def watch(self, page: Page) -> None:
        """Record console errors and uncaught exceptions of ``page``."""

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.console_errors.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.console_errors.append(str(error)))


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright."""
    executable = require_binary("chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def storefront_stack(
    make_settings: Callable[..., Settings], redis_url: str, **env: str
) -> AsyncIterator[Stack]:
    """Emulator + gateway (web and worker) + a storefront and a stand-in pixel origin."""
    pages: dict[str, str] = {}

    async def shop_page(request: web.Request) -> web.Response:
        html = pages.get(request.path)
        if html is None:
            raise web.HTTPNotFound()
        return web.Response(text=html, content_type="text/html")

    async def pixel_script(request: web.Request) -> web.Response:
        return web.Response(text=STAND_IN_PIXEL, content_type="application/javascript")

    async def no_icon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    shop_app = web.Application()
    shop_app.router.add_get("/i18n/pixel/events.js", pixel_script)
    shop_app.router.add_get("/favicon.ico", no_icon)
    shop_app.router.add_get("/{tail:.*}", shop_page)
    shop = TestServer(shop_app, host="127.0.0.1")
    await shop.start_server()
    shop_url = str(shop.make_url("")).rstrip("/")
    async with running_emulator() as tiktok:
        settings = make_settings(
            **delivery_env(
                tiktok, redis_url, TTGW_ALLOWED_ORIGINS=shop_url, TTGW_PIXEL_ORIGIN=shop_url, **env
            )
        )
        gateway = TestServer(create_app(settings), host="127.0.0.1")
        await gateway.start_server()
        try:
            async with running_worker(settings):
                yield Stack(tiktok, str(gateway.make_url("")).rstrip("/"), shop_url, pages)
        finally:
            await gateway.close()
            await shop.close()


async def sent(page: Page) -> list[dict[str, Any]]:
    """The events the collector handed to the network so far."""
    events: list[dict[str, Any]] = await page.evaluate("window.__sent")
    return events
