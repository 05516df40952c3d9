"""The ``/tt`` pixel proxy, over real HTTP on both sides.

TikTok is played by a stand-in aiohttp app on loopback that records every request it receives;
"never forwarded" is asserted on that record, not on the proxy's word. Paths the aiohttp client
would normalise (``..``, ``%2f``) are sent over a raw socket, byte for byte.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.tiktok.proxy import ProxyConfig, ScriptCache, UpstreamAnswer, create_proxy_app
from gateway.tiktok.proxy_rules import PREFIX
from tests.support import free_port

TIMEOUT_S = 0.5
STATIC_PATH = "/i18n/pixel/static/main.abc123.js"
EVENTS_JS = (
    b'var main = "https://analytics.tiktok.com/i18n/pixel/static/main.abc123.js";\n'
    b"var api = function (p) { return `https://analytics.tiktok.com/api/v2/${p}`; };\n"
    b'var rel = "//analytics.tiktok.com/x";\n'
    b'var cfg = {"src": "https:\\/\\/analytics.tiktok.com\\/i18n"};\n'
    b'var other = "https://analytics.tiktok.com.evil.example/y";\n'
)
STATIC_JS = b'window.ttqMain = "https://analytics.tiktok.com/api/v2/pixel";\n'
BEACON_PATHS = [
    "/api/v2/pixel",
    "/api/v2/pixel/act",
    "/api/v2/pixel/inter",
    "/api/v2/pixel/perf",
    "/api/v2/pixel/track/",
    "/api/v2/monitor",
]
NOT_PROXIED = {"error": "not proxied", "field": "path"}
UNAVAILABLE = {"error": "pixel origin unavailable", "field": None}

ProxyClient = TestClient[web.Request, web.Application]
MakeProxy = Callable[..., Awaitable[ProxyClient]]


@dataclass(frozen=True)
class Seen:
    """One request as the stand-in TikTok received it."""

    method: str
    path: str
    raw_query: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Upstream:
    """A stand-in for analytics.tiktok.com: answers like it, records everything, fails on cue."""

    origin: str = ""
    mode: str = "ok"  # ok | fail | hang | redirect
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.rel_url.raw_query_string,
                CIMultiDict(request.headers),
                await request.read(),
            )
        )
        if self.mode == "fail":
            return web.json_response({"code": 500}, status=500)
        if self.mode == "hang":
            await self.release.wait()
        if self.mode == "redirect":
            return web.Response(status=302, headers={"Location": STATIC_PATH})
        cookie = {"Set-Cookie": "_ttp=from-tiktok; Path=/; Max-Age=3600"}
        if request.path == "/i18n/pixel/events.js":
            return web.Response(
                body=EVENTS_JS, content_type="application/javascript", headers=cookie
            )
        if request.path == STATIC_PATH:
            headers = {
                **cookie,
                "Cache-Control": "public, max-age=31536000",
                "ETag": '"abc123"',
                "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
                "X-Upstream-Secret": "internal",
            }
            return web.Response(
                body=STATIC_JS, content_type="application/javascript", headers=headers
            )
        if request.path.startswith("/api/v2/"):
            return web.json_response({"code": 0, "message": "OK"}, headers=cookie)
        return web.Response(status=404, text="no such sdk", headers=cookie)


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> AsyncIterator[Upstream]:
    stand_in = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    server = await aiohttp_server(app)
    stand_in.origin = f"http://127.0.0.1:{server.port}"
    yield stand_in
    stand_in.release.set()  # let a hung handler finish so the server closes promptly


@pytest.fixture
def make_proxy(aiohttp_client: AiohttpClient, upstream: Upstream) -> MakeProxy:
    async def make(**overrides: Any) -> ProxyClient:
        config = ProxyConfig(**{"upstream": upstream.origin, "timeout_s": TIMEOUT_S, **overrides})
        parent = web.Application()
        parent.add_subapp(PREFIX, create_proxy_app(config))
        return await aiohttp_client(parent)

    return make


@pytest.fixture
async def client(make_proxy: MakeProxy) -> ProxyClient:
    return await make_proxy()


def own_base(client: ProxyClient, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{client.server.port}{PREFIX}"


async def raw_request(client: ProxyClient, method: str, target: str) -> tuple[int, bytes]:
    """Send a request line exactly as written (no client-side normalisation); status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        f"{method} {target} HTTP/1.1\r\nHost: shop.test\r\nContent-Type: text/plain\r\n"
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode()
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# --- scripts -------------------------------------------------------------------------------------


