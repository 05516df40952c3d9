"""Attribution health: how well delivered events can be attributed, per event, source and hour.

Three shares of the events delivered to TikTok (a repeat answered as a duplicate is not counted
again), for each standard event name (others as ``custom``; ``CompletePayment`` counts as
``Purchase``) and for each ingest source (``browser``, ``server``, ``segment``, ``webhook``, …):

* ``ttclid`` — the event carried TikTok's click id;
* ``strong`` — it carried at least one of email, phone or external_id;
* ``ipua`` — it carried both the IP address and the user agent.

And, for mirror mode, the server twins: of the *pixel events* — distinct ``(pixel, event,
event_id)`` of which a ``browser`` copy reached ingest — the share of which a copy from another
source (server, segment, webhook) also arrived within the 48 h idempotency window, before or
after the browser's. Both are counted at ingest in the hour the first copy arrived (the
receipt's ``received_ms``), so an hour's share never exceeds 1; a twin is counted once per
receipt (its ``twin`` field).

Counters live in one hash per hour (``keys.health_key``), kept as long as the coverage hashes.
Drop alerts compare the last 24 h with the 24 h before, as the match-key coverage does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from gateway.operate.stats import (
    HEALTH_PREFIX,
    coverage_fields,
    drop_alerts,
    hour,
    increment_call,
)
from gateway.store import keys
from gateway.store.connections import LuaCall, RedisClient, eval_many
from gateway.tiktok.names import ACCEPTED_EVENTS

SHARES = ("ttclid", "strong", "ipua")
STRONG_KEYS = ("email", "phone", "external_id")
SOURCES = ("browser", "server", "segment", "webhook", "webhook-test")
OTHER_SOURCE = "other"
ALL_SOURCES = "all"
MIRROR = "mirror"
BROWSER = "browser"


def event_label(name: str) -> str:
    """``metrics.event_label`` (not imported: ingest imports this module, and metrics the app's
    keys): a standard name as it is, any other ``custom``."""
    return name if name in ACCEPTED_EVENTS else "custom"


def source_label(source: str) -> str:
    """A bounded label for an ingest source."""
    return source if source in SOURCES else OTHER_SOURCE


def shares_carried(user: Mapping[str, Any]) -> list[str]:
    """Which of :data:`SHARES` an event's ``user`` object counts towards."""
    carried = []
    if user.get("ttclid"):
        carried.append("ttclid")
    if any(user.get(key) for key in STRONG_KEYS):
        carried.append("strong")
    if user.get("ip") and user.get("user_agent"):
        carried.append("ipua")
    return carried


def delivery_fields(delivered: Iterable[tuple[str, str, Mapping[str, Any]]]) -> Counter[str]:
    """Counter fields of delivered events, each given as (canonical name, source, event shape)."""
    fields: Counter[str] = Counter()
    for name, source, event in delivered:
        prefix = f"{event_label(name)}|{source_label(source)}"
        fields[f"{prefix}|total"] += 1
        user = event.get("user")
        for share in shares_carried(user if isinstance(user, Mapping) else {}):
            fields[f"{prefix}|{share}"] += 1
    return fields


def _alike(
    delivered: Iterable[tuple[str, str, Mapping[str, Any]]],
) -> list[tuple[tuple[str, str, Mapping[str, Any]], int]]:
    """The events counted once per kind: the worker's events share one shape object per kind
    (``send.coverage_shape``), so a request's 1,000 events are a handful of kinds, not 1,000
    counts (measured: 5.7 of the worker's ~26 µs an event went to counting them one by one)."""
    kinds: dict[tuple[str, str, int], tuple[str, str, Mapping[str, Any]]] = {}
    counts: dict[tuple[str, str, int], int] = {}
    for item in delivered:
        kind = (item[0], item[1], id(item[2]))
        if kind in counts:
            counts[kind] += 1
        else:
            kinds[kind] = item
            counts[kind] = 1
    return [(kinds[kind], n) for kind, n in counts.items()]


async def count_delivered(
    redis: RedisClient,
    delivered: Sequence[tuple[str, str, Mapping[str, Any]]],
    now: float | None = None,
) -> None:
    """Add delivered events to this hour's coverage and health counters, in one round trip."""
    calls = delivered_calls(delivered, now)
    if calls:
        await eval_many(redis, calls)


def delivered_calls(
    delivered: Sequence[tuple[str, str, Mapping[str, Any]]], now: float | None = None
) -> list[LuaCall]:
    """The script calls :func:`count_delivered` runs, for a round trip made anyway (the worker's
    bookkeeping after a request TikTok accepted)."""
    if not delivered:
        return []
    this_hour = hour(now)
    coverage: Counter[str] = Counter()
    health: Counter[str] = Counter()
    for (name, source, event), n in _alike(delivered):
        for field, value in coverage_fields([event]).items():
            coverage[field] += value * n
        for field, value in delivery_fields([(name, source, event)]).items():
            health[field] += value * n
    return [
        increment_call(keys.coverage_key(this_hour), coverage, keys.COVERAGE_TTL_S),
        increment_call(keys.health_key(this_hour), health, keys.COVERAGE_TTL_S),
    ]


