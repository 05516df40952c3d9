"""The TikTok Events API emulator, over real HTTP (pytest-aiohttp), plus property tests."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient

from gateway.tiktok.api import MSG_BAD_EVENT_ID, MSG_BAD_EVENT_SOURCE, TRACK_PATH
from gateway.tiktok.emulator import (
    api_base_url,
    create_emulator_app,
    parse_token_spec,
    serve_emulator,
)
from gateway.tiktok.emulator_state import EmulatorConfig, EmulatorState, Outcome, Script
from gateway.tiktok.names import (
    LEGACY_EVENTS,
    RESERVED_EVENTS,
    STANDARD_EVENTS,
    SUPPORTED_CURRENCIES,
)
from gateway.tiktok.validation import validate_body

PIXEL = "CXXXXXXXXXXXXXXXXXX0"
OTHER_PIXEL = "CYYYYYYYYYYYYYYYYYY1"
TOKEN = "tok-any"
LIMITED_TOKEN = "tok-limited"
EMAIL_HASH = "848a771458438fc2ec420560d769fb9b9b86851ee338ec56517baabd79d3bb4f"
PHONE_HASH = "9f7ec22d72092cd3c0b58726ed9c2d91b92e51a3f29837508fb2948bb22dd2fd"
REQUEST_ID = re.compile(r"\d{14}[0-9A-F]{20}")
ROOT = Path(__file__).resolve().parent.parent

Client = TestClient[Any, Any]
Json = dict[str, Any]


class FakeClock:
    """Wall clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = time.time() // 1 + 0.25  # whole-second boundaries stay predictable

    def __call__(self) -> float:
        return self.now


def make_event(**changes: Any) -> Json:
    """A fully valid web event; a change to None removes that key."""
    event: Json = {
        "event": "Purchase",
        "event_time": int(time.time()),
        "event_id": "order-100234",
        "user": {
            "email": [EMAIL_HASH],
            "phone": PHONE_HASH,
            "ttclid": "E.C.P.ExampleOnly",
            "ttp": "01K0T8BYGJH63785W68YS5NN1R_.tt.1",
            "ip": "2001:db8::200",
            "user_agent": "Mozilla/5.0",
            "locale": "en-US",
            "country": "fr",
        },
        "properties": {
            "currency": "USD",
            "value": 59.9,
            "content_type": "product",
            "contents": [{"content_id": "SKU-1", "price": 19.95, "quantity": 2}],
        },
        "page": {"url": "https://shop.example.com/thank-you?o=1", "referrer": ""},
        "limited_data_use": False,
    }
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def make_body(*events: Json, **changes: Any) -> Json:
    body: Json = {
        "event_source": "web",
        "event_source_id": PIXEL,
        "partner_name": "Test",
        "data": list(events) or [make_event()],
    }
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


async def post(
    client: Client, body: Any, token: str | None = TOKEN, headers: dict[str, str] | None = None
) -> tuple[int, Json]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Access-Token"] = token
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    async with client.post(TRACK_PATH, data=raw, headers=sent) as resp:
        text = await resp.text()
        answer = orjson.loads(text) if resp.content_type == "application/json" else {"html": text}
        return resp.status, answer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state() -> EmulatorState:
    return EmulatorState(EmulatorConfig(tokens={TOKEN: None, LIMITED_TOKEN: {PIXEL}}))


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, state: EmulatorState) -> Client:
    return await aiohttp_client(create_emulator_app(state))


# --- success and recording ---


async def test_success_answers_ok_and_records_events(client: Client, state: EmulatorState) -> None:
    second = make_event(event="AddToCart", event_id="atc-1", user=None, properties=None)
    status, answer = await post(client, make_body(make_event(), second, test_event_code="TEST1"))
    assert status == 200
    assert answer["code"] == 0 and answer["message"] == "OK" and answer["data"] == {}
    assert REQUEST_ID.fullmatch(answer["request_id"])
    assert [(e.event, e.event_id) for e in state.accepted] == [
        ("Purchase", "order-100234"),
        ("AddToCart", "atc-1"),
    ]
    first = state.accepted[0]
    assert first.pixel_code == PIXEL and first.test_event_code == "TEST1"
    assert first.request_id == answer["request_id"] and first.payload == make_body()["data"][0] | {
        "event_time": first.event_time
    }
    record = state.requests[-1]
    assert (record.code, record.http_status, record.pixel_code, record.event_count) == (
        0,
        200,
        PIXEL,
        2,
    )
    assert record.request_id == answer["request_id"] and record.body_bytes > 100


async def test_every_accepted_name_passes(client: Client, state: EmulatorState) -> None:
    names = [*sorted(STANDARD_EVENTS | LEGACY_EVENTS), "Pageview", "My_Custom-Event2", "A" * 50]
    events = [make_event(event=name, event_id=f"id-{i}") for i, name in enumerate(names)]
    status, answer = await post(client, make_body(*events))
    assert (status, answer["code"]) == (200, 0)
    assert len(state.accepted) == len(names) == 25


