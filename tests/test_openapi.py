"""The admin API's contract, ``gateway/admin_openapi.json``: valid OpenAPI 3.1, in step with the
router both ways, served without a token, and true to what the live API answers (real Redis, the
emulator as TikTok, a real delivery worker)."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import orjson
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from redis.asyncio import Redis
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from gateway.app import create_app
from gateway.appkeys import SETTINGS
from gateway.delivery.pauses import Pauses
from gateway.delivery.verdicts import Answer, Verdict
from gateway.operate.admin import create_admin_app
from gateway.operate.stats import count_coverage
from gateway.settings import Settings
from gateway.store import keys
from tests.delivery_support import (
    PIXEL,
    delivery_env,
    enqueue,
    running_emulator,
    running_worker,
    wait_until,
)

MakeSettings = Callable[..., Settings]
Json = dict[str, Any]

PREFIX = "/v1/admin"
RAW = (files("gateway.operate") / "admin_openapi.json").read_bytes()
DOC: Json = orjson.loads(RAW)
DOC_URI = "urn:ttgw:admin-openapi"
REGISTRY: Registry[Any] = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(DOC))
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
NEW_PIXEL = "CAPIAPIAPIAPIAPIAPI0"


# --- reading the document ---------------------------------------------------------------------


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _resolve(node: Json, pointer: str) -> tuple[Json, str]:
    """Follow a response object's ``$ref`` (one level, as the document uses them)."""
    ref = node.get("$ref")
    if ref is None:
        return node, pointer
    target: Any = DOC
    for part in ref.removeprefix("#/").split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target, ref.removeprefix("#")


