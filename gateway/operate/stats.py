"""Time series for the operator: per-minute flow and per-hour match-key coverage, in Redis.

* Per minute (kept two days): events accepted at ingest and delivered, retried, dead-lettered by
  the workers — "are conversions flowing?".
* Per hour (kept eight days), for each event name: how many delivered events there were and how
  many carried each match key TikTok uses (email, phone, external_id, ttclid, ttp, ip,
  user_agent) — "with which keys?". A key whose share over the last 24 hours fell by
  ``TTGW_COVERAGE_DROP_ALERT`` or more against the 24 hours before raises an alert (the "phone
  numbers stopped arriving" case).

Counters are written with one pipelined round trip per batch, apart from the queue's own atomic
scripts (they live under another hash tag): a lost increment skews a chart, never an event.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from gateway.store import keys
from gateway.store.connections import Lua, LuaCall, RedisClient, eval_many

_INCREMENT = Lua("""
-- KEYS: a counters hash; ARGV: ttl s, then field/increment pairs
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
""")

FLOW_COUNTERS = ("accepted", "delivered", "retried", "dead")
MATCH_KEYS = ("email", "phone", "external_id", "ttclid", "ttp", "ip", "user_agent")
ALERT_MIN_EVENTS = 20  # both days need at least this many events before a drop means anything


def minute(now: float | None = None) -> int:
    """The current Unix minute."""
    return int((time.time() if now is None else now) // 60)


def hour(now: float | None = None) -> int:
    """The current Unix hour."""
    return int((time.time() if now is None else now) // 3600)


def present_keys(event: Mapping[str, Any]) -> list[str]:
    """The match keys a TikTok event object carries."""
    user = event.get("user") or {}
    return [key for key in MATCH_KEYS if user.get(key)]


async def count_flow(
    redis: RedisClient, counts: Mapping[str, int], now: float | None = None
) -> None:
    """Add to this minute's flow counters (accepted, delivered, retried, dead)."""
    calls = flow_calls(counts, now)
    if calls:
        await eval_many(redis, calls)


def flow_calls(counts: Mapping[str, int], now: float | None = None) -> list[LuaCall]:
    """The script call that adds ``counts`` to this minute's flow counters: run by
    :func:`count_flow`, or in a round trip made anyway (the web process's
    :class:`~gateway.connections.Coalescer`)."""
    pairs: list[str | int] = []
    for name, value in counts.items():
        if value:
            pairs += [name, value]
    if not pairs:
        return []
    key = keys.minute_stats_key(minute(now))
    return [(_INCREMENT, [key], [keys.MINUTE_STATS_TTL_S, *pairs])]


def increment_call(key: str, counts: Mapping[str, int], ttl_s: int) -> LuaCall:
    """The script call that adds ``counts`` to the counters hash ``key`` and sets its expiry."""
    pairs: list[str | int] = []
    for name, value in counts.items():
        pairs += [name, value]
    return (_INCREMENT, [key], [ttl_s, *pairs])


WARNING_PREFIX = "warn:"  # a count for :func:`stats_calls` that goes to the warnings hash
HEALTH_PREFIX = "health:"  # ``health:<hour>:<field>``: to that hour's attribution-health hash


def stats_calls(counts: Mapping[str, int], now: float | None = None) -> list[LuaCall]:
    """Flow counters to this minute's hash (:func:`flow_calls`); counts named
    ``warn:<field>`` to this hour's dropped-field counters (:func:`warnings_by_field`), and
    ``health:<hour>:<field>`` to that hour's attribution-health counters (``health.py``)."""
    prefixes = (WARNING_PREFIX, HEALTH_PREFIX)
    flow_counts = {k: v for k, v in counts.items() if not k.startswith(prefixes)}
    calls = flow_calls(flow_counts, now)
    by_hour: dict[int, list[str | int]] = {}
    for name, value in counts.items():
        if value and name.startswith(HEALTH_PREFIX):
            at, field = name[len(HEALTH_PREFIX) :].split(":", 1)
            by_hour.setdefault(int(at), []).extend([field, value])
    for unix_hour, fields in by_hour.items():
        key = keys.health_key(unix_hour)
        calls.append((_INCREMENT, [key], [keys.COVERAGE_TTL_S, *fields]))
    pairs: list[str | int] = []
    for name, value in counts.items():
        if value and name.startswith(WARNING_PREFIX):
            pairs += [name[len(WARNING_PREFIX) :], value]
    if pairs:
        key = keys.warnings_key(hour(now))
        calls.append((_INCREMENT, [key], [keys.COVERAGE_TTL_S, *pairs]))
    return calls