async def test_events_js_urls_point_at_the_proxy(client: ProxyClient, upstream: Upstream) -> None:
    response = await client.get("/tt/i18n/pixel/events.js?sdkid=PIXEL123&lib=ttq")
    body = await response.read()
    base = own_base(client).encode()

    assert response.status == 200
    assert b'"' + base + b'/i18n/pixel/static/main.abc123.js"' in body
    assert b"`" + base + b"/api/v2/${p}`" in body
    assert b'"' + base + b'/x"' in body
    assert b'"' + base.replace(b"/", b"\\/") + b'\\/i18n"' in body
    assert b'"https://analytics.tiktok.com.evil.example/y"' in body  # another host: untouched
    assert b"//analytics.tiktok.com/" not in body
    assert response.headers["Content-Type"] == "application/javascript"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert [(s.method, s.path, s.raw_query) for s in upstream.seen] == [
        ("GET", "/i18n/pixel/events.js", "sdkid=PIXEL123&lib=ttq")
    ]


async def test_scheme_comes_from_x_forwarded_proto_of_a_loopback_peer(client: ProxyClient) -> None:
    response = await client.get(
        "/tt/i18n/pixel/events.js?sdkid=P",
        headers={"X-Forwarded-Proto": "https", "Host": "t.shop.example"},
    )
    body = await response.read()
    assert b'"https://t.shop.example/tt/i18n/pixel/static/main.abc123.js"' in body
    assert b"http://t.shop.example" not in body


async def test_x_forwarded_proto_from_an_untrusted_peer_is_ignored(make_proxy: MakeProxy) -> None:
    client = await make_proxy(trusted_proxies=())
    response = await client.get(
        "/tt/i18n/pixel/events.js?sdkid=P", headers={"X-Forwarded-Proto": "https"}
    )
    body = await response.read()
    assert (own_base(client) + "/x").encode() in body
    assert b"https://127.0.0.1" not in body


async def test_only_loader_parameters_reach_the_upstream(
    client: ProxyClient, upstream: Upstream
) -> None:
    response = await client.get(
        "/tt/i18n/pixel/events.js?callback=x&lib=ttq&partner=shopify-1&sdkid=PIX_1&url=http://e.x"
    )
    assert response.status == 200
    assert upstream.seen[0].raw_query == "sdkid=PIX_1&lib=ttq&partner=shopify-1"


@pytest.mark.parametrize(
    "query", ["sdkid=PIX%22;alert(1)", "sdkid=" + "A" * 65, "sdkid=A&sdkid=B", "lib=a/b"]
)
async def test_bad_loader_parameter_is_refused_unforwarded(
    client: ProxyClient, upstream: Upstream, query: str
) -> None:
    response = await client.get(f"/tt/i18n/pixel/events.js?{query}")
    assert response.status == 400
    assert (await response.json())["error"] == "invalid query parameter"
    assert upstream.seen == []


async def test_static_script_is_proxied_with_its_cache_headers(
    client: ProxyClient, upstream: Upstream
) -> None:
    response = await client.get(f"/tt{STATIC_PATH}?ignored=1")
    assert response.status == 200
    assert await response.read() == STATIC_JS.replace(
        b"https://analytics.tiktok.com", own_base(client).encode()
    )
    assert response.headers["Cache-Control"] == "public, max-age=31536000"
    assert response.headers["ETag"] == '"abc123"'
    assert response.headers["Last-Modified"] == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert "X-Upstream-Secret" not in response.headers
    assert [(s.path, s.raw_query) for s in upstream.seen] == [(STATIC_PATH, "")]


async def test_invalid_host_is_refused_before_anything_is_written_into_a_script(
    client: ProxyClient, upstream: Upstream
) -> None:
    response = await client.get("/tt/i18n/pixel/events.js", headers={"Host": 'x";alert(1);"'})
    assert response.status == 400
    assert await response.json() == {"error": "invalid host", "field": "Host"}
    assert upstream.seen == []


async def test_upstream_4xx_passes_through_and_is_not_cached(
    client: ProxyClient, upstream: Upstream
) -> None:
    for _ in range(2):
        response = await client.get("/tt/i18n/pixel/sdk.js?sdkid=P")
        assert response.status == 404
        assert await response.text() == "no such sdk"
        assert "Set-Cookie" not in response.headers
    assert len(upstream.seen) == 2


# --- caching -------------------------------------------------------------------------------------


