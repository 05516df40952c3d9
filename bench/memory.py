"""Memory: RSS of the web and worker processes under load, and Redis bytes per queued event.

* Redis: ``used_memory`` before and after N events arrive through ``POST /e`` (each request a
  new visitor, as in the ingest bench) with no worker running, and after N more are queued
  exactly as ingest queues them (``tests.delivery_support.enqueue``: the queue's own keys only),
  with a per-key-kind breakdown (``MEMORY USAGE``); then what stays once a worker delivered them
  (receipts, visitors: kept for their TTLs). Target (issue #8): < 1 KiB per queued event.
* Redis kept per delivered event (issue #18: <= 400 B over the receipt window, everything
  included): ``--delivered`` events (1,000,000 by default) queued as ingest queues them into a
  Redis of their own while a real worker delivers them to the emulator; ``used_memory`` growth
  once all are delivered, per event, with the breakdown by key kind. Visitors are per visitor,
  not per event: their cost is reported apart, from the ``POST /e`` phase (a new visitor each).
* RSS (psutil, sampled every 0.2 s): the web process idle and under peak ingest load (wrk when
  installed) while a worker delivers to the emulator (20 ms latency, its own process), the worker
  while draining; baseline: ``bench/bare_server.py`` idle and under the same load.

``.venv/bin/python bench/memory.py [--events 10000] [--delivered 1000000]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections import Counter

import psutil
import redis
from harness import (
    LOOPBACK,
    Report,
    Table,
    Workspace,
    free_port,
    peak_load,
    run_loadgen,
    stage,
    wait_for,
)

from gateway.ingest.enqueue import IngestQueue, Outgoing
from gateway.store import keys
from gateway.store.connections import make_redis
from tests.delivery_support import PIXEL, enqueue, event_data

KIB = 1024
MIB = 1024 * 1024


class Sampler(threading.Thread):
    """RSS of some processes every ``interval_s``: first sample and peak per process."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval_s = interval_s
        self.first: dict[str, int] = {}
        self.peak: Counter[str] = Counter()
        self.last: dict[str, int] = {}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        for name, proc in self.procs.items():
            try:
                rss = int(proc.memory_info().rss)
            except psutil.Error:
                continue
            self.first.setdefault(name, rss)
            self.last[name] = rss
            self.peak[name] = max(self.peak[name], rss)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval_s)

    def __enter__(self) -> Sampler:
        self.sample()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        self.join(5)
        self.sample()


def kind(key: bytes) -> str:
    """``ttgw:{q}:receipt:…`` → ``{q}:receipt``."""
    parts = key.decode(errors="replace").split(":")
    return ":".join(parts[1:3]) if len(parts) > 2 else key.decode(errors="replace")