async def warnings_by_field(
    redis: RedisClient, hours: int = 24, now: float | None = None
) -> dict[str, int]:
    """How many times each field was dropped with a warning at ingest in the last ``hours``."""
    last = hour(now)
    pipe = redis.pipeline(transaction=False)
    for h in range(last - hours + 1, last + 1):
        pipe.hgetall(keys.warnings_key(h))
    total: Counter[str] = Counter()
    for raw in await pipe.execute():
        for field, value in cast("dict[bytes, bytes]", raw).items():
            total[field.decode()] += int(value)
    return dict(total.most_common())


def coverage_fields(events: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """The coverage counter fields of events: ``<event>|total`` and ``<event>|<key>``."""
    fields: Counter[str] = Counter()
    for event in events:
        name = str(event.get("event", ""))
        fields[f"{name}|total"] += 1
        for key in present_keys(event):
            fields[f"{name}|{key}"] += 1
    return fields


async def count_coverage(
    redis: RedisClient, events: Iterable[Mapping[str, Any]], now: float | None = None
) -> None:
    """Count delivered events and the match keys each carried, by event name, this hour."""
    fields = coverage_fields(events)
    if not fields:
        return
    hour_key = keys.coverage_key(hour(now))
    pipe = redis.pipeline(transaction=False)
    for field, value in fields.items():
        pipe.hincrby(hour_key, field, value)
    pipe.expire(hour_key, keys.COVERAGE_TTL_S)
    await pipe.execute()


async def flow(
    redis: RedisClient, minutes: int = 60, now: float | None = None
) -> list[dict[str, int]]:
    """The last ``minutes`` of flow counters, oldest first."""
    last = minute(now)
    span = range(last - minutes + 1, last + 1)
    pipe = redis.pipeline(transaction=False)
    for m in span:
        pipe.hgetall(keys.minute_stats_key(m))
    out = []
    for m, raw in zip(span, await pipe.execute(), strict=True):
        counts = {k.decode(): int(v) for k, v in cast("dict[bytes, bytes]", raw).items()}
        out.append({"minute": m, **{n: counts.get(n, 0) for n in FLOW_COUNTERS}})
    return out


async def coverage(
    redis: RedisClient, hours: int = 168, now: float | None = None
) -> dict[str, Any]:
    """Per event name: delivered events per hour and each key's share per hour (None: no events)."""
    last = hour(now)
    span = list(range(last - hours + 1, last + 1))
    pipe = redis.pipeline(transaction=False)
    for h in span:
        pipe.hgetall(keys.coverage_key(h))
    counts: list[dict[str, int]] = [
        {k.decode(): int(v) for k, v in cast("dict[bytes, bytes]", raw).items()}
        for raw in await pipe.execute()
    ]
    names = sorted({field.split("|", 1)[0] for hour_counts in counts for field in hour_counts})
    events: dict[str, dict[str, list[Any]]] = {}
    for name in names:
        totals = [c.get(f"{name}|total", 0) for c in counts]
        series: dict[str, list[Any]] = {"total": totals}
        for key in MATCH_KEYS:
            series[key] = [
                round(c.get(f"{name}|{key}", 0) / total, 4) if total else None
                for c, total in zip(counts, totals, strict=True)
            ]
        events[name] = series
    return {"keys": list(MATCH_KEYS), "hours": span, "events": events}


def drop_alerts(report: Mapping[str, Any], threshold: float) -> list[dict[str, Any]]:
    """Keys whose share over the last 24 h fell by ``threshold`` or more against the day before."""
    alerts = []
    for name, series in report["events"].items():
        totals: Sequence[int] = series["total"]
        today_total, yesterday_total = sum(totals[-24:]), sum(totals[-48:-24])
        if today_total < ALERT_MIN_EVENTS or yesterday_total < ALERT_MIN_EVENTS:
            continue
        for key in report["keys"]:
            shares: Sequence[float | None] = series[key]
            today = _carried(shares[-24:], totals[-24:]) / today_total
            yesterday = _carried(shares[-48:-24], totals[-48:-24]) / yesterday_total
            if yesterday - today >= threshold:
                drop = round(yesterday - today, 4)
                alerts.append(
                    {
                        "event": name,
                        "key": key,
                        "yesterday": round(yesterday, 4),
                        "today": round(today, 4),
                        "drop": drop,
                    }
                )
    return alerts


def _carried(shares: Sequence[float | None], totals: Sequence[int]) -> int:
    """How many events carried the key, from hourly shares and totals."""
    return sum(round((share or 0) * total) for share, total in zip(shares, totals, strict=True))
