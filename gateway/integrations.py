"""Integrations: which pixel and token a request belongs to, from configuration and the admin API.

The client never chooses: a request maps to an integration by its ``Host`` — the integration whose
``hostnames`` list it (or a parent domain of it), else the only enabled integration when there is
just one. With no pixel configured anywhere, every request belongs to the sandbox.

Integrations come from two places: the environment / ``TTGW_CONFIG`` (read-only here) and the admin
API, which keeps them in Redis with the access token encrypted (AES-GCM, with a key derived from
``TTGW_SECRET_KEY``). Every process holds a :class:`Integrations` registry and reloads the stored
ones whenever their version counter changes (checked every couple of seconds), so a new pixel or
a fixed token reaches web and worker processes without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import Integration
from gateway.ingest.name_table import NameTable
from gateway.logs import get_logger
from gateway.settings import SANDBOX_PIXEL_CODE, Settings
from gateway.store import keys
from gateway.store.connections import RedisClient

SANDBOX = Integration(name="sandbox", pixel_code=SANDBOX_PIXEL_CODE, access_token="")
VERSION_KEY = f"{keys.PREFIX}:{keys.CONFIG_TAG}:integrations-version"
REFRESH_INTERVAL_S = 2.0

log = get_logger("gateway.integrations")


class TokenBox:
    """Encrypts access tokens at rest; the key is derived from the secret, never stored."""

    def __init__(self, secret_key: str) -> None:
        key = hmac.new(secret_key.encode(), b"ttgw access tokens v1", hashlib.sha256).digest()
        self._aead = AESGCM(key)

    def seal(self, token: str, pixel: str) -> str:
        """The token encrypted (bound to its pixel), as text."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, token.encode(), pixel.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, pixel: str) -> str | None:
        """The token, or None when it cannot be decrypted (another secret key, tampering)."""
        try:
            raw = base64.b64decode(sealed)
            return self._aead.decrypt(raw[:12], raw[12:], pixel.encode()).decode()
        except (ValueError, InvalidTag):
            return None


def token_hint(token: str) -> str:
    """What an operator may see of a token: its last four characters."""
    return "…" + token[-4:] if len(token) >= 8 else "…"


@dataclass(frozen=True, slots=True)
class Stored:
    """An integration as the admin API keeps it (token sealed)."""

    integration: Integration
    updated_ms: int


class IntegrationStore:
    """Integrations created through the admin API, in Redis."""

    def __init__(self, redis: RedisClient, box: TokenBox) -> None:
        self.redis = redis
        self.box = box

    async def load(self) -> dict[str, Stored]:
        """Every stored integration whose token can be opened, by pixel."""
        raw = cast("dict[bytes, bytes]", await self.redis.hgetall(keys.INTEGRATIONS_HASH))
        out: dict[str, Stored] = {}
        for pixel_raw, value in raw.items():
            pixel = pixel_raw.decode()
            data = orjson.loads(value)
            token = self.box.open(data.pop("token_sealed", ""), pixel)
            if token is None:
                log.error("integration_token_unreadable", pixel=pixel)
                continue
            updated = int(data.pop("updated_ms", 0))
            out[pixel] = Stored(_from_dict({**data, "access_token": token}), updated)
        return out

    async def save(self, integration: Integration) -> None:
        """Create or replace an integration; bumps the version every process watches."""
        data: dict[str, Any] = asdict(integration)
        data["token_sealed"] = self.box.seal(data.pop("access_token"), integration.pixel_code)
        data["updated_ms"] = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.INTEGRATIONS_HASH, integration.pixel_code, orjson.dumps(data))
        pipe.incr(VERSION_KEY)
        await pipe.execute()

    async def delete(self, pixel: str) -> bool:
        """Remove a stored integration; True when it existed."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(keys.INTEGRATIONS_HASH, pixel)
        pipe.incr(VERSION_KEY)
        removed, _ = await pipe.execute()
        return bool(removed)

    async def version(self) -> int:
        """The change counter of the stored integrations."""
        return int(await self.redis.get(VERSION_KEY) or 0)


def _from_dict(data: Mapping[str, Any]) -> Integration:
    return Integration(
        name=str(data["name"]),
        pixel_code=str(data["pixel_code"]),
        access_token=str(data["access_token"]),
        test_event_code=data.get("test_event_code"),
        hostnames=tuple(data.get("hostnames") or ()),
        default_phone_region=data.get("default_phone_region"),
        required_consent=tuple(data.get("required_consent") or ()),
        event_overrides=tuple((str(a), str(b)) for a, b in data.get("event_overrides") or ()),
        enabled=bool(data.get("enabled", True)),
    )


class Integrations:
    """The integrations in force, looked up by host or pixel."""

    def __init__(self, settings: Settings) -> None:
        self.configured = tuple(settings.integrations)
        self.purchase_event = settings.purchase_event
        self.stored: dict[str, Stored] = {}
        self._version = -1
        self._checked = 0.0
        self._rebuild()

    def _rebuild(self) -> None:
        configured = {i.pixel_code for i in self.configured}
        every = [*self.configured, *(s.integration for p, s in self.stored.items()
                                     if p not in configured)]  # fmt: skip
        self.all = tuple(every)
        self.enabled = tuple(i for i in every if i.enabled) or (SANDBOX,)
        self._names = {
            i.pixel_code: NameTable(self.purchase_event, i.event_overrides) for i in self.enabled
        }
        self._by_pixel = {i.pixel_code: i for i in self.enabled}

    @property
    def sandbox(self) -> bool:
        """True when no pixel is configured anywhere."""
        return self.enabled == (SANDBOX,)

    def is_configured(self, pixel: str) -> bool:
        """True for a pixel set in the environment or TTGW_CONFIG (not editable by the API)."""
        return any(i.pixel_code == pixel for i in self.configured)

    async def refresh(self, store: IntegrationStore, *, force: bool = False) -> bool:
        """Reload stored integrations when they changed; True when something was reloaded."""
        now = time.monotonic()
        if not force and now - self._checked < REFRESH_INTERVAL_S:
            return False
        self._checked = now
        version = await store.version()
        if version == self._version and not force:
            return False
        self.stored = await store.load()
        self._version = version
        self._rebuild()
        return True

    def for_host(self, host: str | None) -> Integration | None:
        """The integration serving ``host`` (port ignored), or None when none does."""
        name = (host or "").rsplit(":", 1)[0].strip("[]").lower() if host else ""
        for integration in self.enabled:
            for served in integration.hostnames:
                if name == served or name.endswith("." + served):
                    return integration
        return self.enabled[0] if len(self.enabled) == 1 else None

    def by_pixel(self, pixel: str) -> Integration | None:
        """The enabled integration of ``pixel``."""
        return self._by_pixel.get(pixel)

    def names(self, integration: Integration) -> NameTable:
        """The event-name table of ``integration``."""
        return self._names.get(integration.pixel_code) or NameTable(self.purchase_event)


def with_token(integration: Integration, token: str) -> Integration:
    """A copy of ``integration`` with another access token."""
    return replace(integration, access_token=token)


async def keep_fresh(registry: Integrations, store: IntegrationStore, stop: asyncio.Event) -> None:
    """Reload integrations changed through the admin API until ``stop``."""
    while not stop.is_set():
        try:
            if await registry.refresh(store):
                log.info("integrations_reloaded", pixels=[i.pixel_code for i in registry.enabled])
        except Exception as exc:  # a Redis blip: keep the integrations we have
            log.warning("integrations_refresh_failed", error=type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REFRESH_INTERVAL_S)
