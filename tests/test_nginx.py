"""The nginx templates, with the real nginx (Debian's package), the real gateway and a real Redis.

Every test renders the templates as the official nginx image does (envsubst, only the variables
given), starts nginx on free ports in front of the gateway (an aiohttp ``TestServer``) and, for
path mode, of a stand-in storefront, and talks to nginx over the network.

Facts about nginx 1.22 these tests pin down (see nginx/README.md):
* ``$upstream_http_set_cookie`` holds only the first of the gateway's three Set-Cookie headers;
  ``$upstream_cookie_<name>`` holds each cookie's value, so the capture snippet rebuilds each
  cookie and the shop's answer carries exactly the headers the gateway sent.
* auth_request turns a failed subrequest into a 500; the landing location maps refusals,
  time-outs and error statuses to a 204 without cookies, so the shop's page is served anyway.
"""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from redis.asyncio import Redis
from yarl import URL

from gateway.app import create_app
from gateway.settings import Settings
from gateway.store import keys
from tests.ingest_support import queued, track
from tests.nginx_support import (
    NGINX_DIR,
    SNIPPETS_DIR,
    TEMPLATES_DIR,
    Certificates,
    check_config,
    envsubst,
    make_certificates,
    render_tree,
    run_nginx,
    template_variables,
)
from tests.support import free_port, require_binary

GATEWAY_HOST = "t.shop.test"
SHOP_HOST = "www.shop.test"
SHOP_ORIGIN = "https://www.shop.test"
COOKIE_DOMAIN = "shop.test"
TTCLID = "E.C.P.abc"
LANDING_URI = f"/products/tee?ttclid={TTCLID}&utm_source=tiktok"
USER_AGENT = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) nginx-test"
SHOP_COOKIE = "shop_session=s1; HttpOnly; Path=/"
LANDING_TIMEOUT_S = 0.1
GATEWAY_COOKIES = {"_ttgw", "_ttp", "_ttgw_clk"}


@pytest.fixture(scope="module")
def nginx_binary() -> Path:
    """Debian's nginx; CI (TTGW_TEST_REQUIRE_BINARIES=1) fails rather than skips without it."""
    return require_binary("nginx")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"), [GATEWAY_HOST])


# --- the gateway and the storefront ---------------------------------------------------------------


@dataclass
class Seen:
    """One request as the gateway or the storefront received it."""

    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]


@dataclass
class Upstream:
    """An aiohttp server on a port, and what it saw."""

    server: TestServer
    port: int
    seen: list[Seen] = field(default_factory=list)
    landing_cookies: list[list[str]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


async def start_upstream(app: web.Application) -> Upstream:
    port = free_port()
    upstream = Upstream(TestServer(app, host="127.0.0.1", port=port), port)

    @web.middleware
    async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
        upstream.seen.append(
            Seen(request.method, request.path, request.query_string, request.headers)
        )
        response: web.StreamResponse = await handler(request)
        if request.path == "/landing":
            upstream.landing_cookies.append(response.headers.getall("Set-Cookie", []))
        return response

    app.middlewares.append(observe)
    await upstream.server.start_server()
    return upstream


@pytest.fixture
def settings(make_settings: Callable[..., Settings], redis_url: str) -> Settings:
    return make_settings(
        TTGW_REDIS_URL=redis_url,
        TTGW_ALLOWED_ORIGINS=SHOP_ORIGIN,
        TTGW_COOKIE_DOMAIN=COOKIE_DOMAIN,
    )


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Upstream]:
    """The real gateway app (trusting loopback proxies, the default) on a free port."""
    upstream = await start_upstream(create_app(settings))
    yield upstream
    await upstream.server.close()


async def shop_page(request: web.Request) -> web.Response:
    response = web.Response(text="<!doctype html><title>tee</title>", content_type="text/html")
    response.set_cookie("shop_session", "s1", httponly=True, path="/")
    return response