def mirror_counts(name: str, source: str, result: Any, received_ms: int) -> dict[str, int]:
    """Counts (for :func:`gateway.operate.stats.stats_calls`) of one ingest script result.

    ``result`` is the enqueue script's answer: a stream id (queued), 0 (a duplicate), or
    ``[0, first source, first received ms]`` (the first copy from the other side of a pair).
    """
    label = event_label(name)
    counts: dict[str, int] = {}
    if isinstance(result, list) and len(result) == 3:
        first_source = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        first_hour = int(result[2]) // 3_600_000
        prefix = f"{HEALTH_PREFIX}{first_hour}:{label}|{MIRROR}"
        counts[f"{prefix}|twin"] = 1
        if first_source != BROWSER:  # the browser copy came second: a pixel event only now
            counts[f"{prefix}|pixel"] = 1
    elif isinstance(result, bytes | str) and source == BROWSER:
        counts[f"{HEALTH_PREFIX}{received_ms // 3_600_000}:{label}|{MIRROR}|pixel"] = 1
    return counts


def _share(part: int, total: int) -> float | None:
    return round(part / total, 4) if total else None


def _summary(series: Mapping[str, Sequence[int]], base: str, hours: int) -> dict[str, Any]:
    totals = sum(series[base][-hours:])
    out: dict[str, Any] = {base: totals}
    for name, values in series.items():
        if name != base:
            out[name] = sum(values[-hours:])
            out[f"{name}_share"] = _share(out[name], totals)
    return out


async def health(
    redis: RedisClient, threshold: float, hours: int = 168, now: float | None = None
) -> dict[str, Any]:
    """Per event name: hourly counts per source (and over all sources), the mirror counts,
    their sums and shares over the last 24 h and the whole span, and the drop alerts."""
    last = hour(now)
    span = list(range(last - hours + 1, last + 1))
    pipe = redis.pipeline(transaction=False)
    for h in span:
        pipe.hgetall(keys.health_key(h))
    counts: list[dict[str, int]] = [
        {k.decode(): int(v) for k, v in cast("dict[bytes, bytes]", raw).items()}
        for raw in await pipe.execute()
    ]
    found: dict[str, set[str]] = {}
    for hour_counts in counts:
        for field in hour_counts:
            name, source, _ = field.split("|", 2)
            found.setdefault(name, set()).add(source)
    events: dict[str, Any] = {}
    report: dict[str, Any] = {"keys": list(SHARES), "events": {}}
    mirror_report: dict[str, Any] = {"keys": ["twin"], "events": {}}
    for name in sorted(found):
        sources = sorted(found[name] - {MIRROR}, key=_source_order)
        by_source: dict[str, dict[str, list[int]]] = {}
        for source in sources:
            by_source[source] = {
                field: [c.get(f"{name}|{source}|{field}", 0) for c in counts]
                for field in ("total", *SHARES)
            }
        if sources:
            by_source[ALL_SOURCES] = {
                field: [
                    sum(values)
                    for values in zip(*(s[field] for s in by_source.values()), strict=True)
                ]
                for field in ("total", *SHARES)
            }
        mirror = {
            field: [c.get(f"{name}|{MIRROR}|{field}", 0) for c in counts]
            for field in ("pixel", "twin")
        }
        events[name] = {
            "sources": by_source,
            "mirror": mirror,
            "day": {s: _summary(v, "total", 24) for s, v in by_source.items()},
            "week": {s: _summary(v, "total", hours) for s, v in by_source.items()},
            "mirror_day": _summary(mirror, "pixel", 24),
            "mirror_week": _summary(mirror, "pixel", hours),
        }
        for source, series in by_source.items():
            report["events"][f"{name}|{source}"] = _as_shares(series, "total", SHARES)
        if any(mirror["pixel"]):
            mirror_report["events"][name] = _as_shares(mirror, "pixel", ("twin",))
    alerts = [
        {**alert, "event": alert["event"].split("|")[0], "source": alert["event"].split("|")[1]}
        for alert in drop_alerts(report, threshold)
    ] + [{**alert, "source": MIRROR} for alert in drop_alerts(mirror_report, threshold)]
    with_data = [h for h, c in zip(span, counts, strict=True) if c]
    return {
        "shares": list(SHARES),
        "hours": span,
        "first_hour": with_data[0] if with_data else None,
        "events": events,
        "alerts": alerts,
    }


def _as_shares(
    series: Mapping[str, Sequence[int]], base: str, parts: Sequence[str]
) -> dict[str, list[Any]]:
    """Hourly counts as :func:`~gateway.operate.stats.coverage` shapes them, for drop_alerts."""
    totals = list(series[base])
    out: dict[str, list[Any]] = {"total": totals}
    for part in parts:
        out[part] = [_share(n, t) for n, t in zip(series[part], totals, strict=True)]
    return out


def _source_order(source: str) -> tuple[int, str]:
    order = (*SOURCES, OTHER_SOURCE)
    return (order.index(source) if source in order else len(order), source)
