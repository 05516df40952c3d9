"""One order, one conversion: TikTok's aliases (``CompletePayment`` = ``Purchase``, the reserved
names = their targets) are one event for ingest idempotency, receipts and their look-ups; the
page's name is kept for sending when the backend's copy under another alias is still queued.

Real HTTP into the gateway and the real test Redis; no delivery worker runs, so what ingest
queued stays queued."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.appkeys import SETTINGS
from gateway.delivery.receipts import receipt as read_receipt
from gateway.delivery.receipts import receipts_for
from gateway.delivery.replay import dead_letters
from gateway.ingest.enqueue import IngestQueue, Outgoing, Status
from gateway.settings import Settings
from gateway.store import keys
from gateway.store.receipt_records import STATES, decode, encode
from gateway.tiktok.names import (
    ACCEPTED_EVENTS,
    LEGACY_EVENTS,
    RESERVED_TARGETS,
    canonical_event,
)
from tests.ingest_support import GatewayFactory, make_gateway, queued, track

SANDBOX = "SANDBOX0000000000000"
PIXEL = "CALIASALIASALIASALI0"

PAGE_ORDER = track(
    "CompletePayment",
    event_id="ord_1",
    properties={"order_id": "1", "value": 20, "currency": "EUR"},
)
BACKEND_ORDER = track("Order Completed", properties={"order_id": 1, "total": 20, "currency": "EUR"})


@pytest.fixture
def gateway(
    aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    return make_gateway(aiohttp_client, make_settings, redis_url)


async def page(client: TestClient, event: dict[str, Any]) -> dict[str, Any]:  # type: ignore[type-arg]
    response = await client.post("/e", json=event)
    assert response.status == 202
    (answer,) = (await response.json())["accepted"]
    return answer  # type: ignore[no-any-return]


async def backend(client: TestClient, event: dict[str, Any]) -> dict[str, Any]:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {client.server.app[SETTINGS].write_key}"}
    response = await client.post("/v1/track", json=event, headers=headers)
    assert response.status == 202
    (answer,) = (await response.json())["accepted"]
    return answer  # type: ignore[no-any-return]


async def receipt(redis: Redis, event: str, event_id: str, pixel: str = SANDBOX) -> dict[str, str]:
    found = await read_receipt(redis, pixel, event, event_id)
    return {k: str(v) for k, v in (found or {}).items() if v not in (None, "")}


async def set_state(redis: Redis, event_id: str, state: str) -> None:
    """Stand in for a settle: the receipt of ``event_id`` (received now) in ``state``."""
    bucket = keys.receipts_key(keys.receipt_bucket(int(time.time() * 1000)))
    records = decode(await redis.hget(bucket, event_id))
    for record in records:
        record.state = {v: k for k, v in STATES.items()}[state]
    await redis.hset(bucket, event_id, encode(records))


# --- the alias table ----------------------------------------------------------------------------


def test_aliases_are_the_references_reserved_names_and_complete_payment() -> None:
    assert canonical_event("CompletePayment") == "Purchase"
    for name, target in RESERVED_TARGETS.items():
        assert canonical_event(name) == target
    assert canonical_event("Checkout") == "PlaceAnOrder"
    # every other name is its own; none is invented (SubmitForm is legacy, not an alias)
    for name in ACCEPTED_EVENTS - {"CompletePayment"}:
        assert canonical_event(name) == name
    assert canonical_event("SubmitForm") == "SubmitForm"
    assert canonical_event("newsletter_signup") == "newsletter_signup"
    # a canonical name is its own canonical name: one step is the whole mapping
    for name in ACCEPTED_EVENTS | LEGACY_EVENTS | set(RESERVED_TARGETS):
        assert canonical_event(canonical_event(name)) == canonical_event(name)


# --- ingest through HTTP -------------------------------------------------------------------------


async def test_page_complete_payment_then_backend_order_is_one_event(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    first = await page(client, PAGE_ORDER)
    second = await backend(client, BACKEND_ORDER)
    assert (first["event"], first["status"]) == ("CompletePayment", "queued")
    assert (second["event"], second["event_id"]) == ("Purchase", "ord_1")
    assert second["status"] == "duplicate"
    (entry,) = await queued(redis)
    # the identity is canonical; the event queued keeps the page's name, so no rename is needed
    assert (entry["event"], entry["event_id"], entry["source"]) == ("Purchase", "ord_1", "browser")
    assert entry["data"]["event"] == "CompletePayment"
    stored = await receipt(redis, "Purchase", "ord_1")
    assert stored["state"] == "queued"
    assert stored["queued_as"] == "CompletePayment"
    assert stored["duplicates"] == "1"
    assert "send_as" not in stored
    assert await receipt(redis, "CompletePayment", "ord_1") == {}


async def test_backend_order_then_page_complete_payment_sends_under_the_pages_name(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    first = await backend(client, BACKEND_ORDER)
    second = await page(client, PAGE_ORDER)
    assert (first["status"], second["status"]) == ("queued", "duplicate")
    (entry,) = await queued(redis)
    assert (entry["event"], entry["source"], entry["data"]["event"]) == (
        "Purchase", "server", "Purchase"
    )  # fmt: skip
    stored = await receipt(redis, "Purchase", "ord_1")
    assert stored["send_as"] == "CompletePayment"
    assert stored["source"] == "server"
    assert "queued_as" not in stored  # the backend's copy carries the canonical name itself
    # the first page copy wins; a later copy of the backend's changes nothing
    await page(client, track("Purchase", event_id="ord_1"))
    await backend(client, BACKEND_ORDER)
    assert (await receipt(redis, "Purchase", "ord_1"))["send_as"] == "CompletePayment"
    assert await redis.xlen(keys.EVENTS_STREAM) == 1


async def test_the_same_literal_name_twice_is_a_duplicate_without_a_rename(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    await backend(client, BACKEND_ORDER)
    answer = await page(client, track("Purchase", event_id="ord_1"))
    assert answer["status"] == "duplicate"
    assert await redis.xlen(keys.EVENTS_STREAM) == 1
    assert "send_as" not in await receipt(redis, "Purchase", "ord_1")


async def test_a_backend_configured_for_complete_payment_needs_no_rename(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway(TTGW_PURCHASE_EVENT="CompletePayment")
    assert (await backend(client, BACKEND_ORDER))["event"] == "CompletePayment"
    assert (await page(client, PAGE_ORDER))["status"] == "duplicate"
    stored = await receipt(redis, "Purchase", "ord_1")
    assert stored["queued_as"] == "CompletePayment"
    assert "send_as" not in stored


async def test_checkout_and_place_an_order_are_one_event(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    assert (await page(client, track("Checkout", event_id="ord_2")))["status"] == "queued"
    assert (await backend(client, track("PlaceAnOrder", event_id="ord_2")))["status"] == "duplicate"
    assert [e["event"] for e in await queued(redis)] == ["PlaceAnOrder"]


async def test_the_admin_api_finds_a_receipt_by_any_alias(
    gateway: GatewayFactory, redis: Redis
) -> None:
    client = await gateway()
    client.session.headers["Authorization"] = f"Bearer {client.server.app[SETTINGS].admin_token}"
    await backend(client, BACKEND_ORDER)
    await backend(client, track("AddToCart", event_id="cart_1"))
    for name in ("CompletePayment", "Purchase"):
        response = await client.get("/v1/admin/events", params={"event": name})
        assert response.status == 200
        found = (await response.json())["events"]
        assert [(r["event"], r["event_id"], r["state"]) for r in found] == [
            ("Purchase", "ord_1", "queued")
        ], name
    await page(client, PAGE_ORDER)
    receipts = (await (await client.get("/v1/admin/events/ord_1")).json())["receipts"]
    assert [(r["event"], r["send_as"], r["duplicates"]) for r in receipts] == [
        ("Purchase", "CompletePayment", 1)
    ]


# --- the queue's script --------------------------------------------------------------------------


def item(event: str, source: str, event_id: str = "ord_9") -> Outgoing:
    return Outgoing(PIXEL, event, event_id, b'{"event":"%s"}' % event.encode(), source)


async def submit(redis: Redis, *items: Outgoing, now: float | None = None) -> list[Status]:
    return await IngestQueue(redis).submit(list(items), max_events=0, now=now)


async def test_the_queue_dedupes_aliases_in_one_batch(redis: Redis) -> None:
    statuses = await submit(
        redis, item("Checkout", "browser"), item("PlaceAnOrder", "server"),
        item("Purchase", "server"), item("CompletePayment", "browser"),
    )  # fmt: skip
    assert statuses == [Status.QUEUED, Status.DUPLICATE, Status.QUEUED, Status.DUPLICATE]
    entries = await redis.xrange(keys.EVENTS_STREAM)
    assert [f[b"event"] for _, f in entries] == [b"PlaceAnOrder", b"Purchase"]
    found = await receipts_for(redis, "ord_9")
    assert sorted(r["event"] for r in found) == ["PlaceAnOrder", "Purchase"]
    assert (await receipt(redis, "Purchase", "ord_9", PIXEL))["send_as"] == "CompletePayment"
    # Checkout came from the page: the backend's PlaceAnOrder asks for no rename
    assert "send_as" not in await receipt(redis, "PlaceAnOrder", "ord_9", PIXEL)


@pytest.mark.parametrize(
    ("state", "renamed"),
    [("queued", True), ("retrying", True), ("delivered", False), ("dead", False)],
)
async def test_a_rename_only_while_the_backends_copy_is_still_to_be_sent(
    redis: Redis, state: str, renamed: bool
) -> None:
    assert await submit(redis, item("Purchase", "server")) == [Status.QUEUED]
    await set_state(redis, "ord_9", state)
    assert await submit(redis, item("CompletePayment", "browser")) == [Status.DUPLICATE]
    assert ("send_as" in await receipt(redis, "Purchase", "ord_9", PIXEL)) is renamed


async def test_a_server_copy_never_renames_and_a_new_window_forgets_the_rename(
    redis: Redis,
) -> None:
    now = time.time() - keys.IDEMPOTENCY_TTL_S - 10
    assert await submit(redis, item("Purchase", "server"), now=now) == [Status.QUEUED]
    assert await submit(redis, item("CompletePayment", "server"), now=now) == [Status.DUPLICATE]
    assert "send_as" not in await receipt(redis, "Purchase", "ord_9", PIXEL)
    assert await submit(redis, item("CompletePayment", "browser"), now=now) == [Status.DUPLICATE]
    assert "send_as" in await receipt(redis, "Purchase", "ord_9", PIXEL)
    # past the 48 h window the order is queued afresh: the old page's name no longer applies
    later = now + keys.IDEMPOTENCY_TTL_S + 5
    assert await submit(redis, item("Purchase", "server"), now=later) == [Status.QUEUED]
    assert "send_as" not in await receipt(redis, "Purchase", "ord_9", PIXEL)


async def test_dead_letters_are_found_by_any_alias(redis: Redis) -> None:
    fields = {"pixel": PIXEL, "event": "Purchase", "event_id": "ord_9", "data": "{}",
              "reason": "test"}  # fmt: skip
    await redis.xadd(keys.DEAD_STREAM, fields)  # type: ignore[arg-type]
    await redis.xadd(keys.DEAD_STREAM, {**fields, "event": "AddToCart"})  # type: ignore[arg-type]
    for name in ("CompletePayment", "Purchase"):
        (letter,) = await dead_letters(redis, event=name)
        assert (letter.event, letter.event_id) == ("Purchase", "ord_9")
    assert await dead_letters(redis, event="Purchase", pixel="COTHEROTHEROTHEROTH0") == []
