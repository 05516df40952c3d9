"""Doctor's checks of Redis: version, persistence, eviction policy and the queue's state.

:func:`read_redis` gathers the :class:`RedisFacts`, :func:`assess_redis` judges them. The URL is
shown without its credentials.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from redis.exceptions import ResponseError

from gateway.operate.doctor_check import Check, Level
from gateway.settings import Settings
from gateway.store import keys
from gateway.store.connections import REDIS_ERRORS, RedisClient

MIN_REDIS_VERSION = (6, 2)  # what the embedded server ships; XAUTOCLAIM's reply changed in 7.0
QUEUE_WARN_FRACTION = 0.8  # of TTGW_QUEUE_MAX_EVENTS: ingest starts shedding at the cap

_NO_CONFIG = (
    "CONFIG is disabled (managed Redis?): appendfsync and RDB save points not checked; "
    "the eviction policy comes from INFO memory"
)
_EVICTING = (
    "under memory pressure Redis evicts keys, silently dropping queued events; "
    "set maxmemory-policy noeviction (ingest then answers 503 instead)"
)


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