async def test_optional_parts_and_extra_properties_pass(client: Client) -> None:
    minimal = make_event(
        event_id=None,
        user=None,
        properties=None,
        limited_data_use=None,
        page={"url": "http://a.example"},
    )
    extras = make_event(
        properties={
            "value": 0,
            "gtm_version": "2",
            "predicted_ltv": 1.5,
            "contents": [{"content_id": "A", "content_group_id": "G"}],
        },
        user={"external_id": [EMAIL_HASH, PHONE_HASH], "ip": "203.0.113.7"},
        device={"platform": "iOS"},
        lead={},
        app={},
        ad={},
    )
    status, answer = await post(client, make_body(minimal, extras, partner_name=None))
    assert (status, answer["code"], answer["message"]) == (200, 0, "OK")


async def test_charset_parameter_is_allowed(client: Client) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    _, answer = await post(client, make_body(), headers=headers)
    assert answer["code"] == 0


# --- HTTP layer: paths, methods, size, content type, JSON ---


@pytest.mark.parametrize(
    "path",
    ["/open_api/v1.3/event/track", "/open_api/v1.3/pixel/track/", "/open_api/v1.2/event/track/"],
)
async def test_wrong_path_is_plain_404(client: Client, path: str) -> None:
    async with client.post(path, json=make_body(), headers={"Access-Token": TOKEN}) as resp:
        assert resp.status == 404
        assert await resp.text() == "page not found"


async def test_wrong_method_is_405_without_api_json(client: Client, state: EmulatorState) -> None:
    async with client.get(TRACK_PATH, headers={"Access-Token": TOKEN}) as resp:
        assert resp.status == 405
        assert resp.content_type != "application/json"
    assert state.requests == []


async def test_oversized_body_is_413(aiohttp_client: AiohttpClient) -> None:
    state = EmulatorState(EmulatorConfig(tokens={TOKEN: None}, max_body_bytes=2000))
    client = await aiohttp_client(create_emulator_app(state))
    padded = make_body(*[make_event(event_id=f"e{i}") for i in range(10)])
    status, answer = await post(client, padded)
    assert status == 413 and "413" in answer["html"]
    assert state.accepted == [] and state.requests[-1].http_status == 413
    assert state.requests[-1].code is None and state.requests[-1].body_bytes > 2000


@pytest.mark.parametrize(
    ("content_type", "raw", "fragment"),
    [
        ("text/plain", orjson.dumps(make_body()), "Content-Type must be application/json"),
        ("application/json", b"{not json", "Invalid parameters: body is not valid JSON"),
        ("application/json", b"", "Invalid parameters: body is not valid JSON"),
        ("application/json", b"[]", "Invalid parameters: request body must be a JSON object"),
        ("application/json", b"null", "Invalid parameters: request body must be a JSON object"),
    ],
)
async def test_unparseable_requests_are_40000(
    client: Client, state: EmulatorState, content_type: str, raw: bytes, fragment: str
) -> None:
    status, answer = await post(client, raw, headers={"Content-Type": content_type})
    assert (status, answer["code"]) == (200, 40000)
    assert fragment in answer["message"]
    assert state.accepted == [] and state.requests[-1].code == 40000


# --- auth ---


@pytest.mark.parametrize("token", [None, "", "   "])
async def test_missing_token_is_40104(client: Client, token: str | None) -> None:
    _, answer = await post(client, make_body(), token=token)
    assert answer["code"] == 40104
    assert answer["message"] == (
        "Access token is null, you should set it in http header with key Access-Token."
    )


async def test_unknown_token_is_40105(client: Client, state: EmulatorState) -> None:
    _, answer = await post(client, make_body(), token="nope")
    assert answer == {
        "code": 40105,
        "message": "Access token is incorrect or has been revoked.",
        "request_id": answer["request_id"],
        "data": {},
    }
    assert state.accepted == [] and state.requests[-1].code == 40105


async def test_revoke_and_restore(client: Client, state: EmulatorState) -> None:
    state.revoke(TOKEN)
    assert (await post(client, make_body()))[1]["code"] == 40105
    state.restore(TOKEN)
    assert (await post(client, make_body()))[1]["code"] == 0
    state.restore("brand-new", {OTHER_PIXEL})
    assert (await post(client, make_body(), token="brand-new"))[1]["code"] == 40001
    assert len(state.accepted) == 1


async def test_pixel_not_allowed_is_40001(client: Client, state: EmulatorState) -> None:
    _, answer = await post(client, make_body(event_source_id=OTHER_PIXEL), token=LIMITED_TOKEN)
    assert answer["code"] == 40001
    assert answer["message"] == (
        f"No permission to operate pixel code: {OTHER_PIXEL}. You must "
        "be an admin or operator of this advertiser account."
    )
    _, answer = await post(client, make_body(), token=LIMITED_TOKEN)
    assert answer["code"] == 0


