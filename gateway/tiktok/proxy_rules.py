"""What the ``/tt/`` pixel proxy lets through, and how what passes is reshaped.

The proxy is deliberately not general: a fixed allow-list of paths and methods, matched on the
*raw* request path (so ``..``, ``%2f``, ``@`` and ``://`` never match), and of the loader's query
parameters. Anything else is refused before the upstream is touched.

Requests carry only a few harmless headers upstream, so the gateway's cookies and any
``Authorization`` stay here; only a few answer headers come back, so TikTok's ``Set-Cookie``
never does. Scripts have their URLs of TikTok's pixel origin rewritten to point at the host the
browser used, which is checked to be a host name and nothing more.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

from aiohttp import web
from multidict import CIMultiDict, MultiDictProxy

from gateway.config import IPNetwork
from gateway.ingest.forwarded import client_ip, forwarded_proto

PREFIX = "/tt"
ANALYTICS_MESSAGE_MAX_CHARS = 8000  # under aiohttp's 8190-byte request line

_SCRIPTS = frozenset({"/i18n/pixel/events.js", "/i18n/pixel/sdk.js"})
_STATIC_RE = re.compile(r"/i18n/pixel/static/[A-Za-z0-9._-]{1,128}\.js")
_BEACONS = frozenset(
    {
        "/api/v2/pixel",
        "/api/v2/pixel/act",
        "/api/v2/pixel/inter",
        "/api/v2/pixel/perf",
        "/api/v2/pixel/track/",
        "/api/v2/monitor",
    }
)
_BEACON_GET = "/api/v2/pixel/act"
BEACON_TYPES = frozenset({"application/json", "text/plain"})

_SCRIPT_PARAMS = ("sdkid", "lib", "partner")  # also the canonical order of the cache key
_PARAM_VALUE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Kept percent-encoded as the browser sent it: decoding and re-encoding base64 would turn '+'
# into a space. Nothing outside this set (no '&', '#') can end the value early.
_MESSAGE_RE = re.compile(
    rf"(?:[A-Za-z0-9+/=_.~-]|%[0-9A-Fa-f]{{2}}){{1,{ANALYTICS_MESSAGE_MAX_CHARS}}}"
)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?:(?:{_LABEL}\.)*{_LABEL}|\[[0-9A-Fa-f:.]{{2,45}}\])(?::[0-9]{{1,5}})?")

# TikTok's scripts spell their origin as literals, template strings, protocol-relative URLs and,
# inside embedded JSON, with escaped slashes; the look-ahead leaves longer host names alone.
_ORIGIN_RE = re.compile(rb"(?:https?:)?//analytics\.tiktok\.com(?![\w.:-])")
_ESCAPED_ORIGIN_RE = re.compile(rb"(?:https?:)?\\/\\/analytics\.tiktok\.com(?![\w.:-])")

_REQUEST_HEADERS = ("User-Agent", "Accept", "Accept-Language", "Content-Type", "Referer", "Origin")
# The only upstream answer headers passed back: never Set-Cookie.
ANSWER_HEADERS = ("Content-Type", "Cache-Control", "ETag", "Last-Modified")


class Refusal(Exception):
    """A JSON error answer; raised anywhere in a request, answered by the handler."""

    def __init__(self, status: int, error: str, field: str | None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field

    def response(self) -> web.Response:
        """The refusal as a JSON answer naming the field at fault."""
        return web.json_response(
            {"error": self.error, "field": self.field},
            status=self.status,
            headers={"X-Content-Type-Options": "nosniff"},
        )


class RouteKind(enum.Enum):
    """What an allowed request is: a pixel script, a beacon POST, or the beacon's GET fallback."""

    SCRIPT = "script"
    BEACON = "beacon"
    BEACON_GET = "beacon_get"


def allowed_route(method: str, raw_path: str) -> tuple[RouteKind, str] | None:
    """The kind of an allowed request and its upstream path, or ``None`` if it is not allowed."""
    if not raw_path.startswith(PREFIX + "/"):
        return None
    path = raw_path[len(PREFIX) :]
    if method == "GET":
        if path in _SCRIPTS or (_STATIC_RE.fullmatch(path) and ".." not in path):
            return RouteKind.SCRIPT, path
        if path == _BEACON_GET:
            return RouteKind.BEACON_GET, path
    elif method == "POST" and path in _BEACONS:
        return RouteKind.BEACON, path
    return None


def script_query(path: str, query: MultiDictProxy[str]) -> str:
    """The loader's allowed parameters, in a fixed order; everything else is dropped."""
    if path not in _SCRIPTS:
        return ""
    pairs = []
    for name in _SCRIPT_PARAMS:
        values = query.getall(name, [])
        if not values:
            continue
        if len(values) > 1 or not _PARAM_VALUE_RE.fullmatch(values[0]):
            raise Refusal(400, "invalid query parameter", name)
        pairs.append(f"{name}={values[0]}")
    return "&".join(pairs)


def message_query(raw_query: str) -> str:
    """The pixel's GET fallback: exactly one ``analytics_message``, kept as sent."""
    values = [
        part.partition("=")[2]
        for part in raw_query.split("&")
        if part.partition("=")[0] == "analytics_message"
    ]
    if len(values) != 1 or not _MESSAGE_RE.fullmatch(values[0]):
        raise Refusal(400, "invalid query parameter", "analytics_message")
    return f"analytics_message={values[0]}"


def public_base(request: web.Request, trusted: Sequence[IPNetwork]) -> bytes:
    """``<scheme>://<host>/tt`` as the browser sees this proxy."""
    host = request.headers.get("Host", "")
    # The host is written into JavaScript, so it must be a host name and nothing more.
    if len(host) > 255 or not _HOST_RE.fullmatch(host):
        raise Refusal(400, "invalid host", "Host")
    scheme = forwarded_proto(
        request.remote, request.scheme, request.headers.getall("X-Forwarded-Proto", []), trusted
    )
    return f"{scheme}://{host}{PREFIX}".encode("ascii")


def rewrite_script(body: bytes, base: bytes) -> bytes:
    """Point every URL of TikTok's pixel origin in ``body`` at ``base`` (``https://host/tt``)."""
    escaped = base.replace(b"/", b"\\/")
    # Functions, not strings, as replacements: re.sub would read backslashes in a string.
    body = _ORIGIN_RE.sub(lambda _m: base, body)
    return _ESCAPED_ORIGIN_RE.sub(lambda _m: escaped, body)


def upstream_headers(request: web.Request, trusted: Sequence[IPNetwork]) -> CIMultiDict[str]:
    """The few request headers sent upstream, with the client's IP as ``X-Forwarded-For``."""
    # An allow-list, not a deny-list: Cookie and Authorization can never slip through.
    headers: CIMultiDict[str] = CIMultiDict()
    for name in _REQUEST_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            headers[name] = value
    ip = client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
    if ip is not None:
        headers["X-Forwarded-For"] = ip
    return headers
