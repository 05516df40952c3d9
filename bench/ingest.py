"""Ingest: ``POST /e`` throughput and latency of the gateway's web process against a bare handler.

Baseline: ``bench/bare_server.py``, an aiohttp handler on uvloop that only parses the same JSON.
Both run as their own processes on this machine; the load (wrk when installed, else
``bench/loadgen.py``) posts one new collector event per request (a new ``event_id`` and no
cookies: a new visitor each time), on a fixed number of connections, in alternating rounds —
gateway, bare, gateway, bare, … — so both see the same machine. Then:

* latency at half of the gateway's peak rate, paced open loop (``loadgen.py paced``), gateway and
  bare at the same rate;
* a burst: many more connections at once (128), counting answers other than 202;
* two processes of each on one port (``SO_REUSEPORT``), again alternating, to show scaling.

Targets (issue #18): peak ≥ 0.45 of bare (the bar), aiming at 0.7; p99 < 10 ms at half the peak
rate.
``.venv/bin/python bench/ingest.py [--rounds 3] [--seconds 8] [--connections 32]``
"""

from __future__ import annotations

import argparse
import sys
import time

import redis
from harness import (
    LOOPBACK,
    Load,
    Report,
    Table,
    Workspace,
    free_port,
    loadgen_load,
    median,
    peak_load,
    redis_latency,
    run_loadgen,
    stage,
    wrk_path,
)

from gateway.store import keys


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


