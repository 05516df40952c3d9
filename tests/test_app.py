from __future__ import annotations

import asyncio
import datetime
import io
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from gateway import __version__
from gateway.app import HTTP, REDIS, REQUEST_ID_HEADER, create_app
from gateway.logs import add_request_id
from gateway.settings import Settings
from tests.support import free_port

MakeSettings = Callable[..., Settings]
ClientFactory = Callable[..., TestClient]  # type: ignore[type-arg]


async def test_healthz_answers(aiohttp_client, make_settings: MakeSettings, redis_url: str) -> None:
    client = await aiohttp_client(create_app(make_settings(TTGW_REDIS_URL=redis_url)))
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "version": __version__}


async def test_readyz_pings_redis(
    aiohttp_client, make_settings: MakeSettings, redis_url: str
) -> None:
    app = create_app(make_settings(TTGW_REDIS_URL=redis_url))
    client = await aiohttp_client(app)
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready", "redis": "ok"}
    assert await app[REDIS].ping()
    assert not app[HTTP].closed


async def test_readyz_is_503_when_redis_is_down(
    aiohttp_client, make_settings: MakeSettings
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    client = await aiohttp_client(create_app(make_settings(TTGW_REDIS_URL=dead)))
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable" and body["redis"]
    # the process stays up: liveness still answers
    assert (await client.get("/healthz")).status == 200


async def test_request_id_is_kept_or_made(
    aiohttp_client, make_settings: MakeSettings, redis_url: str
) -> None:
    client = await aiohttp_client(create_app(make_settings(TTGW_REDIS_URL=redis_url)))
    given = await client.get("/healthz", headers={REQUEST_ID_HEADER: "req-12345678"})
    assert given.headers[REQUEST_ID_HEADER] == "req-12345678"
    made = await client.get("/healthz", headers={REQUEST_ID_HEADER: "bad id"})
    assert made.headers[REQUEST_ID_HEADER] != "bad id"
    assert len(made.headers[REQUEST_ID_HEADER]) == 16
    missing = await client.get("/nowhere")
    assert missing.status == 404
    assert REQUEST_ID_HEADER in missing.headers


async def test_one_log_line_per_request_with_its_id(
    aiohttp_client, make_settings: MakeSettings, redis_url: str
) -> None:
    client = await aiohttp_client(create_app(make_settings(TTGW_REDIS_URL=redis_url)))
    with capture_logs(processors=[add_request_id]) as logs:
        response = await client.get("/healthz")
    lines = [line for line in logs if line["event"] == "request"]
    assert len(lines) == 1
    assert lines[0]["request_id"] == response.headers[REQUEST_ID_HEADER]
    assert lines[0]["status"] == 200 and lines[0]["path"] == "/healthz"
    assert lines[0]["duration_ms"] >= 0


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("all", [200, 200, 200, 404, 200]),
        ("errors", [200, 404]),  # the first of each 100 below 400 is sampled, every error kept
        ("off", []),
    ],
)
async def test_access_log_modes(
    aiohttp_client, make_settings: MakeSettings, redis_url: str, mode: str, expected: list[int]
) -> None:
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_ACCESS_LOG=mode)
    assert settings.access_log == mode
    client = await aiohttp_client(create_app(settings))
    with capture_logs() as logs:
        for path in ("/healthz", "/healthz", "/healthz", "/nowhere", "/healthz"):
            response = await client.get(path)
            assert REQUEST_ID_HEADER in response.headers
    assert [line["status"] for line in logs if line["event"] == "request"] == expected


def test_json_logging_writes_one_object_per_line(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    from gateway.logs import configure_logging, get_logger

    configure_logging("info")
    log = get_logger("test")
    log.debug("hidden")
    log.info("shown", pixel="CXXXXXXXXXXXXXXXXXX0", n=3)
    out = capsysbinary.readouterr().out.splitlines()
    assert len(out) == 1
    record = orjson.loads(out[0])
    assert record["event"] == "shown" and record["level"] == "info"
    assert record["n"] == 3 and record["component"] == "test" and "timestamp" in record


class _Writes(io.BytesIO):
    """A binary stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> int:
        self.writes += 1
        return super().write(data)


async def test_lines_logged_in_one_loop_iteration_are_written_together_in_order() -> None:
    from gateway.logs import LineWriter

    out = _Writes()
    writer = LineWriter(out)
    for n in range(3):
        writer.info(orjson.dumps({"n": n}))
    assert out.getvalue() == b""  # held until the iteration ends
    await asyncio.sleep(0)
    assert out.writes == 1
    assert [orjson.loads(line)["n"] for line in out.getvalue().splitlines()] == [0, 1, 2]
    writer.info(b'{"n":3}')
    writer.flush()  # as at exit and before a fork
    assert out.getvalue().endswith(b'{"n":3}\n') and out.writes == 2


@pytest.mark.parametrize(
    "ns", [1_796_238_027_123_456_789, 1_796_238_027_000_000_000, 1_796_238_027_000_001_000]
)
def test_the_log_timestamp_is_the_iso_utc_text_structlog_writes(
    monkeypatch: pytest.MonkeyPatch, ns: int
) -> None:
    import gateway.logs

    micros = ns // 1000
    when = datetime.datetime.fromtimestamp(micros // 1_000_000, tz=datetime.UTC).replace(
        microsecond=micros % 1_000_000
    )
    monkeypatch.setattr(gateway.logs.time, "time_ns", lambda: ns)
    clock = gateway.logs._Clock()
    assert clock(None, "info", {})["timestamp"] == when.isoformat().replace("+00:00", "Z")
    monkeypatch.setattr(gateway.logs.time, "time_ns", lambda: ns + 86_400 * 10**9)
    later = clock(None, "info", {})["timestamp"]  # the date part is made again a second later
    assert later[:10] != when.isoformat()[:10]


def test_create_app_needs_a_redis_url(make_settings: MakeSettings) -> None:
    with pytest.raises(ValueError, match="redis_url"):
        create_app(make_settings())


async def test_metrics_are_served(
    aiohttp_client, make_settings: MakeSettings, redis_url: str
) -> None:
    client = await aiohttp_client(create_app(make_settings(TTGW_REDIS_URL=redis_url)))
    await client.post("/e", json={"event": "ViewContent", "event_id": "m1"})
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert 'ttgw_events_ingested_total{source="browser",status="queued"}' in text
