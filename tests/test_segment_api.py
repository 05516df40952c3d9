"""The Segment HTTP Tracking API: /v1/batch and single messages, over real HTTP, and the real SDKs.

The first part reads messages into envelopes (pure). The second posts to a real gateway on the
test Redis: auth, gzip, the shape rule at ``/v1/track``, Segment's 200, bad messages in a batch,
idempotency by ``messageId``. The last drives the real SDKs — ``segment-analytics-python``,
``rudder-sdk-python`` and ``@segment/analytics-node`` (``tests/sdk_node``, run with ``node``) —
at a gateway delivering to the TikTok emulator, through a stand-in proxy that passes the SDK's
first request on and answers it 503, so the SDK sends it again: each event reaches TikTok once.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from structlog.testing import capture_logs

from gateway.identity.consent import decide
from gateway.identity.cookies import VISITOR_COOKIE
from gateway.identity.visitors import Session
from gateway.ingest.build import Origin, build_event, encode, hash_user
from gateway.ingest.envelope import EventType, derive_event_id, parse_event
from gateway.ingest.fields import FieldError
from gateway.ingest.name_table import NameTable
from gateway.ingest.segment import Translation, batch_messages, is_message, to_envelope
from gateway.settings import Settings
from gateway.store import keys
from tests.delivery_support import delivery_env, running_emulator, running_worker, wait_until
from tests.ingest_support import (
    EMAIL,
    EMAIL_HASH,
    make_gateway,
    queued,
    set_cookies,
    sha,
    track,
)
from tests.test_fuzz import (
    Fields,
    draw,
    fuzz_settings,
    ids,
    ips,
    json_values,
    numbers,
    obj,
    one_of_fields,
    scalars,
    text,
    urls,
)

WRITE_KEY = "ttw_segment_" + "k" * 24


def basic(user: str, password: str = "") -> str:
    """An HTTP Basic ``Authorization`` value, as the SDKs send the write key."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


BASIC = {"Authorization": basic(WRITE_KEY)}
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
NOW = time.time()
NAMES = NameTable()
SDK_NODE = Path(__file__).parent / "sdk_node"


def envelope_of(message: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    translation = to_envelope(message, NOW, kind)
    assert translation is not None
    return translation.envelope


# === reading a message ==========================================================================


def test_a_track_message_becomes_our_envelope() -> None:
    message = {
        "type": "track",
        "event": "Order Completed",
        "userId": "cust-1",
        "anonymousId": "ajs-anon-1",
        "messageId": "msg-1",
        "timestamp": "2026-01-02T03:04:05.678Z",
        "context": {
            "ip": "203.0.113.9",
            "userAgent": UA,
            "locale": "fr-FR",
            "page": {
                "url": "https://shop.example/thanks?ttclid=E.C.P.abc",
                "referrer": "https://x.example/",
            },
            "traits": {
                "email": EMAIL,
                "phone": "+33612345678",
                "firstName": "Jane",
                "lastName": "Doe",
                "address": {
                    "postalCode": "75001",
                    "city": "Paris",
                    "state": "IDF",
                    "country": "FR",
                },
            },
        },
        "properties": {
            "order_id": "1001",
            "total": 184.5,
            "currency": "EUR",
            "products": [{"product_id": "SKU-1", "price": 184.5, "quantity": 1}],
        },
        "integrations": {"All": True},
        "writeKey": "not-read",
    }
    assert envelope_of(message) == {
        "type": "track",
        "event": "Order Completed",
        "user_id": "cust-1",
        "anonymous_id": "ajs-anon-1",
        "messageId": "msg-1",
        "timestamp": "2026-01-02T03:04:05.678Z",
        "user": {
            "email": EMAIL,
            "phone": "+33612345678",
            "first_name": "Jane",
            "last_name": "Doe",
            "zip_code": "75001",
            "city": "Paris",
            "state": "IDF",
            "country": "FR",
            "ip": "203.0.113.9",
            "user_agent": UA,
            "locale": "fr-FR",
        },
        "page": {
            "url": "https://shop.example/thanks?ttclid=E.C.P.abc",
            "referrer": "https://x.example/",
        },
        "properties": message["properties"],
    }


def test_identify_traits_win_over_context_traits_and_properties_over_both() -> None:
    envelope = envelope_of(
        {
            "type": "identify",
            "userId": "u",
            "traits": {"email": "own@x.example", "first_name": "Own"},
            "context": {
                "traits": {
                    "email": "ctx@x.example",
                    "phone": "+33612345678",
                    "firstName": "Ctx",
                    "zip": "1000",
                }
            },
        }
    )
    assert envelope["type"] == "identify"
    assert envelope["user"] == {
        "email": "own@x.example",
        "phone": "+33612345678",
        "first_name": "Own",
        "zip_code": "1000",
    }
    given = envelope_of(
        {
            "type": "track",
            "event": "Purchase",
            "userId": "u",
            "properties": {
                "email": "p@x.example",
                "ttclid": "E.C.P.p",
                "ttp": "t1",
                "event_id": "e-1",
                "value": 3,
            },
            "context": {"traits": {"email": "ctx@x.example"}},
        }
    )
    assert given["user"] == {"email": "p@x.example", "ttclid": "E.C.P.p", "ttp": "t1"}
    assert given["event_id"] == "e-1"
    assert given["properties"] == {"value": 3}  # contact data never stays among the properties


def test_a_page_call_reads_its_page_from_its_properties() -> None:
    envelope = envelope_of(
        {
            "type": "page",
            "anonymousId": "a",
            "name": "Home",
            "properties": {
                "url": "https://shop.example/?ttclid=E.C.P.pg",
                "title": "Home",
                "path": "/",
                "referrer": "https://ads.example/",
            },
        }
    )
    assert envelope["page"] == {
        "url": "https://shop.example/?ttclid=E.C.P.pg",
        "referrer": "https://ads.example/",
    }
    assert envelope["properties"] == {}
    parsed = parse_event(envelope, NAMES, now=NOW, max_age_s=86400)
    assert (parsed.type, parsed.event) == (EventType.PAGE, "Pageview")


@pytest.mark.parametrize("kind", ["screen", "group", "alias"])
def test_types_without_a_tiktok_event_are_ignored(kind: str) -> None:
    assert to_envelope({"type": kind, "userId": "u", "groupId": "g"}, NOW) is None


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("text", "message"),
        ({"type": "purchase"}, "type"),
        ({"event": "Purchase"}, "type"),
        ({"type": "track", "context": "ctx"}, "context"),
        ({"type": "track", "properties": []}, "properties"),
        ({"type": "track", "context": {"page": "p"}}, "context.page"),
        ({"type": "identify", "traits": "t"}, "traits"),
    ],
)
def test_a_message_that_cannot_be_read_names_its_field(message: Any, field: str) -> None:
    with pytest.raises(FieldError) as exc:
        to_envelope(message, NOW)
    assert exc.value.field == field


