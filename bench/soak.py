"""Soak: minutes of mixed traffic while TikTok fails at random and a worker gets killed.

    .venv/bin/python bench/soak.py [--seconds 600]

A real redis-server, one `tt-gateway serve` and two `tt-gateway worker` processes deliver to the
project's emulator (TikTok's stand-in) in this process. Traffic: browser batches on `/e` (some
events repeated, some invalid, some without consent for an integration that requires it) and
backend orders on `/v1/track`. Every few seconds the emulator is scripted to throttle, fail with
5xx, answer 50002 or hang, and now and then a worker is SIGKILLed and restarted. At the end the
traffic stops, the queue drains, and the books must balance:

    accepted = delivered + dead + suppressed + duplicate          (nothing else)

and TikTok (the emulator) must have counted each delivered event once. Exit status 0 only then.
Prints a table and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.store import keys
from gateway.tiktok.emulator import serve_emulator
from gateway.tiktok.emulator_state import EmulatorConfig, EmulatorState, Outcome, Script

PIXEL = "CSOAKSOAKSOAKSOAKSO0"
TOKEN = "soak-emulator-token-0001"


def machine_header() -> str:
    """Machine, date and commit, for the results file."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        text=True,
        capture_output=True,
        check=False,
    ).stdout.strip()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · commit {commit} · "
        f"{os.cpu_count()} × {cpu} · {os.uname().sysname} {os.uname().release}"
    )


def start_redis(workdir: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """A redis-server as production runs it: AOF everysec, noeviction."""
    import shutil

    port = free_port()
    binary = shutil.which("redis-server") or "redis-server"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return port, process
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", *args], env=env, stdout=out, stderr=out, cwd=ROOT
        )


async def traffic(base: str, write_key: str, stop: asyncio.Event, sent: dict[str, int]) -> None:
    """Browser batches and backend orders until ``stop``."""
    rng = random.Random(7)
    n = 0
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            events = []
            for _ in range(rng.randint(1, 8)):
                n += 1
                kind = rng.random()
                event: dict[str, object] = {
                    "event": "AddToCart",
                    "event_id": f"e{n}",
                    "properties": {"value": 3, "currency": "EUR"},
                }
                if kind < 0.1 and n > 5:
                    event["event_id"] = f"e{n - rng.randint(1, 5)}"  # a repeat
                    event["consent"] = {"ad_storage": "granted"}
                elif kind < 0.15:
                    event["event"] = "not a valid name!"  # refused at ingest
                elif kind < 0.25:
                    event["consent"] = {"ad_storage": "denied"}  # suppressed
                else:
                    event["consent"] = {"ad_storage": "granted"}
                events.append(event)
            try:
                async with http.post(f"{base}/e", json={"events": events}) as r:
                    sent[str(r.status)] = sent.get(str(r.status), 0) + 1
                order = {
                    "event": "Order Completed",
                    "user": {"email": f"b{n}@example.com"},
                    "consent": {"ad_storage": "granted"},
                    "properties": {"order_id": n, "total": 20, "currency": "EUR"},
                }
                async with http.post(
                    f"{base}/v1/track", json=order, headers={"Authorization": f"Bearer {write_key}"}
                ) as r:
                    sent[str(r.status)] = sent.get(str(r.status), 0) + 1
            except aiohttp.ClientError:
                sent["client_error"] = sent.get("client_error", 0) + 1
            await asyncio.sleep(0.02)


async def chaos(
    state: EmulatorState,
    workers: list[subprocess.Popen[bytes]],
    restart: callable,
    stop: asyncio.Event,
    log: list[str],
) -> None:  # type: ignore[valid-type]
    rng = random.Random(11)
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(2, 5))
        roll = rng.random()
        if roll < 0.25:
            state.script(Script(Outcome.THROTTLE, times=rng.randint(1, 5)))
            log.append("throttle")
        elif roll < 0.5:
            state.script(Script(Outcome.FAIL, times=rng.randint(1, 4), http_status=503))
            log.append("5xx")
        elif roll < 0.65:
            state.script(Script(Outcome.CODE, times=2, code=50002))
            log.append("50002")
        elif roll < 0.8:
            state.script(Script(Outcome.HANG, times=1, hang_s=3))
            log.append("hang")
        else:
            victim = rng.randrange(len(workers))
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            workers[victim] = restart()
            log.append("kill -9 worker")