async def test_auth_is_checked_before_the_payload(client: Client) -> None:
    _, answer = await post(client, make_body(data=[]), token=None)
    assert answer["code"] == 40104


# --- envelope ---


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"event_source": None}, MSG_BAD_EVENT_SOURCE),
        ({"event_source": "WEB"}, MSG_BAD_EVENT_SOURCE),
        ({"event_source": ["web"]}, MSG_BAD_EVENT_SOURCE),
        ({"event_source": "app"}, "event_source: 'app' is not emulated"),
        ({"event_source": "crm"}, "event_source: 'crm' is not emulated"),
        ({"event_source_id": None}, "Invalid value for event_source_id: not a valid string."),
        ({"event_source_id": ""}, "Invalid value for event_source_id: not a valid string."),
        ({"event_source_id": 12345}, "Invalid value for event_source_id: not a valid string."),
        ({"partner_name": 7}, "Invalid value for partner_name: not a valid string."),
        ({"test_event_code": False}, "Invalid value for test_event_code: not a valid string."),
        ({"data": None}, "data: Missing data for required field"),
        ({"data": {"event": "Purchase"}}, "data: Not a valid list"),
        ({"data": []}, "data: Length must be between 1 and 1000"),
        ({"extra": 1}, "extra: Unknown field"),
        ({"access_token": TOKEN}, "access_token: Unknown field"),
    ],
)
async def test_envelope_rules(
    client: Client, state: EmulatorState, changes: Json, message: str
) -> None:
    status, answer = await post(client, make_body(**changes))
    assert (status, answer["code"]) == (200, 40002)
    assert answer["message"].startswith(message)
    assert state.accepted == []


@pytest.mark.parametrize(
    "key", ["pixel_code", "event", "context", "timestamp", "batch", "properties"]
)
async def test_legacy_top_level_keys_are_named(client: Client, key: str) -> None:
    _, answer = await post(client, make_body(**{key: "x"}))
    assert answer["code"] == 40002
    assert answer["message"].startswith(f"{key}: Unknown field (legacy Events API 1.0")


async def test_legacy_body_shape_is_rejected(client: Client) -> None:
    legacy = {
        "pixel_code": PIXEL,
        "event": "CompletePayment",
        "event_id": "o-1",
        "timestamp": "2026-01-01T00:00:00Z",
        "context": {"page": {"url": "https://a.b/"}},
        "properties": {"currency": "USD", "value": 5},
    }
    _, answer = await post(client, legacy)
    assert answer["code"] == 40002 and "pixel_code" in answer["message"]


async def test_batch_size_boundary(client: Client, state: EmulatorState) -> None:
    events = [make_event(event_id=f"e{i}") for i in range(1001)]
    _, answer = await post(client, make_body(*events))
    assert answer["code"] == 40002 and "between 1 and 1000" in answer["message"]
    assert state.accepted == []
    _, answer = await post(client, make_body(*events[:1000]))
    assert answer["code"] == 0 and len(state.accepted) == 1000


# --- events ---

_NOW = int(time.time())
_RAW_EMAIL = "alice@example.com"
_UPPER_HASH = EMAIL_HASH.upper()

