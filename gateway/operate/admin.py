"""The admin API, ``/v1/admin/…``: integrations, events and receipts, replay, stats, test events.

Every route but ``openapi.json`` needs ``Authorization: Bearer <admin token>`` (compared in
constant time; 401 otherwise). Answers are JSON; a bad request names the field. Access tokens are
write-only: stored encrypted, shown as their last four characters, never returned or logged.
The contract is ``gateway/operate/admin_openapi.json``, served at ``/v1/admin/openapi.json``.

This module mounts the routes; :mod:`gateway.operate.admin_http` holds the guard and the JSON
conventions, :mod:`gateway.operate.admin_integrations` and :mod:`gateway.operate.admin_events`
the handlers.
"""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

from gateway.operate.admin_events import (
    event_receipts,
    list_events,
    replay_dead_letters,
    stats,
    test_event,
)
from gateway.operate.admin_http import guard
from gateway.operate.admin_integrations import (
    create_integration,
    delete_integration,
    list_integrations,
    read_integration,
    update_integration,
)
from gateway.operate.erasure import erasure


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this API."""
    return web.Response(
        body=(files("gateway.operate") / "admin_openapi.json").read_bytes(),
        content_type="application/json",
    )


def create_admin_app() -> web.Application:
    """The admin API as a sub-application, mounted at ``/v1/admin``."""
    app = web.Application(middlewares=[guard])
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/integrations", list_integrations)
    app.router.add_post("/integrations", create_integration)
    app.router.add_get("/integrations/{pixel}", read_integration)
    app.router.add_patch("/integrations/{pixel}", update_integration)
    app.router.add_post("/integrations/{pixel}/disable", update_integration)
    app.router.add_delete("/integrations/{pixel}", delete_integration)
    app.router.add_get("/events", list_events)
    app.router.add_get("/events/{event_id}", event_receipts)
    app.router.add_post("/replay", replay_dead_letters)
    app.router.add_get("/stats", stats)
    app.router.add_post("/test-event", test_event)
    app.router.add_post("/erasure", erasure)
    return app