def schema_errors(instance: object, pointer: str) -> list[str]:
    """Why ``instance`` does not match the schema at ``pointer`` in the document ([] when it does);
    ``$ref``s inside resolve against the whole document."""
    validator = Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=REGISTRY)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def component_errors(instance: object, name: str) -> list[str]:
    assert name in DOC["components"]["schemas"], name
    return schema_errors(instance, _pointer("components", "schemas", name))


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in DOC["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def routed_operations() -> set[tuple[str, str]]:
    """The admin router's routes, without the HEAD route aiohttp adds beside every GET."""
    routes = set()
    for route in create_admin_app().router.routes():
        assert route.resource is not None
        routes.add((route.method, route.resource.canonical))
    heads = {(method, path) for method, path in routes if method == "HEAD"}
    assert heads == {("HEAD", path) for method, path in routes if method == "GET"}
    return routes - heads


async def conforms(response: ClientResponse, method: str, template: str) -> Any:
    """Check one live answer against its operation: the status is documented, so are its
    required headers and content type, and the body matches the schema. Returns the body."""
    operation = DOC["paths"][template][method.lower()]
    status = str(response.status)
    assert status in operation["responses"], f"{method} {template}: undocumented {status}"
    documented, pointer = _resolve(
        operation["responses"][status],
        _pointer("paths", template, method.lower(), "responses", status),
    )
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name in response.headers, f"{method} {template} {status}: no {name}"
            errors = schema_errors(response.headers[name], f"{pointer}/headers/{name}/schema")
            assert not errors, f"{method} {template} {status}: {name}: {errors}"
    raw = await response.read()
    content = documented.get("content")
    if not content:
        assert raw == b"", f"{method} {template} {status}: a body where none is documented"
        return None
    media = response.content_type
    assert media in content, f"{method} {template} {status}: undocumented {media}"
    body = orjson.loads(raw)
    errors = schema_errors(body, f"{pointer}/content/{media.replace('/', '~1')}/schema")
    assert not errors, f"{method} {template} {status}: {errors}"
    return body


def bearer(client: TestClient) -> dict[str, str]:  # type: ignore[type-arg]
    app = client.server.app  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {app[SETTINGS].admin_token}"}


# --- the document itself ----------------------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1.")
    validate(DOC, cls=OpenAPIV31SpecValidator)
    assert DOC["servers"] == [{"url": PREFIX, "description": "This gateway."}]


def test_every_route_is_documented_and_every_operation_is_routed() -> None:
    routed, documented = routed_operations(), documented_operations()
    assert routed - documented == set(), "routes missing from admin_openapi.json"
    assert documented - routed == set(), "documented operations the router does not have"
    assert len(routed) == 13


def test_bearer_everywhere_but_the_document_itself() -> None:
    scheme = DOC["components"]["securitySchemes"]["adminToken"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert DOC["security"] == [{"adminToken": []}]
    for method, path in documented_operations():
        operation = DOC["paths"][path][method.lower()]
        assert operation["summary"], (method, path)
        if path == "/openapi.json":
            assert operation["security"] == []
            assert set(operation["responses"]) == {"200"}
            continue
        assert "security" not in operation, (method, path)
        assert {"401", "503"} <= set(operation["responses"]), (method, path)
        for status, response in operation["responses"].items():
            documented, _ = _resolve(response, "")
            if status.startswith(("4", "5")) and status != "413":
                schema = documented["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


def test_path_parameters_are_declared() -> None:
    for path, item in DOC["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        in_path = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        assert declared == in_path, path


def test_schemas_are_strict_where_the_code_is() -> None:
    """The checks below would pass vacuously if the schemas accepted anything."""
    integration: Json = {
        "name": "Shop",
        "pixel_code": NEW_PIXEL,
        "access_token_hint": "…7777",
        "test_event_code": None,
        "hostnames": ["shop.example"],
        "default_phone_region": "FR",
        "required_consent": [],
        "event_overrides": {},
        "enabled": True,
        "source": "api",
        "paused": None,
    }
    assert component_errors(integration, "Integration") == []
    assert component_errors({**integration, "access_token": "secret-token"}, "Integration")
    assert component_errors({**integration, "source": "env"}, "Integration")
    assert component_errors({**integration, "paused": {"reason": "auth"}}, "Integration")
    assert component_errors({"error": "x", "field": None}, "Error") == []
    assert component_errors({"error": "x"}, "Error")
    assert component_errors({"pixel_code": NEW_PIXEL}, "IntegrationCreate")  # no access_token
    assert component_errors({"colour": "red"}, "IntegrationUpdate")  # unknown fields: 400
    assert component_errors({"events": [], "next_cursor": None}, "EventsPage") == []
    assert component_errors({"events": [{}], "next_cursor": None}, "EventsPage")


# --- served for real --------------------------------------------------------------------------


async def test_document_is_served_without_a_token(
    aiohttp_client, make_settings: MakeSettings, redis_url: str
) -> None:
    client = await aiohttp_client(create_app(make_settings(TTGW_REDIS_URL=redis_url)))
    response = await client.get(f"{PREFIX}/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.read() == RAW
    assert orjson.loads(RAW) == await conforms(response, "GET", "/openapi.json")


async def test_live_answers_conform(
    aiohttp_client, make_settings: MakeSettings, redis_url: str
) -> None:
    client = await aiohttp_client(create_app(make_settings(TTGW_REDIS_URL=redis_url)))
    auth = bearer(client)

    for headers in ({}, {"Authorization": "Bearer not-the-admin-token"}):
        denied = await client.get(f"{PREFIX}/stats", headers=headers)
        assert denied.status == 401
        assert (await conforms(denied, "GET", "/stats"))["field"] == "Authorization"

    stats = await conforms(await client.get(f"{PREFIX}/stats", headers=auth), "GET", "/stats")
    assert component_errors(stats, "Stats") == []
    assert stats["sandbox"] is True and len(stats["minutes"]) == 60
    listed = await conforms(
        await client.get(f"{PREFIX}/integrations", headers=auth), "GET", "/integrations"
    )
    assert component_errors(listed, "IntegrationList") == []
    assert listed == {"integrations": [], "sandbox": True}
    page = await conforms(await client.get(f"{PREFIX}/events", headers=auth), "GET", "/events")
    assert component_errors(page, "EventsPage") == []
    assert page == {"events": [], "next_cursor": None}
    for query, field in (("limit=0", "limit"), ("state=lost", "state"), ("since=x", "since")):
        bad = await client.get(f"{PREFIX}/events?{query}", headers=auth)
        assert bad.status == 400
        assert (await conforms(bad, "GET", "/events"))["field"] == field

    # an integration's life through the API, each answer checked against the document
    item = "/integrations/{pixel}"
    body = {"pixel_code": NEW_PIXEL, "access_token": "api-token-0000-7777", "hostnames": ["a.fr"]}
    created = await client.post(f"{PREFIX}/integrations", json=body, headers=auth)
    assert created.status == 201
    assert (await conforms(created, "POST", "/integrations"))["access_token_hint"] == "…7777"
    again = await client.post(f"{PREFIX}/integrations", json=body, headers=auth)
    assert again.status == 409
    await conforms(again, "POST", "/integrations")
    unknown = await client.post(f"{PREFIX}/integrations", json={**body, "x": 1}, headers=auth)
    assert (await conforms(unknown, "POST", "/integrations"))["field"] == "x"
    url = f"{PREFIX}/integrations/{NEW_PIXEL}"
    read = await conforms(await client.get(url, headers=auth), "GET", item)
    assert read["source"] == "api" and read["paused"] is None
    patched = await client.patch(url, json={"default_phone_region": "fr"}, headers=auth)
    assert (await conforms(patched, "PATCH", item))["default_phone_region"] == "FR"
    disabled = await client.post(f"{url}/disable", headers=auth)
    assert (await conforms(disabled, "POST", item + "/disable"))["enabled"] is False
    deleted = await client.delete(url, headers=auth)
    assert deleted.status == 204
    await conforms(deleted, "DELETE", item)
    gone = await client.get(url, headers=auth)
    assert gone.status == 404
    assert (await conforms(gone, "GET", item))["field"] == "pixel_code"

    # sandbox mode again: a test event needs no code
    tested = await client.post(f"{PREFIX}/test-event", json={}, headers=auth)
    assert (await conforms(tested, "POST", "/test-event"))["verdict"] == "delivered"
    nobody = await client.post(f"{PREFIX}/test-event", json={"pixel": NEW_PIXEL}, headers=auth)
    assert nobody.status == 404
    await conforms(nobody, "POST", "/test-event")
    replayed = await client.post(f"{PREFIX}/replay", json={"all": True}, headers=auth)
    assert await conforms(replayed, "POST", "/replay") == {"queued": 0}
    vague = await client.post(f"{PREFIX}/replay", json={}, headers=auth)
    assert (await conforms(vague, "POST", "/replay"))["field"] == "body"


async def test_receipts_stats_and_replay_conform_with_real_deliveries(
    aiohttp_client, make_settings: MakeSettings, redis_url: str, redis: Redis
) -> None:
    async with running_emulator() as emulator:
        settings = make_settings(**delivery_env(emulator, redis_url))
        client = await aiohttp_client(create_app(settings))
        auth = bearer(client)
        await enqueue(redis_url, ["ok-1", "ok-2"])
        await enqueue(redis_url, ["stale-1"], age_s=settings.event_max_age_s + 3600)
        async with running_worker(settings):

            async def settled() -> bool:
                counts = await redis.hgetall(keys.COUNTERS_HASH)
                return counts.get(b"delivered") == b"2" and counts.get(b"dead") == b"1"

            await wait_until(settled)

        page = await conforms(await client.get(f"{PREFIX}/events", headers=auth), "GET", "/events")
        assert {e["event_id"]: e["state"] for e in page["events"]} == {
            "ok-1": "delivered",
            "ok-2": "delivered",
            "stale-1": "dead",
        }
        first = await client.get(f"{PREFIX}/events?limit=2", headers=auth)
        cursor = (await conforms(first, "GET", "/events"))["next_cursor"]
        assert cursor is not None
        rest = await client.get(f"{PREFIX}/events", params={"cursor": cursor}, headers=auth)
        assert len((await conforms(rest, "GET", "/events"))["events"]) == 1

        one = "/events/{event_id}"
        delivered = await conforms(
            await client.get(f"{PREFIX}/events/ok-1", headers=auth), "GET", one
        )
        receipt = delivered["receipts"][0]
        assert receipt["state"] == "delivered" and receipt["payload"]["event_id"] == "ok-1"
        assert receipt["code"] == 0 and receipt["request_id"]
        dead = await conforms(
            await client.get(f"{PREFIX}/events/stale-1", headers=auth), "GET", one
        )
        assert dead["receipts"][0]["reason"].startswith("stale")
        missing = await client.get(f"{PREFIX}/events/never-seen", headers=auth)
        assert (await conforms(missing, "GET", one))["field"] == "event_id"

        replayed = await client.post(
            f"{PREFIX}/replay", json={"event_ids": ["stale-1"]}, headers=auth
        )
        assert await conforms(replayed, "POST", "/replay") == {"queued": 1}
        again = await conforms(
            await client.get(f"{PREFIX}/events/stale-1", headers=auth), "GET", one
        )
        assert again["receipts"][0]["state"] == "queued" and again["receipts"][0]["replayed_ms"]

        # a paused integration and a coverage drop, written by the code that writes them
        answer = Answer(Verdict.AUTH, 200, 40105, "Access token is invalid", "req-1", 1.0)
        await Pauses(redis).pause(PIXEL, answer, int(time.time() * 1000))
        now = time.time()
        with_phone = {"event": "Purchase", "user": {"phone": "x", "email": "y"}}
        await count_coverage(redis, [with_phone] * 30, now=now - 30 * 3600)
        await count_coverage(redis, [{"event": "Purchase", "user": {"email": "y"}}] * 30, now=now)

        listed = await conforms(
            await client.get(f"{PREFIX}/integrations", headers=auth), "GET", "/integrations"
        )
        (configured,) = listed["integrations"]
        assert configured["source"] == "config" and configured["paused"]["code"] == 40105
        refused = await client.patch(
            f"{PREFIX}/integrations/{PIXEL}", json={"enabled": False}, headers=auth
        )
        assert refused.status == 409
        await conforms(refused, "PATCH", "/integrations/{pixel}")

        stats = await conforms(await client.get(f"{PREFIX}/stats", headers=auth), "GET", "/stats")
        assert stats["sandbox"] is False
        assert stats["counters"]["delivered"] == 2 and stats["counters"]["replayed"] == 1
        assert stats["queue"]["depth"] == 1  # the replayed dead letter
        assert [p["pixel"] for p in stats["paused"]] == [PIXEL]
        assert "Purchase" in stats["coverage"]["events"]
        assert {(a["event"], a["key"]) for a in stats["alerts"]} == {("Purchase", "phone")}

        no_code = await client.post(f"{PREFIX}/test-event", json={}, headers=auth)
        assert no_code.status == 400
        assert (await conforms(no_code, "POST", "/test-event"))["field"] == "test_event_code"
        tested = await client.post(
            f"{PREFIX}/test-event", json={"test_event_code": "TEST12345"}, headers=auth
        )
        result = await conforms(tested, "POST", "/test-event")
        assert result["pixel"] == PIXEL and result["test_event_code"] == "TEST12345"


def test_component_errors_names_the_path() -> None:
    """A sanity check of the helper: errors point at the offending member."""
    errors = component_errors({"error": 1, "field": None}, "Error")
    assert errors and errors[0].startswith("error:")
