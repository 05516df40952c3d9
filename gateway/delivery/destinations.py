"""Where each pixel's events go: its integration and destination (TikTok's Events API through
the worker's one HTTP session, or the sandbox)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from gateway.config import Integration
from gateway.delivery.client import Destination, SandboxDestination, TikTokClient
from gateway.delivery.sandbox import Sandbox
from gateway.integrations import SANDBOX, Integrations
from gateway.settings import Settings
from gateway.store import keys
from gateway.store.connections import RedisClient


@dataclass(frozen=True, slots=True)
class Route:
    """Where one pixel's events go."""

    integration: Integration
    destination: Destination


def make_routes(
    settings: Settings,
    redis: RedisClient,
    session: aiohttp.ClientSession,
    registry: Integrations | None = None,
) -> Callable[[str], Route | None]:
    """Each pixel's integration (as the registry knows it now) and destination."""
    tiktok = TikTokClient(session, settings.tiktok_api_url)
    sandbox = SandboxDestination(Sandbox(redis))
    integrations = registry or Integrations(settings)

    def route(pixel: str) -> Route | None:
        integration = integrations.by_pixel(pixel)
        if integration is None:
            return None
        return Route(integration, sandbox if integration is SANDBOX else tiktok)

    return route


def http_session() -> aiohttp.ClientSession:
    """The worker's one client session: explicit time-outs, a per-host connection limit."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=keys.HTTP_TOTAL_TIMEOUT_S, sock_connect=keys.HTTP_CONNECT_TIMEOUT_S
        ),
        connector=aiohttp.TCPConnector(limit_per_host=keys.HTTP_CONNECTIONS_PER_HOST),
    )
