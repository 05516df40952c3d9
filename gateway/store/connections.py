"""Redis clients from a URL: a single server, Sentinel, or Cluster.

``TTGW_REDIS_URL`` accepts:

* ``redis://[user:pass@]host:port/db``, ``rediss://…`` (TLS), ``unix:///path/redis.sock?db=0``;
* ``redis+sentinel://[user:pass@]host:26379,host2:26379/<service>[/db]`` (``rediss+sentinel``
  for TLS to the data nodes). The URL's user and password are the data nodes'; Sentinels that
  need their own give them as ``?sentinel_username=…&sentinel_password=…`` (most run without);
* ``redis+cluster://[user:pass@]host:7000,host2:7001`` (``rediss+cluster`` for TLS).

redis-py retries commands by default (up to 10 times with backoff); a Redis outage would then hold
an ingest request for many seconds. The gateway passes explicit time-outs and a small retry budget
instead, so ingest fails fast with 503 while workers simply try again on their next loop.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store import keys
from gateway.store.packing import pack_in_c
from gateway.store.pipe import OUTAGE_REPLIES, Lua, LuaCall, ScriptPipe

__all__ = ["Lua", "LuaCall"]  # re-exported: scripts import them from here

RedisClient: TypeAlias = Redis | RedisCluster
# what a Redis outage raises: the client's errors, Cluster's own (not a RedisError), sockets
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
CLUSTER_SCRIPT_CONCURRENCY = 32
# what Redis answers while it is away, restarting, loading its AOF or failing over: wait and retry
_OUTAGES: tuple[type[Exception], ...] = (
    RedisConnectionError,  # refused, reset, MasterNotFoundError (Sentinel), LOADING
    RedisTimeoutError,
    OSError,
    RedisClusterException,
    ClusterDownError,
    TryAgainError,
    MasterDownError,
    ReadOnlyError,  # the old master, now a replica after a failover
    BusyLoadingError,
)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says Redis is away for now (retry later), not that a command is wrong."""
    if isinstance(exc, _OUTAGES):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(OUTAGE_REPLIES)


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Time-outs and retry budget of one client; ingest and workers use different ones."""

    socket_timeout_s: float = keys.REDIS_SOCKET_TIMEOUT_S
    connect_timeout_s: float = keys.REDIS_CONNECT_TIMEOUT_S
    retries: int = 1
    max_connections: int = 64


def _hosts(netloc: str, default_port: int) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """Split ``user:pass@h1:p1,h2:p2`` into credentials and a host list."""
    userinfo, _, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, port = item, default_port
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest.startswith(":"):
                port = int(rest[1:])
        elif item.count(":") == 1:
            name, _, number = item.partition(":")
            host, port = name, int(number)
        hosts.append((host, port))
    return username, password, hosts


def make_redis(url: str, options: RedisOptions | None = None) -> RedisClient:
    """Build an asyncio Redis client for ``url``; it connects lazily on the first command.
    Its connections pack commands with hiredis (:mod:`gateway.store.packing`)."""
    opts = options or RedisOptions()
    common = {
        "socket_timeout": opts.socket_timeout_s,
        "socket_connect_timeout": opts.connect_timeout_s,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), opts.retries),
        "max_connections": opts.max_connections,
    }
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme.endswith("+sentinel"):
        username, password, hosts = _hosts(parts.netloc, 26379)
        path = [p for p in parts.path.split("/") if p]
        service = path[0]
        db = int(path[1]) if len(path) > 1 else 0
        query = parse_qs(parts.query)
        # the Sentinels get the client's time-outs and retry budget, and their own credentials
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts,
            sentinel_kwargs={
                "username": query.get("sentinel_username", [None])[0],
                "password": query.get("sentinel_password", [None])[0],
                "socket_timeout": opts.connect_timeout_s,
                "socket_connect_timeout": opts.connect_timeout_s,
                "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), opts.retries),
            },
            username=username,
            password=password,
            db=db,
            ssl=scheme.startswith("rediss"),
            **common,
        )
        master: Redis = sentinel.master_for(service)
        close_master = master.aclose

        async def close_all(close_connection_pool: bool | None = None) -> None:
            # the master client does not own the sentinel connections: close them with it
            await close_master(close_connection_pool)
            for client in sentinel.sentinels:
                await client.aclose()

        master.aclose = close_all  # type: ignore[method-assign]
        pack_in_c(master)
        return master
    if scheme.endswith("+cluster"):
        username, password, hosts = _hosts(parts.netloc, 6379)
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],
            username=username,
            password=password,
            ssl=scheme.startswith("rediss"),
            socket_timeout=opts.socket_timeout_s,
            socket_connect_timeout=opts.connect_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), opts.retries),
            max_connections=opts.max_connections,
        )
        pack_in_c(cluster)
        return cluster
    # A blocking pool: with every connection busy, a command waits for one (up to the socket
    # time-out) instead of failing at once (measured: 5,152 of 6,292 requests answered 503 at
    # 128 connections in flight with the default pool's hard limit of 64).
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=opts.max_connections,
        timeout=opts.socket_timeout_s,
        socket_timeout=opts.socket_timeout_s,
        socket_connect_timeout=opts.connect_timeout_s,
        retry=common["retry"],
    )
    client = Redis.from_pool(pool)  # the client owns the pool: closing it closes the connections
    pack_in_c(client)  # commands packed in C (gateway/packing.py)
    return client


RunCalls: TypeAlias = Callable[[Sequence[LuaCall]], Awaitable[list[Any]]]


async def eval_many(redis: RedisClient, calls: Sequence[LuaCall]) -> list[Any]:
    """Run many script calls in one round trip; their results in order.

    Calls whose script the server does not know yet are loaded and run again; no call runs twice.
    Any other error is raised after the round trip (calls before it have taken effect). On Redis
    Cluster, which refuses scripts in pipelines, the calls go concurrently instead, each routed
    to the node of its keys (all keys of one call share a hash tag).
    """
    results = await _eval_each(redis, calls)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


async def _eval_each(redis: RedisClient, calls: Sequence[LuaCall]) -> list[Any]:
    """:func:`eval_many`, but a call's error is its result (the others' stand)."""
    if isinstance(redis, RedisCluster):
        limit = asyncio.Semaphore(CLUSTER_SCRIPT_CONCURRENCY)

        async def one(call: LuaCall) -> Any:
            script, script_keys, args = call
            async with limit:
                try:
                    return await redis.evalsha(script.sha, len(script_keys), *script_keys, *args)
                except NoScriptError:
                    await redis.script_load(script.source)
                    return await redis.evalsha(script.sha, len(script_keys), *script_keys, *args)
                except ResponseError as exc:
                    return exc

        return list(await asyncio.gather(*(one(call) for call in calls)))
    pending = list(range(len(calls)))
    results: list[Any] = [None] * len(calls)
    for _ in range(2):
        pipe = redis.pipeline(transaction=False)
        for i in pending:
            script, script_keys, args = calls[i]
            pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
        replies = await pipe.execute(raise_on_error=False)
        missing: list[int] = []
        for i, reply in zip(pending, replies, strict=True):
            if isinstance(reply, NoScriptError):
                missing.append(i)
            else:
                results[i] = reply
        if not missing:
            return results
        for script in {calls[i][0] for i in missing}:
            await redis.script_load(script.source)
        pending = missing
    raise NoScriptError("scripts could not be loaded")


COALESCE_IN_FLIGHT = 2  # round trips of one process in flight at once; more calls wait and join


class Coalescer:
    """Group commit for the web process: the script calls of every request that reaches Redis
    in the same event-loop iteration go in one pipelined round trip (measured in
    ``bench/hotspots.py``: a round trip per request cost more CPU than all the rest of ingest).

    Each caller gets its own calls' results, or the error of its own first failing call; a
    lost connection fails every caller of that round trip (each answers 503, nothing is
    half-done that a retry would not see as a duplicate). Counters added with :meth:`count`
    ride along in the next round trip, best effort: their errors are ignored.
    """

    def __init__(
        self,
        redis: RedisClient,
        counter: Callable[[Mapping[str, int]], list[LuaCall]],
        timeout_s: float = keys.REDIS_SOCKET_TIMEOUT_S,
    ) -> None:
        self.redis = redis
        # a single server or Sentinel: the protocol as bytes on connections of its own
        self.pipe = ScriptPipe(redis, timeout_s) if isinstance(redis, Redis) else None
        self._counter = counter
        self._pending: list[tuple[Sequence[LuaCall], asyncio.Future[list[Any]]]] = []
        self._counts: Counter[str] = Counter()
        self._scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()

    async def run(self, calls: Sequence[LuaCall]) -> list[Any]:
        """Run ``calls`` with the other requests' of this loop iteration; their results."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((calls, future))
        self._schedule()
        results = await future
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    def count(self, counts: Mapping[str, int]) -> None:
        """Add to counters written with the next round trip."""
        self._counts.update({k: v for k, v in counts.items() if v})
        if self._counts:
            self._schedule()

    async def aclose(self) -> None:
        """Wait for round trips in flight and write the counters still held."""
        while self._flushes or self._pending or self._counts:
            if self._pending or self._counts:
                self._flush()  # now, not at the next loop iteration
            await asyncio.gather(*self._flushes, return_exceptions=True)
        if self.pipe is not None:
            await self.pipe.aclose()

    def _schedule(self) -> None:
        # under load, calls wait for a round trip in flight and go together in the next one
        if not self._scheduled and len(self._flushes) < COALESCE_IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        counts, self._counts = self._counts, Counter()
        if not batch and not counts:
            return
        task = asyncio.ensure_future(self._send(batch, self._counter(counts) if counts else []))
        self._flushes.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if self._pending or self._counts:
            self._schedule()

    async def _send(
        self, batch: list[tuple[Sequence[LuaCall], asyncio.Future[list[Any]]]], extra: list[LuaCall]
    ) -> None:
        calls = [call for calls, _ in batch for call in calls] + extra
        try:
            if self.pipe is not None:
                results = await self.pipe.eval_each(calls)
            else:
                results = await _eval_each(self.redis, calls)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for calls_of, future in batch:
            if not future.done():  # a caller that went away (client aborted) is skipped
                future.set_result(results[start : start + len(calls_of)])
            start += len(calls_of)
