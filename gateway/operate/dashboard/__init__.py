"""``GET /dashboard``: the operator's page — queue health, deliveries, match-key coverage, paused
integrations, dead letters with replay, and a test-event form.

The page is three static files shipped in this package, read once at start-up. They hold no data
and need no token: the script asks the operator for the admin token, keeps it in the tab's
``sessionStorage`` and reads everything from ``/v1/admin/*`` with it. Every answer carries a
strict Content-Security-Policy (no inline script or style, no third-party origin, no framing),
so a value that slips into the page cannot run, and ``Cache-Control: no-cache`` with an ``ETag``
so an upgraded gateway never runs a stale script.

Links inside the page are relative (``dashboard/dashboard.js``, ``v1/admin/stats``), so the page
also works when the gateway is mounted under a path of the main site (``/_t/dashboard``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from types import MappingProxyType
from typing import ClassVar

from aiohttp import web

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = MappingProxyType(
    {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
)


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the page, as served."""

    body: bytes
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class Assets:
    """The page and the only two files it may load (a fixed allow-list, never a path)."""

    TYPES: ClassVar[MappingProxyType[str, str]] = MappingProxyType(
        {
            "index.html": "text/html",
            "dashboard.js": "application/javascript",
            "health.js": "application/javascript",
            "explorer.js": "application/javascript",
            "dashboard.css": "text/css",
        }
    )

    by_name: MappingProxyType[str, Asset]

    @classmethod
    def load(cls) -> Assets:
        """Read the files shipped in the package."""
        folder = files("gateway.operate") / "dashboard"
        loaded = {}
        for name, content_type in cls.TYPES.items():
            body = (folder / name).read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            loaded[name] = Asset(body, content_type, etag)
        return cls(MappingProxyType(loaded))


ASSETS: web.AppKey[Assets] = web.AppKey("dashboard_assets", Assets)


def _serve(request: web.Request, name: str) -> web.Response:
    asset = request.app[ASSETS].by_name.get(name)
    if asset is None:
        raise web.HTTPNotFound(headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=asset.body, headers=headers, content_type=asset.content_type, charset="utf-8"
    )


async def dashboard_page(request: web.Request) -> web.Response:
    """The page itself."""
    return _serve(request, "index.html")


async def dashboard_file(request: web.Request) -> web.Response:
    """``dashboard.js`` or ``dashboard.css``; anything else is 404."""
    name = request.match_info["name"]
    if name == "index.html":  # one URL per file
        raise web.HTTPNotFound(headers=SECURITY_HEADERS)
    return _serve(request, name)


async def trailing_slash(request: web.Request) -> web.Response:
    """``/dashboard/`` would resolve the page's relative links one level too deep."""
    raise web.HTTPFound("../dashboard", headers=SECURITY_HEADERS)


def add_routes(app: web.Application) -> None:
    """Mount ``/dashboard`` and its two files."""
    app[ASSETS] = Assets.load()
    app.router.add_get("/dashboard", dashboard_page)
    app.router.add_get("/dashboard/", trailing_slash)
    app.router.add_get("/dashboard/{name}", dashboard_file)
