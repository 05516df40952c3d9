"""``tt-gateway doctor``: a self-check of the configuration, Redis, access tokens and DNS.

Every finding is a :class:`Check` at one of three levels: OK; WARN — it works, but something will
surprise the operator (test events, 7-day cookies in Safari, dead letters); FAIL — events will be
lost or not delivered. The command exits 1 when anything fails, else 0.

The DNS check applies WebKit's third-party cloaking rules (``reference/architecture.md`` §B.6):
Safari caps cookies to 7 days when the gateway host is a CNAME to another domain, or when its
address shares fewer than 16 (IPv4) or 64 (IPv6) leading bits with the storefront's, a family
mismatch counting as no match. WebKit applies the address rule to hosts without a CNAME; doctor
applies it to every gateway host, because the heuristic has been tightened before.

``TTGW_COOKIE_DOMAIN`` is checked against the Public Suffix List (settings refuse a public suffix
at start-up; doctor fails on one too) and against the hosts doctor knows of: a gateway host outside
it gets host-only cookies, a storefront outside it cannot read ``_ttp``.

Secrets never appear in the output: tokens and keys are not printed, and the Redis URL is shown
without its credentials.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import orjson
from redis.exceptions import ResponseError

from gateway.delivery.client import Answer, Verdict, build_body
from gateway.delivery.routes import http_session, make_routes
from gateway.integrations import Integrations
from gateway.operate.itp import (
    IPV4_PREFIX_BITS,
    IPV6_PREFIX_BITS,
    Resolution,
    Resolver,
    SystemResolver,
    cname_target,
    normal_host,
    parse_host_pair,
    registrable_domain,
    shares_prefix,
    split_families,
)
from gateway.settings import Integration, Settings, SettingsError, cookie_domain_problem
from gateway.store import keys
from gateway.store.connections import REDIS_ERRORS, RedisClient, RedisOptions, make_redis

# The gateway.itp names here are re-exported: callers of doctor pass resolvers and host pairs.
__all__ = [
    "Check",
    "Level",
    "RedisFacts",
    "Resolution",
    "Resolver",
    "SystemResolver",
    "assess_redis",
    "check_cookie_domain",
    "check_dns",
    "check_redis",
    "check_settings",
    "check_tokens",
    "cname_target",
    "doctor_command",
    "parse_host_pair",
    "read_redis",
    "redis_location",
    "render",
    "run_checks",
    "shares_prefix",
]

MIN_REDIS_VERSION = (6, 2)  # what the embedded server ships; XAUTOCLAIM's reply changed in 7.0
QUEUE_WARN_FRACTION = 0.8  # of TTGW_QUEUE_MAX_EVENTS: ingest starts shedding at the cap

_AUTH_HINTS = {
    40001: "the token has no permission on this pixel: use a token generated for it",
    40104: "the access token is empty",
    40105: "access token is incorrect or revoked: generate a new one in Events Manager",
}
_SAFARI_CNAME = (
    "Safari caps cookies set through a CNAME to another domain to 7 days: "
    "use an A/AAAA record or a path of the shop (/_t/)"
)
_NO_ORIGINS = (
    "TTGW_ALLOWED_ORIGINS is empty: browsers on another origin (the storefront) cannot post "
    "events; list them, e.g. https://www.shop.example"
)
_TEST_CODE = (
    "has a test_event_code (TTGW_TEST_EVENT_CODE or TTGW_CONFIG): events go to Test events, "
    "not live; remove it in production"
)
_NO_TEST_CODE = (
    "no test_event_code: token not checked (set one to let doctor check it without live data)"
)
_NO_CONFIG = (
    "CONFIG is disabled (managed Redis?): appendfsync and RDB save points not checked; "
    "the eviction policy comes from INFO memory"
)
_EVICTING = (
    "under memory pressure Redis evicts keys, silently dropping queued events; "
    "set maxmemory-policy noeviction (ingest then answers 503 instead)"
)


class Level(StrEnum):
    """How bad a finding is."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was checked, how it went, and what to do about it."""

    name: str
    level: Level
    detail: str


# --- settings ---------------------------------------------------------------------------------