def test_time_is_timestamp_else_original_timestamp_corrected_by_sent_at_else_sent_at() -> None:
    def seconds(**times: Any) -> int:
        envelope = envelope_of({"type": "track", "event": "Purchase", **times})
        return parse_event(envelope, NAMES, now=NOW, max_age_s=86400).timestamp_s

    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 600))
    assert seconds(timestamp=iso, originalTimestamp=NOW - 9000, sentAt=NOW) == int(NOW - 600)
    # the sender's clock is 10 minutes ahead: its times move back by what sentAt says
    ahead = {"originalTimestamp": NOW - 3000, "sentAt": NOW + 600}
    assert abs(seconds(**ahead) - (NOW - 3600)) <= 1
    assert seconds(originalTimestamp=int((NOW - 60) * 1000)) == int(NOW - 60)
    assert seconds(sentAt=iso) == int(NOW - 600)
    assert abs(seconds() - NOW) <= 1


def test_message_id_is_the_event_id_when_nothing_else_gives_one() -> None:
    def event_id(**fields: Any) -> str:
        envelope = envelope_of({"type": "track", "event": "Purchase", "messageId": "m-1", **fields})
        return derive_event_id(parse_event(envelope, NAMES, now=NOW, max_age_s=86400))

    assert event_id() == "m-1"
    assert event_id(properties={"order_id": 7}) == "ord_7"
    assert event_id(properties={"order_id": 7, "eventId": "given"}) == "given"


def test_an_id_that_is_not_ours_names_nobody_and_does_not_fail() -> None:
    long_id = "x" * 300
    envelope = envelope_of({"type": "track", "event": "Purchase", "anonymousId": long_id})
    assert "anonymous_id" not in envelope
    parsed = parse_event(
        envelope_of({"type": "track", "event": "Purchase", "anonymousId": "3f1c-ajs"}),
        NAMES,
        now=NOW,
        max_age_s=86400,
    )
    assert parsed.anonymous_id == "3f1c-ajs"


