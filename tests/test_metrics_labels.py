"""Metric labels come from fixed sets: no request can add Prometheus series.

A label value per custom event name (or per list index in a refused field) would let anyone who
can post events grow the process and ``/metrics`` without bound: 20,000 names once added ~144 MiB
and 23 MB of scrape. The counters are process-global, so the tests measure what their own
requests add.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.operate.metrics import event_label, field_label
from gateway.settings import Settings
from gateway.tiktok.names import ACCEPTED_EVENTS
from tests.ingest_support import EMAIL, track

Client = TestClient  # type: ignore[type-arg]

WRITE_KEY = "ttw_" + "w" * 32
NAMES = 2000
PER_REQUEST = 1000
REFUSED = 600  # events refused at as many list indexes (bodies stay under 1 MiB)
SCRAPE_GROWTH_MAX_BYTES = 4096  # the few series of "custom" and "content_ids", if new


@pytest.fixture
async def client(
    aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str
) -> Client:
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_WRITE_KEY=WRITE_KEY)
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]


async def scrape(client: Client) -> tuple[int, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    """The size of ``/metrics`` and every counter sample, by metric and labels."""
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return len(text.encode()), samples


async def post_track(client: Client, events: list[dict[str, Any]]) -> dict[str, Any]:
    for start in range(0, len(events), PER_REQUEST):
        answer = await client.post(
            "/v1/track",
            data=io.BytesIO(orjson.dumps({"events": events[start : start + PER_REQUEST]})),
            headers={"Authorization": f"Bearer {WRITE_KEY}", "Content-Type": "application/json"},
        )
        assert answer.status in (202, 400), await answer.text()
        body: dict[str, Any] = await answer.json()
    return body


async def test_custom_event_names_share_one_label(client: Client) -> None:
    size_before, before = await scrape(client)
    tag = f"{id(client):x}"[-6:]
    events = [
        track(f"Custom_{tag}_{i:05d}", event_id=f"c{i}", user={"email": EMAIL, "ip": "203.0.113.9"})
        for i in range(NAMES)
    ]
    events.append(track("Order Completed", event_id="o1", user={"email": EMAIL}))
    answer = await post_track(client, events[PER_REQUEST:])
    await post_track(client, events[:PER_REQUEST])
    assert {e["status"] for e in answer["accepted"]} == {"queued"}

    size_after, after = await scrape(client)
    series = after["ttgw_match_keys_total"]
    labels = {dict(key)["event"] for key in series}
    assert labels <= ACCEPTED_EVENTS | {"custom"}
    assert "custom" in labels
    assert size_after - size_before < SCRAPE_GROWTH_MAX_BYTES
    assert len(series) - len(before.get("ttgw_match_keys_total", {})) <= 6  # 3 keys x 2 events

    def grew(event: str, key: str) -> float:
        labels = (("event", event), ("key", key))
        return series[labels] - before.get("ttgw_match_keys_total", {}).get(labels, 0)

    assert grew("custom", "total") == NAMES
    assert grew("custom", "email") == NAMES
    assert grew("custom", "ip") == NAMES
    assert grew("Purchase", "total") == 1  # a mapped name keeps its standard label


async def test_refused_fields_are_counted_without_their_indexes(client: Client) -> None:
    size_before, before = await scrape(client)
    # each event's bad id is at another index of content_ids, or of contents: dropped with a
    # warning (the event kept), counted by the field without its index
    events = [track(event_id=f"r{i}", properties={"content_ids": ["s"] * i + [True]})
              for i in range(REFUSED)]  # fmt: skip
    events += [track(event_id=f"e{i}", properties={"contents": [{"content_id": "a"}] * i + [{}]})
               for i in range(REFUSED // 10)]  # fmt: skip
    # and events refused outright, each at another index of the batch
    events += [track(event_id=f"t{i}", timestamp="yesterday") for i in range(REFUSED // 10)]
    answer = await post_track(client, events)
    assert len(answer["accepted"]) == REFUSED + REFUSED // 10
    assert answer["accepted"][0]["warnings"][0]["field"] == "events[0].properties.content_ids[0]"
    assert answer["accepted"][-1]["warnings"][0]["field"] == (
        f"events[{REFUSED + REFUSED // 10 - 1}].properties.contents[{REFUSED // 10 - 1}].content_id"
    )
    assert answer["errors"][-1]["field"] == f"events[{len(events) - 1}].timestamp"

    size_after, after = await scrape(client)

    def grown(metric: str, label: str) -> dict[str, float]:
        counts = {
            dict(key)[label]: value - before.get(metric, {}).get(key, 0)
            for key, value in after[metric].items()
            if dict(key)["source"] == "server"
        }
        return {name: n for name, n in counts.items() if n}

    assert grown("ttgw_field_warnings_total", "field") == {
        "properties.content_ids": REFUSED,
        "properties.contents.content_id": REFUSED // 10,
    }
    assert grown("ttgw_events_rejected_total", "reason") == {"timestamp": REFUSED // 10}
    assert size_after - size_before < SCRAPE_GROWTH_MAX_BYTES


@pytest.mark.parametrize(
    ("name", "label"),
    [("Purchase", "Purchase"), ("Pageview", "Pageview"), ("CompletePayment", "CompletePayment"),
     ("purchase_v2", "custom"), ("custom", "custom"), ("Custom_1", "custom")],
)  # fmt: skip
def test_event_label(name: str, label: str) -> None:
    assert event_label(name) == label


@pytest.mark.parametrize(
    ("field", "label"),
    [("event", "event"), ("events[3].properties.contents[7].price", "price"),
     ("user.email[2]", "email"), ("properties.content_ids[123456]", "content_ids"),
     ("properties.contents[3]", "contents"), ("consent.ad_user_data", "ad_user_data")],
)  # fmt: skip
def test_field_label(field: str, label: str) -> None:
    assert field_label(field) == label
