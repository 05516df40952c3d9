"""Ingest over many inputs: only 2xx/4xx, queued events valid for TikTok, no raw PII stored."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from structlog.testing import capture_logs

from gateway.logs import add_request_id
from gateway.settings import Settings
from gateway.store import keys
from gateway.tiktok.validation import DefaultLimits, validate_body
from tests.ingest_support import GatewayFactory, make_gateway, queued, track

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
envelope_keys = st.sampled_from(
    ["type", "event", "event_id", "timestamp", "user", "properties", "page", "consent",
     "anonymous_id", "user_id", "context", "traits", "events", "limited_data_use"]
)  # fmt: skip
envelopes = st.dictionaries(envelope_keys, json_values, max_size=8) | json_values


@pytest.fixture
def gateway(
    aiohttp_client, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    return make_gateway(aiohttp_client, make_settings, redis_url)


def read_tree(root: Path) -> bytes:
    """Every file under ``root`` (the Redis AOF and RDB), concatenated."""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def examples(strategy: st.SearchStrategy[object], count: int) -> list[object]:
    """Draw ``count`` examples (hypothesis drives a plain function; the posting is async)."""
    drawn: list[object] = []

    @settings(max_examples=count, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    @given(strategy)
    def draw(value: object) -> None:
        drawn.append(value)

    draw()
    return drawn


names = st.sampled_from(
    ["Purchase", "CompletePayment", "AddToCart", "ViewContent", "Order Completed", "Product Added",
     "Products Searched", "Checkout", "newsletter_signup", "Lead Generated"]
)  # fmt: skip
emails = st.sampled_from(["a@b.com", " MiXed@Example.ORG ", "bad-email", "x" * 64])
phones = st.sampled_from(["+33 6 12 34 56 78", "(213) 373-4253", "07911 123456", "12", ""])
countries = st.sampled_from([None, "FR", "US", "GB", "zz"])
contents = st.lists(
    st.fixed_dictionaries(
        {"content_id": st.integers(1, 10**6) | st.text("ABC0123-", min_size=1, max_size=12)},
        optional={"price": st.floats(0, 10_000), "quantity": st.integers(0, 20),
                  "content_name": st.text(min_size=1, max_size=20)},
    ),
    max_size=4,
)  # fmt: skip
valid_events = st.builds(
    lambda name, email, phone, country, items, value, event_id, consent: track(
        name,
        **({"event_id": event_id} if event_id is not None else {}),
        user={"email": email, "phone": phone, **({"country": country} if country else {})},
        properties={"contents": items, "currency": "EUR", **({"value": value} if value else {})},
        **({"consent": {"ad_user_data": consent}} if consent else {}),
    ),
    names, emails, phones, countries, contents,
    st.none() | st.floats(0, 10_000),
    st.none() | st.text(min_size=1, max_size=30) | st.integers(0, 10**12),
    st.none() | st.sampled_from(["granted", "denied"]),
)  # fmt: skip


async def test_every_queued_event_is_valid_for_tiktok(
    gateway: GatewayFactory, redis: Redis
) -> None:
    """What ingest queues passes the strict Events API rules (the emulator's), whatever came in."""
    client = await gateway()
    for events in examples(st.lists(valid_events, min_size=1, max_size=10), 60):
        response = await client.post("/e", json={"events": events})
        assert response.status in (202, 400), await response.text()
    entries = await queued(redis)
    assert len(entries) > 30
    data = [entry["data"] for entry in entries]
    for start in range(0, len(data), 1000):
        body = {"event_source": "web", "event_source_id": "SANDBOX0000000000000",
                "data": data[start : start + 1000]}  # fmt: skip
        assert validate_body(orjson.loads(orjson.dumps(body)), DefaultLimits(), time.time()) is None


async def test_raw_email_and_phone_never_reach_redis_or_logs(
    gateway: GatewayFactory, redis: Redis, redis_workdir: Path
) -> None:
    raw_phone = "+33 6 98 76 54 32"
    raw_email_lower = "secret.shopper@example.net"
    client = await gateway()
    from gateway.appkeys import SETTINGS

    auth = {"Authorization": f"Bearer {client.server.app[SETTINGS].write_key}"}
    user = {"email": "Secret.Shopper@Example.NET", "phone": raw_phone, "first_name": "Zebulon"}
    with capture_logs(processors=[add_request_id]) as logs:
        await client.post("/e", json={"events": [
            track(event_id="p1", user=user),
            {"type": "identify", "user": user, "user_id": "cust-secret-77"},
            track(event_id="p2", user={**user, "ip": "bad ip"}),  # a warning that echoes no PII
        ]})  # fmt: skip
        await client.post("/v1/track", json=track(event_id="p3", user=user), headers=auth)
        await client.get(
            "/landing", headers={"X-Original-URI": f"/?ttclid=E.C.P.x&email={raw_email_lower}"}
        )
    await redis.save()  # the RDB snapshot too, besides the AOF's command log
    assert await redis.xlen(keys.EVENTS_STREAM) == 3
    needles = [raw_email_lower, "Secret.Shopper", "98 76 54 32", "+33698765432", "33698765432",
               "Zebulon", "zebulon"]  # fmt: skip
    dump = b""
    for key in await redis.keys("*"):
        dump += key + orjson.dumps(await redis.dump(key), default=repr)
    disk = read_tree(redis_workdir)
    assert b"ttgw:{q}:events" in disk  # the AOF really holds what this test queued
    text = orjson.dumps(logs, default=str)
    for needle in needles:
        assert needle.encode() not in disk, needle
        assert needle.encode() not in text, needle
    assert b"cust-secret-77" not in disk  # customer ids are hashed too


async def test_arbitrary_json_gets_only_2xx_or_4xx(gateway: GatewayFactory) -> None:
    client = await gateway()
    from gateway.appkeys import SETTINGS

    auth = {"Authorization": f"Bearer {client.server.app[SETTINGS].write_key}"}
    statuses: list[int] = []
    mutated = st.builds(
        lambda base, extra: {**base, **extra},
        valid_events,
        st.dictionaries(envelope_keys, json_values, max_size=2),
    )
    bodies = envelopes | mutated | st.builds(lambda e: {"events": e}, st.lists(mutated, max_size=3))
    for body in examples(bodies, 200):
        payload = orjson.dumps(body)
        for path, headers in (("/e", {}), ("/v1/track", auth)):
            response = await client.post(
                path, data=payload, headers={"Content-Type": "application/json", **headers}
            )
            await response.read()
            assert 200 <= response.status < 300 or 400 <= response.status < 500, (path, payload)
            statuses.append(response.status)
    assert {202, 400} <= set(statuses)  # both kinds really happened
    assert (await client.get("/healthz")).status == 200