EVENT_CASES: list[tuple[Json, str]] = [
    ({"timestamp": 1}, "data.0.timestamp: Unknown field"),
    ({"context": {}}, "data.0.context: Unknown field"),
    ({"event": None}, "data.0.event: Missing data for required field"),
    ({"event": 5}, "data.0.event: Not a valid string"),
    ({"event": "Checkout"}, "data.0.event: 'Checkout' is a reserved event name"),
    ({"event": "ViewForm"}, "data.0.event: 'ViewForm' is a reserved event name"),
    ({"event": "purchase"}, "data.0.event: 'purchase' differs only in case from 'Purchase'"),
    ({"event": "PageView"}, "data.0.event: 'PageView' differs only in case from 'Pageview'"),
    ({"event": "Order Completed"}, "data.0.event: 'Order Completed' is not a valid custom"),
    ({"event": "1stVisit"}, "is not a valid custom event name"),
    ({"event": "A" * 51}, "is not a valid custom event name"),
    ({"event": "Trailing "}, "is not a valid custom event name"),
    ({"event_time": None}, "data.0.event_time: Missing data for required field"),
    ({"event_time": str(_NOW)}, "data.0.event_time: Not a valid integer"),
    ({"event_time": _NOW + 0.5}, "data.0.event_time: Not a valid integer"),
    ({"event_time": True}, "data.0.event_time: Not a valid integer"),
    ({"event_time": _NOW - 8 * 86400}, "data.0.event_time: "),
    ({"event_time": _NOW + 3600}, "s in the future"),
    ({"event_time": _NOW * 1000}, "(milliseconds instead of seconds?)"),
    ({"event_id": 100234}, MSG_BAD_EVENT_ID),
    ({"event_id": 1.5}, MSG_BAD_EVENT_ID),
    ({"event_id": ""}, "data.0.event_id: Field may not be empty"),
    ({"user": "alice"}, "data.0.user: Not a valid mapping type"),
    ({"user": {"email": _RAW_EMAIL}}, "data.0.user.email: Not a SHA-256 hex digest"),
    ({"user": {"email": _UPPER_HASH}}, "data.0.user.email: Not a SHA-256 hex digest"),
    ({"user": {"email": []}}, "data.0.user.email: List may not be empty"),
    ({"user": {"email": [EMAIL_HASH, _RAW_EMAIL]}}, "data.0.user.email.1: Not a SHA-256"),
    ({"user": {"phone": "+33612345678"}}, "data.0.user.phone: Not a SHA-256 hex digest"),
    ({"user": {"phone": [33612345678]}}, "data.0.user.phone.0: Not a valid string"),
    ({"user": {"external_id": "user_123"}}, "data.0.user.external_id: Not a SHA-256"),
    ({"user": {"first_name": "alice"}}, "data.0.user.first_name: Not a SHA-256"),
    ({"user": {"last_name": EMAIL_HASH[:63]}}, "data.0.user.last_name: Not a SHA-256"),
    ({"user": {"zip_code": [EMAIL_HASH]}}, "data.0.user.zip_code: Not a valid string"),
    ({"user": {"ttp": "has space"}}, "data.0.user.ttp: Not a valid _ttp value"),
    ({"user": {"ttp": "a" * 129}}, "data.0.user.ttp: Not a valid _ttp value"),
    ({"user": {"ttclid": 42}}, "data.0.user.ttclid: Not a valid string"),
    ({"user": {"user_agent": None}}, "data.0.user.user_agent: Not a valid string"),
    ({"user": {"city": ["paris"]}}, "data.0.user.city: Not a valid string"),
    ({"user": {"ip": "999.1.1.1"}}, "data.0.user.ip: Not a valid IP address"),
    ({"user": {"ip": 3405803783}}, "data.0.user.ip: Not a valid string"),
    ({"user": {"phone_number": PHONE_HASH}}, "data.0.user.phone_number: Unknown field (the Eve"),
    ({"user": {"callback": "E.C.P.x"}}, "data.0.user.callback: Unknown field (`callback`"),
    ({"user": {"idfa": "X"}}, "data.0.user.idfa: Unknown field"),
    ({"properties": []}, "data.0.properties: Not a valid mapping type"),
    ({"properties": {"value": "59.90"}}, "data.0.properties.value: Not a valid number"),
    ({"properties": {"value": True}}, "data.0.properties.value: Not a valid number"),
    ({"properties": {"value": -1}}, "data.0.properties.value: Must be greater than or equal"),
    ({"properties": {"currency": "usd"}}, "data.0.properties.currency: 'usd' is not a currency"),
    ({"properties": {"currency": "XBT"}}, "data.0.properties.currency: 'XBT' is not a currency"),
    ({"properties": {"contents": {}}}, "data.0.properties.contents: Not a valid list"),
    ({"properties": {"contents": ["SKU"]}}, "data.0.properties.contents.0: Not a valid mapping"),
    (
        {"properties": {"contents": [{"content_id": 123}]}},
        "data.0.properties.contents.0.content_id: Not a valid string",
    ),
    (
        {"properties": {"contents": [{"content_id": "A"}, {"price": "1"}]}},
        "data.0.properties.contents.1.price: Not a valid number",
    ),
    (
        {"properties": {"contents": [{"quantity": 1.5}]}},
        "data.0.properties.contents.0.quantity: Not a valid integer",
    ),
    (
        {"properties": {"contents": [{"quantity": True}]}},
        "data.0.properties.contents.0.quantity: Not a valid integer",
    ),
    (
        {"properties": {"contents": [{"quantity": -2}]}},
        "data.0.properties.contents.0.quantity: Must be greater than or equal to 0",
    ),
    ({"properties": {"contents": [{"brand": 1}]}}, "data.0.properties.contents.0.brand: Not a"),
    ({"properties": {"content_type": "sku"}}, "data.0.properties.content_type: Must be one of"),
    ({"properties": {"content_ids": ["A", 2]}}, "data.0.properties.content_ids.1: Not a valid s"),
    ({"properties": {"content_ids": "A"}}, "data.0.properties.content_ids: Not a valid list"),
    ({"properties": {"num_items": "3"}}, "data.0.properties.num_items: Not a valid integer"),
    ({"properties": {"order_id": 100234}}, "data.0.properties.order_id: Not a valid string"),
    ({"properties": {"query": None}}, "data.0.properties.query: Not a valid string"),
    ({"page": "https://a.example/"}, "data.0.page: Not a valid mapping type"),
    ({"page": {"url": "/checkout"}}, "data.0.page.url: Not a valid URL"),
    ({"page": {"url": "ftp://a.example/x"}}, "data.0.page.url: Not a valid URL"),
    ({"page": {"url": 5}}, "data.0.page.url: Not a valid string"),
    ({"page": {"url": "https://a.example/", "referrer": 0}}, "data.0.page.referrer: Not a v"),
    ({"page": {"url": "https://a.example/", "title": "T"}}, "data.0.page.title: Unknown field"),
    ({"limited_data_use": "yes"}, "data.0.limited_data_use: Not a valid boolean"),
    ({"device": "iPhone"}, "data.0.device: Not a valid mapping type"),
]


