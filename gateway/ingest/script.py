"""``GET /c.js``: the browser collector, built from ``collector_js/`` and served precompressed.

The files are read once at start-up. Answers carry a strong ``ETag`` (a hash of the script), a
day of browser cache with a week of stale-while-revalidate (the URL never changes, so updates
travel by revalidation), ``Vary: Accept-Encoding``, and the brotli or gzip form the browser
accepts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files

from aiohttp import web

CACHE_CONTROL = "public, max-age=86400, stale-while-revalidate=604800"


@dataclass(frozen=True, slots=True)
class Script:
    """The collector in its three encodings."""

    plain: bytes
    gzip: bytes
    brotli: bytes
    etag: str

    @classmethod
    def load(cls) -> Script:
        """Read the built files shipped in the package."""
        static = files("gateway") / "static"
        plain = (static / "c.js").read_bytes()
        return cls(
            plain=plain,
            gzip=(static / "c.js.gz").read_bytes(),
            brotli=(static / "c.js.br").read_bytes(),
            etag='"' + hashlib.sha256(plain).hexdigest()[:20] + '"',
        )


SCRIPT: web.AppKey[Script] = web.AppKey("collector_script", Script)


def _accepts(request: web.Request, coding: str) -> bool:
    for part in request.headers.get("Accept-Encoding", "").lower().split(","):
        name, _, params = part.strip().partition(";")
        if name == coding and params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00"):
            return True
    return False


async def collector_script(request: web.Request) -> web.Response:
    """The collector, 304 when the browser's copy is current."""
    script = request.app[SCRIPT]
    headers = {
        "ETag": script.etag,
        "Cache-Control": CACHE_CONTROL,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if script.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = script.plain
    if _accepts(request, "br"):
        body, headers["Content-Encoding"] = script.brotli, "br"
    elif _accepts(request, "gzip"):
        body, headers["Content-Encoding"] = script.gzip, "gzip"
    return web.Response(
        body=body, headers=headers, content_type="application/javascript", charset="utf-8"
    )


def add_routes(app: web.Application) -> None:
    """Mount ``/c.js``."""
    app[SCRIPT] = Script.load()
    app.router.add_get("/c.js", collector_script)
