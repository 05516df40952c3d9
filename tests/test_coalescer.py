"""Group commit in the web process (``connections.Coalescer``) against a real Redis: requests of
one loop iteration share a round trip, each gets its own results or its own error, a lost
connection fails every caller of that round trip, and counters ride along."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.operate.stats import flow_calls, minute
from gateway.store import keys
from gateway.store.connections import Coalescer, Lua, LuaCall, make_redis

ECHO = Lua("redis.call('INCR', KEYS[1]) return ARGV[1]")
FAIL = Lua("return redis.error_reply('boom ' .. ARGV[1])")


@contextlib.asynccontextmanager
async def coalescer_on(
    url: str, counter: Callable[[Mapping[str, int]], list[LuaCall]], **options: float
) -> AsyncIterator[Coalescer]:
    """A coalescer on a client of its own, both closed at the end."""
    client = make_redis(url)
    coalescer = Coalescer(client, counter, **options)
    try:
        yield coalescer
    finally:
        await coalescer.aclose()
        await client.aclose()


def echo(n: int) -> LuaCall:
    return (ECHO, ["{q}:calls"], [f"r{n}"])


async def load_scripts(client: Redis) -> None:
    """Scripts known to the server, so a first call is not run again after NOSCRIPT."""
    await client.script_load(ECHO.source)
    await client.script_load(flow_calls({"accepted": 1})[0][0].source)


async def test_concurrent_requests_share_one_round_trip_and_get_their_own_results(
    redis_url: str, redis: Redis
) -> None:
    async with coalescer_on(redis_url, flow_calls) as coalescer:
        assert coalescer.pipe is not None
        await load_scripts(coalescer.redis)
        results = await asyncio.gather(
            *(coalescer.run([echo(n), echo(n + 100)]) for n in range(50))
        )
        assert results == [[f"r{n}".encode(), f"r{n + 100}".encode()] for n in range(50)]
        assert coalescer.pipe.round_trips == 1
        assert await redis.get("{q}:calls") == b"100"


async def test_a_failing_call_fails_only_its_caller(redis_url: str, redis: Redis) -> None:
    async with coalescer_on(redis_url, flow_calls) as coalescer:
        good, bad, also_good = await asyncio.gather(
            coalescer.run([echo(1)]),
            coalescer.run([echo(2), (FAIL, ["{q}:x"], ["two"])]),
            coalescer.run([echo(3)]),
            return_exceptions=True,
        )
        assert good == [b"r1"]
        assert also_good == [b"r3"]
        assert isinstance(bad, ResponseError)
        assert "boom two" in str(bad)
        assert await redis.get("{q}:calls") == b"3"  # the failing caller's first call ran


async def test_counters_ride_along_and_are_written_at_close(redis_url: str, redis: Redis) -> None:
    client = make_redis(redis_url)
    await load_scripts(client)
    coalescer = Coalescer(client, flow_calls)
    assert coalescer.pipe is not None
    try:
        coalescer.count({"accepted": 2})
        coalescer.count({"accepted": 3, "dead": 0})
        assert await coalescer.run([echo(1)]) == [b"r1"]
        key = keys.minute_stats_key(minute())
        assert await redis.hget(key, "accepted") == b"5"
        assert coalescer.pipe.round_trips == 1
        coalescer.count({"accepted": 1})
        await coalescer.aclose()
        assert await redis.hget(key, "accepted") == b"6"
        assert 0 < await redis.ttl(key) <= keys.MINUTE_STATS_TTL_S
    finally:
        await client.aclose()


async def test_a_lost_connection_fails_every_caller_of_the_round_trip() -> None:

    def no_counts(counts: Mapping[str, int]) -> list[LuaCall]:
        return []

    # nothing listens on port 1
    async with coalescer_on("redis://127.0.0.1:1/0", no_counts) as coalescer:
        outcomes = await asyncio.gather(
            *(coalescer.run([echo(n)]) for n in range(3)), return_exceptions=True
        )
        assert all(isinstance(o, RedisConnectionError) for o in outcomes), outcomes
        # and the coalescer still works for the next callers (they fail the same way, no hang)
        with pytest.raises(RedisConnectionError):
            await coalescer.run([echo(9)])


async def test_scripts_flushed_from_the_server_are_loaded_again_and_each_call_runs_once(
    redis_url: str, redis: Redis
) -> None:
    async with coalescer_on(redis_url, flow_calls) as coalescer:
        assert await coalescer.run([echo(1)]) == [b"r1"]
        await redis.script_flush()
        results = await asyncio.gather(*(coalescer.run([echo(n)]) for n in range(2, 12)))
        assert results == [[f"r{n}".encode()] for n in range(2, 12)]
        assert await redis.get("{q}:calls") == b"11"  # NOSCRIPT ran nothing twice


async def test_a_connection_killed_by_the_server_is_replaced(redis_url: str, redis: Redis) -> None:
    async with coalescer_on(redis_url, flow_calls) as coalescer:
        assert await coalescer.run([echo(1)]) == [b"r1"]
        killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert killed >= 1
        # the round trip that meets the closed connection may fail (503 for its requests);
        # the next one opens a new connection
        outcomes = []
        for n in (2, 3):
            try:
                outcomes.append(await coalescer.run([echo(n)]))
            except RedisConnectionError as exc:
                outcomes.append(exc)
        assert outcomes[-1] == [b"r3"], outcomes


async def test_a_redis_that_never_answers_times_out_every_caller() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing: a hung server

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with coalescer_on(f"redis://127.0.0.1:{port}/0", flow_calls, timeout_s=0.2) as coalescer:
        outcomes = await asyncio.gather(
            *(coalescer.run([echo(n)]) for n in range(3)), return_exceptions=True
        )
        assert all(isinstance(o, RedisTimeoutError) for o in outcomes), outcomes
        assert accepted  # it did reach the server
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