@pytest.mark.parametrize(("changes", "message"), EVENT_CASES)
async def test_event_rules(
    client: Client, state: EmulatorState, changes: Json, message: str
) -> None:
    status, answer = await post(client, make_body(make_event(**changes)))
    assert (status, answer["code"]) == (200, 40002)
    assert message in answer["message"]
    assert state.accepted == [] and state.requests[-1].code == 40002


async def test_first_bad_event_rejects_the_whole_request(
    client: Client, state: EmulatorState
) -> None:
    bad = make_event(properties={"contents": [{"content_id": 9}]})
    _, answer = await post(client, make_body(make_event(), make_event(), bad, make_event()))
    assert answer["message"] == "data.2.properties.contents.0.content_id: Not a valid string"
    assert state.accepted == []


async def test_non_object_event_is_named(client: Client) -> None:
    _, answer = await post(client, make_body(data=[make_event(), "Purchase"]))
    assert answer["message"] == "data.1: Not a valid mapping type"


async def test_page_url_is_optional(client: Client, state: EmulatorState) -> None:
    """TikTok's docs recommend page.url without requiring it, and TikTok's own sGTM template
    sends ``page: {}`` when it knows no page (issue 15: it used to be required here)."""
    for page in (None, {}, {"referrer": "https://a.example/"}):
        _, answer = await post(client, make_body(make_event(page=page)))
        assert answer["code"] == 0, page
    assert len(state.accepted) == 3


@pytest.mark.parametrize(
    "page", [None, {}, {"referrer": "https://a.example/"}], ids=["none", "empty", "referrer"]
)
async def test_page_url_required_when_configured(
    aiohttp_client: AiohttpClient, page: Json | None
) -> None:
    state = EmulatorState(EmulatorConfig(tokens={TOKEN: None}, require_page_url=True))
    client = await aiohttp_client(create_emulator_app(state))
    _, answer = await post(client, make_body(make_event(page=page)))
    assert answer["code"] == 40002
    assert "data.0.page.url: Missing data for required field" in answer["message"]
    assert state.accepted == []


async def test_event_time_bounds_follow_the_config(
    aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    config = EmulatorConfig(tokens={TOKEN: None}, max_event_age_s=60, max_future_skew_s=10)
    client = await aiohttp_client(create_emulator_app(EmulatorState(config, clock=clock)))
    now = int(clock.now)
    for event_time, code in [(now - 60, 0), (now - 61, 40002), (now + 10, 0), (now + 11, 40002)]:
        _, answer = await post(client, make_body(make_event(event_time=event_time)))
        assert answer["code"] == code, event_time


# --- scripts, QPS, latency ---


async def test_scripted_throttle(client: Client, state: EmulatorState) -> None:
    state.script(Script(Outcome.THROTTLE))
    status, answer = await post(client, make_body())
    assert (status, answer["code"]) == (200, 40100)
    assert answer["message"] == "Too many requests. Please retry in some time."
    assert state.accepted == [] and state.requests[-1].scripted is Outcome.THROTTLE
    assert (await post(client, make_body()))[1]["code"] == 0


async def test_scripted_fail_is_an_html_proxy_page(client: Client, state: EmulatorState) -> None:
    state.script(Script(Outcome.FAIL, http_status=502), Script(Outcome.FAIL))
    status, answer = await post(client, make_body())
    assert status == 502 and "<title>502 Bad Gateway</title>" in answer["html"]
    status, answer = await post(client, make_body())
    assert status == 500 and "500 Internal Server Error" in answer["html"]
    assert state.requests[0].code is None and state.requests[0].request_id is None
    assert state.accepted == []


async def test_scripted_fail_with_200_is_code_50000(client: Client, state: EmulatorState) -> None:
    state.script(Script(Outcome.FAIL, http_status=200))
    status, answer = await post(client, make_body())
    assert (status, answer["code"], answer["message"]) == (200, 50000, "Internal server error")


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (40002, "data.0.user.email: custom", "data.0.user.email: custom"),
        (50002, "", "Error processing request, please retry."),
        (51001, "", "Internal service timed out. Please retry in sometime."),
        (40133, "", "Advertiser's QPS reaches QPS limit."),
        (20001, "", "Partially successful"),
        (40999, "", "Error"),
    ],
)
async def test_scripted_code(
    client: Client, state: EmulatorState, code: int, message: str, expected: str
) -> None:
    state.script(Script(Outcome.CODE, code=code, message=message))
    status, answer = await post(client, make_body())
    assert (status, answer["code"], answer["message"]) == (200, code, expected)
    assert REQUEST_ID.fullmatch(answer["request_id"]) and state.accepted == []