def test_a_batch_gives_its_context_and_sent_at_to_each_message() -> None:
    body = {
        "batch": [
            {
                "type": "track",
                "event": "A",
                "context": {"ip": "203.0.113.1", "page": {"url": "https://a.example/"}},
            },
            {"type": "track", "event": "B", "sentAt": "own"},
            "not a message",
        ],
        "context": {"ip": "203.0.113.9", "userAgent": UA, "page": {"referrer": "https://r/"}},
        "sentAt": "2026-01-01T00:00:00Z",
    }
    first, second, third = batch_messages(body)
    assert first["context"] == {
        "ip": "203.0.113.1",
        "userAgent": UA,
        "page": {"referrer": "https://r/", "url": "https://a.example/"},
    }
    assert second["context"]["ip"] == "203.0.113.9"
    assert (first["sentAt"], second["sentAt"]) == ("2026-01-01T00:00:00Z", "own")
    assert third == "not a message"
    for bad, name in (
        ([], "body"),
        ({}, "batch"),
        ({"batch": {}}, "batch"),
        ({"batch": [], "context": 1}, "context"),
        ({"batch": [{}] * 1001}, "batch"),
    ):
        with pytest.raises(FieldError) as exc:
            batch_messages(bad)
        assert exc.value.field == name


@pytest.mark.parametrize(
    ("body", "segment"),
    [
        ({"type": "track", "event": "Purchase", "userId": "u", "messageId": "m"}, True),
        ({"event": "Purchase", "anonymousId": "a"}, True),
        ({"event": "Purchase", "integrations": {}}, True),
        ({"event": "Purchase", "user_id": "u"}, False),
        ({"event": "Purchase", "userId": "u", "user": {"email": EMAIL}}, False),
        ({"event": "Purchase", "messageId": "m", "event_id": "e"}, False),
        ({"events": [{"event": "Purchase", "messageId": "m"}]}, False),
        ({"event": "Purchase", "context": {"ip": "203.0.113.1"}}, False),
        ([{"messageId": "m"}], False),
    ],
)
def test_the_shape_rule_at_v1_track(body: Any, segment: bool) -> None:
    assert is_message(body) is segment


# === over HTTP ==================================================================================


@pytest.fixture
def gateway(aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str) -> Any:
    factory = make_gateway(aiohttp_client, make_settings, redis_url)

    async def make(**env: str) -> Any:
        return await factory(TTGW_WRITE_KEY=WRITE_KEY, **env)

    return make


def order(n: int = 1, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "track",
        "event": "Order Completed",
        "userId": f"cust-{n}",
        "messageId": f"msg-order-{n}",
        "timestamp": NOW - 60,
        "context": {
            "ip": "203.0.113.24",
            "userAgent": UA,
            "traits": {"email": EMAIL},
            "page": {"url": f"https://shop.example/thanks?ttclid=E.C.P.http{n}"},
        },
        "properties": {
            "order_id": f"http-{n}",
            "revenue": 20,
            "currency": "EUR",
            "products": [{"product_id": "SKU-1", "price": 10, "quantity": 2}],
        },
    }
    message.update(fields)
    return message


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_batch_is_queued_and_answered_as_segment_does(gateway: Any, redis: Redis) -> None:
    client = await gateway()
    response = await client.post(
        "/v1/batch", json={"batch": [order(1)], "sentAt": NOW}, headers=BASIC
    )
    assert response.status == 200
    assert await response.json() == {"success": True}
    (entry,) = await queued(redis)
    event = entry["data"]
    assert (entry["source"], event["event"], event["event_id"]) == (
        "segment",
        "Purchase",
        "ord_http-1",
    )
    assert event["user"]["email"] == [EMAIL_HASH]
    assert event["user"]["external_id"] == [sha("cust-1")]
    assert (event["user"]["ip"], event["user"]["user_agent"]) == ("203.0.113.24", UA)
    assert event["properties"]["value"] == 20 and event["properties"]["currency"] == "EUR"
    assert event["properties"]["contents"][0]["content_id"] == "SKU-1"
    assert event["page"]["url"].startswith("https://shop.example/thanks?ttclid=")
    raw = repr(await redis.xrange(keys.EVENTS_STREAM)).encode()
    assert EMAIL.encode() not in raw and EMAIL.lower().encode() not in raw


@pytest.mark.parametrize(
    "headers",
    [
        BASIC,
        {"Authorization": basic(WRITE_KEY, "any password")},
        {"Authorization": f"Bearer {WRITE_KEY}"},
    ],
)
async def test_the_write_key_as_basic_user_or_bearer(
    gateway: Any, redis: Redis, headers: dict[str, str]
) -> None:
    client = await gateway()
    for path, body in (
        ("/v1/batch", {"batch": [order(1)]}),
        ("/v1/track", order(2)),
        ("/v1/page", {"anonymousId": "a", "properties": {"url": "https://s.example/"}}),
    ):
        response = await client.post(path, json=body, headers=headers)
        assert response.status == 200, await response.text()
    assert len(await queued(redis)) == 3


