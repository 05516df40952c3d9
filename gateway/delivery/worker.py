"""The delivery worker: the Redis stream to TikTok's Events API, store and forward.

One loop reads batches with the consumer group and hands them to the worker's lanes, one per pixel
(:mod:`gateway.delivery.lanes`), which cut them into requests and send several at once
(:mod:`gateway.delivery.send`: one request and its settle, by TikTok's answer). Helpers move due
retries back into the stream, reclaim what other consumers left idle and keep what this one holds
from being reclaimed. Redis going away pauses the worker, not the process; what it had read and
not settled is read again when Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable

from gateway.delivery.commit import REDIS_BACKOFF_CAP_S, REDIS_BACKOFF_FIRST_S, is_settling
from gateway.delivery.destinations import Route
from gateway.delivery.entry import Entry
from gateway.delivery.lanes import Lane, Lanes
from gateway.delivery.outbox import Outbox, RetryPace
from gateway.delivery.ratelimit import RateLimiter
from gateway.delivery.send import Sender
from gateway.logs import get_logger
from gateway.settings import Settings
from gateway.store import keys
from gateway.store.connections import RedisClient, is_outage

log = get_logger("gateway.delivery")
MOVE_DUE_ROUNDS = 20


def _no_group(exc: BaseException) -> bool:
    """Redis lost the consumer group (a restart without persistence, a flushed replica)."""
    return "NOGROUP" in str(exc)


_consumers = itertools.count(1)


def consumer_name() -> str:
    """A consumer name unique to this worker: host and pid, and a number for a process's second
    and later workers (a worker re-reads what its consumer name had read and not settled)."""
    n = next(_consumers)
    base = f"{socket.gethostname()}:{os.getpid()}"
    return base if n == 1 else f"{base}:{n}"


class Worker:
    """Delivers the queue until told to stop. Several may run, in one or many processes.

    Redis may go away at any time (a restart, a failover, an outage): the worker then pauses with
    backoff and a log line, and resumes by itself when Redis answers, first re-reading the entries
    it had read but not settled. A settle TikTok's answer decided is retried until Redis takes it,
    so an event TikTok accepted is never sent again after a reclaim.
    """

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        routes: Callable[[str], Route | None],
        limiter: RateLimiter,
        *,
        consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.limiter = limiter
        self.consumer = consumer or consumer_name()
        self.outbox = Outbox(redis, receipt_ttl_s=settings.receipt_ttl_s)
        limit = limiter.limit
        self.retry_pace = RetryPace.of(
            limit.requests_per_s, limit.burst, settings.batch_max_events, keys.RETRY_POLL_INTERVAL_S
        )
        self.sender = Sender(redis, settings, routes, limiter, self.outbox)
        self.lanes = Lanes(settings, self.outbox, self.consumer, self._deliver, self._redis_lost)
        self._recover = False  # a Redis error left read entries unsettled: re-read them
        self._stopping = False

    @property
    def _tasks(self) -> set[asyncio.Task[None]]:
        """The lanes' runners: batches waiting for the limiter, in flight or being settled."""
        return self.lanes.tasks

    def _redis_lost(self) -> None:
        """Entries read here were left unsettled by an outage: re-read them once Redis answers."""
        self._recover = True

    # --- the loops ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Read and deliver until ``stop`` is set; then finish or return in-flight batches."""
        if not await self._reach_redis(stop, None):
            return
        self._recover = True  # a restarted worker of this process re-reads what it had read
        log.info("worker_started", consumer=self.consumer)
        helpers = [
            asyncio.create_task(self._every(stop, keys.RETRY_POLL_INTERVAL_S, self._move_due)),
            asyncio.create_task(self._every(stop, self._reclaim_interval_s, self._reclaim)),
            asyncio.create_task(self._every(stop, self._reclaim_interval_s, self._heartbeat)),
        ]
        try:
            while not stop.is_set():
                if self.lanes.busy() >= self.lanes.read_ahead:
                    self.lanes.space.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.lanes.space.wait(), keys.DELIVERY_BLOCK_MS / 1000
                        )
                    continue
                try:
                    if self._recover:
                        self._recover = False
                        await self._recover_own()
                    entries = await self.outbox.read(
                        self.consumer, self.lanes.read_count(), keys.DELIVERY_BLOCK_MS
                    )
                    await self.lanes.dispatch(entries)
                except Exception as exc:
                    if not is_outage(exc) and not _no_group(exc):
                        raise
                    if not await self._reach_redis(stop, exc):
                        return
        finally:
            self._stopping = True
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._finish()
            log.info("worker_stopped", consumer=self.consumer)

    async def _reach_redis(self, stop: asyncio.Event, error: BaseException | None) -> bool:
        """Wait, with backoff, until Redis answers and the consumer group exists; False if
        ``stop`` came first. After an outage, the entries this worker had read are re-read."""
        delay_s = REDIS_BACKOFF_FIRST_S
        started = time.monotonic()
        attempts = 0
        while not stop.is_set():
            try:
                await self.outbox.ensure_group()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                error = exc
            else:
                if attempts:
                    log.warning(
                        "redis_available",
                        consumer=self.consumer,
                        away_s=round(time.monotonic() - started, 1),
                    )
                if error is not None:
                    self._recover = True  # replies may have been lost with the connection
                    self.lanes.unpark_all()
                return True
            if attempts == 0 or attempts % 10 == 0:
                log.warning(
                    "redis_unavailable",
                    consumer=self.consumer,
                    error=repr(error),
                    retry_in_s=round(delay_s, 2),
                )
            attempts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s * random.uniform(0.5, 1.0))
            delay_s = min(delay_s * 2, REDIS_BACKOFF_CAP_S)
        return False

    async def _recover_own(self) -> None:
        """Deliver entries read by this consumer and not settled (their replies or their
        settles were lost with Redis): a failover or restart does not wait the reclaim time."""
        after: str | None = "0-0"
        recovered = 0
        while after is not None:
            entries, after = await self.outbox.own_pending(
                self.consumer, after, keys.DELIVERY_READ_COUNT
            )
            fresh = [e for e in entries if self._new(e)]
            recovered += len(fresh)
            await self.lanes.dispatch(fresh)
            await self._wait_for_room()
        if recovered:
            log.info("recovered", consumer=self.consumer, events=recovered)

    def _new(self, entry: Entry) -> bool:
        """Not already in hand here: not in flight, parked, or being settled."""
        return entry.stream_id not in self.lanes.inflight and not is_settling(entry.stream_id)

    async def _wait_for_room(self) -> None:
        while self.lanes.busy() >= self.lanes.read_ahead and not self._stopping:
            self.lanes.space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lanes.space.wait(), keys.DELIVERY_BLOCK_MS / 1000)

    async def _finish(self) -> None:
        """Give in-flight requests ``SHUTDOWN_GRACE_S``; cancelled ones put their events back
        (not those TikTok accepted: their settles go on, see :func:`commit_accepted`)."""
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=keys.SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _every(
        self, stop: asyncio.Event, interval_s: float, job: Callable[[], Awaitable[None]]
    ) -> None:
        while not stop.is_set():
            try:
                await job()
            except Exception as exc:  # a Redis blip must not end the loop: log, go on
                log.warning("background_job_failed", job=job.__name__, error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    @property
    def _reclaim_interval_s(self) -> float:
        return min(keys.RECLAIM_INTERVAL_S, self.settings.reclaim_idle_s / 2)

    async def _move_due(self) -> None:
        """Move due retries back into the stream at the pace of each pixel's rate limiter (see
        :class:`RetryPace`); a full scan means more are due (after an outage): look on, a bounded
        number of times (the surplus of a pixel is spread over the time ahead, not looked at again
        before its turn, so each scan looks at new ones)."""
        for _ in range(MOVE_DUE_ROUNDS):
            _, looked_at = await self.outbox.move_due(pace=self.retry_pace)
            if looked_at < keys.RETRY_SCAN_COUNT:
                return

    async def _heartbeat(self) -> None:
        # a batch may wait for a send slot or the rate limiter longer than the reclaim idle time
        if self.lanes.inflight:
            await self.outbox.touch(self.consumer, sorted(self.lanes.inflight))

    async def _reclaim(self) -> None:
        """Take over everything other consumers left idle, in one pass, a batch at a time."""
        idle_ms = int(self.settings.reclaim_idle_s * 1000)
        start = "0-0"
        total = 0
        while not self._stopping:
            claimed, start = await self.outbox.reclaim_page(
                self.consumer, idle_ms, start, keys.DELIVERY_READ_COUNT
            )
            entries = [e for e in claimed if self._new(e)]
            total += len(entries)
            await self.lanes.dispatch(entries)
            if start == "0-0":
                break
            await self._wait_for_room()
        if total:
            log.info("reclaimed", events=total)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Deliver everything queued now (retries included as they fall due); for tests and CLI."""
        await self.outbox.ensure_group()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self._move_due()
            entries = await self.outbox.read(self.consumer, keys.DELIVERY_READ_COUNT, 10)
            await self.lanes.dispatch(entries)
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            elif not entries and not await self.redis.zcard(keys.RETRY_ZSET):
                return
            else:
                await asyncio.sleep(keys.RETRY_POLL_INTERVAL_S)  # waiting for retries to fall due
        raise TimeoutError("the queue did not drain in time")

    # --- one batch ------------------------------------------------------------------------

    async def _deliver(self, pixel: str, entries: list[Entry], lane: Lane | None = None) -> None:
        settled: set[str] = set()
        try:
            await self.sender.send(pixel, entries, settled, lane)
        except asyncio.CancelledError:
            await self.sender.give_back([e for e in entries if e.stream_id not in settled])
            raise
        except Exception as exc:  # never lose a batch to a bug or a Redis blip: leave it pending
            if is_outage(exc):
                # pending in the group: re-read by this worker as soon as Redis answers again
                self._recover = True
                log.warning("delivery_waiting_for_redis", pixel=pixel, events=len(entries),
                            error=repr(exc))  # fmt: skip
            else:
                log.error("delivery_failed", pixel=pixel, events=len(entries), error=repr(exc))
        finally:
            self.lanes.inflight.difference_update(e.stream_id for e in entries)
