"""The right to erasure (DESIGN §9, GDPR Art. 17): ``POST /v1/admin/erasure`` and
``tt-gateway forget``, one code path.

The person is named by any of ``email``, ``phone`` (with an optional ``country`` for a national
number, else ``TTGW_DEFAULT_PHONE_REGION``), ``user_id`` and ``anonymous_id`` (the signed
``_ttgw`` cookie value, or the raw visitor id), each a string or a list of strings, raw or
already SHA-256 hashed: they are normalized and hashed exactly as ingest does. Then
:func:`~gateway.identity.forget.forget_identity` deletes their links, visitors and clicks, and
:func:`~gateway.delivery.scrub.scrub_events` takes their identifiers out of every event kept.

The answer counts what was removed: ``links``, ``visitors``, ``clicks``, ``receipts_scrubbed``,
``queued_scrubbed`` (queued or retrying events dropped, never sent), ``dead_scrubbed`` and
``sandbox_scrubbed``. Counters and TikTok's own copy of what was delivered are not touched.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.appkeys import REDIS, SETTINGS, SIGNER
from gateway.delivery.scrub import scrub_events
from gateway.identity import normalize
from gateway.identity.cookies import CookieSigner, valid_visitor_id
from gateway.identity.forget import forget_identity
from gateway.logs import get_logger
from gateway.operate.admin_http import BadRequest, _body, _json
from gateway.settings import Settings
from gateway.store.connections import RedisClient, make_redis

log = get_logger("gateway.erasure")

FIELDS = ("email", "phone", "user_id", "anonymous_id")
VALUES_MAX = 100  # per field


class ErasureError(ValueError):
    """A value that names nobody: ``field`` says which."""

    def __init__(self, error: str, field: str) -> None:
        super().__init__(f"{field}: {error}")
        self.error, self.field = error, field


@dataclass(frozen=True, slots=True)
class Person:
    """Whom to erase: hashed identifiers as stitching links them, and visitor ids."""

    identifiers: tuple[tuple[str, str], ...] = ()
    visitor_ids: tuple[str, ...] = field(default=(), repr=False)


def person_from(
    given: Mapping[str, Any], signer: CookieSigner, default_region: str | None
) -> Person:
    """Normalize and hash what names the person; :class:`ErasureError` names a bad field."""
    values: dict[str, list[str]] = {}
    for name in FIELDS:
        raw = given.get(name)
        items = [] if raw is None else [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ErasureError("must be a string or a list of strings", name)
        if len(items) > VALUES_MAX:
            raise ErasureError(f"at most {VALUES_MAX} values", name)
        values[name] = [v for v in items if v.strip()]
    if not any(values.values()):
        raise ErasureError(f"give at least one of {', '.join(FIELDS)}", "body")
    country = given.get("country")
    if country is not None and not isinstance(country, str):
        raise ErasureError("must be a two-letter country code", "country")
    region = normalize.normalize_region(country) if country else default_region
    if country and region is None:
        raise ErasureError("must be a two-letter country code", "country")
    identifiers: list[tuple[str, str]] = []
    for name, kind, hashed in (
        ("email", "email", normalize.hash_email),
        ("phone", "phone", lambda v: normalize.hash_phone(v, region)),
        ("user_id", "user_id", normalize.hash_external_id),
    ):
        for value in values[name]:
            digest = hashed(value)
            if digest is None:
                raise ErasureError(f"is not a valid {name.replace('_', ' ')}", name)
            identifiers.append((kind, digest))
    visitors: list[str] = []
    for value in values["anonymous_id"]:
        visitor = signer.read_visitor(value.strip())
        if visitor is None and valid_visitor_id(value.strip()):
            visitor = value.strip()
        if visitor is None:
            raise ErasureError("is neither a _ttgw cookie value nor a visitor id", "anonymous_id")
        visitors.append(visitor)
    return Person(tuple(dict.fromkeys(identifiers)), tuple(dict.fromkeys(visitors)))


async def erase(redis: RedisClient, person: Person) -> dict[str, int]:
    """Erase the person everywhere the gateway keeps them; the counts of what was removed."""
    identity = await forget_identity(redis, person.identifiers, person.visitor_ids)
    events = await scrub_events(redis, identity.traces)
    counts = {
        "links": identity.links,
        "visitors": identity.visitors,
        "clicks": identity.clicks,
        "receipts_scrubbed": events.receipts,
        "queued_scrubbed": events.queued,
        "dead_scrubbed": events.dead,
        "sandbox_scrubbed": events.sandbox,
    }
    log.info("erased", **counts)  # counts only: never the identifiers
    return counts


async def erasure(request: web.Request) -> web.Response:
    """``POST /v1/admin/erasure``: erase one person (see the module doc)."""
    settings = request.config_dict[SETTINGS]
    try:
        person = person_from(
            await _body(request), request.config_dict[SIGNER], settings.default_phone_region
        )
    except ErasureError as exc:
        raise BadRequest(exc.error, exc.field) from None
    return _json(await erase(request.config_dict[REDIS], person))


def add_forget_parser(subcommands: Any) -> None:
    """``tt-gateway forget``'s options."""
    forget = subcommands.add_parser(
        "forget", help="erase one person: links, visitors, clicks, identifiers in stored events"
    )
    for name in FIELDS:
        option = "--" + name.replace("_", "-")
        forget.add_argument(option, action="append", default=[], help=f"the person's {name}")
    forget.add_argument("--country", help="region of a national --phone (default: the setting)")


async def forget_command(settings: Settings, args: argparse.Namespace) -> int:
    """``tt-gateway forget``: erase one person and print the counts as JSON."""
    given: dict[str, Any] = {name: getattr(args, name) for name in FIELDS}
    given["country"] = args.country
    try:
        person = person_from(
            given, CookieSigner(settings.secret_key), settings.default_phone_region
        )
    except ErasureError as exc:
        option = "--" + exc.field.replace("_", "-") if exc.field in FIELDS else exc.field
        print(f"tt-gateway: {option}: {exc.error}", file=sys.stderr)
        return 2
    assert settings.redis_url is not None
    redis = make_redis(settings.redis_url)
    try:
        counts = await erase(redis, person)
    finally:
        await redis.aclose()
    print(orjson.dumps(counts).decode())
    return 0