async def test_a_missing_or_wrong_key_is_401_with_a_basic_challenge(
    gateway: Any, redis: Redis
) -> None:
    client = await gateway()
    wrong = [
        {},
        {"Authorization": basic("ttw_wrong_" + "k" * 26, "")},
        {"Authorization": basic("", WRITE_KEY)},  # the key as the password
        {"Authorization": "Basic !!not-base64!!"},
        {"Authorization": f"Basic {WRITE_KEY}"},  # not encoded
        {"Authorization": f"Bearer {WRITE_KEY[:-1]}"},
    ]
    for path in ("/v1/batch", "/v1/page", "/v1/identify", "/v1/group"):
        for headers in wrong:
            response = await client.post(path, json={"batch": [order()]}, headers=headers)
            assert response.status == 401, (path, headers)
            assert response.headers.getall("WWW-Authenticate") == [
                'Basic realm="tt-gateway"',
                "Bearer",
            ]
            body = await response.json()
            assert (body["field"], body["code"]) == ("Authorization", "unauthorized")
            assert body["message"]
    # /v1/track keeps offering Bearer first, and now Basic too
    refused = await client.post("/v1/track", json=order(), headers=wrong[1])
    assert refused.headers.getall("WWW-Authenticate") == ["Bearer", 'Basic realm="tt-gateway"']
    assert await redis.xlen(keys.EVENTS_STREAM) == 0


async def test_gzip_bodies_and_a_body_that_is_not_what_its_coding_says(
    gateway: Any, redis: Redis
) -> None:
    client = await gateway()
    body = orjson.dumps({"batch": [order(1), order(2)]})
    headers = {**BASIC, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = await client.post("/v1/batch", data=gzip.compress(body), headers=headers)
    assert response.status == 200
    assert len(await queued(redis)) == 2
    broken = await client.post("/v1/batch", data=body, headers=headers)
    assert broken.status == 400
    assert (await broken.json())["field"] == "Content-Encoding"
    assert len(await queued(redis)) == 2


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        (b"{not json", "application/json", 400, "body"),
        (b'{"batch": {"type": "track"}}', "application/json", 400, "batch"),
        (b'[{"type": "track"}]', "application/json", 400, "body"),
        (b'{"batch": [], "context": "x"}', "application/json", 400, "context"),
        (b'{"batch": []}', "text/csv", 415, "Content-Type"),
    ],
)
async def test_a_malformed_batch_is_a_400_naming_the_field_with_segments_code(
    gateway: Any, body: bytes, content_type: str, status: int, field: str
) -> None:
    client = await gateway()
    headers = {**BASIC, "Content-Type": content_type}
    response = await client.post("/v1/batch", data=body, headers=headers)
    assert response.status == status
    answer = await response.json()
    assert answer["field"] == field
    assert answer["code"] and answer["message"].startswith(field)


async def test_bad_messages_in_a_batch_are_counted_and_logged_and_the_rest_queued(
    gateway: Any, redis: Redis
) -> None:
    client = await gateway()
    rejected = {
        r: counted("ttgw_events_rejected_total", reason=r, source="segment")
        for r in ("event", "timestamp", "url", "batch")
    }
    ignored = counted("ttgw_events_ingested_total", status="ignored", source="segment")
    batch = [
        order(1),
        {"type": "track", "userId": "u", "context": {"traits": {"email": EMAIL}}},  # no event
        order(2, timestamp=NOW - 30 * 86400),  # older than TikTok attributes
        order(3, context={"page": {"url": "not a url"}, "traits": {"email": EMAIL}}),
        "junk",
        {"type": "group", "userId": "u", "groupId": "g"},
        {"type": "alias", "userId": "u", "previousId": "p"},
        {"type": "screen", "userId": "u", "name": "Home"},
        order(4),
        {"type": "track", "event": f"{EMAIL} bought", "userId": "u"},  # a name that is no name
    ]
    with capture_logs() as logs:
        response = await client.post("/v1/batch", json={"batch": batch}, headers=BASIC)
    assert response.status == 200
    assert await response.json() == {"success": True}
    assert [e["event_id"] for e in await queued(redis)] == ["ord_http-1", "ord_http-4"]
    refused = [line for line in logs if line["event"] == "segment_message_refused"]
    assert [(r["index"], r["field"]) for r in refused] == [
        (1, "batch[1].event"),
        (2, "batch[2].timestamp"),
        (3, "batch[3].context.page.url"),
        (4, "batch[4]"),
        (9, "batch[9].event"),
    ]
    assert EMAIL not in repr(logs)
    for reason in ("event", "timestamp", "url", "batch"):
        after = counted("ttgw_events_rejected_total", reason=reason, source="segment")
        assert after == rejected[reason] + (2 if reason == "event" else 1), reason
    assert counted("ttgw_events_ingested_total", status="ignored", source="segment") == ignored + 3


