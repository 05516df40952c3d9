"""Where the web process's and the worker's time goes, and what candidate changes would give.

Not a target check: a diagnosis for the ingest and delivery benches. It

1. profiles a gateway ``serve`` process under peak ``POST /e`` load and a ``worker`` draining a
   backlog (cProfile through ``bench/gateway_variant.py``), and sums own time by component
   (gateway code, redis-py, aiohttp, asyncio, structlog, …);
2. measures what-if variants of the *unchanged* gateway code, alternating with the stock process
   in the same run (``gateway_variant.py``): with ``TTGW_LOG_LEVEL=warning`` (no per-request log
   line); with no Redis work at all (the group commit answers at once: the ceiling of the Python
   path); and prices one Redis round trip: the bare handler plus one ``XADD`` per request, the
   least a handler that answers "queued" after its own round trip must do.

``.venv/bin/python bench/hotspots.py [--hiredis-dir /tmp/ttgw-hiredis] [--seconds 6]``
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import sys
import time
from collections import Counter
from pathlib import Path

from harness import (
    BENCH,
    LOOPBACK,
    PIXEL,
    TOKEN,
    Report,
    Table,
    Workspace,
    free_port,
    median,
    peak_load,
    run_loadgen,
    run_wrk,
    stage,
    wrk_path,
)

from gateway.tiktok.emulator import api_base_url, serve_emulator
from gateway.tiktok.emulator_state import EmulatorConfig, EmulatorState
from tests.delivery_support import enqueue

VARIANT = [sys.executable, str(BENCH / "gateway_variant.py")]
COMPONENTS = (
    ("/gateway/", "gateway code"),
    ("redis/", "redis-py"),
    ("aiohttp/", "aiohttp"),
    ("multidict/", "aiohttp"),
    ("yarl/", "aiohttp"),
    ("structlog/", "structlog (logging)"),
    ("prometheus_client/", "prometheus_client"),
    ("asyncio/", "asyncio event loop"),
    ("uvloop/", "asyncio event loop"),
    ("socket", "socket syscalls"),
    ("select.epoll", "asyncio event loop"),
    ("orjson", "orjson"),
)


def component(func: tuple[str, int, str]) -> str:
    path, _, name = func
    where = f"{path} {name}"
    for needle, label in COMPONENTS:
        if needle in where:
            return label
    return "other (stdlib, builtins)"


def shares(path: Path, top: int) -> tuple[Table, Table]:
    """Own time by component, and the top functions by own time, from a cProfile dump."""
    stats = pstats.Stats(str(path))
    raw = stats.stats  # type: ignore[attr-defined]
    by: Counter[str] = Counter()
    total = 0.0
    for func, (_, _, tottime, _, _) in raw.items():
        by[component(func)] += tottime
        total += tottime
    comp = Table(f"{path.stem}: own time by component (cProfile)", ["component", "share"])
    for name, t in by.most_common():
        comp.add(name, f"{t / total:.0%}")
    funcs = Table(f"{path.stem}: top {top} functions by own time", ["function", "calls", "share"])
    ranked = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (file, line, name), (_, ncalls, tottime, _, _) in ranked:
        short = "/".join(Path(file).parts[-2:]) if file != "~" else "builtin"
        funcs.add(f"{name} ({short}:{line})", f"{ncalls:,}", f"{tottime / total:.1%}")
    return comp, funcs


def variants(hiredis: str | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Name → (command prefix, extra environment) of each web-process variant."""
    del hiredis  # hiredis is a dependency now: every variant parses replies with it
    return {
        "stock": ([], {}),
        "no request log": ([], {"TTGW_LOG_LEVEL": "warning"}),
        "no Redis work (what-if)": ([*VARIANT, "--no-redis", "--"], {}),
        "no Redis work, no request log (what-if)": (
            [*VARIANT, "--no-redis", "--"],
            {"TTGW_LOG_LEVEL": "warning"},
        ),
    }