def alternate(
    ws: Workspace,
    targets: dict[str, str],
    rounds: int,
    seconds: float,
    connections: int,
    tag: str,
) -> dict[str, list[Load]]:
    """``rounds`` peak-load rounds on each target in turn; each round's result per target."""
    results: dict[str, list[Load]] = {name: [] for name in targets}
    for r in range(rounds):
        for name, url in targets.items():
            load = peak_load(
                ws.dir,
                url,
                f"{tag}{r}{name}{time.time_ns()}",
                connections=connections,
                duration_s=seconds,
            )
            results[name].append(load)
            print(
                f"   round {r + 1} {name}: {load.rps:,.0f} req/s, p50 {load.p50_ms:.1f} ms, "
                f"p99 {load.p99_ms:.1f} ms, errors {load.errors}",
                flush=True,
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (1 process)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--paced-seconds", type=float, default=6.0)
    parser.add_argument("--paced-rounds", type=int, default=3)
    parser.add_argument("--crowd", type=int, default=128, help="connections of the burst round")
    args = parser.parse_args()
    tool = "wrk (1 thread)" if wrk_path() else "bench/loadgen.py (aiohttp, uvloop)"
    report = Report(
        "ingest",
        f"`POST /e`, one new collector event per request (new event_id, no cookies), "
        f"{args.connections} connections, load by {tool}; gateway `serve` (no worker running, "
        f"defaults, JSON request log to a file) against `bench/bare_server.py` (aiohttp on uvloop, "
        f"parses the JSON only), alternating {args.seconds:.0f} s rounds in the same run.",
    )
    with Workspace("ingest") as ws:
        redis_url = ws.redis()
        env = ws.gateway_env(redis_url)
        gport, bport = free_port(), free_port()
        gurl, burl = f"http://{LOOPBACK}:{gport}/e", f"http://{LOOPBACK}:{bport}/e"
        with stage("start one gateway web process and one bare handler"):
            ws.serve("web1", env, gport)
            ws.bare("bare1", bport)
        targets = {"gateway": gurl, "bare": burl}
        with stage("warm-up"):
            warm = alternate(ws, targets, 1, 2, args.connections, "warm")
        with stage(f"{args.rounds} alternating rounds, one process each"):
            one = alternate(ws, targets, args.rounds, args.seconds, args.connections, "one")
        gw1 = median([x.rps for x in one["gateway"]])
        bare1 = median([x.rps for x in one["bare"]])
        half = gw1 / 2
        paced: dict[str, list[Load]] = {name: [] for name in targets}
        with stage(f"{args.paced_rounds} paced rounds at half the gateway's peak: {half:,.0f}/s"):
            for _ in range(args.paced_rounds):
                for name, url in targets.items():
                    result = run_loadgen(
                        "paced",
                        url,
                        f"paced{name}{time.time_ns()}",
                        rate=half,
                        duration=args.paced_seconds,
                        connections=256,
                    )
                    paced[name].append(loadgen_load(result))
                    print(f"   {name}: {result}", flush=True)
        client = redis.Redis.from_url(redis_url)
        queued = int(client.xlen(keys.EVENTS_STREAM))
        answered = sum(x.ok for x in warm["gateway"] + one["gateway"] + paced["gateway"])
        client.close()
        crowd = {}
        with stage(f"{args.crowd} connections at once (a burst of browsers), one process each"):
            for name, url in targets.items():
                crowd[name] = peak_load(
                    ws.dir,
                    url,
                    f"crowd{name}{time.time_ns()}",
                    connections=args.crowd,
                    duration_s=args.seconds / 2,
                )
                print(f"   {name}: {crowd[name]}", flush=True)
        stalls = redis_latency(redis_url)
        with stage("start a second process of each on the same port (SO_REUSEPORT)"):
            ws.serve("web2", env, gport)
            ws.bare("bare2", bport)
        with stage("alternating rounds, two processes each"):
            two = alternate(
                ws, targets, max(2, args.rounds - 1), args.seconds, args.connections, "two"
            )
        gw2 = median([x.rps for x in two["gateway"]])
        bare2 = median([x.rps for x in two["bare"]])

    rounds = Table(
        "Peak rounds (closed loop, alternating in one run)",
        [
            "processes",
            "round",
            "gateway req/s",
            "gateway p50",
            "gateway p99",
            "bare req/s",
            "bare p50",
            "bare p99",
            "gateway / bare",
        ],
    )
    for procs, res in (("1", one), ("2", two)):
        for i, (g, b) in enumerate(zip(res["gateway"], res["bare"], strict=True)):
            rounds.add(
                procs,
                i + 1,
                _rate(g.rps),
                _ms(g.p50_ms),
                _ms(g.p99_ms),
                _rate(b.rps),
                _ms(b.p50_ms),
                _ms(b.p99_ms),
                f"{g.rps / b.rps:.3f}",
            )
    errors = sum(x.errors for r in (one, two) for loads in r.values() for x in loads)
    report.table(rounds)

    latency = Table(
        f"Paced rounds at {half:,.0f} req/s (half the gateway's peak), open loop, alternating",
        ["round", "gateway p50", "gateway p99", "gateway errors", "bare p50", "bare p99"],
    )
    for i, (g, b) in enumerate(zip(paced["gateway"], paced["bare"], strict=True)):
        latency.add(i + 1, _ms(g.p50_ms), _ms(g.p99_ms), g.errors, _ms(b.p50_ms), _ms(b.p99_ms))
    report.table(latency)
    gp = Load(
        "median",
        sum(x.requests for x in paced["gateway"]),
        sum(x.ok for x in paced["gateway"]),
        sum(x.elapsed_s for x in paced["gateway"]),
        median([x.p50_ms for x in paced["gateway"]]),
        median([x.p99_ms for x in paced["gateway"]]),
        sum(x.errors for x in paced["gateway"]),
    )
    bp = Load(
        "median",
        sum(x.requests for x in paced["bare"]),
        sum(x.ok for x in paced["bare"]),
        sum(x.elapsed_s for x in paced["bare"]),
        median([x.p50_ms for x in paced["bare"]]),
        median([x.p99_ms for x in paced["bare"]]),
        sum(x.errors for x in paced["bare"]),
    )
    summary = Table(
        "Ingest against the bare handler",
        ["measure", "gateway", "bare handler", "ratio", "target", "verdict"],
    )
    ratio1 = gw1 / bare1
    summary.add(
        "peak throughput, 1 process (median of rounds)",
        _rate(gw1),
        _rate(bare1),
        f"{ratio1:.3f}",
        "≥ 0.45 of bare (#18's bar)",
        report.check("ingest ≥ 0.45 of bare", ratio1 >= 0.45),
    )
    summary.add(
        "the same, against #18's goal",
        _rate(gw1),
        _rate(bare1),
        f"{ratio1:.3f}",
        "≥ 0.7 of bare (#18's goal)",
        report.check("ingest ≥ 0.7 of bare", ratio1 >= 0.7),
    )
    summary.add(
        f"p99 latency at half the gateway's peak ({half:,.0f} req/s, paced; median of rounds)",
        _ms(gp.p99_ms),
        _ms(bp.p99_ms),
        f"{gp.p99_ms / bp.p99_ms:.1f}×",
        "< 10 ms",
        report.check("p99 < 10 ms at half peak", gp.p99_ms < 10 and gp.errors == 0),
    )
    summary.add(
        "p50 latency at the same rate (median of rounds)",
        _ms(gp.p50_ms),
        _ms(bp.p50_ms),
        f"{gp.p50_ms / bp.p50_ms:.1f}×",
        "—",
        "info",
    )
    summary.add("paced rate achieved", _rate(gp.rps), _rate(bp.rps), "", "—", "info")
    gc, bc = crowd["gateway"], crowd["bare"]
    summary.add(
        f"answers other than 202 with {args.crowd} connections ({args.seconds / 2:.0f} s)",
        f"{gc.errors:,} of {gc.requests:,}",
        f"{bc.errors:,} of {bc.requests:,}",
        "",
        "0 (README: 503 only when Redis is down or full)",
        report.check(f"no refusals at {args.crowd} connections", gc.errors == 0),
    )
    summary.add(
        "peak throughput, 2 processes (SO_REUSEPORT)",
        _rate(gw2),
        _rate(bare2),
        f"{gw2 / bare2:.3f}",
        "—",
        "info",
    )
    summary.add(
        "scaling, 2 processes / 1 process",
        f"{gw2 / gw1:.2f}×",
        f"{bare2 / bare1:.2f}×",
        "",
        "—",
        "info",
    )
    report.table(summary)
    report.note(
        f"Non-2xx answers or socket errors over all peak rounds: {errors}; paced: gateway "
        f"{gp.errors}, bare {bp.errors}. Events in the gateway's stream after the one-process "
        f"part: {queued:,}, for {answered:,} answers 202 counted by the load generators (wrk "
        f"does not count the requests still in flight when a round ends). Redis's latency "
        f"monitor (stalls over 100 ms, one-process part): {stalls}. The load generator, "
        f"Redis and the servers share this machine's cores (and other work on it), so the "
        f"two-process rows show how far a second process helps *here*, not on a dedicated host."
    )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
