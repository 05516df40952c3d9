"""CORS for the browser endpoint ``/e``.

The collector posts with ``credentials: "include"`` from the storefront (``www.shop.example``) to
the gateway (``t.shop.example``): same site, other origin. So the answer echoes the exact origin
(never ``*``) with ``Access-Control-Allow-Credentials: true`` and ``Vary: Origin``, and only for
origins in ``TTGW_ALLOWED_ORIGINS`` or the gateway's own origin. A request from any other origin is
refused with 403 — a simple POST would otherwise be processed even though the browser hides the
answer. Preflights are cached for two hours.

The gateway's own origin is its scheme and the ``Host`` the request came with, port included: a
proxy in front must pass the browser's ``Host`` as it is (nginx: ``$http_host``, not ``$host``,
which drops a non-default port). Each refusal is logged as ``origin_refused`` with the origin, the
reason and the setting that would allow it, at most once a minute per origin (with the count of
refusals since its last line) and :data:`REFUSAL_LINES_PER_WINDOW` lines a minute in all, so a
flood of foreign requests cannot flood the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from gateway.logs import get_logger

log = get_logger("gateway.cors")

PREFLIGHT_MAX_AGE_S = 7200
REFUSAL_LOG_WINDOW_S = 60.0
REFUSAL_LINES_PER_WINDOW = 20  # all origins together
REFUSAL_TRACKED_ORIGINS = 1024
LOGGED_ORIGIN_CHARS = 200
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _parts(origin: str) -> tuple[str, str, str]:
    """Scheme, host and port ("" for none or the scheme's default) of ``scheme://host[:port]``."""
    scheme, _, authority = origin.strip().lower().partition("://")
    host, colon, port = authority.rpartition(":")
    # a port is what follows the last colon outside brackets ("[::1]" alone has none)
    if not colon or not port.isdigit():
        host, port = authority, ""
    return scheme, host, "" if _DEFAULT_PORTS.get(scheme) == port else port


def canonical_origin(origin: str) -> str:
    """``scheme://host[:port]`` as a browser serializes it: lower case, no default port."""
    scheme, host, port = _parts(origin)
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def allowed_origin(origin: str | None, allowed: Sequence[str], own_origin: str) -> bool:
    """True when ``origin`` may talk to the gateway (no Origin header: not a browser CORS call)."""
    if origin is None:
        return True
    # browsers send the exact serialized origin (lower case, no path, no default port): compare
    # it exactly, against the own origin put in the same form
    return origin == canonical_origin(own_origin) or origin in allowed


def cors_headers(origin: str | None) -> dict[str, str]:
    """The headers that let the browser read the answer of an allowed ``origin``."""
    headers = {"Vary": "Origin"}
    if origin:
        headers["Access-Control-Allow-Origin"] = origin.strip()
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def refusal_reason(origin: str, allowed: Sequence[str], own_origin: str) -> str:
    """Why ``origin`` is refused, in the operator's terms."""
    own = canonical_origin(own_origin)
    listed = ", ".join(allowed) if allowed else "empty"
    if origin == "null":
        return ("the page sent Origin: null (a sandboxed frame, a file:// page or a redirect "
                "across origins), which no setting allows")  # fmt: skip
    if _parts(origin)[:2] == _parts(own)[:2]:
        return (
            f"the gateway's own host but not its origin {own} (another port): a proxy that "
            "forwards this page's requests drops the port from Host (nginx: "
            "proxy_set_header Host $http_host, not $host); otherwise list the origin in "
            f"TTGW_ALLOWED_ORIGINS ({listed})"
        )
    return (
        f"neither the gateway's own origin {own} nor in TTGW_ALLOWED_ORIGINS ({listed}): "
        "a storefront on another origin must be listed there"
    )


@dataclass
class RefusalLog:
    """The ``origin_refused`` lines: one per origin per window, a few per window in all."""

    window_s: float = REFUSAL_LOG_WINDOW_S
    lines_per_window: int = REFUSAL_LINES_PER_WINDOW
    clock: Callable[[], float] = time.monotonic
    # origin -> (when its last line was written, refusals since that line)
    _last: dict[str, tuple[float, int]] = field(default_factory=dict)
    _window_started: float = float("-inf")
    _lines: int = 0
    _unlogged: int = 0  # refusals of origins that found the window's lines used up

    def refused(self, origin: str, allowed: Sequence[str], own_origin: str, path: str) -> bool:
        """Count one refusal of ``origin``; write its line when due (True when written)."""
        now = self.clock()
        origin = origin[:LOGGED_ORIGIN_CHARS]
        if now - self._window_started >= self.window_s:
            self._window_started, self._lines = now, 0
            if len(self._last) > REFUSAL_TRACKED_ORIGINS:
                self._last = {o: v for o, v in self._last.items() if now - v[0] < self.window_s}
        since, count = self._last.get(origin, (float("-inf"), 0))
        if now - since < self.window_s:
            self._last[origin] = (since, count + 1)
            return False
        if self._lines >= self.lines_per_window or len(self._last) > 2 * REFUSAL_TRACKED_ORIGINS:
            self._unlogged += 1
            return False
        extra = {"unlogged_other_refusals": self._unlogged} if self._unlogged else {}
        allow = ",".join([*allowed, origin]) if origin != "null" else None
        log.warning(
            "origin_refused",
            origin=origin,
            path=path,
            reason=refusal_reason(origin, allowed, own_origin),
            refusals=count + 1,  # this one and those since the origin's last line
            allow_with=f"TTGW_ALLOWED_ORIGINS={allow}" if allow else None,
            **extra,
        )
        self._lines += 1
        self._unlogged = 0
        self._last[origin] = (now, 0)
        return True


REFUSALS = RefusalLog()


def refuse(origin: str | None, allowed: Sequence[str], own_origin: str, path: str) -> web.Response:
    """The 403 answer to a foreign (or missing, on a preflight) ``origin``, logged when due."""
    if origin is not None:
        REFUSALS.refused(origin, allowed, own_origin, path)
    return web.json_response(
        {"error": "origin not allowed", "field": "Origin"},
        status=403,
        headers={"Vary": "Origin"},
    )


def preflight(origin: str | None, allowed: Sequence[str], own_origin: str) -> web.Response:
    """The answer to ``OPTIONS /e``."""
    if origin is None or not allowed_origin(origin, allowed, own_origin):
        return refuse(origin, allowed, own_origin, "OPTIONS /e")
    headers = cors_headers(origin)
    headers.update(
        {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        }
    )
    return web.Response(status=204, headers=headers)