async def test_at_v1_track_our_envelope_gets_202_and_a_segment_message_200(
    gateway: Any, redis: Redis
) -> None:
    client = await gateway()
    bearer = {"Authorization": f"Bearer {WRITE_KEY}"}
    ours = await client.post("/v1/track", json=track(event_id="env-1", user_id="u"), headers=bearer)
    assert ours.status == 202
    assert (await ours.json())["accepted"][0]["status"] == "queued"
    batch = await client.post(
        "/v1/track", json={"events": [track(event_id="env-2")]}, headers=bearer
    )
    assert batch.status == 202
    segment = await client.post("/v1/track", json=order(5), headers=BASIC)
    assert segment.status == 200
    assert await segment.json() == {"success": True}
    assert [e["event_id"] for e in await queued(redis)] == ["env-1", "env-2", "ord_http-5"]
    assert [e["source"] for e in await queued(redis)] == ["server", "server", "segment"]


async def test_a_single_message_that_cannot_be_used_is_a_400_naming_the_segment_field(
    gateway: Any, redis: Redis
) -> None:
    client = await gateway()
    bad_url = order(6, context={"page": {"url": "ftp://x"}})
    response = await client.post("/v1/track", json=bad_url, headers=BASIC)
    assert response.status == 400
    answer = await response.json()
    assert (answer["field"], answer["code"]) == ("context.page.url", "bad_request")
    no_event = await client.post("/v1/track", json={"userId": "u", "messageId": "m"}, headers=BASIC)
    assert (await no_event.json())["field"] == "event"
    assert (await client.post("/v1/page", json=[1], headers=BASIC)).status == 400
    assert await redis.xlen(keys.EVENTS_STREAM) == 0


async def test_single_message_endpoints_take_their_type_from_the_path(
    gateway: Any, redis: Redis
) -> None:
    client = await gateway()
    page = {"anonymousId": "a", "type": "track", "properties": {"url": "https://shop.example/p"}}
    assert (await client.post("/v1/page", json=page, headers=BASIC)).status == 200
    identify = {"userId": "cust-9", "traits": {"email": EMAIL}}
    assert (await client.post("/v1/identify", json=identify, headers=BASIC)).status == 200
    for kind in ("group", "alias", "screen"):
        answer = await client.post(f"/v1/{kind}", json={"userId": "u"}, headers=BASIC)
        assert (answer.status, await answer.json()) == (200, {"success": True})
    (entry,) = await queued(redis)
    assert (entry["data"]["event"], entry["data"]["page"]["url"]) == (
        "Pageview",
        "https://shop.example/p",
    )


async def test_the_same_batch_twice_is_queued_once(gateway: Any, redis: Redis) -> None:
    client = await gateway()
    product = {
        "type": "track",
        "event": "Product Added",
        "anonymousId": "a",
        "messageId": "ajs-next-42",
        "properties": {"product_id": "P1", "price": 5},
    }
    body = {"batch": [order(7), product]}
    duplicates = counted("ttgw_events_ingested_total", status="duplicate", source="segment")
    for _ in range(2):
        assert (await client.post("/v1/batch", json=body, headers=BASIC)).status == 200
    assert [e["event_id"] for e in await queued(redis)] == ["ord_http-7", "ajs-next-42"]
    after = counted("ttgw_events_ingested_total", status="duplicate", source="segment")
    assert after == duplicates + 2


async def test_a_signed_visitor_as_anonymous_id_brings_its_stored_click(
    gateway: Any, redis: Redis
) -> None:
    client = await gateway()
    landing = await client.post(
        "/e",
        json=track(
            "ViewContent",
            event_id="v-1",
            page={"url": "https://shop.example/?ttclid=E.C.P.visitor-click"},
        ),
    )
    visitor = set_cookies(landing)[VISITOR_COOKIE].split(";")[0].split("=", 1)[1]
    message = {
        "type": "track",
        "event": "Product Added",
        "anonymousId": visitor,
        "messageId": "m-visitor",
        "properties": {"product_id": "P1", "price": 5},
    }
    assert (await client.post("/v1/batch", json={"batch": [message]}, headers=BASIC)).status == 200
    sent = (await queued(redis))[-1]["data"]
    assert sent["user"]["ttclid"] == "E.C.P.visitor-click"


# === arbitrary messages =========================================================================