@pytest.fixture
async def shop() -> AsyncIterator[Upstream]:
    """A stand-in storefront: every request gets a page that sets the shop's own cookie."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", shop_page)
    upstream = await start_upstream(app)
    yield upstream
    await upstream.server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client: no cookie jar, no decompression (the tests read raw answers)."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    ) as session:
        yield session


# --- rendering ------------------------------------------------------------------------------------


def variables(tmp: Path, upstream: str, **overrides: str) -> dict[str, str]:
    """A value for every template variable (what a deployment puts in the environment)."""
    (tmp / "cache").mkdir(parents=True, exist_ok=True)
    (tmp / "acme").mkdir(parents=True, exist_ok=True)
    values = {
        "TTGW_SERVER_NAME": GATEWAY_HOST,
        "TTGW_UPSTREAM": upstream,
        "TTGW_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        "TTGW_HTTPS_LISTEN": f"127.0.0.1:{free_port()}",
        "TTGW_TLS_CERTIFICATE": str(tmp / "missing.crt"),
        "TTGW_TLS_CERTIFICATE_KEY": str(tmp / "missing.key"),
        "TTGW_ACME_ROOT": str(tmp / "acme"),
        "TTGW_ADMIN_ALLOW_FILE": str(tmp / "admin-allow.conf"),
        "TTGW_BODY_LIMIT": "64k",
        "TTGW_EVENTS_RATE": "100r/s",
        "TTGW_EVENTS_BURST": "100",
        "TTGW_CACHE_DIR": str(tmp / "cache"),
        "TTGW_PATH_PREFIX": "/_t/",
        "TTGW_LANDING_TIMEOUT": f"{int(LANDING_TIMEOUT_S * 1000)}ms",
    }
    values.update(overrides)
    return values


def render(tmp: Path, values: dict[str, str]) -> Path:
    """templates/ into conf.d/ and snippets/ into conf.d/ttgw-snippets/, as the README mounts."""
    target = tmp / "conf.d"
    render_tree(TEMPLATES_DIR, target, values)
    render_tree(SNIPPETS_DIR, target / "ttgw-snippets", values)
    return target


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


@dataclass
class HostnameMode:
    https: str  # base URL
    http: str
    acme_root: Path


@contextmanager
def hostname_mode(
    binary: Path,
    tmp: Path,
    certificates: Certificates,
    upstream: str,
    admin_allow: str = "allow 127.0.0.1;\nallow ::1;\n",
    **overrides: str,
) -> Iterator[HostnameMode]:
    values = variables(
        tmp,
        upstream,
        TTGW_TLS_CERTIFICATE=str(certificates.certificate),
        TTGW_TLS_CERTIFICATE_KEY=str(certificates.key),
        **overrides,
    )
    Path(values["TTGW_ADMIN_ALLOW_FILE"]).write_text(admin_allow)
    conf = render(tmp, values)
    http_port, https_port = (
        port_of(values["TTGW_HTTP_LISTEN"]),
        port_of(values["TTGW_HTTPS_LISTEN"]),
    )
    with run_nginx(
        binary, tmp / "nginx", f"include {conf}/gateway-hostname.conf;", [http_port, https_port]
    ):
        yield HostnameMode(
            https=f"https://127.0.0.1:{https_port}",
            http=f"http://127.0.0.1:{http_port}",
            acme_root=Path(values["TTGW_ACME_ROOT"]),
        )


def shop_server(conf: Path, listen: int, shop_port: int) -> str:
    """The shop's own server block, including the path-mode snippets as the README shows."""
    snippets = conf / "ttgw-snippets"
    return f"""include {conf}/gateway-path.conf;
server {{
    listen 127.0.0.1:{listen};
    server_name {SHOP_HOST};
    include {snippets}/gateway-path-capture.conf;
    include {snippets}/gateway-path-locations.conf;

    location / {{
        proxy_pass http://127.0.0.1:{shop_port};
        proxy_set_header Host $host;
    }}
    # its own add_header: the capture must be included again here
    location /static/ {{
        add_header Cache-Control "public, max-age=60";
        include {snippets}/gateway-path-capture.conf;
        proxy_pass http://127.0.0.1:{shop_port};
        proxy_set_header Host $host;
    }}
    # its own add_header, and the capture forgotten
    location /forgot/ {{
        add_header Cache-Control "public, max-age=60";
        proxy_pass http://127.0.0.1:{shop_port};
        proxy_set_header Host $host;
    }}
    # an internal redirect: the access phase, so auth_request, runs again in @shop
    location /fallback/ {{
        try_files $uri @shop;
    }}
    location @shop {{
        proxy_pass http://127.0.0.1:{shop_port};
        proxy_set_header Host $host;
    }}
    # shows what nginx keeps of the gateway's Set-Cookie headers as one variable
    location /debug/ {{
        include {snippets}/gateway-path-capture.conf;
        add_header X-First-Set-Cookie $ttgw_landing_first_cookie always;
        proxy_pass http://127.0.0.1:{shop_port};
        proxy_set_header Host $host;
    }}
}}"""


@contextmanager
def path_mode(
    binary: Path, tmp: Path, upstream: str, shop_port: int, **overrides: str
) -> Iterator[str]:
    conf = render(tmp, variables(tmp, upstream, **overrides))
    listen = free_port()
    with run_nginx(binary, tmp / "nginx", shop_server(conf, listen, shop_port), [listen]):
        yield f"http://127.0.0.1:{listen}"


def set_cookie_names(headers: list[str]) -> list[str]:
    return sorted(h.split("=", 1)[0] for h in headers)


def cookie_value(headers: list[str], name: str) -> str:
    (value,) = [h.split(";", 1)[0].split("=", 1)[1] for h in headers if h.startswith(name + "=")]
    return value


def is_nginx_page(body: bytes, status_line: str) -> bool:
    return f"<center><h1>{status_line}</h1></center>".encode() in body and b"nginx" in body


# --- the templates --------------------------------------------------------------------------------