async def test_second_fetch_within_ttl_is_served_from_cache_for_its_own_host(
    client: ProxyClient, upstream: Upstream
) -> None:
    first = await client.get("/tt/i18n/pixel/events.js?sdkid=P&lib=ttq")
    second = await client.get(
        "/tt/i18n/pixel/events.js?lib=ttq&sdkid=P", headers={"Host": "t.other.example"}
    )
    assert (own_base(client) + "/x").encode() in await first.read()
    assert b'"http://t.other.example/tt/x"' in await second.read()
    assert len(upstream.seen) == 1


async def test_cache_is_keyed_by_query(client: ProxyClient, upstream: Upstream) -> None:
    await client.get("/tt/i18n/pixel/events.js?sdkid=A")
    await client.get("/tt/i18n/pixel/events.js?sdkid=B")
    await client.get("/tt/i18n/pixel/events.js?sdkid=A")
    assert [s.raw_query for s in upstream.seen] == ["sdkid=A", "sdkid=B"]


async def test_zero_ttl_disables_the_cache(make_proxy: MakeProxy, upstream: Upstream) -> None:
    client = await make_proxy(script_cache_s=0)
    for _ in range(2):
        assert (await client.get("/tt/i18n/pixel/events.js?sdkid=A")).status == 200
    assert len(upstream.seen) == 2


async def test_failures_are_not_cached(client: ProxyClient, upstream: Upstream) -> None:
    upstream.mode = "fail"
    assert (await client.get("/tt/i18n/pixel/events.js?sdkid=A")).status == 502
    upstream.mode = "ok"
    assert (await client.get("/tt/i18n/pixel/events.js?sdkid=A")).status == 200
    assert len(upstream.seen) == 2


def test_script_cache_expires_and_is_bounded() -> None:
    now = [100.0]
    cache = ScriptCache(ttl_s=10, max_entries=2, clock=lambda: now[0])
    answer = UpstreamAnswer(200, (), b"x")
    cache.put("a", answer)
    now[0] = 109.9
    assert cache.get("a") is answer
    now[0] = 110.0
    assert cache.get("a") is None
    for key in ("a", "b", "c"):
        cache.put(key, answer)
    assert len(cache) == 2
    assert cache.get("a") is None
    assert cache.get("c") is answer


# --- beacons -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BEACON_PATHS)
async def test_beacon_posts_through_with_body_intact(
    client: ProxyClient, upstream: Upstream, path: str
) -> None:
    body = '{"event":"Purchase","message_id":"messageId-1-2-P","p":"é & <x>"}'.encode()
    response = await client.post(
        f"/tt{path}", data=body, headers={"Content-Type": "text/plain;charset=UTF-8"}
    )
    assert response.status == 200
    assert await response.json() == {"code": 0, "message": "OK"}
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in response.headers
    [seen] = upstream.seen
    assert (seen.method, seen.path, seen.body) == ("POST", path, body)
    assert seen.headers["Content-Type"] == "text/plain;charset=UTF-8"


async def test_beacon_get_fallback_keeps_only_the_message(
    client: ProxyClient, upstream: Upstream
) -> None:
    response = await client.get("/tt/api/v2/pixel/act?x=1&analytics_message=eyJ+a/b%3D%3D&y=2")
    assert response.status == 200
    assert [(s.method, s.path, s.raw_query) for s in upstream.seen] == [
        ("GET", "/api/v2/pixel/act", "analytics_message=eyJ+a/b%3D%3D")
    ]


@pytest.mark.parametrize("query", ["", "?x=1", "?analytics_message=a&analytics_message=b"])
async def test_beacon_get_without_one_message_is_refused(
    client: ProxyClient, upstream: Upstream, query: str
) -> None:
    response = await client.get(f"/tt/api/v2/pixel/act{query}")
    assert response.status == 400
    assert (await response.json())["field"] == "analytics_message"
    assert upstream.seen == []