def snapshot(client: redis.Redis) -> tuple[int, Counter[str]]:
    """``used_memory`` and the summed ``MEMORY USAGE`` of every key, by kind."""
    time.sleep(1.5)  # past the AOF's everysec write
    by_kind: Counter[str] = Counter()
    batch: list[bytes] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        for key, used in zip(batch, pipe.execute(), strict=True):
            by_kind[kind(key)] += int(used or 0)
        batch.clear()

    for key in client.scan_iter(count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            flush()
    if batch:
        flush()
    used = int(client.info("memory")["used_memory"])
    return used, by_kind


async def bulk_enqueue(redis_url: str, prefix: str, start: int, count: int) -> None:
    """``count`` events queued exactly as ingest queues them, 1,000 a call, 4 calls in flight."""
    client = make_redis(redis_url)
    queue = IngestQueue(client)

    async def chunk(first: int) -> None:
        ids = [f"{prefix}-{i}" for i in range(first, min(first + 1000, start + count))]
        items = [Outgoing(PIXEL, "Purchase", i, event_data(i), "server") for i in ids]
        await queue.submit(items, max_events=0)

    try:
        firsts = list(range(start, start + count, 1000))
        for at in range(0, len(firsts), 4):
            await asyncio.gather(*(chunk(f) for f in firsts[at : at + 4]))
    finally:
        await client.aclose()


def measure_delivered(ws: Workspace, n: int) -> tuple[int, Counter[str], float]:
    """``n`` events queued (100,000 at a time) into a Redis of their own while a worker delivers
    them; ``used_memory`` growth, the growth by key kind and the seconds it took."""
    redis_url = ws.redis("redis-delivered")
    client = redis.Redis.from_url(redis_url)
    api = ws.emulator("emulator-delivered", latency_ms=5.0)
    env = ws.gateway_env(
        redis_url, TTGW_TIKTOK_API_URL=api, TTGW_RATE_LIMIT_RPS="1000", TTGW_RATE_LIMIT_BURST="100"
    )
    base_used, base_kinds = snapshot(client)
    started = time.monotonic()
    worker = ws.worker("worker-delivered", env)
    out = ws.dir / "worker-delivered.out"
    wait_for(lambda: "worker_started" in out.read_text(), 30, "the worker")
    prefix = f"d{time.time_ns()}"
    step = 100_000
    for first in range(0, n, step):
        asyncio.run(bulk_enqueue(redis_url, prefix, first, min(step, n - first)))
        # keep the backlog bounded: the queue's memory is not what is measured here
        wait_for(lambda at=first: delivered(client) >= at, 600, "the backlog delivered")
    wait_for(lambda: delivered(client) >= n, 600, "every event delivered")
    seconds = time.monotonic() - started
    ws.stop(worker)
    kept_used, kept_kinds = snapshot(client)
    client.close()
    kept_kinds.subtract(base_kinds)
    return kept_used - base_used, kept_kinds, seconds


def delivered(client: redis.Redis) -> int:
    return int(client.hget(keys.COUNTERS_HASH, "delivered") or 0)


def mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000, help="events per Redis measure")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the load phase")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--delivered", type=int, default=1_000_000, help="events delivered for the kept measure"
    )
    args = parser.parse_args()
    n = args.events
    report = Report(
        "memory",
        f"RSS of gateway `serve` and `worker` processes (psutil, peak of 0.2 s samples) against "
        f"`bench/bare_server.py` under the same peak load ({args.connections} connections, "
        f"{args.seconds:.0f} s); Redis `used_memory` per queued event over {n:,} events.",
    )
    with Workspace("memory") as ws:
        redis_url = ws.redis()
        client = redis.Redis.from_url(redis_url)
        api = ws.emulator()
        env = ws.gateway_env(redis_url, TTGW_TIKTOK_API_URL=api)
        gport, bport = free_port(), free_port()
        gurl, burl = f"http://{LOOPBACK}:{gport}/e", f"http://{LOOPBACK}:{bport}/e"
        with stage("start web, bare"):
            web = ws.serve("web", env, gport)
            bare = ws.bare("bare", bport)
            time.sleep(1)
            idle = Sampler({"web": web.pid, "bare": bare.pid})
            idle.sample()
        base_used, base_kinds = snapshot(client)
        with stage(f"{n:,} events through POST /e (no worker running)"):
            result = run_loadgen(
                "count", gurl, f"mem{time.time_ns()}", connections=args.connections, count=n
            )
        ingest_ok = int(result["ok"])
        http_used, http_kinds = snapshot(client)
        with stage(f"{n:,} events queued as ingest queues them"):
            asyncio.run(enqueue(redis_url, [f"q{time.time_ns()}-{i}" for i in range(n)]))
        queue_used, queue_kinds = snapshot(client)
        queued_total = ingest_ok + n
        with stage("a worker delivers them (RSS sampled)"):
            worker = ws.worker("worker", env)
            out = ws.dir / "worker.out"
            wait_for(lambda: "worker_started" in out.read_text(), 30, "the worker")
            with Sampler({"worker": worker.pid}) as draining:
                wait_for(lambda: delivered(client) >= queued_total, 120, "the backlog delivered")
        kept_used, kept_kinds = snapshot(client)
        with stage("peak load on the web process while the worker delivers (RSS sampled)"):
            with Sampler({"web": web.pid, "worker": worker.pid}) as loaded:
                gload = peak_load(
                    ws.dir,
                    gurl,
                    f"memload{time.time_ns()}",
                    connections=args.connections,
                    duration_s=args.seconds,
                )
            wait_for(lambda: delivered(client) >= queued_total + gload.ok, 120, "delivery")
        with (
            stage("the same load on the bare handler (RSS sampled)"),
            Sampler({"bare": bare.pid}) as bare_loaded,
        ):
            bload = peak_load(
                ws.dir,
                burl,
                f"memload{time.time_ns()}",
                connections=args.connections,
                duration_s=args.seconds,
            )
        settled = Sampler({"web": web.pid, "worker": worker.pid})
        settled.sample()
        client.close()
        ws.stop(web)
        ws.stop(worker)
        ws.stop(bare)
        with stage(f"{args.delivered:,} events queued and delivered (their own Redis)"):
            d_used, d_kinds, d_seconds = measure_delivered(ws, args.delivered)

    rss = Table(
        "RSS (resident memory)",
        [
            "process",
            "at start",
            "peak under load",
            "after the load",
            "bare handler peak",
            "peak / bare peak",
        ],
    )
    bare_peak = bare_loaded.peak["bare"]
    web_peak = loaded.peak["web"]
    worker_peak = max(loaded.peak["worker"], draining.peak["worker"])
    rss.add(
        f"gateway web (serve), {gload.rps:,.0f} req/s",
        mib(idle.last["web"]),
        mib(web_peak),
        mib(settled.last["web"]),
        mib(bare_peak),
        f"{web_peak / bare_peak:.2f}",
    )
    rss.add(
        f"gateway worker (draining {queued_total:,}, then delivering the load)",
        mib(draining.first["worker"]),
        mib(worker_peak),
        mib(settled.last["worker"]),
        mib(bare_peak),
        f"{worker_peak / bare_peak:.2f}",
    )
    rss.add(
        f"bare handler, {bload.rps:,.0f} req/s",
        mib(idle.last["bare"]),
        mib(bare_peak),
        "",
        mib(bare_peak),
        "1.00",
    )
    report.table(rss)

    per_event = Table(
        "Redis memory per event",
        ["path", "events", "used_memory growth", "bytes per event", "target", "verdict"],
    )
    http_per = (http_used - base_used) / ingest_ok
    queue_per = (queue_used - http_used) / n
    kept_per = (kept_used - base_used) / queued_total
    per_event.add(
        "POST /e, a new visitor per request (no worker)",
        f"{ingest_ok:,}",
        mib(http_used - base_used),
        f"{http_per:,.0f}",
        "< 1,024",
        report.check("Redis < 1 KiB per event via /e", http_per < KIB),
    )
    per_event.add(
        "queued as ingest queues (queue keys only)",
        f"{n:,}",
        mib(queue_used - http_used),
        f"{queue_per:,.0f}",
        "< 1,024",
        report.check("Redis < 1 KiB per queued event", queue_per < KIB),
    )
    per_event.add(
        "kept after delivery (receipts 7 d, visitors 30 d)",
        f"{queued_total:,}",
        mib(kept_used - base_used),
        f"{kept_per:,.0f}",
        "—",
        "info",
    )
    report.table(per_event)

    breakdown = Table(
        "Bytes per event by key kind (sum of MEMORY USAGE growth / events)",
        ["key kind", "via POST /e", "queued as ingest queues", "kept after delivery"],
    )
    kinds = sorted(set(http_kinds) | set(queue_kinds) | set(kept_kinds))
    for k in kinds:
        a = (http_kinds[k] - base_kinds[k]) / ingest_ok
        b = (queue_kinds[k] - http_kinds[k]) / n
        c = (kept_kinds[k] - base_kinds[k]) / queued_total
        if max(abs(a), abs(b), abs(c)) >= 1:
            breakdown.add(k, f"{a:,.0f}", f"{b:,.0f}", f"{c:,.0f}")
    report.table(breakdown)
    nd = args.delivered
    d_per = d_used / nd
    visitor_per = (http_kinds["{id}:visitor"] - base_kinds["{id}:visitor"]) / ingest_ok
    kept = Table(
        f"Redis kept per delivered event ({nd:,} delivered, {d_seconds:,.0f} s)",
        ["what", "bytes", "per delivered event", "target", "verdict"],
    )
    kept.add(
        "used_memory growth, everything included",
        mib(d_used),
        f"{d_per:,.0f}",
        "<= 400",
        report.check("Redis <= 400 B kept per delivered event", d_per <= 400),
    )
    for k, used in sorted(d_kinds.items(), key=lambda kv: -kv[1]):
        if abs(used) / nd >= 0.5:
            kept.add(f"  {k} (MEMORY USAGE)", mib(used), f"{used / nd:,.1f}", "", "")
    kept.add(
        "  allocator and dictionaries beyond the keys' MEMORY USAGE",
        mib(d_used - sum(d_kinds.values())),
        f"{(d_used - sum(d_kinds.values())) / nd:,.1f}",
        "",
        "",
    )
    kept.add("per visitor (a visitor hash, 30 days; from POST /e)", "", f"{visitor_per:,.0f}",
             "—", "info")  # fmt: skip
    report.table(kept)
    report.note(
        f"Sizing: Redis RAM ≈ events/s × (retention_s + bucket_s) × {d_per:,.0f} B "
        f"+ backlog × {queue_per:,.0f} B + visitors × {visitor_per:,.0f} B "
        f"(bucket_s = {keys.RECEIPT_BUCKET_S:,} s: receipts expire a bucket at a time)."
    )
    report.note(
        "Redis 7 with AOF everysec and noeviction; `used_memory` includes allocator and "
        "dictionary overhead that `MEMORY USAGE` per key does not, so the kinds do not add up "
        "exactly to the growth. Each /e request here is a new visitor (no cookie), so the "
        "visitor hash is counted once per event: the worst case; a visitor sending several "
        "events pays it once."
    )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
