"""E-mail addresses and phone numbers in page URLs and referrers: query, fragment and path.

DESIGN §1: raw email and phone are never written to Redis, a log or a receipt, including those
that ride in a page URL or referrer.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from structlog.testing import capture_logs

from gateway.identity.redaction import REDACTED_SEGMENT, redact_url
from gateway.ingest.build import click_from_page
from gateway.ingest.landing import click_from_uri
from gateway.logs import add_request_id
from gateway.settings import Settings
from tests.ingest_support import TTCLID, GatewayFactory, make_gateway, queued, track

SHOP = "https://shop.example"
R = REDACTED_SEGMENT


def fully_decoded(text: str) -> str:
    for _ in range(4):
        text = unquote(text)
    return text


# Each of these went to TikTok and Redis verbatim before (identity.redact_url read the query only,
# and decoded it once).
LEAKS = [
    # a hash router's query, as in the issue
    (f"{SHOP}/app#/order/confirm?email=jane.doe@example.com&phone=+14155552671",
     f"{SHOP}/app#/order/confirm"),
    (f"{SHOP}/app#/order/confirm?step=2&email=jane.doe@example.com&phone=+14155552671&ok=1",
     f"{SHOP}/app#/order/confirm?step=2&ok=1"),
    (f"{SHOP}/?utm_source=tiktok#/thanks?customer_email=jane.doe%40example.com",
     f"{SHOP}/?utm_source=tiktok#/thanks"),
    # a hash router's path, and a fragment that is only a parameter list
    (f"{SHOP}/#/account/jane.doe@example.com/orders", f"{SHOP}/#/account/{R}/orders"),
    (f"{SHOP}/#!/u/jane.doe%40example.com", f"{SHOP}/#!/u/{R}"),
    (f"{SHOP}/p#phone=4155552671", f"{SHOP}/p#{R}"),
    # path segments, plain and encoded once, twice, three times
    (f"{SHOP}/account/jane.doe@example.com", f"{SHOP}/account/{R}"),
    (f"{SHOP}/account/jane.doe@example.com?ttclid={TTCLID}",
     f"{SHOP}/account/{R}?ttclid={TTCLID}"),
    (f"{SHOP}/account/jane.doe%40example.com/orders", f"{SHOP}/account/{R}/orders"),
    (f"{SHOP}/u/a%2540b.com", f"{SHOP}/u/{R}"),
    (f"{SHOP}/u/a%252540b.com/x", f"{SHOP}/u/{R}/x"),
    (f"{SHOP}/profile;email=jane", f"{SHOP}/{R}"),
    # double-encoded in the query: parse_qsl decodes only once
    (f"{SHOP}/?r=a%2540b.com&ttclid={TTCLID}", f"{SHOP}/?ttclid={TTCLID}"),
    (f"{SHOP}/?r=jane.doe%252540example.com&sku=12", f"{SHOP}/?sku=12"),
    # E.164 with "+" or %2B, in the path and inside a longer query value
    (f"{SHOP}/call/+14155552671", f"{SHOP}/call/{R}"),
    (f"{SHOP}/call/%2B14155552671/", f"{SHOP}/call/{R}/"),
    (f"{SHOP}/tel:+1-415-555-2671", f"{SHOP}/{R}"),
    (f"{SHOP}/c/%2B1%20(415)%20555-2671", f"{SHOP}/c/{R}"),
    (f"{SHOP}/?msg=call%20%2B14155552671%20today&utm_medium=sms", f"{SHOP}/?utm_medium=sms"),
    (f"{SHOP}/?ref=%252B14155552671&utm_source=tiktok", f"{SHOP}/?utm_source=tiktok"),
    # parameters whose name says phone, e-mail, tel or mobile
    (f"{SHOP}/?billing_phone=(415)%20555-2671&sku=12", f"{SHOP}/?sku=12"),
    (f"{SHOP}/?phoneNumber=415.555.2671x12&sku=12", f"{SHOP}/?sku=12"),
    (f"{SHOP}/?customer_tel=tel:4155552671&sku=12", f"{SHOP}/?sku=12"),
    (f"{SHOP}/?Mobile_No=tel:4155552671&sku=12", f"{SHOP}/?sku=12"),
    (f"{SHOP}/?CustomerEmail=jane.doe&sku=12", f"{SHOP}/?sku=12"),
    # a bare address as a query name
    (f"{SHOP}/?jane.doe@example.com&sku=12", f"{SHOP}/?sku=12"),
    # a referrer: webmail's search route
    ("https://mail.example.net/mail/u/0/#search/jane.doe%40example.com",
     f"https://mail.example.net/mail/u/0/#search/{R}"),
]  # fmt: skip

# Redacted before, and still.
STILL_REDACTED = [
    (f"{SHOP}/?email=a%40b.com&ttclid={TTCLID}", f"{SHOP}/?ttclid={TTCLID}"),
    (f"{SHOP}/?u=jane@example.com&sku=12", f"{SHOP}/?sku=12"),
    (f"{SHOP}/?Phone=0612345678&id=7", f"{SHOP}/?id=7"),
    (f"{SHOP}/?ref=+14155552671&id=7", f"{SHOP}/?id=7"),
    (f"{SHOP}/?ref=%2B14155552671&id=7", f"{SHOP}/?id=7"),
    (f"{SHOP}/?ref=%2B33%206%2012%2034%2056%2078", f"{SHOP}/"),
]

# Nothing here is contact data: it must come back exactly as given.
UNCHANGED = [
    f"{SHOP}/products/blue-shirt?color=blue&size=m",
    f"{SHOP}/p?ttclid={TTCLID}&utm_source=tiktok&utm_medium=paid&utm_campaign=spring%20sale"
    "&utm_content=%F0%9F%94%A5&utm_term=red+shoes",
    f"{SHOP}/orders/100000123456",
    f"{SHOP}/orders/100000123456/receipt?lang=fr",
    f"{SHOP}/blog/2024-01-15/launch",
    f"{SHOP}/search?q=red+shoes+size+10&page=2",
    f"{SHOP}/p/shoe+10000012",
    f"{SHOP}/hotels/paris?hotel=7&telemetry=off",
    f"{SHOP}/#reviews",
    f"{SHOP}/app#/products/42?tab=details",
    f"{SHOP}/app#/x?",
    "https://www.tiktok.com/@shopname/video/7234567890123456789",
    "https://cdn.jsdelivr.net/npm/react@18.2.0/index.js",
    "android-app://com.zhiliaoapp.musically/",
    "https://www.google.com/",
]


@pytest.mark.parametrize(("url", "expected"), LEAKS)
def test_contact_data_in_fragment_path_and_encodings_is_redacted(url: str, expected: str) -> None:
    redacted = redact_url(url)
    assert redacted == expected
    decoded = fully_decoded(redacted)
    assert "jane" not in decoded
    assert not re.search(r"415\D{0,2}555\D?2671", decoded)
    assert redact_url(redacted) == redacted


@pytest.mark.parametrize(("url", "expected"), STILL_REDACTED)
def test_query_redaction_is_kept(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize("url", UNCHANGED)
def test_urls_without_contact_data_are_untouched(url: str) -> None:
    assert redact_url(url) == url


ttclids = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", min_size=16,
                  max_size=120).filter(lambda t: t.strip("._-") != "")  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(ttclids)
def test_the_ttclid_survives_redaction_and_is_still_captured(ttclid: str) -> None:
    url = (
        f"{SHOP}/account/jane.doe@example.com?utm_source=tiktok&ttclid={ttclid}"
        "#/confirm?email=jane.doe%2540example.com&phone=%2B14155552671"
    )
    redacted = redact_url(url)
    assert redacted == f"{SHOP}/account/{R}?utm_source=tiktok&ttclid={ttclid}#/confirm"
    click = click_from_page(redacted, None, 1_700_000_000_000)
    assert click is not None and click.ttclid == ttclid


def test_the_landing_capture_redacts_its_path_and_referrer() -> None:
    click = click_from_uri(
        f"/account/jane.doe%40example.com?ttclid={TTCLID}",
        SHOP,
        "https://mail.example.net/#inbox/jane.doe@example.com?phone=%2B14155552671",
        1_700_000_000_000,
    )
    assert click is not None and click.ttclid == TTCLID
    assert click.landing_url == f"{SHOP}/account/{R}?ttclid={TTCLID}"
    assert click.referrer == f"https://mail.example.net/#inbox/{R}"


# --- end to end: the real app on the session's Redis, whose AOF is read back -----------------


@pytest.fixture
def gateway(
    aiohttp_client, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    return make_gateway(aiohttp_client, make_settings, redis_url)


def read_tree(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


async def test_emails_and_phones_in_page_urls_never_reach_redis(
    gateway: GatewayFactory, redis: Redis, redis_workdir: Path
) -> None:
    tag = secrets.token_hex(5)  # the AOF is shared by the session: find only this run's writes
    local = f"jane.doe.{tag}"
    email = f"{local}@example.com"
    digits = f"4479{secrets.randbelow(10**8):08d}"
    page_urls = [
        f"{SHOP}/app?ttclid={TTCLID}#/order/confirm?email={email}&phone=+{digits}",
        f"{SHOP}/account/{local}%40example.com/orders#/x?tel=%2B{digits}",
        f"{SHOP}/u/{local}%2540example.com?utm_source=tiktok#{email}",
    ]
    referrer = f"https://mail.example.net/#inbox/{local}%40example.com?phone=%2B{digits}"
    client = await gateway()
    from gateway.appkeys import SETTINGS

    auth = {"Authorization": f"Bearer {client.server.app[SETTINGS].write_key}"}
    events = [
        track(event_id=f"e{i}-{tag}", page={"url": url, "referrer": referrer})
        for i, url in enumerate(page_urls)
    ]
    with capture_logs(processors=[add_request_id]) as logs:
        browser = await client.post("/e", json={"events": events})
        assert browser.status == 202, await browser.text()
        backend = await client.post(
            "/v1/track",
            json=track(event_id=f"t-{tag}", page={"url": page_urls[0], "referrer": referrer}),
            headers=auth,
        )
        assert backend.status == 202, await backend.text()
        landing = await client.get(
            "/landing",
            headers={
                "X-Original-URI": f"/account/{local}%40example.com?ttclid={TTCLID}",
                "Referer": referrer,
            },
        )
        assert landing.status == 204

    await redis.save()  # the RDB snapshot too, besides the AOF's command log
    stored = b""
    for key in await redis.keys("*"):
        stored += key + orjson.dumps(await redis.dump(key), default=repr)
    disk = read_tree(redis_workdir)
    assert f"e2-{tag}".encode() in disk  # the files really hold this run's writes
    assert {line.get("path") for line in logs} >= {"/e", "/v1/track", "/landing"}  # logged
    logged = orjson.dumps(logs, default=str)
    for needle in (local, digits):
        assert needle.encode() not in disk, needle
        assert needle.encode() not in stored, needle
        assert needle.encode() not in logged, needle

    entries = {entry["event_id"]: entry["data"] for entry in await queued(redis)}
    assert set(entries) == {f"e0-{tag}", f"e1-{tag}", f"e2-{tag}", f"t-{tag}"}
    assert entries[f"e0-{tag}"]["page"] == {
        "url": f"{SHOP}/app?ttclid={TTCLID}#/order/confirm",
        "referrer": f"https://mail.example.net/#inbox/{R}",
    }
    assert entries[f"e0-{tag}"]["user"]["ttclid"] == TTCLID  # the click in the URL still counts
    assert entries[f"e1-{tag}"]["page"]["url"] == f"{SHOP}/account/{R}/orders#/x"
    assert entries[f"e2-{tag}"]["page"]["url"] == f"{SHOP}/u/{R}?utm_source=tiktok#{R}"
    assert entries[f"t-{tag}"]["page"]["url"] == f"{SHOP}/app?ttclid={TTCLID}#/order/confirm"


def test_an_empty_authority_stays_empty_after_redaction() -> None:
    """Found by the fuzzer: ``////x?…@`` lost its empty authority, and its path read as a host."""
    url = "////;;]x;//$+'@?+\x00)@"
    redacted = redact_url(url)
    before, after = urlsplit(url), urlsplit(redacted)
    assert (after.scheme, after.netloc) == (before.scheme, before.netloc)
    assert redact_url(redacted) == redacted
