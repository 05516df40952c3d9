"""The admin API's integrations: list, create, read, update, disable and delete.

Integrations from the environment or ``TTGW_CONFIG`` are listed but read-only here. Access tokens
are write-only: stored encrypted, shown as their last four characters, never returned or logged.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, cast

import orjson
from aiohttp import web

from gateway.appkeys import INTEGRATIONS, REDIS, STORE
from gateway.config import CONSENT_CATEGORIES, Integration
from gateway.integrations import token_hint
from gateway.operate.admin_http import BadRequest, _body, _json
from gateway.settings import SANDBOX_PIXEL_CODE
from gateway.store import keys
from gateway.tiktok.names import event_name_problem

PIXEL_RE = re.compile(r"^[A-Z0-9]{10,40}$")
HOST_RE = re.compile(r"^(?!-)[a-z0-9.-]{1,253}$")


async def _paused(request: web.Request) -> dict[str, Any]:
    raw = cast("dict[bytes, bytes]", await request.config_dict[REDIS].hgetall(keys.PAUSED_HASH))
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


def _public(integration: Integration, source: str, paused: dict[str, Any]) -> dict[str, Any]:
    data = asdict(integration)
    token = data.pop("access_token")
    data["access_token_hint"] = token_hint(token)
    data["event_overrides"] = dict(integration.event_overrides)
    data["source"] = source
    data["paused"] = paused.get(integration.pixel_code)
    return data


async def list_integrations(request: web.Request) -> web.Response:
    """Every integration: from configuration (read-only here) and from this API."""
    registry = request.config_dict[INTEGRATIONS]
    await registry.refresh(request.config_dict[STORE], force=True)
    paused = await _paused(request)
    items = [
        _public(i, "config" if registry.is_configured(i.pixel_code) else "api", paused)
        for i in registry.all
    ]
    return _json({"integrations": items, "sandbox": registry.sandbox})


def _strings(body: dict[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("must be a list of strings", name)
    return tuple(value)


def _integration(body: dict[str, Any], base: Integration | None) -> Integration:
    """Validate a create (no base) or update (base) body into an Integration."""
    allowed = {
        "name",
        "pixel_code",
        "access_token",
        "test_event_code",
        "hostnames",
        "default_phone_region",
        "required_consent",
        "event_overrides",
        "enabled",
    }
    for name in body:
        if name not in allowed:
            raise BadRequest("unknown field", name)
    fields: dict[str, Any] = {} if base is None else asdict(base)
    if base is None:
        pixel = body.get("pixel_code")
        if not isinstance(pixel, str) or not PIXEL_RE.fullmatch(pixel):
            raise BadRequest("a pixel code is 10-40 upper-case letters and digits", "pixel_code")
        if pixel == SANDBOX_PIXEL_CODE:
            raise BadRequest("reserved for the sandbox", "pixel_code")
        fields["pixel_code"] = pixel
    elif "pixel_code" in body and body["pixel_code"] != base.pixel_code:
        raise BadRequest("the pixel code of an integration cannot change", "pixel_code")
    for name in ("name", "access_token", "test_event_code", "default_phone_region"):
        if name in body:
            value = body[name]
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise BadRequest("must be a non-empty string or null", name)
            fields[name] = value.strip() if isinstance(value, str) else None
    if not fields.get("access_token"):
        raise BadRequest("is required", "access_token")
    if any(c.isspace() for c in fields["access_token"]):
        raise BadRequest("must not contain spaces", "access_token")
    fields["name"] = fields.get("name") or fields["pixel_code"]
    if "hostnames" in body:
        hosts = tuple(h.strip().lower().lstrip(".") for h in _strings(body, "hostnames"))
        if not all(HOST_RE.fullmatch(h) for h in hosts):
            raise BadRequest("each must be a host name", "hostnames")
        fields["hostnames"] = hosts
    if "required_consent" in body:
        consent = _strings(body, "required_consent")
        if not set(consent) <= CONSENT_CATEGORIES:
            raise BadRequest(
                f"categories: {', '.join(sorted(CONSENT_CATEGORIES))}", "required_consent"
            )
        fields["required_consent"] = consent
    if "event_overrides" in body:
        overrides = body["event_overrides"]
        if not isinstance(overrides, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in overrides.items()
        ):
            raise BadRequest("must be an object of name: name strings", "event_overrides")
        for target in overrides.values():
            problem = event_name_problem(target)
            if problem is not None:
                raise BadRequest(problem, "event_overrides")
        fields["event_overrides"] = tuple(sorted(overrides.items()))
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise BadRequest("must be true or false", "enabled")
        fields["enabled"] = body["enabled"]
    region = fields.get("default_phone_region")
    if region is not None:
        import phonenumbers

        if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise BadRequest("not a supported ISO 3166 region", "default_phone_region")
        fields["default_phone_region"] = region.upper()
    fields.setdefault("enabled", True)
    return Integration(**{k: v for k, v in fields.items() if k in Integration.__dataclass_fields__})


def _stored_or_error(request: web.Request) -> Integration:
    pixel = request.match_info["pixel"]
    registry = request.config_dict[INTEGRATIONS]
    if registry.is_configured(pixel):
        raise BadRequest(
            "configured in the environment or TTGW_CONFIG: change it there", "pixel_code", 409
        )
    stored = registry.stored.get(pixel)
    if stored is None:
        raise BadRequest("no such integration", "pixel_code", 404)
    return stored.integration


async def create_integration(request: web.Request) -> web.Response:
    """Create an integration; 409 when the pixel exists already."""
    registry, store = request.config_dict[INTEGRATIONS], request.config_dict[STORE]
    await registry.refresh(store, force=True)
    integration = _integration(await _body(request), None)
    if integration.pixel_code in {i.pixel_code for i in registry.all}:
        raise BadRequest("an integration with this pixel exists", "pixel_code", 409)
    await store.save(integration)
    await registry.refresh(store, force=True)
    return _json(_public(integration, "api", {}), 201)


async def read_integration(request: web.Request) -> web.Response:
    """One integration."""
    registry = request.config_dict[INTEGRATIONS]
    await registry.refresh(request.config_dict[STORE], force=True)
    pixel = request.match_info["pixel"]
    for integration in registry.all:
        if integration.pixel_code == pixel:
            source = "config" if registry.is_configured(pixel) else "api"
            return _json(_public(integration, source, await _paused(request)))
    raise BadRequest("no such integration", "pixel_code", 404)


async def update_integration(request: web.Request) -> web.Response:
    """Change fields; a new access token lifts a pause at once."""
    registry, store = request.config_dict[INTEGRATIONS], request.config_dict[STORE]
    await registry.refresh(store, force=True)
    base = _stored_or_error(request)
    body = {"enabled": False} if request.path.endswith("/disable") else await _body(request)
    updated = _integration(body, base)
    await store.save(updated)
    if updated.access_token != base.access_token or (updated.enabled and not base.enabled):
        await request.config_dict[REDIS].hdel(keys.PAUSED_HASH, updated.pixel_code)
    await registry.refresh(store, force=True)
    return _json(_public(updated, "api", await _paused(request)))


async def delete_integration(request: web.Request) -> web.Response:
    """Remove an integration created through this API."""
    registry, store = request.config_dict[INTEGRATIONS], request.config_dict[STORE]
    await registry.refresh(store, force=True)
    integration = _stored_or_error(request)
    await store.delete(integration.pixel_code)
    await request.config_dict[REDIS].hdel(keys.PAUSED_HASH, integration.pixel_code)
    await registry.refresh(store, force=True)
    return web.Response(status=204)
