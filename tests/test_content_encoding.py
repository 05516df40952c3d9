"""Bodies whose Content-Encoding is a lie or unknown: 4xx naming ``Content-Encoding``, no traceback.

Every surface that reads a body is tried over real HTTP — ``/e``, ``/v1/track``, the admin API
and the ``/tt/`` beacon proxy (its upstream a local stand-in) — with what a broken client or a
prober sends, and the log is read for tracebacks: structlog's lines and stdlib logging's records.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from structlog.testing import capture_logs

from gateway.app import create_app
from gateway.logs import add_request_id
from gateway.settings import Settings
from gateway.store import keys
from tests.ingest_support import track

Client = TestClient  # type: ignore[type-arg]

ADMIN_TOKEN = "tta_" + "a" * 32
WRITE_KEY = "ttw_" + "w" * 32
EVENT = orjson.dumps(track(event_id="enc-1"))

# (path, headers): every route that reads a request body, one per surface
SURFACES = [
    ("/e", {"Content-Type": "text/plain"}),
    ("/v1/track", {"Content-Type": "application/json", "Authorization": f"Bearer {WRITE_KEY}"}),
    (
        "/v1/admin/replay",
        {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"},
    ),
    ("/tt/api/v2/pixel", {"Content-Type": "text/plain"}),
]


def _bad_trailer(data: bytes) -> bytes:
    """``data`` with its last byte (in the checksum of the trailer) flipped."""
    return data[:-1] + bytes([data[-1] ^ 0xFF])


GARBAGE = {
    "gzip": [
        b"this is not gzip at all",
        b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"not deflate data either",
        _bad_trailer(gzip.compress(EVENT)),
    ],
    "deflate": [
        b"garbage!!",
        b"\x78\x9c" + b"\xff" * 40,
        _bad_trailer(zlib.compress(EVENT)),
    ],
}


@dataclass
class StandIn:
    """The pixel origin: records what reaches it."""

    origin: str = ""
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        return web.json_response({"code": 0})


@pytest.fixture
async def stand_in(aiohttp_server: Any) -> StandIn:
    upstream = StandIn()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app)
    upstream.origin = f"http://127.0.0.1:{server.port}"
    return upstream


@pytest.fixture
async def client(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    redis_url: str,
    stand_in: StandIn,
) -> Client:
    settings = make_settings(
        TTGW_REDIS_URL=redis_url,
        TTGW_ADMIN_TOKEN=ADMIN_TOKEN,
        TTGW_WRITE_KEY=WRITE_KEY,
        TTGW_PIXEL_ORIGIN=stand_in.origin,
    )
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[dict[str, Any]]]:
    """structlog's lines; stdlib records (aiohttp's) stay in ``caplog``."""
    caplog.set_level(logging.INFO)
    with capture_logs(processors=[add_request_id]) as lines:
        yield lines


def assert_no_traceback(lines: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    assert [
        r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR
    ] == []
    assert "Traceback" not in caplog.text
    assert [line for line in lines if "exc_info" in line or "exception" in line] == []
    assert [line for line in lines if line["log_level"] in ("error", "critical")] == []


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_body_that_is_not_what_its_encoding_says_is_a_400_everywhere(
    client: Client,
    redis: Redis,
    stand_in: StandIn,
    logs: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    coding: str,
) -> None:
    for path, headers in SURFACES:
        for body in GARBAGE[coding]:
            answer = await client.post(
                path, data=body, headers={**headers, "Content-Encoding": coding}
            )
            assert answer.status == 400, (path, body, await answer.text())
            assert answer.content_type == "application/json"
            refusal = await answer.json()
            assert refusal["field"] == "Content-Encoding", (path, refusal)
            assert coding in refusal["error"]
    assert_no_traceback(logs, caplog)
    requests = [line for line in logs if line.get("event") == "request"]
    assert len(requests) == len(SURFACES) * len(GARBAGE[coding])
    assert {line["status"] for line in requests} == {400}
    assert await redis.xlen(keys.EVENTS_STREAM) == 0
    assert stand_in.bodies == []


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_body_that_is_what_its_encoding_says_is_decoded(
    client: Client, redis: Redis, stand_in: StandIn, coding: str
) -> None:
    """The control: the same surfaces take honest compressed bodies."""
    encode = gzip.compress if coding == "gzip" else zlib.compress
    answers = {}
    for path, headers in SURFACES:
        body = orjson.dumps({"all": True}) if "admin" in path else EVENT
        answer = await client.post(
            path, data=encode(body), headers={**headers, "Content-Encoding": coding.upper()}
        )
        answers[path] = answer.status
    assert answers == {
        "/e": 202,
        "/v1/track": 202,
        "/v1/admin/replay": 200,
        "/tt/api/v2/pixel": 200,
    }
    assert await redis.xlen(keys.EVENTS_STREAM) == 1  # /e and /v1/track: one event_id, once
    assert stand_in.bodies == [EVENT]  # forwarded decoded


@pytest.mark.parametrize("coding", ["x-gzip", "gzip, deflate", "compress", "snappy", "gzip;q=1"])
async def test_an_encoding_that_is_not_decoded_is_a_415(
    client: Client,
    redis: Redis,
    stand_in: StandIn,
    logs: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    coding: str,
) -> None:
    """aiohttp passes these through undecoded: read as JSON they would be garbage, or worse,
    an event accepted from a body the client believes compressed."""
    for path, headers in SURFACES:
        answer = await client.post(
            path, data=EVENT, headers={**headers, "Content-Encoding": coding}
        )
        assert answer.status == 415, (path, await answer.text())
        assert (await answer.json())["field"] == "Content-Encoding"
        assert answer.headers["Accept-Encoding"] == "gzip, deflate"
    assert_no_traceback(logs, caplog)
    assert await redis.xlen(keys.EVENTS_STREAM) == 0
    assert stand_in.bodies == []


@pytest.mark.parametrize("coding", ["br", "zstd"])
async def test_an_encoding_aiohttp_cannot_decode_here_is_a_400_without_traceback(
    client: Client,
    redis: Redis,
    logs: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    coding: str,
) -> None:
    """Without Brotli or zstd support aiohttp's parser refuses the request before any middleware
    (its own plain-text 400); with it, the garbage body is refused like a bad gzip one."""
    for path, headers in SURFACES:
        answer = await client.post(
            path, data=b"xx", headers={**headers, "Content-Encoding": coding}
        )
        assert answer.status == 400, path
        assert "content-encoding" in (await answer.text()).lower()
    assert_no_traceback(logs, caplog)
    refused = [line for line in logs if line.get("event") in ("request_refused", "request")]
    assert len(refused) == len(SURFACES)
    assert all(line["status"] == 400 for line in refused)
    assert await redis.xlen(keys.EVENTS_STREAM) == 0