TRAITS: Fields = {
    "email": text,
    "phone": text | numbers,
    "firstName": text,
    "lastName": ids,
    "address": obj({"postalCode": ids, "city": text, "state": text, "country": text}) | scalars,
}
PRODUCT: Fields = {"product_id": ids, "sku": ids, "price": numbers | text, "quantity": numbers}
MESSAGE: Fields = {
    "type": st.sampled_from(["track", "page", "identify", "screen", "group", "alias", "Track", ""])
    | scalars,
    "event": st.sampled_from(["Order Completed", "Product Added", "Purchase", "x y"]) | text,
    "userId": ids, "anonymousId": ids, "messageId": ids,
    "timestamp": numbers | text, "originalTimestamp": numbers | text, "sentAt": numbers | text,
    "context": obj({"ip": ips, "userAgent": text, "locale": text, "traits": obj(TRAITS) | scalars,
                    "page": obj({"url": urls, "referrer": urls}) | scalars}) | scalars,
    "traits": obj(TRAITS) | scalars,
    "properties": obj({"order_id": ids, "total": numbers | text, "currency": text,
                       "products": st.lists(obj(PRODUCT) | scalars, max_size=3) | scalars,
                       "email": text, "event_id": ids, "eventId": ids, "url": urls, "ttclid": text,
                       "limited_data_use": scalars, **PRODUCT}) | scalars,
    "integrations": json_values,
}  # fmt: skip
# A usable message, so that one bad field put on it reaches the code behind the first check.
valid_messages = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "page", "identify"]),
        "event": st.sampled_from(["Order Completed", "Product Added", "Purchase", "Signed_Up"]),
        "messageId": st.text("abcXYZ0123-", min_size=1, max_size=12),
    },
    optional={
        "userId": st.text("abc123", min_size=1, max_size=8),
        "context": st.fixed_dictionaries(
            {},
            optional={
                "ip": st.sampled_from(["203.0.113.7", "::ffff:198.51.100.1", "10.0.0.1"]),
                "page": st.fixed_dictionaries(
                    {
                        "url": st.sampled_from(
                            ["https://shop.example/p?ttclid=E.C.P.fuzz", "https://shop.example/"]
                        )
                    }
                ),
                "traits": st.fixed_dictionaries(
                    {},
                    optional={
                        "email": st.sampled_from(["a@b.com", "x"]),
                        "address": st.fixed_dictionaries(
                            {"country": st.sampled_from(["FR", "zz"])}
                        ),
                    },
                ),
            },
        ),
        "properties": st.fixed_dictionaries(
            {},
            optional={
                "order_id": st.integers(1, 10**6),
                "currency": st.sampled_from(["EUR", "usd"]),
                "products": st.lists(
                    st.fixed_dictionaries(
                        {"product_id": st.text("AB1", min_size=1)},
                        optional={"price": st.floats(0, 99)},
                    ),
                    max_size=2,
                ),
            },
        ),
    },
)
messages = (
    valid_messages
    | st.builds(lambda base, extra: {**base, **extra}, valid_messages, one_of_fields(MESSAGE))
    | obj(MESSAGE)
    | json_values
)
batches = (
    st.fixed_dictionaries(
        {"batch": st.lists(messages, max_size=4)},
        optional={"context": obj({"ip": ips, "page": obj({"url": urls})}) | scalars,
                  "sentAt": numbers | text},
    )
    | json_values
)  # fmt: skip


def read_all(body: Any) -> int:
    """Everything the batch route does short of Redis, raising only FieldError; events built."""
    try:
        raw = batch_messages(body)
    except FieldError:
        return 0
    built = 0
    refused: list[tuple[Translation | None, str]] = []
    for message in raw:
        translation = None
        try:
            translation = to_envelope(message, NOW)
            if translation is None:
                continue
            envelope = parse_event(translation.envelope, NAMES, now=NOW, max_age_s=86400)
        except FieldError as exc:
            refused.append((translation, exc.field))
            continue
        if envelope.type is EventType.IDENTIFY:
            continue
        hashed = hash_user(envelope, "FR")
        origin = Origin(source="segment", host="shop.example")
        event_id = derive_event_id(envelope)
        event = build_event(envelope, event_id, hashed, Session(), origin, decide({}, ()))
        assert orjson.loads(encode(event))["event"]
        built += 1
    for translation, name in refused:  # a refusal names the field the sender wrote
        named = translation.segment_field(name) if translation else name
        assert isinstance(named, str) and named
    return built


@fuzz_settings(400)
@given(batches)
def test_arbitrary_batches_raise_only_field_errors(body: Any) -> None:
    read_all(body)


def test_the_message_strategy_reaches_built_events() -> None:
    assert sum(read_all(body) for body in draw(batches, 300)) >= 60