def test_the_renderer_replaces_only_the_given_variables(tmp_path: Path) -> None:
    text = "$host ${TTGW_A} $TTGW_A ${TTGW_Ab} $TTGW_Ab ${TTGW_A:-x} $$TTGW_A ${TTGW_B} $1 ${"
    expected = "$host v v ${TTGW_Ab} $TTGW_Ab ${TTGW_A:-x} $v ${TTGW_B} $1 ${"
    assert envsubst(text, {"TTGW_A": "v"}) == expected
    real = shutil.which("envsubst")  # gettext-base: compared with when installed
    if real is None:
        return
    given = {"TTGW_A": "v", **variables(tmp_path, "gateway:8080")}
    templates = [*TEMPLATES_DIR.rglob("*.template"), *SNIPPETS_DIR.rglob("*.template")]
    for sample in [text, *(p.read_text() for p in templates)]:
        done = subprocess.run(
            [real, " ".join(f"${{{name}}}" for name in given)],  # as the official image calls it
            input=sample,
            capture_output=True,
            text=True,
            env=given,
            check=True,
        )
        assert envsubst(sample, given) == done.stdout


def test_every_variable_is_documented_and_rendered(tmp_path: Path) -> None:
    used = template_variables(TEMPLATES_DIR, SNIPPETS_DIR)
    readme = (NGINX_DIR / "README.md").read_text()
    assert {name for name in used if f"`{name}`" not in readme} == set()
    assert used == set(variables(tmp_path, "127.0.0.1:1"))
    conf = render(tmp_path, variables(tmp_path, "127.0.0.1:1"))
    rendered = "".join(p.read_text() for p in conf.rglob("*.conf"))
    assert "${TTGW_" not in rendered
    assert "$host" in rendered  # nginx's own variables are left alone
    assert "$upstream_cookie__ttgw_clk" in rendered


def test_both_modes_load_together_and_an_unset_variable_stops_nginx(
    nginx_binary: Path, tmp_path: Path, certificates: Certificates
) -> None:
    values = variables(
        tmp_path,
        "127.0.0.1:1",
        TTGW_TLS_CERTIFICATE=str(certificates.certificate),
        TTGW_TLS_CERTIFICATE_KEY=str(certificates.key),
    )
    Path(values["TTGW_ADMIN_ALLOW_FILE"]).write_text("allow 127.0.0.1;\n")

    def check(name: str, values: dict[str, str]) -> subprocess.CompletedProcess[str]:
        conf = render(tmp_path / name, values)
        body = f"include {conf}/*.conf;\n" + shop_server(conf, free_port(), 1).split("\n", 1)[1]
        return check_config(nginx_binary, tmp_path / name / "nginx", body)

    loaded = check("all", values)
    assert loaded.returncode == 0, loaded.stderr
    # the official image leaves an unset variable as it is: nginx must refuse, naming it
    for name in sorted(values):
        refused = check(name, {k: v for k, v in values.items() if k != name})
        assert refused.returncode != 0, f"nginx starts with {name} unset"
        assert name.lower() in refused.stderr.lower(), refused.stderr


# --- hostname mode --------------------------------------------------------------------------------


async def test_hostname_mode_serves_the_gateway_over_tls_and_http2(
    nginx_binary: Path,
    tmp_path: Path,
    certificates: Certificates,
    gateway: Upstream,
    http: aiohttp.ClientSession,
) -> None:
    with hostname_mode(nginx_binary, tmp_path, certificates, gateway.address) as mode:
        tls = certificates.client_context()
        headers = {"Host": GATEWAY_HOST}
        async with http.get(f"{mode.https}/healthz", headers=headers, ssl=tls) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
            assert response.headers["Server"] == "nginx"
        (seen,) = [s for s in gateway.seen if s.path == "/healthz"]
        assert seen.headers["Host"] == GATEWAY_HOST
        assert seen.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
        assert seen.headers.getall("X-Forwarded-Proto") == ["https"]

        protocol = await asyncio.to_thread(alpn_protocol, mode.https, certificates)
        assert protocol == "h2"

        # port 80: everything to https, except certificate challenges
        async with http.get(
            f"{mode.http}/c.js?v=1", headers=headers, allow_redirects=False
        ) as response:
            assert response.status == 301
            assert response.headers["Location"] == f"https://{GATEWAY_HOST}/c.js?v=1"
        challenge = mode.acme_root / ".well-known" / "acme-challenge" / "token-1"
        challenge.parent.mkdir(parents=True)
        challenge.write_text("proof")
        async with http.get(
            f"{mode.http}/.well-known/acme-challenge/token-1", headers=headers
        ) as response:
            assert response.status == 200
            assert await response.text() == "proof"


def alpn_protocol(base: str, certificates: Certificates) -> str | None:
    context = certificates.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    port = int(base.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=GATEWAY_HOST) as tls,
    ):
        return tls.selected_alpn_protocol()


