"""The TikTok emulator's control endpoints, for an out-of-process test or a CLI user to drive it.

``GET /_emulator/events?since=N``, ``GET /_emulator/requests``, ``POST /_emulator/script`` (a
Script object or a list), ``POST /_emulator/revoke`` and ``/restore`` (``{"token", "pixels"}``),
``POST /_emulator/reset``, ``POST /_emulator/release``. They have no authentication: they are for
tests on loopback, so bind the emulator to loopback only.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web

from gateway.tiktok.emulator_state import STATE_KEY, Script


def _control_error(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    return orjson.loads(raw) if raw.strip() else {}


def _script_from_json(obj: object) -> Script:
    if not isinstance(obj, dict) or not isinstance(obj.get("outcome"), str):
        raise ValueError("each script needs an 'outcome' string")
    unknown = set(obj) - Script.__dataclass_fields__.keys()
    if unknown:
        raise ValueError(f"unknown script field(s): {', '.join(sorted(unknown))}")
    return Script(**obj)


async def _control_script(request: web.Request) -> web.Response:
    try:
        payload = await _json_body(request)
        items = payload if isinstance(payload, list) else [payload]
        scripts = [_script_from_json(item) for item in items]
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        return _control_error(f"bad script: {exc}")
    request.app[STATE_KEY].script(*scripts)
    return web.json_response({"queued": len(scripts)})


async def _control_token(request: web.Request) -> web.Response:
    try:
        payload = await _json_body(request)
    except ValueError as exc:
        return _control_error(f"bad JSON: {exc}")
    token = payload.get("token") if isinstance(payload, dict) else None
    pixels = payload.get("pixels") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token:
        return _control_error("'token' must be a non-empty string")
    if pixels is not None and not (
        isinstance(pixels, list) and all(isinstance(p, str) for p in pixels)
    ):
        return _control_error("'pixels' must be a list of strings or null")
    state = request.app[STATE_KEY]
    if request.path.endswith("/revoke"):
        state.revoke(token)
    else:
        state.restore(token, None if pixels is None else set(pixels))
    return web.json_response({"token": token})


async def _control_events(request: web.Request) -> web.Response:
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return _control_error("'since' must be an integer index")
    state = request.app[STATE_KEY]
    events = [asdict(e) for e in state.accepted[max(since, 0) :]]
    return web.Response(
        body=orjson.dumps(
            {"events": events, "total": len(state.accepted), "duplicates": state.duplicates}
        ),
        content_type="application/json",
    )


async def _control_requests(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    records = [asdict(r) for r in state.requests]
    return web.Response(
        body=orjson.dumps({"requests": records, "hanging": state.hanging}),
        content_type="application/json",
    )


async def _control_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"reset": True})


async def _control_release(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    released = state.hanging
    state.release_hangs()
    return web.json_response({"released": released})


def add_control_routes(router: web.UrlDispatcher) -> None:
    """Register the ``/_emulator/*`` endpoints on ``router``."""
    router.add_get("/_emulator/events", _control_events)
    router.add_get("/_emulator/requests", _control_requests)
    router.add_post("/_emulator/script", _control_script)
    router.add_post("/_emulator/revoke", _control_token)
    router.add_post("/_emulator/restore", _control_token)
    router.add_post("/_emulator/reset", _control_reset)
    router.add_post("/_emulator/release", _control_release)
