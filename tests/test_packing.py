"""Commands packed by hiredis are byte for byte what redis-py packs, and work end to end."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from gateway.store.connections import make_redis
from gateway.store.packing import HiredisPacking, pack_in_c

ARGS: list[tuple[object, ...]] = [
    ("SET", "k", "v"),
    ("EVALSHA", "ab" * 20, 2, "ttgw:{q}:a", b"ttgw:{q}:b", 1.5, 10**20, -3, "é", b"\x00\xff"),
    ("SCRIPT LOAD", "return 1"),  # a two-word command name
    (b"CLIENT SETNAME", b"worker"),
    ("HSET", "h", "payload", b"x" * 100_000),  # above redis-py's buffer cut-off
]


@pytest.mark.parametrize("args", ARGS)
def test_same_bytes_as_redis_py(args: tuple[object, ...]) -> None:
    plain = Connection()
    fast = type("Fast", (HiredisPacking, Connection), {})()
    assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))


async def test_a_client_packing_in_c_talks_to_redis(redis_url: str) -> None:
    client = make_redis(redis_url)
    pack_in_c(client)
    try:
        names = [f"ttgw:{{q}}:packing:{i}" for i in range(3000)]
        await client.mset(dict.fromkeys(names, b"1"))
        assert await client.mget(names) == [b"1"] * 3000
        assert await client.eval("return #KEYS", len(names), *names) == 3000
        assert client.connection_pool.connection_class.__name__.startswith("Hiredis")
        await client.delete(*names)
    finally:
        await client.aclose()
