"""Security tests: authentication, CORS, cookies, forwarded headers, no open relay or proxy, body
limits, header injection, and secrets or raw contact data never stored, logged or served.

Everything runs over real HTTP against the real test Redis. Requests that the aiohttp client would
normalise or refuse to send (raw CR/LF, non-UTF-8 bytes, ``..`` and ``%2f`` paths, ``CONNECT``)
go through :func:`raw_exchange`, byte for byte. Bugs found here are ``xfail(strict=True)`` tests
whose reason names the fix, so they fail loudly once fixed and the marker must go.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from structlog.testing import capture_logs

from gateway.app import REQUEST_ID_HEADER, create_app
from gateway.appkeys import SIGNER
from gateway.identity.cookies import (
    CLICK_COOKIE,
    COOKIE_MAX_AGE_S,
    TTP_COOKIE,
    VISITOR_COOKIE,
    CookieSigner,
)
from gateway.ingest import cors
from gateway.logs import add_request_id
from gateway.operate.admin import create_admin_app
from gateway.settings import Settings
from gateway.store import keys
from tests.delivery_support import (
    PIXEL,
    TOKEN,
    delivery_env,
    running_emulator,
    running_worker,
    wait_until,
)
from tests.ingest_support import TTCLID, queued, sha, track
from tests.support import free_port

MakeSettings = Callable[..., Settings]
Client = TestClient  # type: ignore[type-arg]

# Per-run secrets: unique, so finding one in the shared AOF means this run leaked it.
ADMIN_TOKEN = "tta_" + secrets.token_urlsafe(24)
WRITE_KEY = "ttw_" + secrets.token_urlsafe(24)
SECRET_KEY = secrets.token_hex(32)
ALLOWED_ORIGIN = "https://shop.example"

TTP_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
MINTED_TTP_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}_\.tt\.1")  # a ULID, as the gateway mints
SIGNED_VISITOR_RE = re.compile(r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{22}")
GATEWAY_COOKIES = {VISITOR_COOKIE, TTP_COOKIE, CLICK_COOKIE}


def env(**extra: str) -> dict[str, str]:
    """The TTGW_* variables of a gateway whose secrets this module knows."""
    return {
        "TTGW_ADMIN_TOKEN": ADMIN_TOKEN,
        "TTGW_WRITE_KEY": WRITE_KEY,
        "TTGW_SECRET_KEY": SECRET_KEY,
        **extra,
    }


@pytest.fixture
def gateway(aiohttp_client: Any, make_settings: MakeSettings, redis_url: str) -> Callable[..., Any]:
    async def factory(**extra: str) -> Client:
        settings = make_settings(TTGW_REDIS_URL=redis_url, **env(**extra))
        return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]

    return factory


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- raw HTTP ---------------------------------------------------------------------------------


@dataclass
class RawAnswer:
    """An HTTP/1.1 answer as it came off the socket."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw_head: bytes = b""

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    @property
    def names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


def parse_answer(data: bytes) -> RawAnswer:
    """Status line and header lines of an answer (and what follows them, if anything)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        assert colon, f"malformed answer header line {line!r}"
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return RawAnswer(status, headers, body, head)


def raw_request(
    method: str,
    target: str | bytes,
    headers: list[tuple[str, str | bytes]] | None = None,
    body: bytes = b"",
    host: str | bytes = "127.0.0.1",
) -> bytes:
    """An HTTP/1.1 request with exactly these bytes (``Connection: close`` added)."""
    target_bytes = target if isinstance(target, bytes) else target.encode()
    lines = [method.encode() + b" " + target_bytes + b" HTTP/1.1"]
    lines.append(b"Host: " + (host if isinstance(host, bytes) else host.encode()))
    for name, value in headers or []:
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    given = {name.lower() for name, _ in headers or []}
    if (body or method in ("POST", "PUT", "PATCH")) and "content-length" not in given:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def raw_exchange(port: int, request: bytes, timeout_s: float = 10.0) -> RawAnswer:
    """Send ``request`` as is; the first answer, its body read by its ``Content-Length``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            answer = parse_answer(await reader.readuntil(b"\r\n\r\n"))
            length = answer.get("Content-Length")
            if request.startswith(b"HEAD "):
                pass  # no body, whatever Content-Length says
            elif length is not None:
                answer.body = await reader.readexactly(int(length))
            elif answer.status not in (204, 304):
                answer.body = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answer


# --- Set-Cookie checks ------------------------------------------------------------------------


def check_set_cookie(
    header: str, signer: CookieSigner, *, secure: bool = False, domain: str | None = None
) -> tuple[str, str]:
    """Parse one of the gateway's Set-Cookie headers strictly; ``(name, value)``.

    The name is one of the three cookies, the value is in that cookie's alphabet (and verifies,
    for the signed ones), and the attributes are exactly the documented ones in order.
    """
    first, *attributes = header.split("; ")
    name, eq, value = first.partition("=")
    assert eq and name in GATEWAY_COOKIES, header
    if name == VISITOR_COOKIE:
        assert SIGNED_VISITOR_RE.fullmatch(value), header
        assert signer.read_visitor(value) is not None, header
    elif name == CLICK_COOKIE:
        assert signer.read_click(value) is not None, header
    else:
        assert TTP_RE.fullmatch(value), header
    expected = [f"Max-Age={COOKIE_MAX_AGE_S}", "Path=/"]
    expected += [f"Domain={domain}"] if domain else []
    expected += ["SameSite=Lax"] + (["Secure"] if secure else [])
    expected += [] if name == TTP_COOKIE else ["HttpOnly"]
    assert attributes == expected, header
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    assert list(jar) == [name] and jar[name].value == value, header
    return name, value


def cookie_values(headers: list[str], signer: CookieSigner, **policy: Any) -> dict[str, str]:
    pairs = [check_set_cookie(h, signer, **policy) for h in headers]
    names = [n for n, _ in pairs]
    assert len(names) == len(set(names)), headers  # each cookie once
    return dict(pairs)


# === (1) authentication ========================================================================