async def main(seconds: float, *, record: bool = True) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="ttgw-soak-"))
    redis_port, redis_proc = start_redis(tmp)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    config = tmp / "gateway.toml"
    config.write_text(
        f'[[integrations]]\npixel_code = "{PIXEL}"\naccess_token = "{TOKEN}"\n'
        'required_consent = ["ad_storage"]\n'
    )
    state = EmulatorState(EmulatorConfig(tokens={TOKEN: {PIXEL}}, latency_ms=5))
    runner, tiktok_port = await serve_emulator(state, "127.0.0.1", 0)
    web_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTGW_")}
    env.update(
        TTGW_REDIS_URL=redis_url,
        TTGW_CONFIG=str(config),
        TTGW_DATA_DIR=str(tmp / "data"),
        TTGW_TIKTOK_API_URL=f"http://127.0.0.1:{tiktok_port}/open_api/v1.3/",
        TTGW_PORT=str(web_port),
        TTGW_RETRY_BASE_S="0.2",
        TTGW_RETRY_CAP_S="2",
        TTGW_RECLAIM_IDLE_S="5",
        TTGW_RATE_LIMIT_RPS="200",
        TTGW_WRITE_KEY="soak-write-key-0001",
        TTGW_LOG_LEVEL="warning",
    )
    log = tmp / "processes.log"
    web = start(["serve"], env, log)
    workers = [start(["worker"], env, log) for _ in range(2)]
    started = time.monotonic()
    sent: dict[str, int] = {}
    chaos_log: list[str] = []
    stop = asyncio.Event()
    redis = Redis.from_url(redis_url)
    try:
        for _ in range(200):
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{web_port}/healthz") as r,
                ):
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        tasks = [
            asyncio.create_task(
                traffic(f"http://127.0.0.1:{web_port}", env["TTGW_WRITE_KEY"], stop, sent)
            ),
            asyncio.create_task(
                chaos(state, workers, lambda: start(["worker"], env, log), stop, chaos_log)
            ),
        ]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        state.release_hangs()
        drained_at = time.monotonic() + 180
        while time.monotonic() < drained_at:
            depth = await redis.xlen(keys.EVENTS_STREAM) + await redis.zcard(keys.RETRY_ZSET)
            pending = (await redis.xpending(keys.EVENTS_STREAM, keys.DELIVERY_GROUP))["pending"]
            if depth == 0 and pending == 0:
                break
            await asyncio.sleep(0.5)
        raw = await redis.hgetall(keys.COUNTERS_HASH)
        c = {k.decode(): int(v) for k, v in raw.items()}
    finally:
        for process in [web, *workers]:
            process.terminate()
        for process in [web, *workers]:
            process.wait(20)
        await redis.aclose()
        await runner.cleanup()
        redis_proc.terminate()
        redis_proc.wait(10)
    settled = (
        c.get("delivered", 0) + c.get("dead", 0) + c.get("suppressed", 0) + c.get("duplicate", 0)
    )
    unique = len(state.unique_events())
    balanced = c.get("accepted", 0) == settled
    once = unique == c.get("delivered", 0) - c.get("replayed", 0) * 0
    rows = [
        ("duration", f"{time.monotonic() - started:.0f} s of traffic ({seconds:.0f} s asked)"),
        ("HTTP answers", ", ".join(f"{k}: {v}" for k, v in sorted(sent.items()))),
        ("chaos", ", ".join(f"{k} ×{chaos_log.count(k)}" for k in sorted(set(chaos_log)))),
        ("accepted", c.get("accepted", 0)),
        ("delivered", c.get("delivered", 0)),
        ("dead", c.get("dead", 0)),
        ("suppressed", c.get("suppressed", 0)),
        ("duplicate", c.get("duplicate", 0)),
        ("retried (attempts)", c.get("retried", 0)),
        ("TikTok counted (unique)", unique),
        ("TikTok saw duplicates", state.duplicates),
        ("accepted = delivered + dead + suppressed + duplicate", "PASS" if balanced else "FAIL"),
        ("each delivered event counted once by TikTok", "PASS" if once else "FAIL"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    report = f"## soak\n\n{machine_header()}\n\n| what | value |\n|---|---|\n{table}\n"
    print(report)
    if record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as out:
            out.write("\n" + report)
    return 0 if balanced and once else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    options = parser.parse_args()
    sys.exit(asyncio.run(main(options.seconds, record=not options.no_record)))