async def test_arbitrary_bodies_over_http_get_only_2xx_or_4xx(gateway: Any) -> None:
    client = await gateway()
    statuses: list[int] = []
    for index, body in enumerate(draw(batches | messages, 120)):
        path = "/v1/batch" if index % 2 else "/v1/track"
        response = await client.post(path, data=orjson.dumps(body), headers={
            **BASIC, "Content-Type": "application/json"})  # fmt: skip
        await response.read()
        assert response.status in (200, 202, 400), (path, body)
        statuses.append(response.status)
    assert {200, 400} <= set(statuses)


# === the real SDKs ==============================================================================


@dataclass
class Proxy:
    """Between an SDK and the gateway. Its first request is passed on and answered 503, as if
    the answer were lost on the way back: the SDK sends the batch again."""

    target: str
    url: str = ""
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    def messages(self, index: int) -> list[dict[str, Any]]:
        """The messages of the ``index``-th request, as the SDK sent them."""
        return list(self.requests[index][2]["batch"])


@asynccontextmanager
async def running_proxy(target: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(target)
    session = aiohttp.ClientSession()

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()  # decoded: aiohttp undoes the SDK's gzip
        headers = {
            k: v
            for k, v in request.headers.items()
            if k in ("Authorization", "Content-Type", "Content-Encoding")
        }
        proxy.requests.append((request.path, dict(request.headers), orjson.loads(body)))
        data = gzip.compress(body) if headers.get("Content-Encoding") == "gzip" else body
        async with session.post(target + request.path, data=data, headers=headers) as upstream:
            status, answer = upstream.status, await upstream.read()
        proxy.answers.append(status)
        if len(proxy.requests) == 1:
            return web.Response(status=503, text="the answer was lost")
        return web.Response(status=status, body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", relay)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    proxy.url = f"http://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        await runner.cleanup()
        await session.close()


def sdk_calls(tag: str) -> list[dict[str, Any]]:
    """What each SDK sends, in the SDKs' own (Segment spec) terms."""
    context = {"ip": "203.0.113.24", "userAgent": UA, "traits": {"email": EMAIL}}
    return [
        {
            "type": "identify",
            "userId": f"cust-{tag}",
            "traits": {"email": EMAIL, "firstName": "Jane"},
        },
        {
            "type": "track",
            "userId": f"cust-{tag}",
            "event": "Order Completed",
            "properties": {
                "order_id": f"{tag}-1001",
                "total": 184.5,
                "currency": "EUR",
                "products": [
                    {"product_id": "SKU-1", "name": "Boots", "price": 129.0, "quantity": 1},
                    {"product_id": "SKU-2", "name": "Laces", "price": 27.75, "quantity": 2},
                ],
            },
            "context": {
                **context,
                "page": {"url": f"https://shop.example/thanks?ttclid=E.C.P.sdk-{tag}-order"},
            },
        },
        {
            "type": "track",
            "anonymousId": f"anon-{tag}",
            "event": "Product Added",
            "properties": {
                "product_id": "SKU-3",
                "sku": "SKU-3",
                "name": "Socks",
                "price": 9.5,
                "quantity": 3,
                "currency": "EUR",
            },
            "context": {
                **context,
                "ip": "203.0.113.25",
                "page": {"url": f"https://shop.example/socks?ttclid=E.C.P.sdk-{tag}-cart"},
            },
        },
    ]


def _send_python(client_class: Any, host: str, calls: list[dict[str, Any]]) -> list[str]:
    """Send through a Python SDK's own queue and consumer thread, then flush; its errors."""
    errors: list[str] = []
    client = client_class(
        WRITE_KEY,
        host=host,
        max_retries=5,
        on_error=lambda error, batch: errors.append(repr(error)),
    )
    for call in calls:
        ids = {"user_id": call.get("userId"), "anonymous_id": call.get("anonymousId")}
        if call["type"] == "identify":
            client.identify(traits=call["traits"], **ids)
        else:
            client.track(
                event=call["event"], properties=call["properties"], context=call["context"], **ids
            )
    client.flush()
    client.shutdown()
    return errors


async def send_segment_python(host: str, calls: list[dict[str, Any]]) -> None:
    from segment.analytics.client import Client

    assert await asyncio.to_thread(_send_python, Client, host, calls) == []


async def send_rudder_python(host: str, calls: list[dict[str, Any]]) -> None:
    from rudderstack.analytics.client import Client

    assert await asyncio.to_thread(_send_python, Client, host, calls) == []


async def send_segment_node(host: str, calls: list[dict[str, Any]]) -> None:
    node = shutil.which("node")
    if node is None or not (SDK_NODE / "node_modules" / "@segment" / "analytics-node").is_dir():
        pytest.skip("node and tests/sdk_node/node_modules are needed (npm ci in tests/sdk_node)")
    spec = orjson.dumps({"host": host, "writeKey": WRITE_KEY, "calls": calls})
    process = await asyncio.create_subprocess_exec(
        node,
        "send.mjs",
        cwd=SDK_NODE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(spec), 60)
    assert process.returncode == 0, (out, err)


SDKS: dict[str, tuple[str, Callable[[str, list[dict[str, Any]]], Any], bool]] = {
    # name: (tag, sender, whether it gzips its bodies)
    "segment-analytics-python": ("py", send_segment_python, False),
    "rudder-sdk-python": ("rs", send_rudder_python, True),
    "@segment/analytics-node": ("node", send_segment_node, False),
}


@pytest.mark.parametrize("sdk", list(SDKS))
async def test_each_sdk_delivers_once_to_tiktok_through_a_retry(
    sdk: str,
    gateway: Any,
    make_settings: Callable[..., Settings],
    redis_url: str,
    redis: Redis,
) -> None:
    tag, send, gzipped = SDKS[sdk]
    calls = sdk_calls(tag)
    queued_before = counted("ttgw_events_ingested_total", status="queued", source="segment")
    duplicate_before = counted("ttgw_events_ingested_total", status="duplicate", source="segment")
    async with running_emulator() as tiktok:
        env = delivery_env(tiktok, redis_url, TTGW_WRITE_KEY=WRITE_KEY)
        client = await gateway(
            **{k: v for k, v in env.items() if k != "TTGW_WRITE_KEY" and k != "TTGW_REDIS_URL"}
        )
        base = str(client.make_url("/")).rstrip("/")
        async with running_proxy(base) as proxy, running_worker(make_settings(**env)):
            await send(proxy.url, calls)
            await tiktok.state.wait_for_events(2, timeout_s=30)
            await wait_until(lambda: _delivered(redis, 2))
    # what the SDK sent: Basic auth to /v1/batch, gzip by RudderStack's, once more after the 503
    assert {path for path, _, _ in proxy.requests} == {"/v1/batch"}
    assert len(proxy.requests) >= 2 and proxy.answers == [200] * len(proxy.answers)
    for _, headers, _ in proxy.requests:
        assert headers["Authorization"] == BASIC["Authorization"]
        assert (headers.get("Content-Encoding") == "gzip") is gzipped
    first = proxy.messages(0)
    retried = proxy.messages(1)
    assert [m["messageId"] for m in retried] == [m["messageId"] for m in first]
    # queued once; the retry's tracks answered duplicate at ingest, never sent again
    queued_n = counted("ttgw_events_ingested_total", status="queued", source="segment")
    duplicates = counted("ttgw_events_ingested_total", status="duplicate", source="segment")
    assert queued_n - queued_before == 2
    assert duplicates - duplicate_before == sum(m["type"] == "track" for m in first)
    assert tiktok.state.duplicates == 0
    by_name = {e.event: e.payload for e in tiktok.state.accepted}
    assert len(tiktok.state.accepted) == 2 and sorted(by_name) == ["AddToCart", "Purchase"]

    purchase, cart = by_name["Purchase"], by_name["AddToCart"]
    assert purchase["event_id"] == f"ord_{tag}-1001"
    (product_added,) = [m for m in first if m.get("event") == "Product Added"]
    assert cart["event_id"] == product_added["messageId"]  # the SDK's messageId
    for sent, ip, click in ((purchase, "203.0.113.24", "order"), (cart, "203.0.113.25", "cart")):
        user = sent["user"]
        assert user["email"] == [EMAIL_HASH]
        assert (user["ip"], user["user_agent"]) == (ip, UA)
        assert user["ttclid"] == f"E.C.P.sdk-{tag}-{click}"
        assert sent["page"]["url"].endswith(f"ttclid=E.C.P.sdk-{tag}-{click}")
    assert purchase["user"]["external_id"] == [sha(f"cust-{tag}")]
    assert (purchase["properties"]["value"], purchase["properties"]["currency"]) == (184.5, "EUR")
    assert [
        (c["content_id"], c["price"], c["quantity"]) for c in purchase["properties"]["contents"]
    ] == [("SKU-1", 129, 1), ("SKU-2", 27.75, 2)]
    assert (cart["properties"]["value"], cart["properties"]["currency"]) == (28.5, "EUR")
    assert [
        (c["content_id"], c["price"], c["quantity"]) for c in cart["properties"]["contents"]
    ] == [("SKU-3", 9.5, 3)]


async def _delivered(redis: Redis, n: int) -> bool:
    from gateway.delivery.receipts import counters

    return (await counters(redis)).get("delivered", 0) >= n
