"""How the admin API speaks HTTP: the admin token, JSON answers, errors that name the field.

:func:`guard` wants ``Authorization: Bearer <admin token>`` on every route but ``openapi.json``
(compared in constant time; 401 otherwise), turns a :class:`BadRequest` into its 4xx and Redis
being down into 503.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.appkeys import SETTINGS
from gateway.store.connections import REDIS_ERRORS


class BadRequest(Exception):
    """A client mistake: 4xx naming the field."""

    def __init__(self, error: str, field: str | None, status: int = 400) -> None:
        super().__init__(error)
        self.error, self.field, self.status = error, field, status


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer admin token on everything but the OpenAPI document; JSON errors."""
    if request.path != "/v1/admin/openapi.json":
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = request.config_dict[SETTINGS].admin_token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            response = _json(
                {"error": "a valid admin token is required", "field": "Authorization"}, 401
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
    try:
        return await handler(request)
    except BadRequest as exc:
        return _json({"error": exc.error, "field": exc.field}, exc.status)
    except REDIS_ERRORS:
        return _json({"error": "Redis is unavailable; retry later", "field": None}, 503)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("body is not valid JSON", "body") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object", "body")
    return body