def check_settings(settings: Settings) -> list[Check]:
    """What the settings say, and the choices that quietly change where events go."""
    enabled = Integrations(settings).enabled
    if settings.sandbox:
        what = "sandbox mode: no pixel configured, events are recorded in Redis, not sent"
    else:
        pixels = ", ".join(f"{i.pixel_code} ({i.name})" for i in enabled)
        what = f"pixel(s) {pixels} via {settings.tiktok_api_url}"
    origins = ", ".join(settings.allowed_origins) or "none"
    checks = [Check("settings", Level.OK, f"{what}; allowed origins: {origins}")]
    if not settings.allowed_origins:
        checks.append(Check("settings", Level.WARN, _NO_ORIGINS))
    if not settings.sandbox:
        api = urlsplit(settings.tiktok_api_url)
        host = (api.hostname or "").lower()
        problems = []
        if api.scheme != "https":
            problems.append("is not https")
        if host != "tiktok.com" and not host.endswith(".tiktok.com"):
            problems.append(f"points at {host}, not TikTok (an emulator?): events do not reach it")
        if problems:
            checks.append(
                Check("settings", Level.WARN, f"TTGW_TIKTOK_API_URL {' and '.join(problems)}")
            )
        checks += [
            Check("settings", Level.WARN, f"pixel {i.pixel_code} {_TEST_CODE}")
            for i in enabled
            if i.test_event_code
        ]
    without = [i for i in enabled if not i.default_phone_region]
    if without and not settings.default_phone_region:
        pixels = ", ".join(i.pixel_code for i in without)
        checks.append(Check("phones", Level.WARN, f"pixel(s) {pixels}: {_NO_PHONE_REGION}"))
    return checks


_NO_PHONE_REGION = (
    "no default phone region: a phone number written without + and a country code (06 12 34 "
    "56 78) is dropped unless its event names user.country; set TTGW_DEFAULT_PHONE_REGION (or "
    "default_phone_region per integration) to your shoppers' country"
)


def check_cookie_domain(settings: Settings, hosts: Sequence[tuple[str, str]] = ()) -> list[Check]:
    """Will browsers keep cookies for ``TTGW_COOKIE_DOMAIN`` on the hosts doctor knows of?

    Those are the integrations' ``hostnames`` and the ``--check-host`` pairs. Nothing is said
    when the variable is unset: every cookie is then the gateway host's own.
    """
    domain = settings.cookie_domain
    if domain is None:
        return []
    if (problem := cookie_domain_problem(domain)) is not None:
        return [Check("cookies", Level.FAIL, f"TTGW_COOKIE_DOMAIN: {problem}")]
    served = [h for i in Integrations(settings).enabled for h in i.hostnames]
    served += [gateway for gateway, _ in hosts]
    storefronts = [storefront for _, storefront in hosts]
    checks = [
        Check(
            "cookies",
            Level.WARN,
            f"{host} is not under TTGW_COOKIE_DOMAIN {domain}: the gateway's cookies there are "
            f"host-only (no Domain), not shared with {domain}",
        )
        for host in dict.fromkeys(served)
        if not _under(host, domain)
    ]
    checks += [
        Check(
            "cookies",
            Level.WARN,
            f"storefront {host} is not under TTGW_COOKIE_DOMAIN {domain}: "
            "a pixel on its pages cannot read the _ttp cookie",
        )
        for host in dict.fromkeys(storefronts)
        if not _under(host, domain)
    ]
    return checks or [Check("cookies", Level.OK, f"cookies for {domain} (not a public suffix)")]