async def test_script_times_and_fifo_order(client: Client, state: EmulatorState) -> None:
    state.script(
        Script(Outcome.THROTTLE, times=2),
        Script(Outcome.OK),
        Script(Outcome.CODE, code=40001, times=3),
    )
    codes = [(await post(client, make_body()))[1]["code"] for _ in range(7)]
    assert codes == [40100, 40100, 0, 40001, 40001, 40001, 0]
    state.script(Script(Outcome.THROTTLE))
    assert (await post(client, make_body()))[1]["code"] == 40100


def test_script_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="times"):
        Script(Outcome.THROTTLE, times=0)
    with pytest.raises(ValueError, match="http_status"):
        Script(Outcome.FAIL, http_status=700)
    with pytest.raises(ValueError, match="is not a valid Outcome"):
        Script("explode")  # type: ignore[arg-type]
    assert Script("hang").outcome is Outcome.HANG  # type: ignore[arg-type]


async def test_hang_until_released(client: Client, state: EmulatorState) -> None:
    state.script(Script(Outcome.HANG))  # 30 s unless released
    started = time.monotonic()
    pending = asyncio.create_task(post(client, make_body()))
    await state.wait_for_hanging(1, timeout_s=2)
    assert state.hanging == 1 and not pending.done()
    state.release_hangs()
    status, answer = await pending
    assert status == 500 and "500 Internal Server Error" in answer["html"]
    assert time.monotonic() - started < 1.0
    assert state.hanging == 0 and state.requests[-1].scripted is Outcome.HANG


async def test_hang_ends_by_itself_after_hang_s(client: Client, state: EmulatorState) -> None:
    state.script(Script(Outcome.HANG, hang_s=0.05))
    started = time.monotonic()
    status, _ = await post(client, make_body())
    assert status == 500 and 0.05 <= time.monotonic() - started < 1.0


async def test_wait_for_hanging_times_out(state: EmulatorState) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 requests hanging"):
        await state.wait_for_hanging(1, timeout_s=0.01)


async def test_qps_limit_per_wall_clock_second(
    aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    state = EmulatorState(EmulatorConfig(tokens={TOKEN: None}, qps_limit=2), clock=clock)
    client = await aiohttp_client(create_emulator_app(state))
    codes = [
        (await post(client, make_body(make_event(event_id=None))))[1]["code"] for _ in range(3)
    ]
    assert codes == [0, 0, 40100]
    clock.now += 1
    assert (await post(client, make_body()))[1]["code"] == 0
    assert len(state.accepted) == 3


async def test_latency_is_added(aiohttp_client: AiohttpClient) -> None:
    state = EmulatorState(EmulatorConfig(tokens={TOKEN: None}, latency_ms=60))
    client = await aiohttp_client(create_emulator_app(state))
    started = time.monotonic()
    _, answer = await post(client, make_body())
    assert answer["code"] == 0 and time.monotonic() - started >= 0.06


# --- dedup and waiting ---


async def test_duplicates_within_48_hours(aiohttp_client: AiohttpClient, clock: FakeClock) -> None:
    config = EmulatorConfig(tokens={TOKEN: None}, max_event_age_s=4 * 86400)
    state = EmulatorState(config, clock=clock)
    client = await aiohttp_client(create_emulator_app(state))

    def event(**changes: Any) -> Json:
        return make_event(event_time=int(clock.now), **changes)

    await post(client, make_body(event(), event(), event(event_id=None), event(event_id=None)))
    await post(client, make_body(event(event="AddToCart"), event(), event_source_id=OTHER_PIXEL))
    clock.now += 48 * 3600 - 1
    await post(client, make_body(event()))
    clock.now += 2
    await post(client, make_body(event()))
    assert [e.duplicate for e in state.accepted] == [
        False,
        True,
        False,
        False,
        False,
        False,
        True,
        False,
    ]
    assert state.duplicates == 2 and len(state.unique_events()) == 6


async def test_wait_for_events_resolves(client: Client, state: EmulatorState) -> None:
    waiting = asyncio.create_task(state.wait_for_events(3, timeout_s=5))
    await post(client, make_body(make_event(event_id="a"), make_event(event_id="b")))
    assert not waiting.done()
    await post(client, make_body(make_event(event_id="c")))
    events = await waiting
    assert [e.event_id for e in events] == ["a", "b", "c"]
    assert await state.wait_for_events(2, timeout_s=0) == events  # already satisfied


async def test_wait_for_events_times_out(state: EmulatorState) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="0 of 1 events accepted"):
        await state.wait_for_events(1, timeout_s=0.05)
    assert time.monotonic() - started < 1.0
    assert state._waiters == []


async def test_reset_clears_records_scripts_and_token_changes(
    client: Client, state: EmulatorState
) -> None:
    await post(client, make_body())
    state.script(Script(Outcome.THROTTLE))
    state.revoke(TOKEN)
    state.reset()
    assert state.accepted == [] and state.requests == []
    _, answer = await post(client, make_body())
    assert answer["code"] == 0 and not state.accepted[0].duplicate


