"""An aiohttp load generator for ``POST /e``: every request a new collector event.

Run as its own process (on uvloop) so it never shares an event loop with what it measures; it
prints one JSON object on stdout.

* ``closed URL --connections C --duration S``: C connections each post back to back (peak rate);
* ``paced URL --rate R --duration S``: requests scheduled at a fixed rate, open loop; latency is
  counted from each request's *scheduled* time, so a stalled server cannot hide its queueing
  (no coordinated omission);
* ``count URL --connections C --count N``: exactly N requests, back to back on C connections.

Only loopback URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BROWSER_HEADERS, event_body, percentile


class Recorder:
    """Latencies (ms) and answers."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.statuses: Counter[str] = Counter()

    def result(self, elapsed_s: float, **extra: Any) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        ok = sum(n for s, n in self.statuses.items() if s.startswith("2"))
        return {
            "requests": sum(self.statuses.values()),
            "ok": ok,
            "statuses": dict(self.statuses),
            "elapsed_s": elapsed_s,
            "rps": ok / elapsed_s if elapsed_s else 0.0,
            "p50_ms": percentile(ordered, 50),
            "p90_ms": percentile(ordered, 90),
            "p99_ms": percentile(ordered, 99),
            "max_ms": ordered[-1] if ordered else float("nan"),
            **extra,
        }


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, since: float, rec: Recorder
) -> None:
    try:
        async with session.post(url, data=body, headers=BROWSER_HEADERS) as answer:
            await answer.read()
            status = str(answer.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        status = type(exc).__name__
    rec.latencies_ms.append((time.perf_counter() - since) * 1000)
    rec.statuses[status] += 1


def _session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
        timeout=aiohttp.ClientTimeout(total=30),
        skip_auto_headers=("Accept-Encoding",),
        # no cookies kept: every request is a new visitor, as with wrk (and no cookie-jar work
        # in the load generator, which shares the machine with what it measures)
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def closed(url: str, prefix: str, connections: int, duration_s: float) -> dict[str, Any]:
    rec = Recorder()
    counter = iter(range(1 << 62))
    async with _session(connections) as session:
        deadline = time.perf_counter() + duration_s

        async def user() -> None:
            while time.perf_counter() < deadline:
                body = event_body(f"{prefix}-{next(counter)}")
                await _post(session, url, body, time.perf_counter(), rec)

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return rec.result(elapsed, mode="closed", connections=connections)


async def count(url: str, prefix: str, connections: int, total: int) -> dict[str, Any]:
    rec = Recorder()
    counter = iter(range(total))
    async with _session(connections) as session:

        async def user() -> None:
            for i in counter:
                await _post(session, url, event_body(f"{prefix}-{i}"), time.perf_counter(), rec)

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return rec.result(elapsed, mode="count", connections=connections)


async def paced(
    url: str, prefix: str, rate: float, duration_s: float, connections: int
) -> dict[str, Any]:
    rec = Recorder()
    total = int(rate * duration_s)
    tasks: set[asyncio.Task[None]] = set()
    async with _session(connections) as session:
        started = time.perf_counter()
        for i in range(total):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_post(session, url, event_body(f"{prefix}-{i}"), due, rec))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
        elapsed = time.perf_counter() - started
    late = time.perf_counter() - (started + duration_s)
    return rec.result(elapsed, mode="paced", rate=rate, connections=connections, late_s=late)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["closed", "paced", "count"])
    parser.add_argument("url")
    parser.add_argument("--prefix", required=True, help="event_id prefix, unique per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    host = urlsplit(args.url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        parser.error("only loopback targets")
    if args.mode == "closed":
        work = closed(args.url, args.prefix, args.connections, args.duration)
    elif args.mode == "count":
        work = count(args.url, args.prefix, args.connections, args.count)
    else:
        work = paced(args.url, args.prefix, args.rate, args.duration, args.connections)
    result = uvloop.run(work)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
