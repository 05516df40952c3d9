"""Typed keys of the application's state (``app[KEY]``), shared by the app and its handlers."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.identity.cookies import CookieSigner
from gateway.identity.visitors import VisitorStore
from gateway.ingest.enqueue import IngestQueue
from gateway.integrations import Integrations, IntegrationStore
from gateway.settings import Settings
from gateway.store.connections import Coalescer, RedisClient

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http", aiohttp.ClientSession)
SIGNER: web.AppKey[CookieSigner] = web.AppKey("signer", CookieSigner)
INTEGRATIONS: web.AppKey[Integrations] = web.AppKey("integrations", Integrations)
INGEST: web.AppKey[IngestQueue] = web.AppKey("ingest", IngestQueue)
VISITORS: web.AppKey[VisitorStore] = web.AppKey("visitors", VisitorStore)
STORE: web.AppKey[IntegrationStore] = web.AppKey("integration_store", IntegrationStore)
COALESCER: web.AppKey[Coalescer] = web.AppKey("coalescer", Coalescer)