async def test_the_collector_is_cached_by_nginx(
    nginx_binary: Path,
    tmp_path: Path,
    certificates: Certificates,
    gateway: Upstream,
    http: aiohttp.ClientSession,
) -> None:
    with hostname_mode(nginx_binary, tmp_path, certificates, gateway.address) as mode:
        tls = certificates.client_context()

        async def get(
            encoding: str, path: str = "/c.js", **extra: str
        ) -> tuple[int, str, bytes, CIMultiDictProxy[str]]:
            headers = {"Host": GATEWAY_HOST, "Accept-Encoding": encoding, **extra}
            async with http.get(f"{mode.https}{path}", headers=headers, ssl=tls) as response:
                body = await response.read()
                cache = response.headers.get("X-Cache-Status", "")
                return response.status, cache, body, response.headers

        status, cache, gzip_body, headers = await get("gzip, deflate")
        assert (status, cache) == (200, "MISS")
        assert headers["Content-Encoding"] == "gzip"
        assert headers["Cache-Control"].startswith("public, max-age=86400")
        assert headers["Vary"] == "Accept-Encoding"
        etag = headers["ETag"]
        # same encoding: from nginx's cache, whatever the cookies or the query
        status, cache, body, _ = await get(
            "deflate, gzip", "/c.js?v=2", Cookie="_ttgw=x.y; other=1"
        )
        assert (status, cache, body) == (200, "HIT", gzip_body)
        # one copy per encoding
        status, cache, br_body, headers = await get("gzip, deflate, br")
        assert (status, cache, headers["Content-Encoding"]) == (200, "MISS", "br")
        assert (await get("br"))[1] == "HIT"
        status, cache, plain, headers = await get("identity")
        assert (status, cache, "Content-Encoding" in headers) == (200, "MISS", False)
        assert b"ttq" in plain and br_body != gzip_body != plain
        assert (await get("identity"))[1] == "HIT"
        # the browser's copy is current: nginx answers 304 itself
        status, cache, body, _ = await get("gzip", **{"If-None-Match": etag})
        assert (status, cache, body) == (304, "HIT", b"")

        fetched = [s for s in gateway.seen if s.path == "/c.js"]
        assert len(fetched) == 3
        assert all("Cookie" not in s.headers for s in fetched)