# --- control endpoints ---


async def test_control_endpoints(client: Client, state: EmulatorState) -> None:
    async with client.post(
        "/_emulator/script",
        json=[{"outcome": "throttle", "times": 2}, {"outcome": "code", "code": 40133}],
    ) as r:
        assert (r.status, await r.json()) == (200, {"queued": 2})
    codes = [(await post(client, make_body()))[1]["code"] for _ in range(4)]
    assert codes == [40100, 40100, 40133, 0]
    await post(client, make_body(make_event(event_id="second")))

    async with client.get("/_emulator/events", params={"since": "1"}) as r:
        listing = await r.json()
    assert listing["total"] == 2 and [e["event_id"] for e in listing["events"]] == ["second"]
    assert listing["events"][0]["payload"]["event"] == "Purchase"
    async with client.get("/_emulator/requests") as r:
        records = (await r.json())["requests"]
    assert [x["code"] for x in records] == [40100, 40100, 40133, 0, 0]
    assert records[0]["scripted"] == "throttle" and records[-1]["pixel_code"] == PIXEL

    async with client.post("/_emulator/revoke", json={"token": TOKEN}) as r:
        assert r.status == 200
    assert (await post(client, make_body()))[1]["code"] == 40105
    async with client.post("/_emulator/restore", json={"token": TOKEN, "pixels": [OTHER_PIXEL]}):
        pass
    assert (await post(client, make_body()))[1]["code"] == 40001

    async with client.post("/_emulator/reset") as r:
        assert r.status == 200
    assert state.accepted == [] and state.requests == []
    assert (await post(client, make_body()))[1]["code"] == 0


async def test_control_release(client: Client, state: EmulatorState) -> None:
    async with client.post("/_emulator/script", json={"outcome": "hang"}) as r:
        assert r.status == 200
    pending = asyncio.create_task(post(client, make_body()))
    await state.wait_for_hanging()
    async with client.post("/_emulator/release") as r:
        assert await r.json() == {"released": 1}
    assert (await pending)[0] == 500


@pytest.mark.parametrize(
    ("path", "payload", "fragment"),
    [
        ("/_emulator/script", {"outcome": "explode"}, "bad script"),
        ("/_emulator/script", {"times": 2}, "needs an 'outcome'"),
        ("/_emulator/script", {"outcome": "ok", "bogus": 1}, "unknown script field(s): bogus"),
        ("/_emulator/script", {"outcome": "ok", "times": 0}, "times must be an integer"),
        ("/_emulator/revoke", {}, "'token' must be a non-empty string"),
        ("/_emulator/restore", {"token": "t", "pixels": "P"}, "'pixels' must be a list"),
    ],
)
async def test_control_endpoint_errors(
    client: Client, state: EmulatorState, path: str, payload: Json, fragment: str
) -> None:
    async with client.post(path, json=payload) as r:
        assert r.status == 400
        assert fragment in (await r.json())["error"]
    assert len(state._scripts) == 0


async def test_control_events_rejects_bad_since(client: Client) -> None:
    async with client.get("/_emulator/events", params={"since": "x"}) as r:
        assert r.status == 400


# --- serving, CLI helpers ---


async def test_serve_emulator_on_a_free_port_and_shut_down_while_hanging() -> None:
    state = EmulatorState(EmulatorConfig(tokens={TOKEN: None}))
    runner, port = await serve_emulator(state, "127.0.0.1", 0)
    try:
        assert port > 0
        url = api_base_url("127.0.0.1", port) + "event/track/"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=make_body(), headers={"Access-Token": TOKEN}) as r:
                assert (await r.json())["code"] == 0
            state.script(Script(Outcome.HANG))
            pending = asyncio.create_task(
                session.post(url, json=make_body(), headers={"Access-Token": TOKEN})
            )
            await state.wait_for_hanging()
            started = time.monotonic()
            await runner.cleanup()  # releases the hang instead of waiting 30 s
            assert time.monotonic() - started < 2.0
            async with await pending as r:
                assert r.status == 500
    finally:
        await runner.cleanup()
    assert len(state.accepted) == 1


def test_api_base_url() -> None:
    assert api_base_url("127.0.0.1", 9009) == "http://127.0.0.1:9009/open_api/v1.3/"
    assert api_base_url("::1", 9009) == "http://[::1]:9009/open_api/v1.3/"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_run_emulator_prints_url_and_stops_on_signal(sig: signal.Signals) -> None:
    code = (
        "from gateway.tiktok.emulator import run_emulator; "
        "from gateway.tiktok.emulator_state import EmulatorConfig; "
        "run_emulator('127.0.0.1', 0, EmulatorConfig(tokens={'tok': {'PIX'}}))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        match = re.search(r"TTGW_TIKTOK_API_URL=(http://127\.0\.0\.1:\d+/open_api/v1\.3/)", line)
        assert match and "tok (PIX)" in line
        async with aiohttp.ClientSession() as session:
            body = make_body(event_source_id="PIX")
            async with session.post(
                match.group(1) + "event/track/", json=body, headers={"Access-Token": "tok"}
            ) as r:
                assert (await r.json())["code"] == 0
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("abc", ("abc", None)),
        ("  abc  ", ("abc", None)),
        ("abc=PIX1", ("abc", {"PIX1"})),
        ("abc=PIX1, PIX2", ("abc", {"PIX1", "PIX2"})),
    ],
)
def test_parse_token_spec(spec: str, expected: tuple[str, set[str] | None]) -> None:
    assert parse_token_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "=PIX", "a b", "abc=", "abc=PIX1,,PIX2", "abc=PIX 1"])