def _under(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


# --- Redis ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisFacts:
    """What doctor reads from Redis; None where CONFIG is disabled (managed Redis)."""

    version: str
    aof: bool
    appendfsync: str | None
    rdb_save: str | None  # CONFIG GET save: "" when RDB snapshots are off
    eviction_policy: str
    queued: int
    retrying: int
    dead: int
    paused: dict[str, str]  # pixel -> why


def redis_location(url: str) -> str:
    """``url`` without user name or password."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


async def read_redis(client: RedisClient) -> RedisFacts:
    """Read version, persistence, eviction policy and the queue's state."""
    server: dict[str, Any] = await client.info("server")
    persistence: dict[str, Any] = await client.info("persistence")
    memory: dict[str, Any] = await client.info("memory")
    config = await _config(client, ("appendfsync", "save", "maxmemory-policy"))
    paused: dict[str, str] = {}
    for pixel, value in (await client.hgetall(keys.PAUSED_HASH)).items():
        paused[_text(pixel)] = _pause_reason(value)
    return RedisFacts(
        version=str(server.get("redis_version", "unknown")),
        aof=str(persistence.get("aof_enabled", "0")) == "1",
        appendfsync=None if config is None else config.get("appendfsync"),
        rdb_save=None if config is None else config.get("save", "").strip(),
        eviction_policy=(config.get("maxmemory-policy") if config else None)
        or str(memory.get("maxmemory_policy", "unknown")),
        queued=await client.xlen(keys.EVENTS_STREAM),
        retrying=await client.zcard(keys.RETRY_ZSET),
        dead=await client.xlen(keys.DEAD_STREAM),
        paused=paused,
    )


async def _config(client: RedisClient, names: Sequence[str]) -> dict[str, str] | None:
    """CONFIG GET of each name (one at a time: several in one call needs 7.0), None if refused."""
    found: dict[str, str] = {}
    try:
        for name in names:
            reply = await client.config_get(name)
            found.update({str(k): str(v) for k, v in reply.items()})
    except ResponseError:  # CONFIG renamed or refused, as on most managed Redis
        return None
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pause_reason(raw: bytes | str) -> str:
    """``<code> <message>`` of a pause record (written by ``delivery.Pauses.pause``)."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        return "reason unreadable"
    return f"{record.get('code')} {record.get('message', '')}".strip()


def _version(text: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", text)
    return tuple(int(n) for n in numbers[:3])


def assess_redis(facts: RedisFacts, location: str, *, queue_max_events: int = 0) -> list[Check]:
    """The Redis checks from what :func:`read_redis` found."""
    server = f"Redis {facts.version} at {location}"
    if old := _version(facts.version) < MIN_REDIS_VERSION:
        server += " is older than 6.2, the oldest version the gateway supports"
    checks = [Check("redis", Level.WARN if old else Level.OK, server)]
    if facts.appendfsync is None:
        checks.append(Check("redis", Level.WARN, _NO_CONFIG))
    checks.append(_persistence(facts))
    policy = f"maxmemory-policy {facts.eviction_policy}"
    if facts.eviction_policy == "noeviction":
        checks.append(Check("eviction", Level.OK, policy))
    else:
        checks.append(Check("eviction", Level.FAIL, f"{policy}: {_EVICTING}"))
    checks.append(_queue(facts, queue_max_events))
    return checks


def _persistence(facts: RedisFacts) -> Check:
    rdb = {None: "unknown", "": "off"}.get(facts.rdb_save, f"save {facts.rdb_save}")
    if facts.aof:
        fsync = facts.appendfsync or "unknown"
        detail = f"AOF on (appendfsync {fsync}), RDB {rdb}"
        if fsync == "no":
            return Check(
                "persistence",
                Level.WARN,
                f"{detail}: the OS flushes the AOF when it likes, a crash can lose about 30 s of "
                "accepted events; set appendfsync everysec or always",
            )
        return Check("persistence", Level.OK, detail)
    if facts.rdb_save == "":
        return Check(
            "persistence",
            Level.FAIL,
            "no persistence (AOF off, no RDB save points): a restart loses every queued event; "
            "set appendonly yes",
        )
    return Check(
        "persistence",
        Level.WARN,
        f"AOF off, RDB {rdb}: events accepted since the last snapshot are lost on a crash; "
        "set appendonly yes",
    )


def _queue(facts: RedisFacts, queue_max_events: int) -> Check:
    detail = f"{facts.queued} queued, {facts.retrying} waiting to retry"
    problems = []
    if queue_max_events and facts.queued >= QUEUE_WARN_FRACTION * queue_max_events:
        problems.append(
            f"the queue is near TTGW_QUEUE_MAX_EVENTS ({queue_max_events}): is a worker running?"
        )
    if facts.dead:
        problems.append(
            f"{facts.dead} dead letter(s): `tt-gateway replay --dry-run` lists them, "
            "`tt-gateway replay` sends them again"
        )
    for pixel, reason in sorted(facts.paused.items()):
        problems.append(f"pixel {pixel} is paused ({reason}): fix its access token")
    if not problems:
        return Check("queue", Level.OK, f"{detail}, no dead letters, no paused integration")
    return Check("queue", Level.WARN, f"{detail}; " + "; ".join(problems))


async def check_redis(client: RedisClient, settings: Settings) -> list[Check]:
    """Connect, then :func:`assess_redis`; FAIL when Redis cannot be reached."""
    location = redis_location(settings.redis_url or "")
    try:
        facts = await read_redis(client)
    except REDIS_ERRORS as exc:
        return [Check("redis", Level.FAIL, f"cannot use Redis at {location}: {exc}")]
    return assess_redis(facts, location, queue_max_events=settings.queue_max_events)


# --- access tokens ----------------------------------------------------------------------------


def _test_body(integration: Integration, test_event_code: str) -> bytes:
    host = integration.hostnames[0] if integration.hostnames else "example.com"
    event = {
        "event": "ViewContent",
        "event_time": int(time.time()),
        "event_id": f"ttgw-doctor-{uuid.uuid4()}",
        "user": {"ip": "203.0.113.1", "user_agent": "tt-gateway doctor"},
        "properties": {"content_type": "product", "content_ids": ["ttgw-test"]},
        "page": {"url": f"https://{host}/"},
        "limited_data_use": False,
    }
    return build_body(
        integration.pixel_code, [orjson.dumps(event)], test_event_code=test_event_code
    )


def _token_check(who: str, answer: Answer) -> Check:
    if answer.verdict is Verdict.DELIVERED:
        accepted = f"test event accepted (request_id {answer.request_id}), see Test events"
        return Check("token", Level.OK, f"{who}: {accepted}")
    said = f"{answer.code} {answer.message}" if answer.code is not None else answer.message
    if answer.http_status is not None and answer.code is None:
        said = f"HTTP {answer.http_status} {said}"
    hint = _AUTH_HINTS.get(answer.code or 0)
    if hint is None:
        hint = {
            Verdict.AUTH: "check the access token and TTGW_TIKTOK_API_URL",
            Verdict.RETRY: "TikTok could not be reached or failed: try again",
            Verdict.THROTTLED: "rate limited: try again in a few minutes",
        }.get(answer.verdict, "the test event was refused")
    return Check("token", Level.FAIL, f"{who}: TikTok answered {said.strip()} ({hint})")


async def check_tokens(client: RedisClient, settings: Settings) -> list[Check]:
    """Send one test event per integration with a test code, through its delivery route."""
    if settings.sandbox:
        return [Check("token", Level.OK, "sandbox: nothing is sent")]
    enabled = Integrations(settings).enabled
    session = http_session()
    try:
        routes = make_routes(settings, client, session)

        async def check(integration: Integration) -> Check:
            who = f"pixel {integration.pixel_code} ({integration.name})"
            if not integration.test_event_code:
                return Check("token", Level.WARN, f"{who}: {_NO_TEST_CODE}")
            route = routes(integration.pixel_code)
            assert route is not None  # make_routes has a route for every enabled integration
            body = _test_body(integration, integration.test_event_code)
            answer = await route.destination.send(body, integration.access_token)
            return _token_check(who, answer)

        return list(await asyncio.gather(*(check(i) for i in enabled)))
    finally:
        await session.close()


# --- DNS and Safari's cookie cap ------------------------------------------------------------


async def check_dns(gateway: str, storefront: str, resolver: Resolver) -> list[Check]:
    """Will Safari keep the gateway's cookies for their full life on ``storefront``'s pages?"""
    gw, shop = await asyncio.gather(resolver.resolve(gateway), resolver.resolve(storefront))
    missing = [host for host, r in ((gateway, gw), (storefront, shop)) if not r.addresses]
    if missing:
        return [
            Check("dns", Level.FAIL, f"{host} does not resolve (no A or AAAA record)")
            for host in missing
        ]
    checks = []
    target = cname_target(gateway, gw)
    if (
        target is not None
        and registrable_domain(target) != registrable_domain(storefront)
        and target != normal_host(shop.canonical)  # the top host's own CNAME target is first party
    ):
        checks.append(
            Check("dns", Level.WARN, f"{gateway} is a CNAME to {target}: {_SAFARI_CNAME}")
        )
    gw4, gw6 = split_families(gw.addresses)
    shop4, shop6 = split_families(shop.addresses)
    shared = []
    for ours, theirs, bits, family in (
        (gw4, shop4, IPV4_PREFIX_BITS, "IPv4"),
        (gw6, shop6, IPV6_PREFIX_BITS, "IPv6"),
    ):
        if not ours or not theirs:
            continue
        if any(shares_prefix(a, b) for a in ours for b in theirs):
            shared.append(f"/{bits}")
            continue
        apart = (
            f"{gateway} ({', '.join(ours)}) shares no /{bits} with {storefront} "
            f"({', '.join(theirs)}): Safari caps cookies to 7 days when the gateway's {family} "
            f"address matches fewer than {bits} leading bits of the site's; serve the gateway "
            "from the shop's own servers, load balancer or CDN, or as a path (/_t/)"
        )
        checks.append(Check("dns", Level.WARN, apart))
    if bool(gw4) != bool(shop4) or bool(gw6) != bool(shop6):
        mismatch = (
            f"{storefront} has {_family_names(shop4, shop6)} but {gateway} has "
            f"{_family_names(gw4, gw6)}: a dual-stack Safari may compare across families, "
            "which counts as no match and caps cookies to 7 days; publish AAAA (and A) for "
            "the gateway if and only if the shop does"
        )
        checks.append(Check("dns", Level.WARN, mismatch))
    if not checks:
        record = "an A/AAAA record" if target is None else f"a CNAME to first-party {target}"
        pair = (
            f"{gateway} ({', '.join(gw.addresses)}) for {storefront} ({', '.join(shop.addresses)})"
        )
        checks.append(Check("dns", Level.OK, f"{pair}: {record}, {' and '.join(shared)} shared"))
    return checks


def _family_names(v4: Sequence[str], v6: Sequence[str]) -> str:
    names = [name for name, found in (("A (IPv4)", v4), ("AAAA (IPv6)", v6)) if found]
    return " and ".join(names) + " records"


# --- the command ------------------------------------------------------------------------------


async def run_checks(
    settings: Settings,
    *,
    hosts: Sequence[tuple[str, str]] = (),
    resolver: Resolver | None = None,
) -> list[Check]:
    """Every check, in order: settings, cookie domain, Redis, tokens, then DNS for each pair.

    ``settings.redis_url`` must be set: ``tt-gateway doctor`` starts the embedded Redis first
    when there is none, as ``replay`` and ``send-test`` do.
    """
    if settings.redis_url is None:
        raise SettingsError("TTGW_REDIS_URL", "doctor needs a Redis URL (the CLI starts one)")
    resolver = resolver or SystemResolver()
    client = make_redis(settings.redis_url, RedisOptions(retries=0, max_connections=4))
    try:
        groups = await asyncio.gather(
            check_redis(client, settings),
            check_tokens(client, settings),
            *(check_dns(gateway, storefront, resolver) for gateway, storefront in hosts),
        )
    finally:
        await client.aclose()
    first = check_settings(settings) + check_cookie_domain(settings, hosts)
    return first + [check for group in groups for check in group]


def render(checks: Sequence[Check]) -> str:
    """One aligned line per check, then a count of failures and warnings."""
    lines = [f"{c.level.value:<6}{c.name:<12}{c.detail}" for c in checks]
    failed = sum(c.level is Level.FAIL for c in checks)
    warned = sum(c.level is Level.WARN for c in checks)
    lines.append(
        f"{len(checks)} checks: {failed} failed, {warned} warning{'' if warned == 1 else 's'}"
    )
    return "\n".join(lines)


async def doctor_command(settings: Settings, hosts: Sequence[tuple[str, str]]) -> int:
    """``tt-gateway doctor``: print every check; 1 when one fails, else 0 (warnings included)."""
    checks = await run_checks(settings, hosts=hosts)
    print(render(checks), flush=True)
    return 1 if any(c.level is Level.FAIL for c in checks) else 0