def admin_routes() -> list[tuple[str, str]]:
    """Every route of the admin API but the public OpenAPI document, from its router."""
    routes = []
    for route in create_admin_app().router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD" or path == "/openapi.json":
            continue
        routes.append((route.method, "/v1/admin" + path.format(pixel=PIXEL, event_id="e1")))
    return routes


def wrong_credentials(right: str, other: str) -> list[dict[str, str]]:
    """Authorization headers that must all be refused for the secret ``right``."""
    flipped = right[:-1] + ("A" if right[-1] != "A" else "B")
    return [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {flipped}"},  # same length, last character differs
        {"Authorization": f"Bearer {'x' * len(right)}"},  # same length, all different
        {"Authorization": f"Bearer {right[:-1]}"},  # a prefix
        {"Authorization": f"Bearer {right}x"},  # an extension
        {"Authorization": f"Bearer {right.swapcase()}"},
        {"Authorization": f"Bearer {other}"},  # the other secret: no key confusion
        {"Authorization": f"Basic {right}"},
        {"Authorization": f"Token {right}"},
        {"Authorization": right},
        {"Authorization": f"Bearer{right}"},
        {"Authorization": f"Bearer {right[: len(right) // 2]}\t{right[len(right) // 2 :]}"},
        {"X-Admin-Token": right, "X-Write-Key": right, "Cookie": f"token={right}"},
    ]


async def redis_snapshot(redis: Redis) -> dict[bytes, bytes | None]:
    return {key: await redis.dump(key) for key in sorted(await redis.keys("*"))}


async def test_every_admin_route_refuses_missing_wrong_and_near_miss_tokens(
    gateway: Callable[..., Any], redis: Redis
) -> None:
    client = await gateway()
    routes = admin_routes()
    assert len(routes) >= 11, routes  # the router was really read
    before = await redis_snapshot(redis)
    body = {
        "pixel_code": "CNEWNEWNEWNEWNEWNEW0",
        "access_token": "new-token-1234567",
        "all": True,
        "pixel": PIXEL,
    }
    for headers in wrong_credentials(ADMIN_TOKEN, WRITE_KEY):
        for method, path in routes:
            for target in (path, f"{path}?token={ADMIN_TOKEN}&access_token={ADMIN_TOKEN}"):
                response = await client.request(method, target, json=body, headers=headers)
                assert response.status == 401, (method, target, headers)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert await response.json() == {
                    "error": "a valid admin token is required",
                    "field": "Authorization",
                }
    assert await redis_snapshot(redis) == before  # nothing was created, replayed or deleted
    # the right token passes the same guard (the refusals above were not for another reason)
    ok = await client.get("/v1/admin/stats", headers={"Authorization": f"bearer  {ADMIN_TOKEN} "})
    assert ok.status == 200


async def test_track_refuses_missing_wrong_and_near_miss_write_keys(
    gateway: Callable[..., Any], redis: Redis
) -> None:
    client = await gateway()
    for headers in wrong_credentials(WRITE_KEY, ADMIN_TOKEN):
        response = await client.post(
            f"/v1/track?write_key={WRITE_KEY}", json=track(event_id="w1"), headers=headers
        )
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await redis.xlen(keys.EVENTS_STREAM) == 0
    # refused before the body is read: a huge unauthenticated body is a 401, not a 413
    huge = await client.post(
        "/v1/track",
        data=io.BytesIO(b"x" * (2 * 1024 * 1024)),
        headers={"Content-Type": "application/json"},
    )
    assert huge.status == 401
    ok = await client.post("/v1/track", json=track(event_id="w2"), headers=bearer(WRITE_KEY))
    assert ok.status == 202


