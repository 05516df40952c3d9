"""Commands packed in C: redis-py's asyncio connections build the wire form in Python.

redis-py encodes every argument and joins the protocol pieces in Python, re-copying its buffer for
each argument; for the delivery worker, whose settlement scripts take thousands of arguments per
request, that was its largest single cost (measured: 7.8 ms against 0.8 ms with
``hiredis.pack_command`` for a 6,000-argument EVALSHA). hiredis comes with ``redis[hiredis]``.
"""

from __future__ import annotations

from typing import Any

from hiredis import pack_command as _hiredis_pack
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection

_FAST: dict[type[AbstractConnection], type[AbstractConnection]] = {}


class HiredisPacking:
    """A connection mixin: :meth:`pack_command` by hiredis, the same bytes as redis-py's."""

    def pack_command(self, *args: Any) -> list[bytes]:
        """The command in the Redis protocol, as one buffer."""
        head = args[0]
        # as redis-py does: a command name with a space ("SCRIPT LOAD") is several arguments
        spaced = (isinstance(head, str) and " " in head) or (
            isinstance(head, bytes) and b" " in head
        )
        if spaced:
            args = (*head.split(), *args[1:])
        return [_hiredis_pack(args)]


def _fast(base: type[AbstractConnection]) -> type[AbstractConnection]:
    if issubclass(base, HiredisPacking):
        return base
    fast = _FAST.get(base)
    if fast is None:
        fast = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {})
        _FAST[base] = fast
    return fast


def pack_in_c(client: Redis | RedisCluster) -> None:
    """Make the connections ``client`` opens from now on pack commands with hiredis.

    A single server or Sentinel client: its connection pool; a Cluster client: the nodes it
    discovers (call it before the client's first command).
    """
    if isinstance(client, Redis):
        pool = client.connection_pool
        pool.connection_class = _fast(pool.connection_class)
    else:
        options = client.nodes_manager.connection_kwargs
        options["connection_class"] = _fast(options.get("connection_class", Connection))
