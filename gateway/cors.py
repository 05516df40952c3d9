"""CORS for the browser endpoint ``/e``.

The collector posts with ``credentials: "include"`` from the storefront (``www.shop.example``) to
the gateway (``t.shop.example``): same site, other origin. So the answer echoes the exact origin
(never ``*``) with ``Access-Control-Allow-Credentials: true`` and ``Vary: Origin``, and only for
origins in ``TTGW_ALLOWED_ORIGINS`` or the gateway's own origin. A request from any other origin is
refused with 403 — a simple POST would otherwise be processed even though the browser hides the
answer. Preflights are cached for two hours.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

PREFLIGHT_MAX_AGE_S = 7200


def allowed_origin(origin: str | None, allowed: Sequence[str], own_origin: str) -> bool:
    """True when ``origin`` may talk to the gateway (no Origin header: not a browser CORS call)."""
    if origin is None:
        return True
    # browsers send the exact serialized origin (lower case, no path): compare exactly
    return origin == own_origin.lower() or origin in allowed


def cors_headers(origin: str | None) -> dict[str, str]:
    """The headers that let the browser read the answer of an allowed ``origin``."""
    headers = {"Vary": "Origin"}
    if origin:
        headers["Access-Control-Allow-Origin"] = origin.strip()
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def preflight(origin: str | None, allowed: Sequence[str], own_origin: str) -> web.Response:
    """The answer to ``OPTIONS /e``."""
    if origin is None or not allowed_origin(origin, allowed, own_origin):
        return web.json_response(
            {"error": "origin not allowed", "field": "Origin"},
            status=403,
            headers={"Vary": "Origin"},
        )
    headers = cors_headers(origin)
    headers.update(
        {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        }
    )
    return web.Response(status=204, headers=headers)