async def test_oversize_beacon_is_refused_unforwarded(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    client = await make_proxy(max_body_bytes=1024)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 300

    fits = await client.post(
        "/tt/api/v2/pixel", data=b"x" * 1024, headers={"Content-Type": "text/plain"}
    )
    declared = await client.post(
        "/tt/api/v2/pixel", data=b"x" * 1025, headers={"Content-Type": "text/plain"}
    )
    streamed = await client.post(
        "/tt/api/v2/pixel", data=chunked(), headers={"Content-Type": "text/plain"}
    )
    assert fits.status == 200
    assert (declared.status, streamed.status) == (413, 413)
    assert await declared.json() == {"error": "body too large", "field": "body"}
    assert [len(s.body) for s in upstream.seen] == [1024]


async def test_beacon_of_another_content_type_is_refused(
    client: ProxyClient, upstream: Upstream
) -> None:
    response = await client.post(
        "/tt/api/v2/pixel",
        data=b"a=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 415
    assert (await response.json())["field"] == "Content-Type"
    assert upstream.seen == []


# --- header hygiene ------------------------------------------------------------------------------


async def test_only_allowed_headers_go_up_and_no_cookie_comes_back(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    # By name, not IP: aiohttp's cookie jar ignores cookies from IP hosts, and this test must
    # catch a session that kept (and replayed) the upstream's Set-Cookie.
    client = await make_proxy(upstream=upstream.origin.replace("127.0.0.1", "localhost"))
    sent = {
        "User-Agent": "Mozilla/5.0 (test)",
        "Accept-Language": "fr-FR",
        "Referer": "https://www.shop.example/cart?x=1",
        "Origin": "https://www.shop.example",
        "Cookie": "_ttgw=signed-visitor; _ttp=abc",
        "Authorization": "Bearer admin",
        "X-Internal": "1",
        "X-Forwarded-For": "198.51.100.1, 203.0.113.9",
    }
    # Twice each: the upstream's Set-Cookie from the first answer must not be replayed.
    for _ in range(2):
        script = await client.get("/tt/i18n/pixel/events.js?sdkid=P", headers=sent)
        beacon = await client.post(
            "/tt/api/v2/pixel", data=b"{}", headers={**sent, "Content-Type": "application/json"}
        )
        for response in (script, beacon):
            assert response.status == 200
            assert "Set-Cookie" not in response.headers
    assert len(upstream.seen) == 3  # the script once, then from the cache
    for seen in upstream.seen:
        assert "Cookie" not in seen.headers
        assert "Authorization" not in seen.headers
        assert "X-Internal" not in seen.headers
        assert seen.headers["X-Forwarded-For"] == "203.0.113.9"
        for name in ("User-Agent", "Accept-Language", "Referer", "Origin"):
            assert seen.headers[name] == sent[name]
    assert len(client.session.cookie_jar) == 0


async def test_client_address_is_forwarded(client: ProxyClient, upstream: Upstream) -> None:
    await client.post("/tt/api/v2/pixel", data=b"{}", headers={"Content-Type": "application/json"})
    assert upstream.seen[0].headers.getall("X-Forwarded-For") == ["127.0.0.1"]


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    client = await make_proxy(trusted_proxies=())
    await client.post(
        "/tt/api/v2/pixel",
        data=b"{}",
        headers={"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.9"},
    )
    assert upstream.seen[0].headers["X-Forwarded-For"] == "127.0.0.1"


async def test_no_user_agent_of_our_own_is_added(client: ProxyClient, upstream: Upstream) -> None:
    status, _ = await raw_request(client, "POST", "/tt/api/v2/pixel")  # sends no User-Agent
    assert status == 200
    assert "User-Agent" not in upstream.seen[0].headers


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/tt/"),
        ("GET", "/tt"),
        ("GET", "/tt/i18n/pixel/other.js"),
        ("GET", "/tt/i18n/pixel/static/../../etc/passwd"),
        ("GET", "/tt/i18n/pixel/static/..%2f..%2fetc/passwd.js"),
        ("GET", "/tt/i18n/pixel/static/%2e%2e%2fsecret.js"),
        ("GET", "/tt/i18n/pixel/static/a%2fb.js"),
        ("GET", "/tt/i18n/pixel/static/..js"),
        ("GET", "/tt/i18n/pixel/static/a@evil.example.js"),
        ("GET", "/tt/i18n/pixel/events.js/"),
        ("GET", "/tt/i18n/pixel/events.js;x=1"),
        ("GET", "/tt/i18n/pixel/events%2ejs"),
        ("GET", "/tt/http://evil.example/x.js"),
        ("GET", "/tt//evil.example/x"),
        ("GET", "/tt/@evil.example/i18n/pixel/events.js"),
        ("GET", "/tt/api/v2/anything"),
        ("POST", "/tt/api/v2/anything"),
        ("GET", "/tt/api/v2/pixel"),
        ("POST", "/tt/i18n/pixel/events.js"),
        ("PUT", "/tt/i18n/pixel/events.js"),
        ("DELETE", "/tt/i18n/pixel/events.js"),
        ("PUT", "/tt/api/v2/pixel"),
        ("DELETE", "/tt/api/v2/pixel"),
        ("PATCH", "/tt/api/v2/pixel/act"),
        ("OPTIONS", "/tt/api/v2/pixel"),
    ],
)
async def test_refused_requests_never_reach_the_upstream(
    client: ProxyClient, upstream: Upstream, method: str, target: str
) -> None:
    status, body = await raw_request(client, method, target)
    assert status == 404
    assert json.loads(body) == NOT_PROXIED
    assert upstream.seen == []


async def test_absolute_form_request_still_goes_only_to_the_configured_origin(
    client: ProxyClient, upstream: Upstream
) -> None:
    status, body = await raw_request(client, "GET", f"http://evil.example/tt{STATIC_PATH}")
    assert status == 200
    assert b"window.ttqMain" in body
    assert [s.path for s in upstream.seen] == [STATIC_PATH]


# --- upstream failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/tt/i18n/pixel/events.js?sdkid=P"), ("POST", "/tt/api/v2/pixel")]
)
async def test_upstream_500_is_502(
    client: ProxyClient, upstream: Upstream, method: str, path: str
) -> None:
    upstream.mode = "fail"
    response = await client.request(
        method, path, data=b"{}", headers={"Content-Type": "application/json"}
    )
    assert response.status == 502
    assert await response.json() == UNAVAILABLE
    assert len(upstream.seen) == 1


