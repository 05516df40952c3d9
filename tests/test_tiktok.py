"""The Events API client: classification table, body building, batching, and sending to the
emulator (as TikTok, over real HTTP) and to the sandbox (real Redis)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from gateway.delivery.client import (
    ENVELOPE_MAX_BYTES,
    PARTNER_NAME,
    Destination,
    SandboxDestination,
    TikTokClient,
    build_body,
    chunks,
    envelope_size,
    event_problem,
)
from gateway.delivery.sandbox import Sandbox
from gateway.delivery.verdicts import Answer, Classification, Verdict, classify
from gateway.store import keys
from gateway.store.connections import RedisOptions, make_redis
from gateway.tiktok.emulator import serve_emulator
from gateway.tiktok.emulator_state import EmulatorConfig, EmulatorState, Outcome, Script
from gateway.tiktok.validation import DefaultLimits, validate_body
from tests.support import free_port

PIXEL = "CXXXXXXXXXXXXXXXXXX0"
OTHER_PIXEL = "CYYYYYYYYYYYYYYYYYY1"
TOKEN = "tok-SECRET-9f2c41d7e0"
LIMITED_TOKEN = "tok-LIMITED-58ab01"
EMAIL_HASH = hashlib.sha256(b"a@b.com").hexdigest()

Json = dict[str, Any]


def make_event(event_id: str = "order-1", **changes: Any) -> Json:
    """A valid web event; a change to None removes that key."""
    event: Json = {
        "event": "Purchase",
        "event_time": int(time.time()),
        "event_id": event_id,
        "user": {"email": [EMAIL_HASH], "ip": "203.0.113.7", "ttp": "01K0T8BYGJH63785W68YS5NN1R"},
        "properties": {"currency": "USD", "value": 59.9, "contents": [{"content_id": "SKU-1"}]},
        "page": {"url": "https://shop.example.com/thank-you"},
    }
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def api_json(code: Any, message: str = "m", request_id: str = "RID1") -> bytes:
    return orjson.dumps({"code": code, "message": message, "request_id": request_id, "data": {}})


# --- classify -------------------------------------------------------------------------------

CODE_TABLE = [
    (0, Verdict.DELIVERED),
    (20001, Verdict.DELIVERED),
    (40050, Verdict.DELIVERED),
    *[(c, Verdict.RETRY) for c in (50000, 50002, 51001, 51039, 51305, 60001)],
    (50001, Verdict.RETRY),  # unknown 5xxxx
    (59999, Verdict.RETRY),
    *[(c, Verdict.THROTTLED) for c in (40016, 40100, 40132, 40133, 51021)],
    (40000, Verdict.INVALID),
    (40002, Verdict.INVALID),
    *[
        (c, Verdict.AUTH)
        for c in (40001, 40101, 40102, 40104, 40105, 40106, 40113, 40118, 40119, 40125)
    ],
    *[(c, Verdict.AUTH) for c in (40006, 40010, 40051)],  # wrong API version / domain
    (40007, Verdict.REJECTED),  # unknown / other 4xxxx
    (40099, Verdict.REJECTED),
    (49999, Verdict.REJECTED),
    (12345, Verdict.RETRY),  # from no documented range: retried, not dropped
]


@pytest.mark.parametrize(("code", "verdict"), CODE_TABLE)
def test_body_code_decides(code: int, verdict: Verdict) -> None:
    result = classify(200, api_json(code, "the message", "20260101000000ABC"))
    assert result == Classification(verdict, code, "the message", "20260101000000ABC")


@pytest.mark.parametrize("status", [400, 429, 500, 502])
def test_body_code_wins_over_http_status(status: int) -> None:
    assert classify(status, api_json(40100)).verdict is Verdict.THROTTLED
    assert classify(status, api_json(0)).verdict is Verdict.DELIVERED


EMULATOR_502_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>"
    b"502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

STATUS_TABLE = [
    (200, b"OK", Verdict.RETRY),  # not JSON
    (200, b"", Verdict.RETRY),
    (200, b"[0]", Verdict.RETRY),  # JSON, not an object
    (200, b'{"message": "OK"}', Verdict.RETRY),  # JSON without a code
    (200, b'{"code": "0"}', Verdict.RETRY),  # code not an integer
    (200, b'{"code": true}', Verdict.RETRY),
    (502, EMULATOR_502_PAGE, Verdict.RETRY),
    (500, b"", Verdict.RETRY),
    (503, b"Service Unavailable", Verdict.RETRY),
    (408, b"", Verdict.RETRY),
    (429, b"Too Many Requests", Verdict.RETRY),
    (413, b"<html><title>413 Request Entity Too Large</title></html>", Verdict.INVALID),
    (401, b"", Verdict.AUTH),
    (403, b"Forbidden", Verdict.AUTH),
    (404, b"page not found", Verdict.AUTH),
    (405, b"", Verdict.AUTH),
    (301, b"", Verdict.AUTH),  # redirects are not followed: the URL is wrong
    (400, b"Bad Request", Verdict.REJECTED),
    (415, b"", Verdict.REJECTED),
    (None, None, Verdict.RETRY),
]


@pytest.mark.parametrize(("status", "body", "verdict"), STATUS_TABLE)
def test_without_a_code_the_http_status_decides(
    status: int | None, body: bytes | None, verdict: Verdict
) -> None:
    result = classify(status, body)
    assert result.verdict is verdict
    assert result.code is None
    assert result.message


def test_messages_describe_pages_and_keep_request_ids() -> None:
    page = classify(502, EMULATOR_502_PAGE)
    assert page.message == "HTTP 502, not an API answer: 502 Bad Gateway"
    assert page.request_id is None
    no_code = classify(200, b'{"message": "hello", "request_id": "R9"}')
    assert "without an integer code" in no_code.message and "hello" in no_code.message
    assert no_code.request_id == "R9"
    assert classify(200, b"").message == "HTTP 200, empty answer"
    long = classify(200, b"x" * 10_000).message
    assert len(long) <= 300
    assert classify(200, api_json(0, request_id="")).request_id is None


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (TimeoutError(), "TimeoutError"),
        (aiohttp.ServerTimeoutError("read timed out"), "ServerTimeoutError"),
        (ConnectionRefusedError(111, "Connection refused"), "ConnectionRefusedError"),
        (aiohttp.ServerDisconnectedError(), "ServerDisconnectedError"),
        (aiohttp.ClientPayloadError("truncated"), "ClientPayloadError"),
    ],
)
def test_errors_are_retried_and_named(error: BaseException, name: str) -> None:
    result = classify(None, None, error)
    assert result.verdict is Verdict.RETRY
    assert result.code is None and result.request_id is None
    assert result.message.startswith(name)
    # an error while reading the body wins over a status already received
    assert classify(200, b"", error).verdict is Verdict.RETRY


# --- build_body -----------------------------------------------------------------------------


def test_build_body_splices_events_unchanged() -> None:
    # Not orjson's formatting: spaces, key order and "59.90" must all survive byte for byte.
    first = b'{"event": "Purchase", "event_id": "a", "properties": {"value": 59.90}}'
    second = b'{"event_id":"b","event":"AddToCart"}'
    body = build_body(PIXEL, [first, second])
    assert body == (
        b'{"event_source":"web","event_source_id":"CXXXXXXXXXXXXXXXXXX0",'
        b'"partner_name":"TikTokGateway","data":[' + first + b"," + second + b"]}"
    )
    parsed = orjson.loads(body)
    assert list(parsed) == ["event_source", "event_source_id", "partner_name", "data"]
    assert parsed["data"] == [orjson.loads(first), orjson.loads(second)]


def test_test_event_code_only_when_given_and_at_top_level() -> None:
    event = orjson.dumps(make_event())
    plain = orjson.loads(build_body(PIXEL, [event]))
    assert "test_event_code" not in plain
    assert "test_event_code" not in orjson.loads(build_body(PIXEL, [event], test_event_code=""))
    tested = orjson.loads(build_body(PIXEL, [event], test_event_code="TEST12345"))
    assert tested["test_event_code"] == "TEST12345"
    assert "test_event_code" not in tested["data"][0]
    assert tested["partner_name"] == PARTNER_NAME
    assert "partner_name" not in orjson.loads(build_body(PIXEL, [event], partner_name=None))
    assert orjson.loads(build_body(PIXEL, [event], partner_name="Acme"))["partner_name"] == "Acme"


@pytest.mark.parametrize(
    "odd", ['quo"te', "back\\slash", "new\nline", "tab\t\x00nul", "é\u2028ünïcode", "</script>"]
)
def test_envelope_strings_are_quoted(odd: str) -> None:
    body = build_body(odd, [b"{}"], test_event_code=odd, partner_name=odd)
    parsed = orjson.loads(body)
    assert parsed["event_source_id"] == parsed["test_event_code"] == parsed["partner_name"] == odd
    assert parsed["data"] == [{}]


def test_a_built_body_of_valid_events_passes_tiktoks_rules() -> None:
    events = [orjson.dumps(make_event(f"order-{i}")) for i in range(3)]
    body = build_body(PIXEL, events, test_event_code="TEST1")
    assert validate_body(orjson.loads(body), DefaultLimits(), time.time()) is None


def test_envelope_size_is_exact() -> None:
    events = [b'{"a":1}', b'{"b":2}']
    body = build_body(PIXEL, events, test_event_code="T" * 100)
    size = envelope_size(PIXEL, test_event_code="T" * 100)
    assert len(body) == size + sum(map(len, events)) + len(events) - 1
    assert size <= ENVELOPE_MAX_BYTES  # the default budget covers a long test code


# --- chunks ---------------------------------------------------------------------------------


def test_chunks_cap_the_event_count() -> None:
    assert chunks([50] * 2500) == [range(1000), range(1000, 2000), range(2000, 2500)]
    assert chunks([50] * 1000) == [range(1000)]
    assert chunks([50] * 5, max_events=2) == [range(2), range(2, 4), range(4, 5)]


def test_chunks_cap_the_body_size() -> None:
    events = [
        orjson.dumps({"event_id": f"e{i}", "pad": "x" * (200 + (i * 7919) % 4000)})
        for i in range(400)
    ]
    max_bytes = 50_000
    ranges = chunks([len(e) for e in events], max_bytes=max_bytes)
    assert [i for r in ranges for i in r] == list(range(len(events)))  # consecutive, complete
    assert len(ranges) > 10
    for r in ranges:
        body = build_body(PIXEL, events[r.start : r.stop], test_event_code="TEST12345")
        assert len(body) <= max_bytes
        assert len(orjson.loads(body)["data"]) == len(r)
        if r.stop < len(events):  # not wasteful: the next event would not have fit
            fuller = build_body(PIXEL, events[r.start : r.stop + 1], test_event_code="TEST12345")
            assert len(fuller) > max_bytes - ENVELOPE_MAX_BYTES


def test_chunks_with_the_exact_envelope_fill_to_the_byte() -> None:
    envelope = envelope_size(PIXEL)
    max_bytes = envelope + 3 * 100 + 2  # exactly three 100-byte events
    assert chunks([100] * 7, max_bytes=max_bytes, envelope_bytes=envelope) == [
        range(3),
        range(3, 6),
        range(6, 7),
    ]


def test_an_oversized_event_is_alone() -> None:
    huge = keys.DELIVERY_REQUEST_MAX_BYTES + 1
    assert chunks([10, huge, 10, 10]) == [range(1), range(1, 2), range(2, 4)]
    assert chunks([huge, huge]) == [range(1), range(1, 2)]
    assert chunks([huge]) == [range(1)]


def test_chunks_of_nothing_and_bad_limits() -> None:
    assert chunks([]) == []
    with pytest.raises(ValueError, match="max_events"):
        chunks([1], max_events=0)
    with pytest.raises(ValueError, match="max_bytes"):
        chunks([1], max_bytes=ENVELOPE_MAX_BYTES)


# --- event_problem ----------------------------------------------------------------------------


def test_event_problem() -> None:
    now = time.time()
    assert event_problem(make_event(), PIXEL, now) is None
    raw_email = make_event(user={"email": "a@b.com"})
    problem = event_problem(raw_email, PIXEL, now)
    assert problem is not None and "user.email" in problem and "SHA-256" in problem
    old = event_problem(make_event(event_time=int(now) - 8 * 86400), PIXEL, now)
    assert old is not None and "event_time" in old and "in the past" in old
    millis = event_problem(make_event(event_time=int(now * 1000)), PIXEL, now)
    assert millis is not None and "milliseconds" in millis


# --- TikTokClient against the emulator ------------------------------------------------------


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[EmulatorState, int]]:
    state = EmulatorState(
        EmulatorConfig(tokens={TOKEN: None, LIMITED_TOKEN: {OTHER_PIXEL}}, max_body_bytes=64_000)
    )
    runner, port = await serve_emulator(state, "127.0.0.1", 0)
    try:
        yield state, port
    finally:
        state.release_hangs()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def client(emulator: tuple[EmulatorState, int], session: aiohttp.ClientSession) -> TikTokClient:
    return TikTokClient(session, f"http://127.0.0.1:{emulator[1]}/open_api/v1.3/")


def body_of(*events: Json, pixel: str = PIXEL) -> bytes:
    return build_body(pixel, [orjson.dumps(e) for e in events or (make_event(),)])


async def test_delivered(client: TikTokClient, emulator: tuple[EmulatorState, int]) -> None:
    state, _ = emulator
    events = [make_event("order-1"), make_event("order-2", event="AddToCart")]
    answer = await client.send(body_of(*events), TOKEN)
    assert answer.verdict is Verdict.DELIVERED
    assert (answer.http_status, answer.code, answer.message) == (200, 0, "OK")
    assert answer.request_id is not None and answer.request_id == state.requests[-1].request_id
    assert 0 < answer.elapsed_ms < 5000
    assert [e.payload for e in state.accepted] == events
    assert {e.request_id for e in state.accepted} == {answer.request_id}


async def test_resending_is_still_delivered(
    client: TikTokClient, emulator: tuple[EmulatorState, int]
) -> None:
    state, _ = emulator
    for _ in range(2):
        assert (await client.send(body_of(), TOKEN)).verdict is Verdict.DELIVERED
    assert state.duplicates == 1 and len(state.unique_events()) == 1


async def test_auth_failures(client: TikTokClient, emulator: tuple[EmulatorState, int]) -> None:
    state, _ = emulator
    revoked = await client.send(body_of(), "not-a-token")
    assert (revoked.verdict, revoked.code) == (Verdict.AUTH, 40105)
    assert revoked.message == "Access token is incorrect or has been revoked."
    missing = await client.send(body_of(), "")
    assert (missing.verdict, missing.code) == (Verdict.AUTH, 40104)
    other_pixel = await client.send(body_of(), LIMITED_TOKEN)
    assert (other_pixel.verdict, other_pixel.code) == (Verdict.AUTH, 40001)
    assert PIXEL in other_pixel.message
    assert state.accepted == []


async def test_wrong_url_is_auth(
    session: aiohttp.ClientSession, emulator: tuple[EmulatorState, int]
) -> None:
    client = TikTokClient(session, f"http://127.0.0.1:{emulator[1]}/open_api/v1.2")
    assert client.url.endswith("/open_api/v1.2/event/track/")
    answer = await client.send(body_of(), TOKEN)
    assert (answer.verdict, answer.http_status, answer.code) == (Verdict.AUTH, 404, None)
    assert "page not found" in answer.message


@pytest.mark.parametrize(
    ("script", "verdict", "status", "code"),
    [
        (Script(Outcome.THROTTLE), Verdict.THROTTLED, 200, 40100),
        (Script(Outcome.FAIL, http_status=502), Verdict.RETRY, 502, None),
        (Script(Outcome.FAIL, http_status=200), Verdict.RETRY, 200, 50000),
        (Script(Outcome.CODE, code=50002), Verdict.RETRY, 200, 50002),
        (Script(Outcome.CODE, code=20001), Verdict.DELIVERED, 200, 20001),
        (Script(Outcome.CODE, code=40050), Verdict.DELIVERED, 200, 40050),
        (Script(Outcome.CODE, code=40133), Verdict.THROTTLED, 200, 40133),
        (Script(Outcome.CODE, code=40007, message="gone"), Verdict.REJECTED, 200, 40007),
    ],
)
async def test_scripted_answers(
    client: TikTokClient,
    emulator: tuple[EmulatorState, int],
    script: Script,
    verdict: Verdict,
    status: int,
    code: int | None,
) -> None:
    state, _ = emulator
    state.script(script)
    answer = await client.send(body_of(), TOKEN)
    assert (answer.verdict, answer.http_status, answer.code) == (verdict, status, code)
    assert answer.message
    if code is None:
        assert answer.message == "HTTP 502, not an API answer: 502 Bad Gateway"
        assert answer.request_id is None
    else:
        assert answer.request_id == state.requests[-1].request_id
    # the script is used up: the next send goes through
    assert (await client.send(body_of(), TOKEN)).verdict is Verdict.DELIVERED


async def test_invalid_event(client: TikTokClient, emulator: tuple[EmulatorState, int]) -> None:
    state, _ = emulator
    raw_email = make_event("order-9", user={"email": "a@b.com"})
    answer = await client.send(body_of(make_event(), raw_email), TOKEN)
    assert (answer.verdict, answer.code) == (Verdict.INVALID, 40002)
    assert answer.message == state.requests[-1].message
    assert answer.message.startswith("data.1.user.email: ")
    assert state.accepted == []


async def test_too_large_is_invalid(
    client: TikTokClient, emulator: tuple[EmulatorState, int]
) -> None:
    big = make_event(properties={"description": "x" * 100_000})
    answer = await client.send(body_of(big), TOKEN)
    assert (answer.verdict, answer.http_status, answer.code) == (Verdict.INVALID, 413, None)


async def test_hang_times_out_quickly_as_retry(
    session: aiohttp.ClientSession, emulator: tuple[EmulatorState, int]
) -> None:
    state, port = emulator
    state.script(Script(Outcome.HANG, hang_s=10))
    client = TikTokClient(session, f"http://127.0.0.1:{port}/open_api/v1.3/", timeout_s=0.3)
    started = time.monotonic()
    answer = await client.send(body_of(), TOKEN)
    assert time.monotonic() - started < 2
    assert (answer.verdict, answer.http_status, answer.code) == (Verdict.RETRY, None, None)
    assert (
        answer.message.startswith("TimeoutError: ") and "may still have accepted" in answer.message
    )
    assert 250 <= answer.elapsed_ms < 2000
    assert state.hanging == 1  # the request reached the server: an ambiguous time-out
    state.release_hangs()
    assert (await client.send(body_of(), TOKEN)).verdict is Verdict.DELIVERED


async def test_connection_refused_is_retry(session: aiohttp.ClientSession) -> None:
    client = TikTokClient(session, f"http://127.0.0.1:{free_port()}/open_api/v1.3/")
    answer = await client.send(body_of(), TOKEN)
    assert (answer.verdict, answer.http_status, answer.code) == (Verdict.RETRY, None, None)
    assert answer.message.startswith("ClientConnectorError")
    assert "Cannot connect" in answer.message


async def test_short_tokens_do_not_mangle_messages(client: TikTokClient) -> None:
    answer = await client.send(body_of(), "t")
    assert answer.message == "Access token is incorrect or has been revoked."


async def test_token_never_logged_or_returned(
    client: TikTokClient, emulator: tuple[EmulatorState, int], session: aiohttp.ClientSession
) -> None:
    state, _ = emulator
    state.script(Script(Outcome.CODE, code=40002, message=f"echo {TOKEN} back"))
    refused = TikTokClient(session, f"http://127.0.0.1:{free_port()}/open_api/v1.3/")
    with capture_logs() as logs:
        answers = [
            await client.send(body_of(), TOKEN),  # a (hypothetical) answer echoing the token
            await client.send(body_of(), TOKEN),
            await client.send(body_of(make_event(user={"email": "a@b.com"})), TOKEN),
            await refused.send(body_of(), TOKEN),
            await client.send(body_of(), TOKEN + "\r\nX-Injected: 1"),
        ]
    assert [a.verdict for a in answers] == [
        Verdict.INVALID,
        Verdict.DELIVERED,
        Verdict.INVALID,
        Verdict.RETRY,
        Verdict.AUTH,
    ]
    assert answers[0].message == "echo [access token] back"
    assert answers[4].message.startswith("access token has characters not allowed")
    assert len(state.requests) == 3  # the header-breaking token was never sent
    assert len(logs) == 5  # one line per request
    for line in logs:
        assert line["event"] == "tiktok.request"
        assert {"http_status", "code", "request_id", "elapsed_ms", "bytes"} <= line.keys()
        assert "a@b.com" not in repr(line) and EMAIL_HASH not in repr(line)  # no payload
    assert logs[1]["log_level"] == "info" and logs[1]["request_id"] == answers[1].request_id
    assert logs[2]["log_level"] == "warning" and "user.email" in logs[2]["message"]
    assert TOKEN not in repr(logs) and TOKEN not in repr(answers)


async def test_concurrent_sends_share_the_session(
    client: TikTokClient, emulator: tuple[EmulatorState, int]
) -> None:
    state, _ = emulator
    bodies = [body_of(make_event(f"order-{i}")) for i in range(20)]
    answers = await asyncio.gather(*(client.send(b, TOKEN) for b in bodies))
    assert all(a.verdict is Verdict.DELIVERED for a in answers)
    assert len({a.request_id for a in answers}) == 20 and len(state.accepted) == 20


# --- SandboxDestination -------------------------------------------------------------------------


async def test_sandbox_destination(redis_url: str, redis: Redis) -> None:
    sandbox = Sandbox(make_redis(redis_url))
    destination: Destination = SandboxDestination(sandbox)
    try:
        answer = await destination.send(
            build_body(PIXEL, [orjson.dumps(make_event("order-7"))], test_event_code="T1"), ""
        )
        assert isinstance(answer, Answer)
        assert (answer.verdict, answer.http_status, answer.code) == (Verdict.DELIVERED, 200, 0)
        records = await sandbox.recorded()
        assert [(r.event_id, r.pixel_code, r.test_event_code) for r in records] == [
            ("order-7", PIXEL, "T1")
        ]
        assert records[0].request_id == answer.request_id
        invalid = await destination.send(body_of(make_event(user={"email": "a@b.com"})), "")
        assert (invalid.verdict, invalid.code) == (Verdict.INVALID, 40002)
        assert "data.0.user.email" in invalid.message
        assert await redis.xlen(keys.SANDBOX_STREAM) == 1
    finally:
        await sandbox.redis.aclose()


async def test_sandbox_destination_without_redis_is_retry() -> None:
    options = RedisOptions(retries=0, connect_timeout_s=1.0)
    sandbox = Sandbox(make_redis(f"redis://127.0.0.1:{free_port()}/0", options))
    try:
        answer = await SandboxDestination(sandbox).send(body_of(), TOKEN)
    finally:
        await sandbox.redis.aclose()
    assert (answer.verdict, answer.http_status, answer.code) == (Verdict.RETRY, None, None)
    assert answer.message.startswith("ConnectionError")
