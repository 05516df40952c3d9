"""POST /e and POST /v1/track through real HTTP, against the real test Redis."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from gateway.delivery.receipts import receipt
from gateway.operate.metrics import IDENTIFIERS_DROPPED
from gateway.settings import Settings
from gateway.store import keys
from tests.ingest_support import (
    EMAIL,
    EMAIL_HASH,
    PHONE,
    PHONE_HASH,
    PIXEL,
    GatewayFactory,
    make_gateway,
    queued,
    set_cookies,
    sha,
    track,
)
from tests.support import free_port


@pytest.fixture
def gateway(
    aiohttp_client, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    return make_gateway(aiohttp_client, make_settings, redis_url)


async def write_key(client) -> dict[str, str]:
    from gateway.appkeys import SETTINGS

    return {"Authorization": f"Bearer {client.server.app[SETTINGS].write_key}"}


# --- envelope, batches, limits --------------------------------------------------------------


async def test_one_event_is_queued_with_hashed_identifiers(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    body = track(
        "Purchase",
        event_id="ord_84213",
        user={"email": f"  {EMAIL} ", "phone": PHONE, "country": "FR"},
        properties={"value": 184.5, "currency": "EUR", "order_id": 84213,
                    "contents": [{"content_id": 2481, "quantity": 1, "price": 129.0}]},
        page={"url": "https://store.example/checkout/thank-you"},
    )  # fmt: skip
    response = await client.post("/e", json=body)
    assert response.status == 202
    answer = await response.json()
    # the browser's own signed visitor, the cookie's value (c-shopify.js writes it into the cart)
    assert set_cookies(response)["_ttgw"].startswith(f"_ttgw={answer.pop('visitor')};")
    assert answer == {
        "accepted": [
            {"index": 0, "event": "Purchase", "event_id": "ord_84213", "status": "queued"}
        ],
        "errors": [],
    }
    (entry,) = await queued(redis)
    assert (entry["pixel"], entry["event"], entry["event_id"]) == (
        "SANDBOX0000000000000",
        "Purchase",
        "ord_84213",
    )
    event = entry["data"]
    assert event["user"]["email"] == [EMAIL_HASH]
    assert event["user"]["phone"] == [PHONE_HASH]
    assert event["user"]["country"] == "fr"
    assert event["properties"]["contents"][0]["content_id"] == "2481"
    assert event["properties"]["order_id"] == "84213"
    assert event["page"]["url"] == "https://store.example/checkout/thank-you"
    assert isinstance(event["event_time"], int)
    assert event["limited_data_use"] is False


async def test_a_batch_keeps_its_good_events(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    events = [
        track("AddToCart", event_id="a1"),
        track("Not A Valid Name!"),
        track("ViewContent", event_id="v1", user={"ip": "not-an-ip"}),
        track("Order Completed", properties={"order_id": "77", "revenue": 10, "currency": "USD"}),
    ]
    response = await client.post("/e", json={"events": events})
    assert response.status == 202
    answer = await response.json()
    assert [(a["index"], a["event"], a["event_id"], a["status"]) for a in answer["accepted"]] == [
        (0, "AddToCart", "a1", "queued"),
        (2, "ViewContent", "v1", "queued"),  # a field it cannot use is dropped, the event kept
        (3, "Purchase", "ord_77", "queued"),
    ]
    assert [(e["index"], e["field"]) for e in answer["errors"]] == [(1, "events[1].event")]
    assert [w["field"] for w in answer["accepted"][1]["warnings"]] == ["events[2].user.ip"]
    assert "warnings" not in answer["accepted"][0]
    assert [e["event_id"] for e in await queued(redis)] == ["a1", "v1", "ord_77"]


async def test_all_bad_is_400_naming_the_field(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    response = await client.post("/e", json=track("Purchase", timestamp="yesterday"))
    assert response.status == 400
    answer = await response.json()
    assert answer["field"] == "timestamp"
    assert "ISO-8601" in answer["error"]
    assert await redis.xlen(keys.EVENTS_STREAM) == 0


@pytest.mark.parametrize(
    ("path", "data", "content_type", "status", "field"),
    [
        ("/e", b"{not json", "application/json", 400, "body"),
        ("/e", b"[1, 2]", "application/json", 400, "body"),
        ("/e", b'{"events": []}', "application/json", 400, "events"),
        ("/e", b'{"events": {}}', "application/json", 400, "events"),
        ("/e", b"<event/>", "application/xml", 415, "Content-Type"),
        ("/e", b"x" * (64 * 1024 + 1), "text/plain", 413, "body"),
        ("/v1/track", b'{"event": "Purchase"}', "text/plain", 415, "Content-Type"),
        ("/v1/track", b"x" * (1024 * 1024 + 1), "application/json", 413, "body"),
    ],
)
async def test_bad_bodies_are_4xx_with_the_field(
    gateway: GatewayFactory, path: str, data: bytes, content_type: str, status: int, field: str
) -> None:
    client = await gateway()
    headers = {"Content-Type": content_type, **(await write_key(client))}
    response = await client.post(path, data=io.BytesIO(data), headers=headers)
    assert response.status == status
    assert (await response.json())["field"] == field
    assert (await client.get("/healthz")).status == 200


async def test_send_beacon_text_plain_is_accepted(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    data = orjson.dumps(track("ViewContent", event_id="beacon-1"))
    response = await client.post(
        "/e", data=data, headers={"Content-Type": "text/plain;charset=UTF-8"}
    )
    assert response.status == 202
    assert [e["event_id"] for e in await queued(redis)] == ["beacon-1"]


async def test_a_1000_event_batch_is_accepted_and_1001_is_not(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    headers = await write_key(client)
    events = [
        track("AddToCart", event_id=f"e{i}", user={"email": f"u{i}@example.com"})
        for i in range(1000)
    ]
    response = await client.post("/v1/track", json={"events": events}, headers=headers)
    assert response.status == 202
    assert len((await response.json())["accepted"]) == 1000
    assert await redis.xlen(keys.EVENTS_STREAM) == 1000
    too_many = await client.post(
        "/v1/track", json={"events": [*events, events[0]]}, headers=headers
    )
    assert too_many.status == 400
    assert (await too_many.json())["field"] == "events"


# --- event ids and idempotency ----------------------------------------------------------------


async def test_event_ids_are_kept_exactly_and_numbers_become_strings(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    events = [track(event_id=" Mixed Case id "), track(event_id=84213), track(event_id="84213.5")]
    answer = await (await client.post("/e", json={"events": events})).json()
    assert [a["event_id"] for a in answer["accepted"]] == [" Mixed Case id ", "84213", "84213.5"]


async def test_a_repeat_within_48h_is_a_duplicate_and_not_queued(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    event = track("Purchase", event_id="ord_1")
    first = await (await client.post("/e", json=event)).json()
    second = await (
        await client.post("/e", json={"events": [event, track("AddToCart", event_id="ord_1")]})
    ).json()
    assert first["accepted"][0]["status"] == "queued"
    assert [a["status"] for a in second["accepted"]] == ["duplicate", "queued"]  # other event name
    assert await redis.xlen(keys.EVENTS_STREAM) == 2
    # the receipt is the idempotency marker: it outlives the 48 h window
    bucket = keys.receipts_key(keys.receipt_bucket(int(time.time() * 1000)))
    assert await redis.hexists(bucket, "ord_1")
    ttl = await redis.ttl(bucket)
    assert keys.IDEMPOTENCY_TTL_S < ttl <= keys.RECEIPT_TTL_S + keys.RECEIPT_BUCKET_S
    counters = await redis.hgetall(keys.COUNTERS_HASH)
    assert counters[b"accepted"] == b"3"
    assert counters[b"duplicate"] == b"1"
    assert counters[b"queued"] == b"2"


async def test_browser_and_backend_purchase_share_the_order_event_id(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    browser = track("Purchase", properties={"order_id": "5001", "value": 5, "currency": "USD"})
    server = track("Order Completed", properties={"order_id": 5001, "total": 5, "currency": "USD"})
    a = await (await client.post("/e", json=browser)).json()
    b = await (await client.post("/v1/track", json=server, headers=await write_key(client))).json()
    assert a["accepted"][0]["event_id"] == b["accepted"][0]["event_id"] == "ord_5001"
    assert b["accepted"][0]["status"] == "duplicate"
    assert await redis.xlen(keys.EVENTS_STREAM) == 1


async def test_the_client_never_picks_the_pixel_or_token(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway(TTGW_PIXEL_CODE=PIXEL, TTGW_ACCESS_TOKEN="real-token")
    for field in ("pixel_code", "access_token", "test_event_code", "event_source_id"):
        response = await client.post("/e", json=track(**{field: "CHOSENBYCLIENT000000"}))
        assert response.status == 400
        assert (await response.json())["field"] == field
    await client.post("/e", json=track(event_id="x"))
    assert [e["pixel"] for e in await queued(redis)] == [PIXEL]


# --- /v1/track authentication and integrations ------------------------------------------------


async def test_track_needs_the_write_key(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway()
    body = track(event_id="s1")
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic abc"}):
        response = await client.post("/v1/track", json=body, headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert (await response.json())["field"] == "Authorization"
    assert await redis.xlen(keys.EVENTS_STREAM) == 0
    assert (
        await client.post("/v1/track", json=body, headers=await write_key(client))
    ).status == 202


async def test_several_pixels_map_by_host(
    gateway: GatewayFactory, redis: Redis, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        '[[integrations]]\npixel_code = "CFRFRFRFRFRFRFRFRFR0"\naccess_token = "fr"\n'
        'hostnames = ["shop.fr"]\n'
        '[[integrations]]\npixel_code = "CDEDEDEDEDEDEDEDEDE0"\naccess_token = "de"\n'
        'hostnames = ["shop.de"]\nevent_overrides = { "Order Completed" = "CompletePayment" }\n'
    )
    client = await gateway(TTGW_CONFIG=str(config))
    order = track("Order Completed", event_id="o1")
    fr = await client.post("/e", json=order, headers={"Host": "t.shop.fr"})
    de = await client.post("/e", json=order, headers={"Host": "t.shop.de:8443"})
    other = await client.post("/e", json=order, headers={"Host": "evil.example"})
    assert (fr.status, de.status, other.status) == (202, 202, 404)
    assert (await other.json())["field"] == "Host"
    assert [(e["pixel"], e["data"]["event"]) for e in await queued(redis)] == [
        ("CFRFRFRFRFRFRFRFRFR0", "Purchase"),
        ("CDEDEDEDEDEDEDEDEDE0", "CompletePayment"),  # the name sent (the queue's is canonical)
    ]


async def test_purchase_name_is_configurable(gateway: GatewayFactory, redis: Redis) -> None:
    client = await gateway(TTGW_PURCHASE_EVENT="CompletePayment")
    answer = await (await client.post("/e", json=track("Order Completed", event_id="1"))).json()
    assert answer["accepted"][0]["event"] == "CompletePayment"
    answer = await (await client.post("/e", json=track("Purchase", event_id="2"))).json()
    assert answer["accepted"][0]["event"] == "Purchase"  # TikTok names pass exactly as given


# --- durability -------------------------------------------------------------------------------


async def test_a_full_queue_answers_503_and_drops_nothing(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway(TTGW_QUEUE_MAX_EVENTS="2")
    events = [track(event_id=f"q{i}") for i in range(3)]
    response = await client.post("/e", json={"events": events})
    assert response.status == 503
    assert response.headers["Retry-After"].isdigit()
    assert await redis.xlen(keys.EVENTS_STREAM) == 2
    # the client retries the same request later: the queued ones are duplicates, nothing is lost
    await redis.xtrim(keys.EVENTS_STREAM, maxlen=0)
    retry = await (await client.post("/e", json={"events": events})).json()
    assert [a["status"] for a in retry["accepted"]] == ["duplicate", "duplicate", "queued"]


async def test_redis_out_of_memory_is_503_and_the_process_stays_up(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    await client.post("/e", json=track(event_id="before"))  # scripts loaded, stream exists
    await redis.config_set("maxmemory", "1")  # noeviction: every write is refused with OOM
    try:
        response = await client.post("/e", json=track(event_id="oom"))
        assert response.status == 503
        assert "Retry-After" in response.headers
    finally:
        await redis.config_set("maxmemory", "0")
    assert (await client.post("/e", json=track(event_id="after"))).status == 202
    assert [e["event_id"] for e in await queued(redis)] == ["before", "after"]


async def test_redis_down_is_503_never_202(
    aiohttp_client, make_settings: Callable[..., Settings]
) -> None:
    from gateway.app import create_app

    settings = make_settings(TTGW_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = await aiohttp_client(create_app(settings))
    response = await client.post("/e", json=track(event_id="x"))
    assert response.status == 503
    assert "Retry-After" in response.headers
    headers = {"Authorization": f"Bearer {settings.write_key}"}
    assert (await client.post("/v1/track", json=track(event_id="x"), headers=headers)).status == 503
    assert (await client.get("/healthz")).status == 200


# --- consent ----------------------------------------------------------------------------------


async def test_ad_user_data_denied_strips_identifiers_and_sets_ldu(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    body = track(
        "Purchase",
        event_id="c1",
        user_id="cust_1",
        user={"email": EMAIL, "phone": PHONE, "country": "FR", "first_name": "Jane"},
        consent={"ad_user_data": "denied", "ad_personalization": "granted"},
    )
    assert (await client.post("/e", json=body)).status == 202
    (entry,) = await queued(redis)
    user = entry["data"]["user"]
    assert not {"email", "phone", "external_id", "first_name"} & set(user)
    assert entry["data"]["limited_data_use"] is True
    assert "ip" in user and "ttp" in user  # not personal data in TikTok's consent model
    assert await redis.keys(f"{keys.PREFIX}:{{id}}:link:*") == []  # nothing linked either


async def test_required_consent_not_granted_is_suppressed_with_a_receipt(
    gateway: GatewayFactory, redis: Redis, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        '[[integrations]]\npixel_code = "CXXXXXXXXXXXXXXXXXX0"\naccess_token = "t"\n'
        'required_consent = ["ad_storage"]\n'
    )
    client = await gateway(TTGW_CONFIG=str(config))
    events = [
        track(event_id="no-state"),
        track(event_id="denied", consent={"ad_storage": "denied"}),
        track(event_id="granted", consent={"ad_storage": "granted"}),
    ]
    answer = await (await client.post("/e", json={"events": events})).json()
    assert [a["status"] for a in answer["accepted"]] == ["suppressed", "suppressed", "queued"]
    assert [e["event_id"] for e in await queued(redis)] == ["granted"]
    found = await receipt(redis, PIXEL, "Purchase", "denied")
    assert found is not None
    assert (found["state"], found["reason"]) == ("suppressed", "consent")
    assert (await redis.hgetall(keys.COUNTERS_HASH))[b"suppressed"] == b"2"


# --- CORS ---------------------------------------------------------------------------------------


async def test_cors_allows_only_configured_origins(gateway: GatewayFactory) -> None:
    client = await gateway(TTGW_ALLOWED_ORIGINS="https://shop.example")
    ok = await client.post(
        "/e", json=track(event_id="o"), headers={"Origin": "https://shop.example"}
    )
    assert ok.status == 202
    assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert ok.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in ok.headers["Vary"]
    bad = await client.post(
        "/e", json=track(event_id="b"), headers={"Origin": "https://evil.example"}
    )
    assert bad.status == 403
    assert "Access-Control-Allow-Origin" not in bad.headers
    assert (await bad.json())["field"] == "Origin"
    pre = await client.options("/e", headers={"Origin": "https://shop.example",
                                              "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert int(pre.headers["Access-Control-Max-Age"]) >= 600
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    denied = await client.options("/e", headers={"Origin": "https://evil.example"})
    assert denied.status == 403
    same = await client.post("/e", json=track(event_id="s"),
                             headers={"Origin": str(client.make_url("")).rstrip("/")})  # fmt: skip
    assert same.status == 202


# --- IP and user agent --------------------------------------------------------------------------


async def test_xff_is_believed_only_from_trusted_proxies(
    gateway: GatewayFactory, redis: Redis
) -> None:
    trusting = await gateway()  # loopback (the test client) is a trusted proxy by default
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.24", "User-Agent": "Mozilla/5.0 (iPhone)"}
    await trusting.post("/e", json=track(event_id="t1"), headers=headers)
    untrusting = await gateway(TTGW_TRUSTED_PROXIES="10.0.0.0/8")
    await untrusting.post("/e", json=track(event_id="t2"), headers=headers)
    spoofing = track(event_id="t3", user={"ip": "8.8.8.8", "user_agent": "Spoofer/1.0"})
    await untrusting.post("/e", json=spoofing, headers={"User-Agent": "Mozilla/5.0 (Real)"})
    users = [e["data"]["user"] for e in await queued(redis)]
    assert [u["ip"] for u in users] == ["203.0.113.24", "127.0.0.1", "127.0.0.1"]
    assert users[0]["user_agent"] == "Mozilla/5.0 (iPhone)"
    assert users[2]["user_agent"] == "Mozilla/5.0 (Real)"  # the page cannot claim another browser


async def test_phone_region_comes_from_the_event_country_then_the_integration(
    gateway: GatewayFactory, redis: Redis, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        '[[integrations]]\npixel_code = "CXXXXXXXXXXXXXXXXXX0"\naccess_token = "t"\n'
        'default_phone_region = "GB"\n'
    )
    client = await gateway(TTGW_CONFIG=str(config))
    dropped_before = IDENTIFIERS_DROPPED.labels("phone")._value.get()
    events = [
        track(event_id="gb", user={"phone": "07911 123456"}),
        track(event_id="fr", user={"phone": PHONE, "country": "FR"}),
        track(event_id="bad", user={"phone": "12", "email": "not-an-email"}),
    ]
    await client.post("/e", json={"events": events})
    users = {e["event_id"]: e["data"]["user"] for e in await queued(redis)}
    assert users["gb"]["phone"] == [sha("+447911123456")]
    assert users["fr"]["phone"] == [PHONE_HASH]
    assert "phone" not in users["bad"] and "email" not in users["bad"]  # dropped, not hashed
    assert IDENTIFIERS_DROPPED.labels("phone")._value.get() == dropped_before + 1  # and counted


async def test_time_is_clamped_and_old_events_refused(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    now = int(time.time())
    events = [
        track(event_id="future", timestamp=now + 120),  # a clock a little ahead: clamped
        track(event_id="ms", timestamp=(now - 60) * 1000),
        track(event_id="old", timestamp=now - 8 * 86400),
        track(event_id="far", timestamp=now + 2 * 86400),  # no clock is that far ahead
    ]
    answer = await (await client.post("/e", json={"events": events})).json()
    assert [e["field"] for e in answer["errors"]] == ["events[2].timestamp", "events[3].timestamp"]
    times = {e["event_id"]: e["data"]["event_time"] for e in await queued(redis)}
    assert now <= times["future"] <= now + 5
    assert times["ms"] == now - 60


async def test_more_requests_in_flight_than_redis_connections_all_succeed(
    gateway: GatewayFactory, redis: Redis
) -> None:
    """The pool waits for a free connection instead of failing (bench: 503s above 64)."""
    import asyncio

    client = await gateway()
    responses = await asyncio.gather(
        *(client.post("/e", json=track(event_id=f"burst-{i}")) for i in range(200))
    )
    assert [r.status for r in responses] == [202] * 200
    assert await redis.xlen(keys.EVENTS_STREAM) == 200


async def test_a_track_event_without_a_name_is_told_the_name_is_required(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    nameless = {"type": "track", "event_id": "n1"}
    answer = await client.post("/e", json=nameless)
    assert answer.status == 400
    assert await answer.json() == {
        "error": "is required for a track event (its name, e.g. Purchase)",
        "field": "event",
        "errors": [
            {
                "index": 0,
                "error": "is required for a track event (its name, e.g. Purchase)",
                "field": "event",
            }
        ],
        "accepted": [],
    }
    batch = {"events": [{**nameless, "event": ""}, {**nameless, "event": 5}, track()]}
    errors = (await (await client.post("/e", json=batch)).json())["errors"]
    assert [(e["field"], e["error"]) for e in errors] == [
        ("events[0].event", "is required for a track event (its name, e.g. Purchase)"),
        ("events[1].event", "must be a string"),
    ]
    assert await redis.xlen(keys.EVENTS_STREAM) == 1
