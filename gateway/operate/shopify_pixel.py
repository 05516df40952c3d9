"""``tt-gateway shopify-pixel``: the Custom Pixel to paste into Shopify, for one gateway URL.

The pixel's source ships as ``gateway/static/shopify-pixel.js`` with the gateway's URL left as a
placeholder; this fills it in. What the pixel sends and how the gateway takes it from Shopify's
sandbox is told in :mod:`gateway.ingest.shopify_pixel`.
"""

from __future__ import annotations

from importlib.resources import files
from urllib.parse import urlsplit

PLACEHOLDER = "__TTGW_URL__"


def gateway_url(text: str) -> str:
    """``text`` as the gateway's base URL (scheme and host, maybe a path), or ``ValueError``."""
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {text!r} (e.g. https://t.shop.example)")
    if parts.query or parts.fragment or any(c in url for c in "'\"\\` \n<>"):
        raise ValueError(f"the gateway URL may not carry a query, fragment or quotes: {text!r}")
    return url


def render(url: str) -> str:
    """The Custom Pixel's code for the gateway at ``url``."""
    source = (files("gateway") / "static" / "shopify-pixel.js").read_text("utf-8")
    return source.replace(PLACEHOLDER, gateway_url(url))