async def test_upstream_redirect_is_not_followed(client: ProxyClient, upstream: Upstream) -> None:
    upstream.mode = "redirect"
    response = await client.get("/tt/i18n/pixel/events.js?sdkid=P")
    assert response.status == 502
    assert "Location" not in response.headers
    assert [s.path for s in upstream.seen] == ["/i18n/pixel/events.js"]


async def test_upstream_down_is_502(make_proxy: MakeProxy) -> None:
    client = await make_proxy(upstream=f"http://127.0.0.1:{free_port()}")
    for response in (
        await client.get("/tt/i18n/pixel/events.js?sdkid=P"),
        await client.post("/tt/api/v2/pixel", data=b"{}", headers={"Content-Type": "text/plain"}),
    ):
        assert response.status == 502
        assert await response.json() == UNAVAILABLE


async def test_hanging_upstream_is_502_within_the_timeout(
    client: ProxyClient, upstream: Upstream
) -> None:
    upstream.mode = "hang"
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.get("/tt/i18n/pixel/events.js?sdkid=P")
    elapsed = loop.time() - started
    assert response.status == 502
    assert await response.json() == UNAVAILABLE
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 1.5
    assert len(upstream.seen) == 1


async def test_timeout_holds_for_a_session_without_one(upstream: Upstream) -> None:
    upstream.mode = "hang"
    config = ProxyConfig(upstream=upstream.origin, timeout_s=TIMEOUT_S)
    parent = web.Application()
    parent.add_subapp(
        PREFIX,
        create_proxy_app(config, lambda: aiohttp.ClientSession(timeout=aiohttp.ClientTimeout())),
    )
    async with TestClient(TestServer(parent)) as client:
        response = await client.post(
            "/tt/api/v2/pixel", data=b"{}", headers={"Content-Type": "text/plain"}
        )
        assert response.status == 502
        assert await response.json() == UNAVAILABLE


# --- configuration and lifecycle -----------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "ftp://analytics.tiktok.com",
        "https://analytics.tiktok.com/i18n",
        "https://user:pw@analytics.tiktok.com",
        "https://analytics.tiktok.com?x=1",
        "analytics.tiktok.com",
    ],
)
def test_upstream_must_be_a_bare_origin(origin: str) -> None:
    with pytest.raises(ValueError, match="pixel origin"):
        ProxyConfig(upstream=origin)


async def test_session_factory_is_used_and_closed(upstream: Upstream) -> None:
    sessions: list[aiohttp.ClientSession] = []

    def factory() -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(headers={"X-Session": "from-factory"})
        sessions.append(session)
        return session

    parent = web.Application()
    parent.add_subapp(PREFIX, create_proxy_app(ProxyConfig(upstream=upstream.origin), factory))
    async with TestClient(TestServer(parent)) as client:
        assert (await client.get(f"/tt{STATIC_PATH}")).status == 200
    assert upstream.seen[0].headers["X-Session"] == "from-factory"
    assert [s.closed for s in sessions] == [True]
