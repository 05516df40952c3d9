"""Script calls on connections of their own, in the Redis protocol as bytes: the web process's
group commit (:class:`gateway.store.connections.Coalescer`) sends through here.

redis-py's pipeline does a great deal of work per command in Python (argument encoding, a retry
wrapper, a response callback, per-reply coroutines). Measured in ``bench/ingest.py``'s profile,
that machinery cost more CPU per ``POST /e`` than parsing, hashing and building the event
together. Here a round trip is: every call packed by hiredis into one buffer, one write, and the
replies parsed by a hiredis reader as they arrive.

redis-py still opens each connection (``pool.make_connection()``): the URL's TLS, Unix socket,
AUTH, SELECT and, behind Sentinel, the discovery of the master are its. Errors are redis-py's
(``NOSCRIPT`` is :class:`~redis.exceptions.NoScriptError`, ``OOM`` its out-of-memory error, …):
an error reply is that call's result, the others' stand. A connection that fails, times out or
answers that Redis is away (``READONLY`` after a failover, ``LOADING``, …) is closed; the next
round trip opens a new one (behind Sentinel: to the new master).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# what Redis answers while it is away, restarting, loading or failing over (a replica now)
OUTAGE_REPLIES = ("MISCONF", "LOADING", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "TRYAGAIN")
_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Lua:
    """A Lua script run by its SHA-1, loaded on first use (and again after a SCRIPT FLUSH)."""

    source: str
    sha: str = field(init=False)  # the script's SHA-1, as EVALSHA names it

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", sha)


LuaCall = tuple[Lua, Sequence[str], Sequence[str | bytes | int | float]]


def _pack(*args: str | bytes | int | float) -> bytes:
    # hiredis takes any number of arguments; its stub says a 1-tuple
    return hiredis.pack_command(args)  # type: ignore[arg-type,no-any-return]


def _evalsha(script: Lua, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> bytes:
    return _pack("EVALSHA", script.sha, len(keys), *keys, *args)


class _Link:
    """One connection with its reply parser."""

    __slots__ = ("conn", "reader")

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error
        )

    async def exchange(self, packed: list[bytes], count: int) -> list[Any]:
        """Write ``packed`` in one go; the next ``count`` replies."""
        conn = self.conn
        if not conn.is_connected:
            await conn.connect()  # type: ignore[no-untyped-call]
        writer, stream = conn._writer, conn._reader  # the connection's own streams
        assert writer is not None and stream is not None
        writer.write(b"".join(packed))
        replies: list[Any] = []
        reader = self.reader
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:
                data = await stream.read(_READ_SIZE)
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                reader.feed(data)
            else:
                replies.append(reply)
        return replies


class ScriptPipe:
    """Runs batches of script calls, each on a connection of its own (at most as many connections
    as batches in flight at once)."""

    def __init__(self, redis: Redis, timeout_s: float) -> None:
        self._pool = redis.connection_pool
        self._timeout_s = timeout_s
        self._idle: list[_Link] = []
        self.round_trips = 0  # batches sent (the tests count them)

    async def eval_each(self, calls: Sequence[LuaCall]) -> list[Any]:
        """Every call's reply in order: a call's error reply is its result (the others' stand).
        Scripts the server does not know yet are loaded and those calls sent again."""
        link = await self._take()
        self.round_trips += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                results = await self._run(link, calls)
        except TimeoutError:
            await link.conn.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout reading from Redis") from None
        except BaseException:
            # the stream may hold half a reply: nobody reads this connection again
            await link.conn.disconnect(nowait=True)
            raise
        if any(isinstance(r, ResponseError) and str(r).startswith(OUTAGE_REPLIES) for r in results):
            await link.conn.disconnect(nowait=True)  # e.g. a replica now: find the master again
        else:
            self._idle.append(link)
        return results

    async def aclose(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for link in idle:
            await link.conn.disconnect(nowait=True)

    async def _take(self) -> _Link:
        while self._idle:
            link = self._idle.pop()
            stream = link.conn._reader
            if stream is not None and not stream.at_eof():
                return link
            # closed by the server while idle (its timeout, a restart): open a new one
            await link.conn.disconnect(nowait=True)
        return _Link(self._pool.make_connection())  # type: ignore[no-untyped-call]

    async def _run(self, link: _Link, calls: Sequence[LuaCall]) -> list[Any]:
        pending = list(range(len(calls)))
        results: list[Any] = [None] * len(calls)
        for _ in range(2):
            packed = [_evalsha(*calls[i]) for i in pending]
            replies = await link.exchange(packed, len(pending))
            missing = [i for i, reply in zip(pending, replies, strict=True)
                       if isinstance(reply, NoScriptError)]  # fmt: skip
            for i, reply in zip(pending, replies, strict=True):
                results[i] = reply
            if not missing:
                return results
            scripts = {calls[i][0] for i in missing}
            loads = [_pack("SCRIPT", "LOAD", s.source) for s in scripts]
            for reply in await link.exchange(loads, len(loads)):
                if isinstance(reply, Exception):
                    raise reply
            pending = missing
        raise NoScriptError("scripts could not be loaded")