async def test_events_carry_the_address_nginx_saw_not_a_spoofed_one(
    nginx_binary: Path,
    tmp_path: Path,
    certificates: Certificates,
    gateway: Upstream,
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    with hostname_mode(nginx_binary, tmp_path, certificates, gateway.address) as mode:
        headers = {
            "Host": GATEWAY_HOST,
            "Origin": SHOP_ORIGIN,
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "http",
            "User-Agent": USER_AGENT,
        }
        body = track("ViewContent", event_id="vc-1")
        async with http.post(
            f"{mode.https}/e", json=body, headers=headers, ssl=certificates.client_context()
        ) as response:
            assert response.status == 202, await response.text()
            assert response.headers["Access-Control-Allow-Origin"] == SHOP_ORIGIN
            cookies = response.headers.getall("Set-Cookie")
        (entry,) = await queued(redis)
        assert entry["event_id"] == "vc-1"
        assert entry["data"]["user"]["ip"] == "127.0.0.1"
        assert entry["data"]["user"]["user_agent"] == USER_AGENT
        (seen,) = [s for s in gateway.seen if s.path == "/e"]
        assert seen.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
        assert seen.headers.getall("X-Forwarded-Proto") == ["https"]
        # the gateway believed nginx's https, not the client's "http": Secure cookies
        assert set_cookie_names(cookies) == ["_ttgw", "_ttp"]
        assert all(f"Domain={COOKIE_DOMAIN}" in c and "; Secure" in c for c in cookies)


async def test_admin_paths_answer_only_the_allowed_networks(
    nginx_binary: Path,
    tmp_path: Path,
    certificates: Certificates,
    gateway: Upstream,
    settings: Settings,
    http: aiohttp.ClientSession,
) -> None:
    tls = certificates.client_context()
    admin = ["/v1/admin/integrations", "/v1/admin", "/dashboard", "/dashboard/x.js", "/metrics"]
    with hostname_mode(
        nginx_binary, tmp_path / "elsewhere", certificates, gateway.address,
        admin_allow="allow 10.0.0.0/8;\n",
    ) as mode:  # fmt: skip
        odd = ["/v1//admin/integrations", "/%6detrics", "/v1/x/../admin/integrations"]
        for path in [*admin, *odd]:
            url = URL(f"{mode.https}{path}", encoded=True)  # sent as written
            async with http.get(url, headers={"Host": GATEWAY_HOST}, ssl=tls) as response:
                assert response.status == 403, path
                assert is_nginx_page(await response.read(), "403 Forbidden")
        assert gateway.seen == []
        async with http.get(
            f"{mode.https}/healthz", headers={"Host": GATEWAY_HOST}, ssl=tls
        ) as response:
            assert response.status == 200

    with hostname_mode(nginx_binary, tmp_path / "here", certificates, gateway.address) as mode:
        url = f"{mode.https}/v1/admin/integrations"
        async with http.get(url, headers={"Host": GATEWAY_HOST}, ssl=tls) as response:
            assert response.status == 401
        bearer = {"Host": GATEWAY_HOST, "Authorization": f"Bearer {settings.admin_token}"}
        async with http.get(url, headers=bearer, ssl=tls) as response:
            assert response.status == 200
        async with http.get(
            f"{mode.https}/metrics", headers={"Host": GATEWAY_HOST}, ssl=tls
        ) as response:
            assert response.status == 200
            assert "ttgw_" in await response.text()


async def test_events_beyond_the_burst_are_refused_with_429(
    nginx_binary: Path,
    tmp_path: Path,
    certificates: Certificates,
    gateway: Upstream,
    http: aiohttp.ClientSession,
) -> None:
    with hostname_mode(
        nginx_binary, tmp_path, certificates, gateway.address,
        TTGW_EVENTS_RATE="1r/m", TTGW_EVENTS_BURST="3",
    ) as mode:  # fmt: skip
        statuses = []
        for n in range(6):
            async with http.post(
                f"{mode.https}/e",
                json=track("ViewContent", event_id=f"e{n}"),
                headers={"Host": GATEWAY_HOST, "Origin": SHOP_ORIGIN},
                ssl=certificates.client_context(),
            ) as response:
                statuses.append(response.status)
        assert statuses == [202, 202, 202, 202, 429, 429]
        assert gateway.paths().count("/e") == 4
        # other paths are not limited
        async with http.get(
            f"{mode.https}/healthz",
            headers={"Host": GATEWAY_HOST},
            ssl=certificates.client_context(),
        ) as response:
            assert response.status == 200


async def test_bodies_over_the_limits_are_refused_by_nginx(
    nginx_binary: Path,
    tmp_path: Path,
    certificates: Certificates,
    gateway: Upstream,
    settings: Settings,
    http: aiohttp.ClientSession,
) -> None:
    with hostname_mode(nginx_binary, tmp_path, certificates, gateway.address) as mode:
        tls = certificates.client_context()
        write = {"Host": GATEWAY_HOST, "Authorization": f"Bearer {settings.write_key}"}
        big_event = b'{"type":"track","event":"Purchase","x":"' + b"x" * 65_536 + b'"}'
        cases = [
            ("/e", {"Host": GATEWAY_HOST, "Origin": SHOP_ORIGIN}, big_event, 413),
            ("/v1/track", write, big_event + b" " * 200_000, None),  # up to 1m: the gateway's
            ("/v1/track", write, big_event + b" " * 1_048_576, 413),
            ("/v1/batch", write, big_event + b" " * 400_000, None),  # an SDK's 500 KB batch
            ("/v1/batch", write, big_event + b" " * 1_048_576, 413),
        ]
        for path, headers, body, expected in cases:
            sent = {**headers, "Content-Type": "application/json"}
            async with http.post(
                f"{mode.https}{path}", data=io.BytesIO(body), headers=sent, ssl=tls
            ) as answer:
                if expected is None:
                    assert answer.status != 413
                else:
                    assert answer.status == expected
                    assert is_nginx_page(await answer.read(), "413 Request Entity Too Large")
        assert gateway.paths() == ["/v1/track", "/v1/batch"]


# --- path mode ------------------------------------------------------------------------------------


def visitor_id(set_cookies: list[str]) -> str:
    return cookie_value(set_cookies, "_ttgw").split(".", 1)[0]


async def test_a_landing_with_ttclid_gets_the_gateways_cookies_on_the_shops_page(
    nginx_binary: Path,
    tmp_path: Path,
    gateway: Upstream,
    shop: Upstream,
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    with path_mode(nginx_binary, tmp_path, gateway.address, shop.port) as base:
        headers = {"Host": SHOP_HOST, "User-Agent": USER_AGENT, "X-Forwarded-For": "6.6.6.6"}
        async with http.get(f"{base}{LANDING_URI}", headers=headers) as response:
            assert response.status == 200
            assert "<title>tee</title>" in await response.text()
            got = response.headers.getall("Set-Cookie")
        # exactly the three headers the gateway answered, next to the shop's own cookie
        (sent,) = gateway.landing_cookies
        assert set_cookie_names(sent) == sorted(GATEWAY_COOKIES)
        assert sorted(got) == sorted([SHOP_COOKIE, *sent])
        for header in sent:
            assert f"Domain={COOKIE_DOMAIN}" in header
            assert header.endswith("; HttpOnly") == (not header.startswith("_ttp="))

        (landing,) = [s for s in gateway.seen if s.path == "/landing"]
        assert landing.headers["X-Original-URI"] == LANDING_URI
        assert landing.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
        assert landing.headers["Host"] == SHOP_HOST
        assert landing.headers["User-Agent"] == USER_AGENT
        assert [(s.path, s.query) for s in shop.seen] == [
            ("/products/tee", f"ttclid={TTCLID}&utm_source=tiktok")
        ]

        visitor = await redis.hgetall(keys.visitor_key(visitor_id(got)))
        click = orjson.loads(visitor[b"click"])
        assert click["ttclid"] == TTCLID
        assert click["utm_source"] == "tiktok"
        assert click["landing_url"].startswith(f"http://{SHOP_HOST}/products/tee?")
        assert visitor[b"ip"] == b"127.0.0.1"
        assert visitor[b"user_agent"] == USER_AGENT.encode()

        # the same browser comes back with its cookies from another ad: same visitor
        returning = {**headers, "Cookie": "; ".join(h.split(";", 1)[0] for h in got)}
        async with http.get(f"{base}/?ttclid=E.C.P.def", headers=returning) as response:
            assert response.status == 200
            again = response.headers.getall("Set-Cookie")
        assert visitor_id(again) == visitor_id(got)
        visitor = await redis.hgetall(keys.visitor_key(visitor_id(got)))
        assert orjson.loads(visitor[b"click"])["ttclid"] == "E.C.P.def"


async def test_pages_without_ttclid_never_reach_the_gateway(
    nginx_binary: Path,
    tmp_path: Path,
    gateway: Upstream,
    shop: Upstream,
    http: aiohttp.ClientSession,
) -> None:
    with path_mode(nginx_binary, tmp_path, gateway.address, shop.port) as base:
        for uri in ["/", "/products/tee?utm_source=tiktok", "/p?not_ttclid=E.C.P.x", "/p?ttclid="]:
            async with http.get(f"{base}{uri}", headers={"Host": SHOP_HOST}) as response:
                assert response.status == 200, uri
                assert response.headers.getall("Set-Cookie") == [SHOP_COOKIE], uri
        assert gateway.seen == []
        # other methods: the gateway is asked with a GET and no body
        async with http.head(f"{base}/p?ttclid={TTCLID}", headers={"Host": SHOP_HOST}) as head:
            assert head.status == 200
            assert set_cookie_names(head.headers.getall("Set-Cookie")) == sorted(
                [*GATEWAY_COOKIES, "shop_session"]
            )
        async with http.post(
            f"{base}/cart?ttclid={TTCLID}", data={"sku": "tee"}, headers={"Host": SHOP_HOST}
        ) as post:
            assert post.status == 200
            assert set_cookie_names(post.headers.getall("Set-Cookie")) == sorted(
                [*GATEWAY_COOKIES, "shop_session"]
            )
        assert [(s.method, s.path, s.headers.get("Content-Length")) for s in gateway.seen] == [
            ("GET", "/landing", None),
            ("GET", "/landing", None),
        ]
        assert [s.headers["X-Original-URI"] for s in gateway.seen] == [
            f"/p?ttclid={TTCLID}",
            f"/cart?ttclid={TTCLID}",
        ]
        assert [s.method for s in shop.seen][-2:] == ["HEAD", "POST"]


async def test_shop_locations_with_their_own_add_header_include_the_capture_again(
    nginx_binary: Path,
    tmp_path: Path,
    gateway: Upstream,
    shop: Upstream,
    http: aiohttp.ClientSession,
) -> None:
    with path_mode(nginx_binary, tmp_path, gateway.address, shop.port) as base:
        uri = f"/static/app.css?ttclid={TTCLID}"
        async with http.get(f"{base}{uri}", headers={"Host": SHOP_HOST}) as response:
            assert response.headers["Cache-Control"] == "public, max-age=60"
            assert set_cookie_names(response.headers.getall("Set-Cookie")) == sorted(
                [*GATEWAY_COOKIES, "shop_session"]
            )
        # without it, the server's add_header is not inherited: the click is stored, no cookies
        async with http.get(f"{base}/forgot/x?ttclid={TTCLID}", headers={"Host": SHOP_HOST}) as r:
            assert r.status == 200
            assert r.headers.getall("Set-Cookie") == [SHOP_COOKIE]
        assert gateway.paths() == ["/landing", "/landing"]


async def test_gateway_paths_live_under_the_prefix(
    nginx_binary: Path,
    tmp_path: Path,
    gateway: Upstream,
    shop: Upstream,
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    with path_mode(nginx_binary, tmp_path, gateway.address, shop.port) as base:
        host = {"Host": SHOP_HOST}
        async with http.get(f"{base}/_t/healthz?ttclid={TTCLID}", headers=host) as response:
            assert response.status == 200
            assert "Set-Cookie" not in response.headers
        for expected in ("MISS", "HIT"):
            async with http.get(f"{base}/_t/c.js", headers=host) as response:
                assert response.status == 200
                assert response.headers["X-Cache-Status"] == expected
                assert response.headers["Content-Type"].startswith("application/javascript")
        own_origin = {**host, "Origin": f"http://{SHOP_HOST}", "X-Forwarded-For": "6.6.6.6"}
        async with http.post(
            f"{base}/_t/e", json=track("ViewContent", event_id="p1"), headers=own_origin
        ) as response:
            assert response.status == 202, await response.text()
            assert set_cookie_names(response.headers.getall("Set-Cookie")) == ["_ttgw", "_ttp"]
        (entry,) = await queued(redis)
        assert entry["data"]["user"]["ip"] == "127.0.0.1"
        for path in ["/_t/v1/admin/integrations", "/_t/dashboard", "/_t/metrics"]:
            async with http.get(f"{base}{path}", headers=host) as response:
                assert response.status == 404, path
        assert gateway.paths() == ["/healthz", "/c.js", "/e"]
        assert shop.seen == []


async def test_an_sdk_batch_under_the_prefix_gets_1m_and_the_gateway(
    nginx_binary: Path,
    tmp_path: Path,
    gateway: Upstream,
    shop: Upstream,
    settings: Settings,
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    """Segment's SDKs post batches of up to 500 KB to ``<host>/v1/batch``: 64k would refuse them."""
    with path_mode(nginx_binary, tmp_path, gateway.address, shop.port) as base:
        message = {"type": "track", "event": "Purchase", "userId": "u", "messageId": "nginx-1",
                   "properties": {"padding": "x" * 400_000}}  # fmt: skip
        auth = base64.b64encode(f"{settings.write_key}:".encode()).decode()
        headers = {"Host": SHOP_HOST, "Authorization": f"Basic {auth}"}
        async with http.post(
            f"{base}/_t/v1/batch", json={"batch": [message]}, headers=headers
        ) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"success": True}
        assert [e["event_id"] for e in await queued(redis)] == ["nginx-1"]
        assert gateway.paths() == ["/v1/batch"]


async def test_a_same_origin_post_on_a_non_default_port_is_accepted(
    nginx_binary: Path,
    tmp_path: Path,
    gateway: Upstream,
    shop: Upstream,
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    """The shop on its own port (any free port is non-default): the browser sends that port in
    both Host and Origin, and the gateway must get the Host as the browser wrote it."""
    with path_mode(nginx_binary, tmp_path, gateway.address, shop.port) as base:
        own = base.removeprefix("http://")
        async with http.post(
            f"{base}/_t/e", json=track("ViewContent", event_id="port-1"), headers={"Origin": base}
        ) as response:
            assert response.status == 202, await response.text()
            assert response.headers["Access-Control-Allow-Origin"] == base
        assert [e["event_id"] for e in await queued(redis)] == ["port-1"]
        (seen,) = [s for s in gateway.seen if s.path == "/e"]
        assert seen.headers.getall("Host") == [own]
        # no Host at all (HTTP/1.0): the server's name, never an empty or missing Host
        reader, writer = await asyncio.open_connection("127.0.0.1", int(own.rsplit(":", 1)[1]))
        writer.write(b"GET /_t/healthz HTTP/1.0\r\n\r\n")
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
        assert gateway.seen[-1].path == "/healthz"
        assert gateway.seen[-1].headers.getall("Host") == [SHOP_HOST]


async def test_hostname_mode_passes_a_non_default_port_to_the_gateway(
    nginx_binary: Path,
    tmp_path: Path,
    certificates: Certificates,
    gateway: Upstream,
    http: aiohttp.ClientSession,
) -> None:
    with hostname_mode(nginx_binary, tmp_path, certificates, gateway.address) as mode:
        own = f"{GATEWAY_HOST}:{mode.https.rsplit(':', 1)[1]}"
        headers = {"Host": own, "Origin": f"https://{own}"}
        async with http.post(
            f"{mode.https}/e",
            json=track("ViewContent", event_id="port-2"),
            headers=headers,
            ssl=certificates.client_context(),
        ) as response:
            assert response.status == 202, await response.text()
            assert response.headers["Access-Control-Allow-Origin"] == f"https://{own}"
        (seen,) = [s for s in gateway.seen if s.path == "/e"]
        assert seen.headers.getall("Host") == [own]


async def test_nginx_keeps_only_the_first_set_cookie_as_a_variable(
    nginx_binary: Path,
    tmp_path: Path,
    gateway: Upstream,
    shop: Upstream,
    http: aiohttp.ClientSession,
) -> None:
    with path_mode(nginx_binary, tmp_path, gateway.address, shop.port) as base:
        async with http.get(f"{base}/debug/?ttclid={TTCLID}", headers={"Host": SHOP_HOST}) as r:
            first = r.headers["X-First-Set-Cookie"]
            got = r.headers.getall("Set-Cookie")
    (sent,) = gateway.landing_cookies
    assert len(sent) == 3
    assert first == sent[0]  # $upstream_http_set_cookie: the first header, whole, and no more
    assert sorted(got) == sorted([SHOP_COOKIE, *sent])  # rebuilt from $upstream_cookie_<name>


async def test_the_attributes_are_read_from_a_joined_header_too(
    nginx_binary: Path, tmp_path: Path, shop: Upstream, http: aiohttp.ClientSession
) -> None:
    """nginx 1.23+ joins every Set-Cookie in $upstream_http_set_cookie with ", " (per its
    source; only 1.22 is here): a stand-in gateway whose first header has that joined form shows
    the attributes map still takes the first cookie's attributes only."""
    attributes = f"; Max-Age=100; Path=/; Domain={COOKIE_DOMAIN}; SameSite=Lax; Secure"
    visitor = f"_ttgw=v.s{attributes}; HttpOnly"
    ttp = f"_ttp=t{attributes}"
    click = f"_ttgw_clk=c.1.s{attributes}; HttpOnly"

    async def landing(request: web.Request) -> web.Response:
        response = web.Response(status=204)
        response.headers.add("Set-Cookie", ", ".join([visitor, ttp, click]))
        response.headers.add("Set-Cookie", ttp)
        response.headers.add("Set-Cookie", click)
        return response

    app = web.Application()
    app.router.add_get("/landing", landing)
    stand_in = await start_upstream(app)
    try:
        with path_mode(nginx_binary, tmp_path, stand_in.address, shop.port) as base:
            async with http.get(f"{base}{LANDING_URI}", headers={"Host": SHOP_HOST}) as response:
                got = response.headers.getall("Set-Cookie")
    finally:
        await stand_in.server.close()
    assert sorted(got) == sorted([SHOP_COOKIE, visitor, ttp, click])


async def test_an_internal_redirect_asks_again_for_the_same_visitor(
    nginx_binary: Path,
    tmp_path: Path,
    gateway: Upstream,
    shop: Upstream,
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    with path_mode(nginx_binary, tmp_path, gateway.address, shop.port) as base:
        async with http.get(
            f"{base}/fallback/tee?ttclid={TTCLID}", headers={"Host": SHOP_HOST}
        ) as r:
            assert r.status == 200
            got = r.headers.getall("Set-Cookie")
    first, second = gateway.landing_cookies  # try_files to @shop: auth_request runs twice
    assert visitor_id(first) == visitor_id(second) == visitor_id(got)
    assert cookie_value(first, "_ttp") == cookie_value(got, "_ttp")
    assert sorted(got) == sorted([SHOP_COOKIE, *second])
    visitors = [k async for k in redis.scan_iter(match=keys.visitor_key("*"))]
    assert visitors == [keys.visitor_key(visitor_id(got)).encode()]


async def test_without_the_error_page_auth_request_would_break_the_shop(
    nginx_binary: Path,
    tmp_path: Path,
    shop: Upstream,
    http: aiohttp.ClientSession,
) -> None:
    """The control: what the snippet's error_page saves the shop from."""
    closed = f"127.0.0.1:{free_port()}"
    conf = render(tmp_path, variables(tmp_path, closed))
    snippet = conf / "ttgw-snippets" / "gateway-path-locations.conf"
    text = snippet.read_text()
    assert "= @ttgw_landing_skip;" in text
    snippet.write_text(
        "\n".join(line for line in text.splitlines() if "@ttgw_landing_skip;" not in line)
    )
    listen = free_port()
    with run_nginx(
        nginx_binary, tmp_path / "nginx", shop_server(conf, listen, shop.port), [listen]
    ):
        url = f"http://127.0.0.1:{listen}{LANDING_URI}"
        async with http.get(url, headers={"Host": SHOP_HOST}) as response:
            assert response.status == 500
    assert shop.seen == []


async def test_the_shop_answers_when_the_gateway_is_down(
    nginx_binary: Path,
    tmp_path: Path,
    gateway: Upstream,
    shop: Upstream,
    http: aiohttp.ClientSession,
) -> None:
    with path_mode(nginx_binary, tmp_path, gateway.address, shop.port) as base:
        headers = {"Host": SHOP_HOST}
        async with http.get(f"{base}{LANDING_URI}", headers=headers) as response:
            assert len(response.headers.getall("Set-Cookie")) == 4  # kept-alive connection now
        await gateway.server.close()
        for uri in [LANDING_URI, "/products/tee", f"/static/a.css?ttclid={TTCLID}"]:
            started = time.monotonic()
            async with http.get(f"{base}{uri}", headers=headers) as response:
                assert response.status == 200, uri
                assert "<title>tee</title>" in await response.text()
                assert response.headers.getall("Set-Cookie") == [SHOP_COOKIE]
            assert time.monotonic() - started < 1.0
        async with http.get(f"{base}/_t/healthz", headers=headers) as response:
            assert response.status == 502  # the gateway's own paths do fail
    assert len(shop.seen) == 4


async def test_a_hanging_gateway_holds_the_shop_no_longer_than_the_timeout(
    nginx_binary: Path,
    tmp_path: Path,
    shop: Upstream,
    http: aiohttp.ClientSession,
) -> None:
    connections = 0
    release = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await release.wait()
        writer.close()

    port = free_port()
    hanging = await asyncio.start_server(never_answer, "127.0.0.1", port)
    try:
        with path_mode(nginx_binary, tmp_path, f"127.0.0.1:{port}", shop.port) as base:
            started = time.monotonic()
            async with http.get(f"{base}{LANDING_URI}", headers={"Host": SHOP_HOST}) as response:
                assert response.status == 200
                assert response.headers.getall("Set-Cookie") == [SHOP_COOKIE]
            elapsed = time.monotonic() - started
            assert connections == 1
            assert LANDING_TIMEOUT_S * 0.9 <= elapsed < LANDING_TIMEOUT_S + 0.5
            async with http.get(f"{base}/products/tee", headers={"Host": SHOP_HOST}) as response:
                assert response.status == 200
            assert connections == 1
    finally:
        release.set()
        hanging.close()
        await hanging.wait_closed()