def ingest_part(ws: Workspace, redis_url: str, report: Report, args: argparse.Namespace) -> None:
    ports: dict[str, int] = {}
    with stage("start the web variants and the bare handler"):
        for name, (cmd, extra) in variants(args.hiredis_dir).items():
            ports[name] = free_port()
            ws.serve(
                name.replace(" ", "_").replace(",", ""),
                ws.gateway_env(redis_url, **extra),
                ports[name],
                python=cmd,
            )
        ports["bare + 1 XADD per request (redis-py)"] = free_port()
        ws.bare("bare_xadd", ports["bare + 1 XADD per request (redis-py)"], redis_url)
        if args.hiredis_dir:
            ports["bare + 1 XADD per request (redis-py + hiredis)"] = free_port()
            ws.bare(
                "bare_xadd_hiredis",
                ports["bare + 1 XADD per request (redis-py + hiredis)"],
                redis_url,
                python=["env", f"PYTHONPATH={args.hiredis_dir}", sys.executable],
            )
        ports["bare handler"] = free_port()
        ws.bare("bare", ports["bare handler"])
    rps: dict[str, list[float]] = {name: [] for name in ports}
    with stage(f"{args.rounds} alternating rounds of {args.seconds:.0f} s"):
        for r in range(args.rounds + 1):  # round 0 warms up
            for name, port in ports.items():
                load = peak_load(
                    ws.dir,
                    f"http://{LOOPBACK}:{port}/e",
                    f"v{r}{time.time_ns()}",
                    connections=32,
                    duration_s=args.seconds if r else 2,
                )
                if r:
                    rps[name].append(load.rps)
                    print(f"   {name}: {load.rps:,.0f} req/s", flush=True)
    table = Table(
        "POST /e peak req/s of what-if variants (same gateway code), alternating in one run",
        ["variant", "req/s (median)", "vs stock", "vs bare handler"],
    )
    stock, bare = median(rps["stock"]), median(rps["bare handler"])
    for name, values in rps.items():
        m = median(values)
        table.add(name, f"{m:,.0f}", f"{m / stock:.2f}×", f"{m / bare:.3f}")
    report.table(table)
    best = list(variants(args.hiredis_dir))[-1]
    half = stock / 2
    with stage(f"paced latency at half the stock peak ({half:,.0f} req/s)"):
        lat = Table(
            f"POST /e latency at {half:,.0f} req/s (half the stock peak), paced open loop",
            ["variant", "p50", "p99", "errors"],
        )
        for name in ("stock", best, "bare + 1 XADD per request (redis-py)", "bare handler"):
            result = run_loadgen(
                "paced",
                f"http://{LOOPBACK}:{ports[name]}/e",
                f"pl{time.time_ns()}",
                rate=half,
                duration=args.seconds,
                connections=256,
            )
            lat.add(
                name,
                f"{result['p50_ms']:.1f} ms",
                f"{result['p99_ms']:.1f} ms",
                ", ".join(f"{n} × {s}" for s, n in result["statuses"].items() if s != "202") or "0",
            )
        report.table(lat)
    if wrk_path():
        with stage("stock: 1 vs 10 events per request"):
            per: dict[int, list[float]] = {1: [], 10: []}
            for _ in range(args.rounds):
                for k in per:
                    load = run_wrk(
                        ws.dir,
                        f"http://{LOOPBACK}:{ports['stock']}/e",
                        f"k{k}{time.time_ns()}",
                        connections=32,
                        duration_s=args.seconds,
                        events_per_request=k,
                    )
                    per[k].append(load.rps * k)
        batch = Table(
            "Stock web process: events/s when c.js batches (the same events, 1 or 10 a request)",
            ["events per request", "events/s (median)", "vs 1 per request"],
        )
        for k, values in per.items():
            batch.add(k, f"{median(values):,.0f}", f"{median(values) / median(per[1]):.2f}×")
        report.table(batch)
    with stage("cProfile of a stock web process under peak load"):
        port = free_port()
        dump = ws.dir / "web.pstats"
        proc = ws.serve(
            "profiled_web",
            ws.gateway_env(redis_url),
            port,
            python=[*VARIANT, "--profile", str(dump), "--"],
        )
        peak_load(
            ws.dir,
            f"http://{LOOPBACK}:{port}/e",
            f"prof{time.time_ns()}",
            connections=32,
            duration_s=args.seconds,
        )
        ws.stop(proc)
    comp, funcs = shares(dump, args.top)
    report.table(comp)
    report.table(funcs)


async def worker_part(
    ws: Workspace, redis_url: str, report: Report, args: argparse.Namespace
) -> None:
    state = EmulatorState(EmulatorConfig(tokens={TOKEN: {PIXEL}}, latency_ms=20.0))
    runner, port = await serve_emulator(state, LOOPBACK, 0)
    env = ws.gateway_env(redis_url, TTGW_TIKTOK_API_URL=api_base_url(LOOPBACK, port))
    kinds: dict[str, list[str]] = {"stock": []}
    dump = ws.dir / "worker.pstats"
    kinds["stock, under cProfile"] = [*VARIANT, "--profile", str(dump), "--"]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for r in range(args.worker_rounds):
            for name, cmd in kinds.items():
                if name.endswith("cProfile") and r:
                    continue
                state.reset()
                await enqueue(redis_url, [f"wv{time.time_ns()}-{i}" for i in range(args.events)])
                proc = ws.worker(name.replace(" ", "_").replace(",", ""), env, python=cmd)
                await state.wait_for_events(args.events, timeout_s=120)
                first = min(x.at for x in state.requests)
                last = max(e.received_at for e in state.accepted)
                rates[name].append(args.events / (last - first))
                print(f"   worker {name}: {rates[name][-1]:,.0f} events/s", flush=True)
                await ws.astop(proc)
    finally:
        await runner.cleanup()
    table = Table(
        f"Worker events/s draining {args.events:,} events, variants alternating in one run",
        ["variant", "events/s (median)", "vs stock"],
    )
    stock = median(rates["stock"])
    for name, values in rates.items():
        table.add(name, f"{median(values):,.0f}", f"{median(values) / stock:.2f}×")
    report.table(table)
    comp, funcs = shares(dump, args.top)
    report.table(comp)
    report.table(funcs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hiredis-dir", help="a `pip install --target` directory with hiredis")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker-rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=20_000, help="worker backlog per round")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.hiredis_dir and not (Path(args.hiredis_dir) / "hiredis").is_dir():
        parser.error(f"no hiredis in {args.hiredis_dir}: pip install --target DIR hiredis")
    report = Report(
        "hotspots",
        "Diagnosis, no targets: what-if variants of the unchanged gateway code (no per-request "
        "log; no Redis work at all, the Python path's ceiling) alternating with the stock "
        "process, and cProfile's own-time shares (cProfile slows Python code more than C code, "
        "so shares are indicative).",
    )
    with Workspace("hotspots") as ws:
        redis_url = ws.redis()
        ingest_part(ws, redis_url, report, args)
        asyncio.run(worker_part(ws, redis_url, report, args))
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
