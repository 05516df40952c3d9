"""The browser side of a request: who it is (cookies), where it is (IP, scheme), what it keeps.

Shared by ``/e`` and ``/landing``. Incoming cookies are read tolerantly and verified; a missing,
tampered or malformed one is replaced, never trusted and never an error. Outgoing cookies are set
on every answer so their lifetime rolls forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from aiohttp import web

from gateway.identity.cookies import (
    CLICK_COOKIE,
    TTP_COOKIE,
    VISITOR_COOKIE,
    CookiePolicy,
    CookieSigner,
    mint_ttp,
    parse_cookie_header,
    read_ttp,
    set_cookie_header,
)
from gateway.identity.visitors import Click
from gateway.ingest.forwarded import client_ip, forwarded_proto
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class BrowserRequest:
    """What one browser request tells about its visitor."""

    visitor_id: str
    new_visitor: bool
    ttp: str
    click: Click | None  # from the signed click cookie, when still inside the attribution window
    ip: str | None
    user_agent: str | None
    scheme: str
    host: str
    # the incoming signed values, when they verified: sent back as they came (no new signature)
    visitor_cookie: str | None = None
    click_cookie: tuple[str, int, str] | None = None  # ttclid, click_ms, value

    def session_fields(self, now_ms: int, page_url: str | None) -> dict[str, str]:
        """What a stitch stores of this request's session: _ttp, IP, user agent, page, time."""
        fields = {"ttp": self.ttp, "seen_ms": str(now_ms)}
        for key, value in (
            ("ip", self.ip),
            ("user_agent", self.user_agent),
            ("page_url", page_url),
        ):
            if value:
                fields[key] = value
        return fields

    @property
    def origin(self) -> str:
        """The gateway's own origin as the browser sees it."""
        return f"{self.scheme}://{self.host}"


def read_browser(
    request: web.Request, settings: Settings, signer: CookieSigner, now_ms: int
) -> BrowserRequest:
    """Read the visitor's cookies, IP, user agent and scheme from ``request``."""
    cookies = parse_cookie_header(request.headers.get("Cookie"))
    visitor_value = cookies.get(VISITOR_COOKIE)
    visitor = signer.read_visitor(visitor_value)
    click = None
    click_value = cookies.get(CLICK_COOKIE)
    stored = signer.read_click(click_value)
    if stored is not None and now_ms - stored[1] <= settings.click_ttl_s * 1000:
        click = Click(ttclid=stored[0], click_ms=stored[1])
    trusted = settings.trusted_proxies
    ua = request.headers.get("User-Agent", "").strip()[:1024] or None
    return BrowserRequest(
        visitor_id=visitor or signer.new_visitor_id(),
        new_visitor=visitor is None,
        ttp=read_ttp(cookies.get(TTP_COOKIE)) or mint_ttp(now_ms),
        click=click,
        ip=client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
        or None,
        user_agent=ua,
        scheme=forwarded_proto(
            request.remote, request.scheme, request.headers.getall("X-Forwarded-Proto", []), trusted
        ),
        host=request.host,
        visitor_cookie=visitor_value if visitor is not None else None,
        click_cookie=(*stored, click_value) if stored is not None and click_value else None,
    )


def cookie_policy(settings: Settings, browser: BrowserRequest) -> CookiePolicy:
    """Domain only when the request's host is inside it (a browser would refuse it otherwise)."""
    host = browser.host.rsplit(":", 1)[0].lower()
    domain = settings.cookie_domain
    if domain is not None and host != domain and not host.endswith("." + domain):
        domain = None
    return CookiePolicy(domain=domain, secure=browser.scheme == "https")


class AnswerCookies(NamedTuple):
    """The signed visitor value, and every Set-Cookie header of an answer."""

    visitor: str
    headers: list[str]


def set_cookie_headers(
    settings: Settings, signer: CookieSigner, browser: BrowserRequest, click: Click | None
) -> AnswerCookies:
    """Every Set-Cookie header of an answer: visitor, ``_ttp`` and, when known, the click."""
    policy = cookie_policy(settings, browser)
    # A verified value is byte for byte what signing again would give: only Max-Age rolls on.
    visitor_value = browser.visitor_cookie
    if visitor_value is None or visitor_value.partition(".")[0] != browser.visitor_id:
        visitor_value = signer.visitor_cookie(browser.visitor_id)
    headers = [
        set_cookie_header(VISITOR_COOKIE, visitor_value, policy, http_only=True),
        # not HttpOnly: a pixel on the page reads and reuses the same browser id
        set_cookie_header(TTP_COOKIE, browser.ttp, policy, http_only=False),
    ]  # fmt: skip
    if click is not None:
        came = browser.click_cookie
        if came is not None and came[0] == click.ttclid and came[1] == click.click_ms:
            value = came[2]
        else:
            value = signer.click_cookie(click.ttclid, click.click_ms)
        headers.append(set_cookie_header(CLICK_COOKIE, value, policy, http_only=True))
    return AnswerCookies(visitor_value, headers)