def test_parse_token_spec_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="bad token spec"):
        parse_token_spec(spec)


# --- property tests: the validator the HTTP route uses, on generated events ---

_HASH = st.binary(min_size=1, max_size=16).map(lambda b: hashlib.sha256(b).hexdigest())
_TEXT = st.text(max_size=30)
_MONEY = st.one_of(st.integers(0, 10**9), st.floats(0, 1e9, allow_nan=False, allow_infinity=False))
_FOLDED = {n.casefold() for n in STANDARD_EVENTS | LEGACY_EVENTS | RESERVED_EVENTS} | {"pageview"}
_CUSTOM = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,49}", fullmatch=True).filter(
    lambda n: n.casefold() not in _FOLDED
)
_NAMES = st.one_of(st.sampled_from(sorted(STANDARD_EVENTS | LEGACY_EVENTS | {"Pageview"})), _CUSTOM)
_URLS = st.builds(
    "{}://{}/{}".format,
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z0-9]{1,12}(\.[a-z]{2,6}){1,2}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9/_.?=&-]{0,30}", fullmatch=True),
)
_USER = st.fixed_dictionaries(
    {},
    optional={
        "email": st.one_of(_HASH, st.lists(_HASH, min_size=1, max_size=3)),
        "phone": st.one_of(_HASH, st.lists(_HASH, min_size=1, max_size=3)),
        "external_id": st.one_of(_HASH, st.lists(_HASH, min_size=1, max_size=3)),
        "first_name": _HASH,
        "last_name": _HASH,
        "zip_code": _HASH,
        "ttclid": _TEXT,
        "ttp": st.from_regex(r"[A-Za-z0-9._+-]{1,128}", fullmatch=True),
        "ip": st.ip_addresses().map(str),
        "user_agent": _TEXT,
        "locale": _TEXT,
        "city": _TEXT,
        "state": _TEXT,
        "country": _TEXT,
    },
)
_CONTENT = st.fixed_dictionaries(
    {"content_id": _TEXT},
    optional={
        "price": _MONEY,
        "quantity": st.integers(0, 10**6),
        "content_name": _TEXT,
        "content_category": _TEXT,
        "brand": _TEXT,
        "content_type": _TEXT,
    },
)
_PROPERTIES = st.fixed_dictionaries(
    {},
    optional={
        "value": _MONEY,
        "currency": st.sampled_from(sorted(SUPPORTED_CURRENCIES)),
        "contents": st.lists(_CONTENT, max_size=3),
        "content_type": st.sampled_from(["product", "product_group"]),
        "content_ids": st.lists(_TEXT, max_size=3),
        "num_items": st.integers(0, 1000),
        "order_id": _TEXT,
        "shop_id": _TEXT,
        "search_string": _TEXT,
        "query": _TEXT,
        "description": _TEXT,
        "gtm_version": _TEXT,
    },
)
_PROPERTY_CONFIG = EmulatorConfig(tokens={})
_EVENTS = st.fixed_dictionaries(
    {
        "event": _NAMES,
        "event_time": st.integers(_NOW - 7 * 86400 + 600, _NOW + 250),
        "page": st.fixed_dictionaries({"url": _URLS}, optional={"referrer": _TEXT}),
    },
    optional={
        "event_id": st.text(min_size=1, max_size=40),
        "user": _USER,
        "properties": _PROPERTIES,
        "limited_data_use": st.booleans(),
    },
)
_PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, database=None)


def _wire(body: Json) -> Any:
    return orjson.loads(orjson.dumps(body))  # as the route sees it, after JSON


@_PROPERTY_SETTINGS
@given(st.lists(_EVENTS, min_size=1, max_size=4))
def test_property_valid_events_are_accepted(events: list[Json]) -> None:
    assert validate_body(_wire(make_body(*events)), _PROPERTY_CONFIG, _NOW) is None


@_PROPERTY_SETTINGS
@given(_EVENTS, st.emails(), st.sampled_from([0, 1]))
def test_property_raw_email_is_rejected(event: Json, email: str, as_list: int) -> None:
    event = copy.deepcopy(event)
    event.setdefault("user", {})["email"] = [email] if as_list else email
    rejection = validate_body(_wire(make_body(event)), _PROPERTY_CONFIG, _NOW)
    assert rejection is not None and rejection.code == 40002
    assert rejection.message.startswith("data.0.user.email")