async def test_token_checks_go_through_hmac_compare_digest(
    gateway: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both bearer checks compare with ``hmac.compare_digest`` and nothing else decides.

    A recording wrapper shows the presented and expected secrets reach it, whatever their length
    (no early length or prefix exit); a wrapper that always says "different" shows that no other
    comparison lets the right secret in.
    """
    client = await gateway()
    real = hmac.compare_digest
    calls: list[tuple[bytes, bytes]] = []

    def recording(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    same_length = "y" * len(ADMIN_TOKEN)
    assert (await client.get("/v1/admin/stats", headers=bearer(same_length))).status == 401
    assert (await client.get("/v1/admin/stats", headers=bearer("short"))).status == 401
    assert (await client.get("/v1/admin/stats", headers=bearer(ADMIN_TOKEN))).status == 200
    admin = [c for c in calls if ADMIN_TOKEN.encode() in c]
    assert {frozenset(c) for c in admin} == {
        frozenset({same_length.encode(), ADMIN_TOKEN.encode()}),
        frozenset({b"short", ADMIN_TOKEN.encode()}),
        frozenset({ADMIN_TOKEN.encode()}),
    }
    calls.clear()
    wrong = "z" * len(WRITE_KEY)
    assert (await client.post("/v1/track", json=track(), headers=bearer(wrong))).status == 401
    assert [c for c in calls if WRITE_KEY.encode() in c] == [(wrong.encode(), WRITE_KEY.encode())]

    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    assert (await client.get("/v1/admin/stats", headers=bearer(ADMIN_TOKEN))).status == 401
    refused = await client.post("/v1/track", json=track(), headers=bearer(WRITE_KEY))
    assert refused.status == 401


# === (2) CORS ===================================================================================

FOREIGN_ORIGINS = [
    "https://evil.example",
    "null",
    "https://evil.shop.example",  # a subdomain
    "https://shop.example.evil.example",  # the allowed origin as a prefix
    "https://evilshop.example",  # as a suffix
    "https://shop.example:8443",  # another port
    "https://shop.example:443x",
    "http://shop.example",  # another scheme
    "wss://shop.example",
    "https://shop.example@evil.example",
    "https://evil.example#https://shop.example",
    "https://shop.example, https://evil.example",
    "https://shop.example https://evil.example",
    "https://xn--shop-9oa.example",
    "file://",
]


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
async def test_foreign_origins_are_refused_without_cors_headers_or_cookies(
    gateway: Callable[..., Any], redis: Redis, origin: str
) -> None:
    client = await gateway(TTGW_ALLOWED_ORIGINS=ALLOWED_ORIGIN)
    post = await client.post("/e", json=track(event_id="c1"), headers={"Origin": origin})
    assert post.status == 403
    assert "Access-Control-Allow-Origin" not in post.headers
    assert "Access-Control-Allow-Credentials" not in post.headers
    assert "Set-Cookie" not in post.headers  # a refused origin does not get a visitor id either
    assert "Origin" in post.headers["Vary"]
    preflight = await client.options(
        "/e",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status == 403
    assert not {h for h in preflight.headers if h.lower().startswith("access-control-")}
    assert await redis.xlen(keys.EVENTS_STREAM) == 0


async def test_no_other_route_answers_cors_to_a_foreign_origin(
    gateway: Callable[..., Any],
) -> None:
    client = await gateway(TTGW_ALLOWED_ORIGINS=ALLOWED_ORIGIN)
    foreign = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    answers = [
        await client.post(
            "/v1/track", json=track(event_id="c2"), headers={**foreign, **bearer(WRITE_KEY)}
        ),
        await client.get("/v1/admin/stats", headers={**foreign, **bearer(ADMIN_TOKEN)}),
        await client.options("/v1/admin/stats", headers=foreign),
        await client.options("/v1/track", headers=foreign),
        await client.get("/landing", headers={**foreign, "X-Original-URI": "/?ttclid=x1"}),
        await client.get("/metrics", headers=foreign),
    ]
    for answer in answers:
        assert "Access-Control-Allow-Origin" not in answer.headers, answer.url
        assert "Access-Control-Allow-Credentials" not in answer.headers, answer.url


async def test_a_spoofed_forwarded_proto_does_not_widen_the_own_origin(
    gateway: Callable[..., Any],
) -> None:
    """The gateway's own origin counts only with the scheme a trusted proxy vouches for."""
    untrusting = await gateway(TTGW_TRUSTED_PROXIES="10.0.0.0/8")
    https_self = f"https://127.0.0.1:{untrusting.server.port}"
    spoofed = await untrusting.post(
        "/e",
        json=track(event_id="c3"),
        headers={"Origin": https_self, "X-Forwarded-Proto": "https"},
    )
    assert spoofed.status == 403
    trusting = await gateway()  # loopback is a trusted proxy by default
    vouched = await trusting.post(
        "/e",
        json=track(event_id="c4"),
        headers={
            "Origin": f"https://127.0.0.1:{trusting.server.port}",
            "X-Forwarded-Proto": "https",
        },
    )
    assert vouched.status == 202


@pytest.mark.parametrize(
    "origin",
    [
        "HTTPS://SHOP.EXAMPLE",
        "https://Shop.Example",
        "https://shop.example/",
        "https://shop.example//",
    ],
)
async def test_non_canonical_spellings_of_an_allowed_origin_are_refused(
    gateway: Callable[..., Any], origin: str
) -> None:
    client = await gateway(TTGW_ALLOWED_ORIGINS=ALLOWED_ORIGIN)
    post = await client.post("/e", json=track(event_id="c5"), headers={"Origin": origin})
    assert post.status == 403
    assert "Access-Control-Allow-Origin" not in post.headers


@pytest.fixture
def refusal_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fresh refusal log whose clock the test moves."""
    now = [1000.0]
    monkeypatch.setattr(cors, "REFUSALS", cors.RefusalLog(clock=lambda: now[0]))
    return now


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("127.0.0.1:80", "http://127.0.0.1"),  # Host with the scheme's default port
        ("Shop.Example:80", "http://shop.example"),
        ("127.0.0.1:8443", "http://127.0.0.1:8443"),  # a non-default port, on both sides
        ("[::1]:80", "http://[::1]"),
    ],
)
async def test_the_own_origin_is_the_host_with_its_port_as_a_browser_writes_it(
    gateway: Callable[..., Any], host: str, origin: str
) -> None:
    client = await gateway()
    post = await client.post(
        "/e", json=track(event_id="own"), headers={"Host": host, "Origin": origin}
    )
    assert post.status == 202, await post.text()
    assert post.headers["Access-Control-Allow-Origin"] == origin


async def test_the_own_host_on_another_port_is_refused(
    gateway: Callable[..., Any], refusal_clock: list[float]
) -> None:
    """What a proxy sending ``Host $host`` (no port) in front of a shop on port 8443 causes."""
    client = await gateway()
    headers = {"Host": "127.0.0.1", "Origin": "http://127.0.0.1:8443"}
    with capture_logs() as logs:
        post = await client.post("/e", json=track(event_id="port"), headers=headers)
    assert post.status == 403
    (line,) = [line for line in logs if line["event"] == "origin_refused"]
    assert "another port" in line["reason"] and "$http_host" in line["reason"]


async def test_a_refused_origin_is_logged_with_the_reason_and_the_fix_once_a_minute(
    gateway: Callable[..., Any], refusal_clock: list[float]
) -> None:
    client = await gateway(TTGW_ALLOWED_ORIGINS=ALLOWED_ORIGIN)
    shop = "https://www.shop.example"
    with capture_logs(processors=[add_request_id]) as logs:
        for _ in range(50):
            assert (await client.post("/e", json=track(), headers={"Origin": shop})).status == 403
        preflight = await client.options(
            "/e", headers={"Origin": shop, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status == 403
        refusals = [line for line in logs if line["event"] == "origin_refused"]
        assert len(refusals) == 1
        (line,) = refusals
        assert line["log_level"] == "warning"
        assert line["origin"] == shop
        assert line["path"] == "POST /e"
        assert line["refusals"] == 1
        assert line["reason"] == (
            f"neither the gateway's own origin http://127.0.0.1:{client.server.port} nor in "
            f"TTGW_ALLOWED_ORIGINS ({ALLOWED_ORIGIN}): a storefront on another origin must be "
            "listed there"
        )
        assert line["allow_with"] == f"TTGW_ALLOWED_ORIGINS={ALLOWED_ORIGIN},{shop}"
        assert "request_id" in line  # joins the request's own line
        requests = [line for line in logs if line["event"] == "request"]
        assert [r["status"] for r in requests] == [403] * 51  # each request keeps its line

        refusal_clock[0] += 61
        await client.post("/e", json=track(), headers={"Origin": shop})
        refusals = [line for line in logs if line["event"] == "origin_refused"]
        assert len(refusals) == 2
        assert refusals[1]["refusals"] == 51  # the 50 unlogged ones since, and this one


async def test_a_flood_of_foreign_origins_writes_a_bounded_number_of_lines(
    gateway: Callable[..., Any], refusal_clock: list[float]
) -> None:
    client = await gateway()
    with capture_logs() as logs:
        for n in range(60):
            origin = f"https://evil-{n}.example"
            assert (await client.post("/e", json=track(), headers={"Origin": origin})).status == 403
        refusals = [line for line in logs if line["event"] == "origin_refused"]
        assert len(refusals) == cors.REFUSAL_LINES_PER_WINDOW
        refusal_clock[0] += 61
        await client.post("/e", json=track(), headers={"Origin": "https://evil-0.example"})
        last = [line for line in logs if line["event"] == "origin_refused"][-1]
        assert last["unlogged_other_refusals"] == 60 - cors.REFUSAL_LINES_PER_WINDOW
        assert last["refusals"] == 1


# === (3) cookie tampering =======================================================================


async def post_with_cookie(client: Client, cookie: str | bytes, event_id: str) -> RawAnswer:
    body = orjson.dumps(track("ViewContent", event_id=event_id))
    request = raw_request(
        "POST", "/e", [("Content-Type", "application/json"), ("Cookie", cookie)], body
    )
    return await raw_exchange(client.server.port, request)


async def test_a_visitor_cookie_signed_with_another_secret_is_replaced(
    gateway: Callable[..., Any], redis: Redis
) -> None:
    client = await gateway()
    signer = client.server.app[SIGNER]
    foreign = CookieSigner("another-gateways-secret-" + "0" * 32)
    visitor = foreign.new_visitor_id()
    forged = foreign.visitor_cookie(visitor)
    assert signer.read_visitor(forged) is None  # the two secrets really differ
    answer = await post_with_cookie(client, f"{VISITOR_COOKIE}={forged}", "v1")
    assert answer.status == 202
    cookies = cookie_values(answer.all("Set-Cookie"), signer)
    assert cookies[VISITOR_COOKIE] != forged
    assert signer.read_visitor(cookies[VISITOR_COOKIE]) != visitor
    (entry,) = await queued(redis)
    assert entry["data"]["user"]["external_id"] != [sha(visitor)]
    assert not await redis.exists(keys.visitor_key(visitor))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v, ms: v.replace(TTCLID, "E.C.P.attackerchosenclick"),  # swapped ttclid
        lambda v, ms: v.replace(f".{ms}.", f".{ms + 86_400_000}."),  # a later click time
        lambda v, ms: v.replace(f".{ms}.", f".0{ms}."),  # same time, other spelling
        lambda v, ms: v[:-1] + ("A" if v[-1] != "A" else "B"),  # signature
        lambda v, ms: CookieSigner("x" * 40).click_cookie("E.C.P.attackerchosenclick", ms),
    ],
    ids=["ttclid", "time", "spelling", "signature", "other-secret"],
)
async def test_a_tampered_click_cookie_is_not_trusted_nor_set_again(
    gateway: Callable[..., Any], redis: Redis, tamper: Callable[[str, int], str]
) -> None:
    client = await gateway()
    signer = client.server.app[SIGNER]
    click_ms = int(time.time() * 1000) - 60_000
    genuine = signer.click_cookie(TTCLID, click_ms)
    forged = tamper(genuine, click_ms)
    assert forged != genuine
    answer = await post_with_cookie(client, f"{CLICK_COOKIE}={forged}", "k1")
    assert answer.status == 202
    assert CLICK_COOKIE not in cookie_values(answer.all("Set-Cookie"), signer)
    (entry,) = await queued(redis)
    assert "ttclid" not in entry["data"]["user"]
    # the genuine cookie is believed (so the refusal above is about the tampering)
    answer = await post_with_cookie(client, f"{CLICK_COOKIE}={genuine}", "k2")
    assert cookie_values(answer.all("Set-Cookie"), signer)[CLICK_COOKIE] == genuine


@pytest.mark.parametrize(
    ("cookie", "kept"),
    [
        (b"_ttp=abc;Domain=evil.example", "abc"),  # ';' ends the value: the rest is a cookie
        (b'_ttp="abc;Domain=evil.example"', None),
        (b"_ttp=abc%0d%0aSet-Cookie:%20evil=1", None),
        (b"_ttp=abc\tdef", None),
        (b"_ttp=" + b"a" * 129, None),
        (b"_ttp=caf\xc3\xa9", None),
        (b"_ttp=\xff\xfe", None),
        (b"_ttp=a,b", None),
        (b"_ttp=a b", None),
        (b"_ttp=a\\b", None),
    ],
)
async def test_a_malformed_ttp_is_replaced_and_never_echoed(
    gateway: Callable[..., Any], redis: Redis, cookie: bytes, kept: str | None
) -> None:
    client = await gateway()
    signer = client.server.app[SIGNER]
    for answer in (
        await post_with_cookie(client, cookie, "t1"),
        await raw_exchange(
            client.server.port,
            raw_request(
                "GET", "/landing", [("Cookie", cookie), ("X-Original-URI", "/?ttclid=E.C.P.t")]
            ),
        ),
    ):
        assert answer.status in (202, 204), answer
        ttp = cookie_values(answer.all("Set-Cookie"), signer)[TTP_COOKIE]
        assert ttp == kept if kept else MINTED_TTP_RE.fullmatch(ttp), ttp
        assert b"evil" not in answer.raw_head
    (entry,) = await queued(redis)
    ttp = entry["data"]["user"]["ttp"]
    assert ttp == kept if kept else MINTED_TTP_RE.fullmatch(ttp), ttp


# === (4) forwarded headers from an untrusted peer ===============================================

SPOOFED_HTTPS = [
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Proto", "http, https"),
    ("Forwarded", "for=198.51.100.7;proto=https;host=shop.example"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"),
    ("Front-End-Https", "on"),
    ("X-Url-Scheme", "https"),
]
SPOOFED_IP = [
    ("X-Forwarded-For", "198.51.100.7"),
    ("X-Forwarded-For", "10.1.2.3"),  # inside the trusted range, but said by an untrusted peer
    ("X-Real-IP", "198.51.100.8"),
    ("True-Client-IP", "198.51.100.9"),
    ("CF-Connecting-IP", "198.51.100.10"),
    ("Forwarded", "for=198.51.100.11"),
    ("X-Client-IP", "198.51.100.12"),
]


async def test_forwarded_headers_from_an_untrusted_peer_change_nothing(
    gateway: Callable[..., Any], redis: Redis
) -> None:
    """TTGW_TRUSTED_PROXIES=10.0.0.0/8: the loopback test client is an untrusted peer."""
    client = await gateway(TTGW_TRUSTED_PROXIES="10.0.0.0/8", TTGW_COOKIE_DOMAIN="shop.example")
    signer = client.server.app[SIGNER]
    headers = [*SPOOFED_HTTPS, *SPOOFED_IP, ("X-Forwarded-Host", "t.shop.example")]
    body = orjson.dumps(track(event_id="x1"))
    post = await raw_exchange(
        client.server.port,
        raw_request("POST", "/e", [("Content-Type", "application/json"), *headers], body),
    )
    landing = await raw_exchange(
        client.server.port,
        raw_request("GET", "/landing", [("X-Original-URI", f"/?ttclid={TTCLID}"), *headers]),
    )
    assert (post.status, landing.status) == (202, 204)
    for answer in (post, landing):
        # not Secure, and no Domain: the request's own Host (127.0.0.1) is outside the domain
        cookies = cookie_values(answer.all("Set-Cookie"), signer, secure=False)
        assert set(cookies) >= {VISITOR_COOKIE, TTP_COOKIE}
    (entry,) = await queued(redis)
    assert entry["data"]["user"]["ip"] == "127.0.0.1"
    assert entry["data"]["page"] == {}  # none made up, from X-Forwarded-Host or Host (issue 15)
    visitor = signer.read_visitor(cookie_values(landing.all("Set-Cookie"), signer)[VISITOR_COOKIE])
    record = await redis.hgetall(keys.visitor_key(visitor or ""))
    assert record[b"ip"] == b"127.0.0.1"
    assert record[b"page_url"].startswith(b"http://127.0.0.1/")  # not https, not the spoofed host


async def test_a_trusted_proxy_is_believed_for_the_same_headers(
    gateway: Callable[..., Any], redis: Redis
) -> None:
    """The control: from loopback (trusted by default) the same XFF and proto do count."""
    client = await gateway()
    signer = client.server.app[SIGNER]
    answer = await raw_exchange(
        client.server.port,
        raw_request(
            "POST",
            "/e",
            [
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", "198.51.100.7"),
                ("X-Forwarded-Proto", "https"),
            ],
            orjson.dumps(track(event_id="x2")),
        ),
    )
    assert answer.status == 202
    cookie_values(answer.all("Set-Cookie"), signer, secure=True)
    (entry,) = await queued(redis)
    assert entry["data"]["user"]["ip"] == "198.51.100.7"


# === (5) the client never chooses the destination ===============================================

DESTINATION_FIELDS = [
    "pixel_code",
    "pixel",
    "access_token",
    "test_event_code",
    "event_source_id",
    "api_url",
    "destination",
]


@pytest.mark.parametrize("path", ["/e", "/v1/track"])
@pytest.mark.parametrize("name", DESTINATION_FIELDS)
async def test_destination_fields_in_the_envelope_are_refused(
    gateway: Callable[..., Any], redis: Redis, path: str, name: str
) -> None:
    client = await gateway(TTGW_PIXEL_CODE=PIXEL, TTGW_ACCESS_TOKEN=TOKEN)
    chosen = "CCHOSENBYCLIENT00000" if "pixel" in name else "https://evil.example/collect"
    alone = await client.post(path, json=track(**{name: chosen}), headers=bearer(WRITE_KEY))
    assert alone.status == 400
    assert (await alone.json())["field"] == name
    batch = {"events": [track(event_id="good"), track(event_id="bad", **{name: chosen})]}
    mixed = await client.post(path, json=batch, headers=bearer(WRITE_KEY))
    assert mixed.status == 202
    answer = await mixed.json()
    assert [e["field"] for e in answer["errors"]] == [f"events[1].{name}"]
    (entry,) = await queued(redis)
    assert entry["pixel"] == PIXEL and entry["event_id"] == "good"


async def test_query_headers_and_nested_fields_do_not_choose_the_pixel(
    gateway: Callable[..., Any], redis: Redis
) -> None:
    client = await gateway(TTGW_PIXEL_CODE=PIXEL, TTGW_ACCESS_TOKEN=TOKEN)
    chosen = "CCHOSENBYCLIENT00000"
    nested = track(
        event_id="n1",
        properties={"pixel_code": chosen, "access_token": "stolen", "value": 1, "currency": "EUR"},
        context={"pixel_code": chosen, "ip": "203.0.113.9"},
        user={"pixel_code": chosen},
    )
    headers = {
        "X-Pixel": chosen,
        "X-Pixel-Code": chosen,
        "X-TT-Pixel": chosen,
        "X-Access-Token": "stolen",
        "Access-Token": "stolen",
    }
    for path, event_id in (("/e", "q1"), ("/v1/track", "q2")):
        response = await client.post(
            f"{path}?pixel={chosen}&pixel_code={chosen}&access_token=stolen",
            json=track(event_id=event_id),
            headers={**headers, **bearer(WRITE_KEY)},
        )
        assert response.status == 202
    assert (await client.post("/e", json=nested, headers=headers)).status == 202
    entries = await queued(redis)
    assert [e["pixel"] for e in entries] == [PIXEL] * 3
    dump = orjson.dumps([e["data"] for e in entries])
    assert chosen.encode() not in dump and b"stolen" not in dump


async def test_unknown_hosts_get_no_integration(
    gateway: Callable[..., Any], redis: Redis, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        '[[integrations]]\npixel_code = "CFRFRFRFRFRFRFRFRFR0"\naccess_token = "fr-token"\n'
        'hostnames = ["shop.fr"]\n'
        '[[integrations]]\npixel_code = "CDEDEDEDEDEDEDEDEDE0"\naccess_token = "de-token"\n'
        'hostnames = ["shop.de"]\n'
    )
    client = await gateway(TTGW_CONFIG=str(config))
    for host in (
        "evil.example",
        "shop.fr.evil.example",
        "evilshop.fr",
        "shop.fr@evil.example",
        "evil.example:shop.fr",
        "shop.frx",
        "fr",
        "localhost",
    ):
        for path in ("/e", "/v1/track"):
            response = await client.post(
                path,
                json=track(event_id="h1"),
                headers={"Host": host, "X-Forwarded-Host": "t.shop.fr", **bearer(WRITE_KEY)},
            )
            assert response.status == 404, (host, path)
            assert (await response.json())["field"] == "Host"
    assert await redis.xlen(keys.EVENTS_STREAM) == 0
    served = await client.post("/e", json=track(event_id="h2"), headers={"Host": "t.shop.fr"})
    assert served.status == 202
    assert [e["pixel"] for e in await queued(redis)] == ["CFRFRFRFRFRFRFRFRFR0"]


# === (6) the /tt/ proxy is no open proxy =======================================================


@dataclass
class StandIn:
    """A stand-in pixel origin that records every request reaching it."""

    origin: str = ""
    hits: list[tuple[str, str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append((request.method, request.raw_path, request.headers.get("Host", "")))
        return web.Response(text="window.ttq = 1;", content_type="application/javascript")


@pytest.fixture
async def stand_in(aiohttp_server: Any) -> StandIn:
    upstream = StandIn()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app)
    upstream.origin = f"http://127.0.0.1:{server.port}"
    return upstream


OFF_LIST = [
    ("CONNECT", "analytics.tiktok.com:443"),
    ("CONNECT", "/tt/i18n/pixel/events.js"),
    ("GET", "http://evil.example/tt/api/v2/anything"),
    ("GET", "/tt/i18n/pixel/events.js/../../../v1/admin/stats"),
    ("GET", "/tt/i18n/pixel/static/..%252f..%252fsecret.js"),
    ("GET", "/tt/i18n/pixel/static/%2e%2e%2f%2e%2e%2fmetrics.js"),
    ("GET", "/tt/i18n\\pixel\\events.js"),
    ("GET", "/tt/i18n/pixel/static/x.js%00.png"),
    ("GET", "/tt/i18n/pixel/static/x.js%0d%0aHost:%20evil.example"),
    ("GET", "/tt/./i18n/pixel/events.js"),
    ("GET", "/tt/i18n//pixel/events.js"),
    ("GET", "/tt/I18N/PIXEL/EVENTS.JS"),
    ("GET", "/tt;/i18n/pixel/events.js"),
    ("GET", "/tt%2fi18n/pixel/events.js"),
    ("GET", "/tt/https:/evil.example/i18n/pixel/events.js"),
    ("GET", "/tt/%40evil.example/i18n/pixel/events.js"),
    ("GET", "/tt/169.254.169.254/latest/meta-data/"),
    ("GET", "/tt/localhost:6379/"),
    ("HEAD", "/tt/i18n/pixel/events.js"),
    ("TRACE", "/tt/i18n/pixel/events.js"),
    ("POST", "/tt/api/v2/pixel/../../../v1/track"),
    ("POST", "/tt/api/v2/pixel/act/x"),
    ("POST", "/tt/api/v2/monitor/"),
]


@pytest.mark.parametrize(("method", "target"), OFF_LIST)
async def test_the_proxy_refuses_everything_off_its_allow_list(
    aiohttp_client: Any,
    make_settings: MakeSettings,
    redis_url: str,
    stand_in: StandIn,
    method: str,
    target: str,
) -> None:
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_PIXEL_ORIGIN=stand_in.origin)
    client = await aiohttp_client(create_app(settings))
    answer = await raw_exchange(
        client.server.port,
        raw_request(method, target, [("Content-Type", "text/plain")], b"{}", host="evil.example"),
    )
    if target.startswith("/tt/"):
        assert answer.status == 404, answer
    else:  # not even a path of the proxy: the parser or the router refuses it
        assert 400 <= answer.status < 500, answer
    assert stand_in.hits == []
    # the control: an allowed path does reach the stand-in, under the stand-in's own Host
    allowed = await raw_exchange(
        client.server.port,
        raw_request("GET", "/tt/i18n/pixel/events.js?sdkid=ABC", host="169.254.169.254"),
    )
    assert allowed.status == 200
    assert stand_in.hits == [
        ("GET", "/i18n/pixel/events.js?sdkid=ABC", stand_in.origin.removeprefix("http://"))
    ]


# === (7) oversize and slow bodies ==============================================================


def padded_event(size: int) -> bytes:
    """A valid event whose JSON is exactly ``size`` bytes."""
    base = orjson.dumps(track(event_id="big", properties={"description": ""}))
    body = base.replace(b'"description":""', b'"description":"' + b"d" * 400 + b'"')
    padding = size - len(body)
    assert padding >= 0
    return body[:-1] + b" " * padding + b"}"


async def test_body_limits_are_exact_and_nothing_is_queued_above_them(
    gateway: Callable[..., Any], redis: Redis
) -> None:
    client = await gateway()
    limit = 64 * 1024
    at = await client.post("/e", data=padded_event(limit), headers={"Content-Type": "text/plain"})
    assert at.status == 202, await at.text()
    over = await client.post(
        "/e", data=padded_event(limit + 1), headers={"Content-Type": "text/plain"}
    )
    assert over.status == 413
    assert (await over.json())["field"] == "body"
    # a declared length above the limit is refused from the headers alone
    port = client.server.port
    declared = await raw_exchange(
        port,
        raw_request(
            "POST", "/e", [("Content-Type", "application/json"), ("Content-Length", "999999999")]
        ),
    )
    assert declared.status == 413
    track_limit = 1024 * 1024
    over_track = await client.post(
        "/v1/track",
        data=io.BytesIO(padded_event(track_limit + 1)),
        headers={"Content-Type": "application/json", **bearer(WRITE_KEY)},
    )
    assert over_track.status == 413
    admin = await client.post(
        "/v1/admin/replay",
        data=io.BytesIO(b'{"all": true, "x": "' + b"a" * track_limit + b'"}'),
        headers={"Content-Type": "application/json", **bearer(ADMIN_TOKEN)},
    )
    assert admin.status == 413
    assert [e["event_id"] for e in await queued(redis)] == ["big"]


async def test_slow_bodies_do_not_block_other_requests(
    gateway: Callable[..., Any], redis: Redis
) -> None:
    """Twenty clients send headers and a few body bytes, then stall; others are served at once.

    aiohttp puts no time limit on reading a request body (only ``keepalive_timeout`` between
    requests): each stalled upload holds its own connection and handler until the client goes
    away, and nothing else. The deployment's nginx buffers bodies in front of the gateway.
    """
    client = await gateway()
    port = client.server.port
    stalled: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    prefix = orjson.dumps(track(event_id="slow"))[:10]
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /e HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n" + prefix
        )
        await writer.drain()
        stalled.append((reader, writer))
    try:
        await asyncio.sleep(0.3)  # every handler is now waiting for its body
        for _ in range(5):
            started = time.perf_counter()
            health = await client.get("/healthz")
            assert health.status == 200
            assert time.perf_counter() - started < 0.5
        started = time.perf_counter()
        ok = await client.post("/e", json=track(event_id="fast"))
        assert ok.status == 202
        assert time.perf_counter() - started < 1.0
        # still pending, not answered or dropped: the server waits for the rest of the body
        for reader, _ in stalled:
            assert not reader.at_eof()
        # one finishes its body after the stall and is answered normally
        reader, writer = stalled.pop()
        rest = orjson.dumps(track(event_id="slow"))[10:]
        writer.write(rest + b" " * (60000 - 10 - len(rest)))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.startswith(b"HTTP/1.1 202")
        writer.close()
    finally:
        for _, writer in stalled:
            writer.close()  # the others give up mid-body: nothing of theirs is queued
    assert sorted(e["event_id"] for e in await queued(redis)) == ["fast", "slow"]
    assert (await client.get("/healthz")).status == 200


async def test_a_client_abort_mid_body_is_not_reported_as_a_redis_outage(
    make_settings: MakeSettings, redis_url: str
) -> None:
    """As ``tt-gateway run`` serves (``web.AppRunner`` defaults: no handler cancellation)."""
    runner = web.AppRunner(create_app(make_settings(TTGW_REDIS_URL=redis_url, **env())))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with capture_logs(processors=[add_request_id]) as logs:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /e HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 5000\r\n\r\n" + orjson.dumps(track())[:20]
            )
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()  # the visitor navigated away mid-upload
            await wait_until(lambda: any(line.get("event") == "request" for line in logs))
    finally:
        await runner.cleanup()
    assert [line for line in logs if line.get("event") == "redis_unavailable"] == []
    (request,) = [line for line in logs if line.get("event") == "request"]
    assert request["status"] != 503


# === (8) header injection ======================================================================


@pytest.mark.parametrize(
    "request_id",
    [
        b"abcdefgh\r\nSet-Cookie: injected=1",
        b"abcdefgh%0d%0aSet-Cookie:%20injected=1",
        b"abcdefgh\nX-Injected: 1",
        b"abcdefgh\rX-Injected: 1",
        b"a" * 65,
        b"a" * 8000,
        b"abc defgh",
        b"abcdefgh\xc3\xa9",
        b"abcdefgh\x00",
        b"abcdefgh;x=1",
        b"<script>1</script>",
    ],
)
async def test_request_ids_cannot_inject_headers(
    gateway: Callable[..., Any], request_id: bytes
) -> None:
    client = await gateway()
    for method, target, extra in (
        ("GET", "/healthz", []),
        ("POST", "/e", [("Content-Type", "application/json")]),
        ("GET", "/v1/admin/stats", []),  # a 401
        ("GET", "/nowhere", []),  # a 404 raised as an HTTPException
    ):
        request = raw_request(
            method,
            target,
            [*extra, ("X-Request-ID", request_id)],
            orjson.dumps(track()) if method == "POST" else b"",
        )
        answer = await raw_exchange(client.server.port, request)
        assert answer.status < 500, (target, answer)
        assert not answer.names & {"x-injected", "injected"}
        assert not [c for c in answer.all("Set-Cookie") if "injected" in c]
        if answer.status == 400:  # a request the parser refused gets no id at all
            continue
        # what the server read as the header's value: up to the first line break
        seen = re.split(rb"[\r\n]", request_id, maxsplit=1)[0]
        if re.fullmatch(rb"[A-Za-z0-9._-]{8,64}", seen):
            assert answer.get(REQUEST_ID_HEADER) == seen.decode(), answer
        else:
            assert re.fullmatch(r"[0-9a-f]{16}", answer.get(REQUEST_ID_HEADER) or ""), answer


async def test_cookie_values_cannot_inject_headers_or_attributes(
    gateway: Callable[..., Any],
) -> None:
    client = await gateway()
    signer = client.server.app[SIGNER]
    attacks = [
        b"_ttp=a\r\nSet-Cookie: injected=1",
        b"_ttp=a%0d%0aSet-Cookie:%20injected=1",
        b"_ttp=a; Path=/injected; Domain=evil.example; HttpOnly",
        b"_ttgw=x\r\n\r\nHTTP/1.1 200 OK\r\nX-Injected: 1",
        b"_ttgw_clk=E.C.P.injected\r\nX-Injected: 1",
        b'_ttp="a\\"; Secure; injected=1"',
    ]
    for attack in attacks:
        for target in ("/e", "/landing"):
            method = "POST" if target == "/e" else "GET"
            request = raw_request(
                method,
                target,
                [
                    ("Content-Type", "application/json"),
                    ("Cookie", attack),
                    ("X-Original-URI", "/?ttclid=E.C.P.ok"),
                ],
                orjson.dumps(track()) if method == "POST" else b"",
            )
            answer = await raw_exchange(client.server.port, request)
            assert answer.status in (202, 204, 400), (attack, answer)
            assert not answer.names & {"x-injected", "injected"}
            assert answer.raw_head.count(b"HTTP/1.") == 1
            for header in answer.all("Set-Cookie"):
                check_set_cookie(header, signer)
                assert "injected" not in header and "evil" not in header


# === (9) secrets and raw contact data are never stored, logged, served ========================


def read_tree(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


async def test_no_raw_contact_data_or_secret_in_redis_logs_receipts_or_metrics(
    aiohttp_client: Any,
    make_settings: MakeSettings,
    redis_url: str,
    redis: Redis,
    redis_workdir: Path,
) -> None:
    tag = secrets.token_hex(4)
    email = f"Needle.Shopper.{tag}@Example.org"
    # 06 12 …: phonenumbers calls 8 % of random 06 numbers invalid (0639, 069x), which dropped them
    digits = f"12{secrets.randbelow(10**6):06d}"
    phone, e164 = f"06 {digits[:2]} {digits[2:4]} {digits[4:6]} {digits[6:]}", f"+336{digits}"
    access_token, api_token = f"{TOKEN}-{tag}", f"api-created-access-token-{tag}"
    api_pixel = "CAPIAPIAPIAPIAPIAPI0"
    user = {"email": email, "phone": phone, "country": "FR", "first_name": f"Zebulon{tag}"}
    async with running_emulator() as tiktok:
        tiktok.state.restore(access_token, {PIXEL})
        settings = make_settings(
            **delivery_env(tiktok, redis_url, **env(TTGW_ACCESS_TOKEN=access_token))
        )
        client = await aiohttp_client(create_app(settings))
        admin = bearer(ADMIN_TOKEN)
        with capture_logs(processors=[add_request_id]) as logs:
            browser = await client.post(
                f"/e?email={email}",
                json={
                    "events": [
                        track(
                            event_id=f"b-{tag}",
                            user=user,
                            page={
                                "url": f"https://shop.main/p?email={email}&ttclid=E.C.P.{tag}",
                                "referrer": f"https://shop.main/?phone={e164}",
                            },
                        ),
                        {"type": "identify", "user": user, "user_id": f"cust-{tag}"},
                    ]
                },
            )
            assert browser.status == 202
            server = await client.post(
                "/v1/track",
                json=track(event_id=f"s-{tag}", user=user, user_id=f"cust-{tag}"),
                headers=bearer(WRITE_KEY),
            )
            assert server.status == 202
            # an integration created through the API, whose token TikTok refuses: it gets paused
            created = await client.post(
                "/v1/admin/integrations",
                headers=admin,
                json={
                    "pixel_code": api_pixel,
                    "access_token": api_token,
                    "hostnames": ["shop.api"],
                    "test_event_code": f"TEST{tag}",
                },
            )
            assert created.status == 201, await created.text()
            refused = await client.post(
                "/v1/track",
                json=track(event_id=f"a-{tag}", user=user),
                headers={"Host": "t.shop.api", **bearer(WRITE_KEY)},
            )
            assert refused.status == 202
            wrong = [
                await client.post("/v1/track", json=track(), headers=bearer(f"x{WRITE_KEY}")),
                await client.get("/v1/admin/stats", headers=bearer(f"x{ADMIN_TOKEN}")),
            ]
            assert [r.status for r in wrong] == [401, 401]
            async with running_worker(settings):
                await tiktok.state.wait_for_events(2)
                await wait_until(lambda: redis.hexists(keys.PAUSED_HASH, api_pixel))
            paths = [
                "/v1/admin/integrations",
                "/v1/admin/stats",
                "/v1/admin/events",
                *(f"/v1/admin/events/{p}-{tag}" for p in "bsa"),
            ]
            served = {path: await (await client.get(path, headers=admin)).read() for path in paths}
            test_event = await client.post(
                "/v1/admin/test-event",
                headers=admin,
                json={"pixel": PIXEL, "test_event_code": "TEST1"},
            )
            served["test-event"] = await test_event.read()
            served["/metrics"] = await (await client.get("/metrics")).read()
        (receipt,) = orjson.loads(served[f"/v1/admin/events/b-{tag}"])["receipts"]
        assert receipt["state"] == "delivered"
        assert receipt["payload"]["user"]["email"] == [sha(email.lower())]
        assert receipt["payload"]["user"]["phone"] == [sha(e164)]  # the phone was really used
        await redis.save()
        stored = b""
        for key in await redis.keys("*"):
            stored += key + (await redis.dump(key) or b"")
        assert await redis.xlen(keys.ALERTS_STREAM) >= 1  # the pause raised an alert
        disk = read_tree(redis_workdir)
        assert f"b-{tag}".encode() in disk  # the AOF really holds this run's writes
        log_text = orjson.dumps(logs, default=str)
        assert any(line.get("event") == "request" for line in logs)
    needles = {
        "email": email,
        "email lowercased": email.lower(),
        "email local part": f"shopper.{tag}",
        "phone": phone,
        "phone E.164": e164,
        "phone digits": f"6{digits}",
        "name": f"Zebulon{tag}",
        "customer id": f"cust-{tag}",
        "admin token": ADMIN_TOKEN,
        "write key": WRITE_KEY,
        "secret key": SECRET_KEY,
        "access token": access_token,
        "api access token": api_token,
    }
    places = {"redis": stored, "redis files": disk, "logs": log_text, **served}
    leaks = [
        (what, where)
        for what, needle in needles.items()
        for where, haystack in places.items()
        if needle.lower().encode() in haystack.lower()
    ]
    assert leaks == []
    assert sha(email.lower()).encode() in stored  # the hashed form is there instead
