"""Settles that must land: what TikTok's answer decided is written, tried again while Redis is
away, or the events would be sent again once reclaimed (each settle script is idempotent). The
settle of a request TikTok accepted also outlives the worker's tasks: a stop or a restart that
cancels them does not hand its events back to be sent again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from gateway.delivery.outbox import Outbox
from gateway.logs import get_logger
from gateway.store.connections import LuaCall, is_outage

log = get_logger("gateway.delivery")
REDIS_BACKOFF_FIRST_S = 0.1  # the first wait after Redis went away, doubling with jitter
REDIS_BACKOFF_CAP_S = 5.0
SETTLE_BACKOFF_CAP_S = 1.0  # a settle TikTok's answer decided is tried again sooner
SETTLE_GLITCH_RETRIES = 5  # other errors a settle is tried again after, before it gives up

# settles of requests TikTok accepted, kept from garbage collection and from cancellation
_committing: set[asyncio.Future[None]] = set()
_settling: set[str] = set()  # their stream ids: no worker of this process may pick them up again


async def finish_settles(timeout_s: float) -> int:
    """Wait up to ``timeout_s`` for settles of accepted requests still waiting for Redis; how
    many are still waiting then (their events will be sent again once reclaimed)."""
    if _committing:
        await asyncio.wait(set(_committing), timeout=timeout_s)
    return len(_committing)


def is_settling(stream_id: str) -> bool:
    """The entry is in a request TikTok accepted whose settle is still under way here."""
    return stream_id in _settling


async def commit(outbox: Outbox, calls: Sequence[LuaCall]) -> None:
    """Settle, retrying while Redis is away: what TikTok's answer decided must be written,
    or the events would be sent again once reclaimed. Each settle script is idempotent."""
    delay_s = REDIS_BACKOFF_FIRST_S
    glitches = 0
    while True:
        try:
            await outbox.settle(calls)
            return
        except Exception as exc:
            if not is_outage(exc):
                # a client that fails on a connection torn down under it (seen: redis-py's
                # Cluster client, AttributeError on a closed writer) gets a few more tries
                glitches += 1
                if glitches > SETTLE_GLITCH_RETRIES:
                    raise
            log.warning("settle_waiting_for_redis", error=repr(exc), calls=len(calls))
            await asyncio.sleep(delay_s * random.uniform(0.5, 1.0))
            delay_s = min(delay_s * 2, SETTLE_BACKOFF_CAP_S)


async def commit_accepted(outbox: Outbox, call: LuaCall, ids: list[str]) -> None:
    """Settle a request TikTok accepted (``call``, of the entries ``ids``), shielded: a stop or a
    restart of the worker cancels its tasks, and a cancelled settle would hand the events back to
    be sent again; this one goes on until Redis takes it."""
    _settling.update(ids)
    task = asyncio.ensure_future(commit(outbox, [call]))
    _committing.add(task)

    def done(finished: asyncio.Future[None]) -> None:
        _committing.discard(finished)
        _settling.difference_update(ids)

    task.add_done_callback(done)
    await asyncio.shield(task)
