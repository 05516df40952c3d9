"""Erasure (DESIGN §9): a person's links, visitors, clicks and every identifier of theirs in the
events kept are gone; another person's are untouched; a later e-mail-only order gets nothing."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from gateway.appkeys import SETTINGS, SIGNER
from gateway.delivery.receipts import receipt
from gateway.identity.cookies import TTP_COOKIE, VISITOR_COOKIE
from gateway.settings import SANDBOX_PIXEL_CODE, Settings
from gateway.store import keys
from tests.delivery_support import running_worker, wait_until
from tests.ingest_support import (
    EMAIL,
    EMAIL_HASH,
    TTCLID,
    GatewayFactory,
    make_gateway,
    queued,
    sha,
    track,
)
from tests.process_support import Processes, exited
from tests.test_openapi import conforms

PHONE = "+33 6 12 34 56 78"
PHONE_HASH = sha("+33612345678")
OTHER_EMAIL = "someone.else@example.org"
OTHER_TTCLID = "E.C.P.OtherPersonsClickId_0123456789"
ADMIN = "/v1/admin/erasure"


@pytest.fixture
def gateway(
    aiohttp_client: Any, make_settings: Callable[..., Settings], redis_url: str
) -> GatewayFactory:
    return make_gateway(aiohttp_client, make_settings, redis_url)


def cookie(client: TestClient, name: str) -> str:  # type: ignore[type-arg]
    value = next((c.value for c in client.session.cookie_jar if c.key == name), None)
    assert value is not None
    return value


async def browse(client: TestClient, ttclid: str, email: str, ip: str, n: str) -> str:  # type: ignore[type-arg]
    """A landing with a click, an identify with e-mail (and phone), a purchase: the visitor id."""
    headers = {"User-Agent": f"Mozilla/5.0 (Shopper {n})", "X-Forwarded-For": ip}
    page = {"url": f"https://shop.example/?ttclid={ttclid}"}
    for body in (
        track("ViewContent", event_id=f"view-{n}", page=page),
        {"type": "identify", "user": {"email": email, "phone": PHONE if n == "a" else None}},
        track("Purchase", event_id=f"buy-{n}", properties={"value": 10, "currency": "EUR"}),
    ):
        response = await client.post("/e", json=body, headers=headers)
        assert response.status == 202, await response.text()
    visitor = client.server.app[SIGNER].read_visitor(cookie(client, VISITOR_COOKIE))
    assert visitor is not None
    return visitor


async def server_post(client: TestClient, body: object) -> None:  # type: ignore[type-arg]
    headers = {"Authorization": f"Bearer {client.server.app[SETTINGS].write_key}"}
    response = await client.post("/v1/track", json=body, headers=headers)
    assert response.status == 202, await response.text()


async def everything(redis: Redis) -> bytes:
    """Every key of the Redis and everything in it, as one blob."""
    out: list[bytes] = []
    async for key in redis.scan_iter(count=1000):
        out.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            out.append(await redis.get(key) or b"")
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                if key.startswith(keys.REQUEST_PREFIX.encode()) and field == b"b":
                    value = zlib.decompress(value)  # a delivered request's events
                out.append(b"%s=%s" % (field, value))
        elif kind == "zset":
            out.extend(await redis.zrange(key, 0, -1))
        elif kind == "set":
            out.extend(await redis.smembers(key))
        elif kind == "list":
            out.extend(await redis.lrange(key, 0, -1))
        elif kind == "stream":
            for _, fields in await redis.xrange(key):
                out.extend(b"%s=%s" % kv for kv in fields.items())
        else:
            raise AssertionError(f"unexpected {kind} at {key!r}")
    return b"\n".join(out)


async def test_erasure_by_email_leaves_no_trace_of_the_person(
    gateway: GatewayFactory, redis: Redis
) -> None:
    person, other = await gateway(), await gateway()
    visitor = await browse(person, TTCLID, EMAIL, "198.51.100.7", "a")
    ttp = cookie(person, TTP_COOKIE)
    other_visitor = await browse(other, OTHER_TTCLID, OTHER_EMAIL, "203.0.113.9", "b")
    # a second browser of the person's (the in-app browser's hop) borrows the landing's click
    hop = await gateway()
    await hop.post("/e", json={"type": "identify", "user": {"phone": PHONE}})
    hop_visitor = hop.server.app[SIGNER].read_visitor(cookie(hop, VISITOR_COOKIE))
    assert hop_visitor is not None
    assert TTCLID.encode() in (await redis.hget(keys.visitor_key(hop_visitor), "borrowed") or b"")

    # delivered to the sandbox: receipts with payloads, the sandbox's record
    async with running_worker(person.server.app[SETTINGS]):

        async def delivered() -> bool:
            states = [
                (await receipt(redis, SANDBOX_PIXEL_CODE, "Purchase", f"buy-{n}") or {}).get(
                    "state"
                )
                for n in "ab"
            ]
            return states == ["delivered", "delivered"]

        await wait_until(delivered)
    # the backend's order with the customer id, still queued when the erasure comes
    signed = cookie(person, VISITOR_COOKIE)
    await server_post(
        person,
        track("Order Completed", user_id="cust-42", anonymous_id=signed, user={"email": EMAIL},
              properties={"order_id": "1001", "value": 10, "currency": "EUR"}),
    )  # fmt: skip
    assert [e["event_id"] for e in await queued(redis)] == ["ord_1001"]
    before = await everything(redis)
    for trace in (EMAIL_HASH, PHONE_HASH, visitor, sha(visitor), TTCLID, sha("cust-42"), ttp):
        assert trace.encode() in before, trace

    auth = {"Authorization": f"Bearer {person.server.app[SETTINGS].admin_token}"}
    response = await person.post(ADMIN, json={"email": f"  {EMAIL.upper()} "}, headers=auth)
    assert response.status == 200
    counts = await conforms(response, "POST", "/erasure")
    assert counts["visitors"] == 1
    assert counts["clicks"] == 2  # the landing's, and the copy the hop borrowed
    assert counts["links"] == 5  # email claimed, email + user_id verified, phone by both browsers
    assert counts["queued_scrubbed"] == 1
    assert counts["receipts_scrubbed"] == 2  # view-a and buy-a, delivered with their payload
    assert counts["sandbox_scrubbed"] == 2
    assert counts["dead_scrubbed"] == 0

    after = await everything(redis)
    for trace in (EMAIL_HASH, PHONE_HASH, visitor, sha(visitor), TTCLID, sha("cust-42"), ttp,
                  "198.51.100.7", "Shopper a"):  # fmt: skip
        assert trace.encode() not in after, trace
    # the other person's data is untouched, and the hop keeps its own record, without the click
    for trace in (sha(OTHER_EMAIL), other_visitor, sha(other_visitor), OTHER_TTCLID):
        assert trace.encode() in after, trace
    assert await redis.exists(keys.visitor_key(other_visitor), keys.visitor_key(hop_visitor)) == 2
    bought = await receipt(redis, SANDBOX_PIXEL_CODE, "Purchase", "buy-a")
    assert bought is not None
    assert bought["state"] == "delivered" and bought.get("payload") is None
    order = await receipt(redis, SANDBOX_PIXEL_CODE, "Purchase", "ord_1001")
    assert order is not None
    assert (order["state"], order["reason"]) == ("suppressed", "erased")
    kept = await receipt(redis, SANDBOX_PIXEL_CODE, "Purchase", "buy-b")
    assert kept is not None
    assert kept["payload"]["event_id"] == "buy-b"

    # run again: nothing more to remove
    again = await person.post(ADMIN, json={"email": EMAIL}, headers=auth)
    assert set((await again.json()).values()) == {0}

    # later, an order naming only that e-mail gets nothing stitched
    backend = await gateway()
    await server_post(
        backend,
        track("Order Completed", user={"email": EMAIL},
              properties={"order_id": "2002", "value": 5, "currency": "EUR"}),
    )  # fmt: skip
    (later,) = [e for e in await queued(redis) if e["event_id"] == "ord_2002"]
    user = later["data"]["user"]
    assert user["email"] == [EMAIL_HASH]
    assert not {"ttclid", "ttp", "ip", "user_agent", "external_id"} & set(user)


async def test_bad_requests_name_the_field(gateway: GatewayFactory) -> None:
    client = await gateway()
    auth = {"Authorization": f"Bearer {client.server.app[SETTINGS].admin_token}"}
    for body, field in (
        ({}, "body"),
        ({"email": "not-an-address"}, "email"),
        ({"phone": "06 12 34 56 78"}, "phone"),  # national, and no region known
        ({"anonymous_id": "nobody"}, "anonymous_id"),
        ({"user_id": 42}, "user_id"),
        ({"phone": PHONE, "country": "XX"}, "country"),
    ):
        response = await client.post(ADMIN, json=body, headers=auth)
        assert response.status == 400
        assert (await conforms(response, "POST", "/erasure"))["field"] == field
    denied = await client.post(ADMIN, json={"email": EMAIL})
    assert denied.status == 401


async def test_forget_command_erases_by_anonymous_id(
    gateway: GatewayFactory, redis: Redis, redis_url: str, processes: Processes
) -> None:
    client = await gateway()
    visitor = await browse(client, TTCLID, EMAIL, "198.51.100.7", "a")
    secret = client.server.app[SETTINGS].secret_key
    process = processes.start(
        {"TTGW_REDIS_URL": redis_url, "TTGW_SECRET_KEY": secret},
        "forget", "--anonymous-id", cookie(client, VISITOR_COOKIE),
    )  # fmt: skip
    assert await exited(process) == 0, processes.output(process)
    counts = orjson.loads(processes.stdout(process))
    assert counts["visitors"] == 1 and counts["clicks"] == 1
    assert counts["links"] == 2  # the e-mail and phone it claimed, found by walking the links
    assert counts["queued_scrubbed"] == 2  # the view and the purchase: no worker ran
    after = await everything(redis)
    for trace in (EMAIL_HASH, PHONE_HASH, visitor, TTCLID):
        assert trace.encode() not in after, trace
    bad = processes.start({"TTGW_REDIS_URL": redis_url}, "forget", "--email", "nope")
    assert await exited(bad) == 2
    assert "--email" in processes.output(bad)
