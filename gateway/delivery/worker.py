"""The delivery worker: the Redis stream to TikTok's Events API, store and forward.

One loop reads batches with the consumer group, groups them by pixel, cuts requests of at most
1,000 events and ~900 KiB, and sends several at once through one aiohttp session, each request
after a cell of the pixel's rate limiter (shared in Redis by every worker). The answer's body
``code`` decides what happens to the events (see :class:`gateway.tiktok.Verdict`):

* delivered → settled, the whole request in one script call (receipts, 48 h ``sent`` markers);
  if the pixel had been failing, every scheduled retry is brought forward so a short outage does
  not leave events waiting minutes;
* retry / throttled → back to the retry set with exponential backoff and full jitter (from
  ``TTGW_RETRY_BASE_S``, doubling, capped at ``TTGW_RETRY_CAP_S``); throttling also slows the
  limiter; an event that would still be failing ``TTGW_DEAD_LETTER_AFTER_S`` after it arrived is
  dead-lettered instead, well before TikTok's 48 h dedup window closes;
* invalid → the events failing TikTok's rules (checked here as the emulator checks them) are
  dead-lettered with the reason and the rest sent again; if none does, the batch is split in
  halves until TikTok's bad event is alone; only it is dead-lettered;
* auth / permission → the integration is paused (alert in logs, metrics and Redis), its events are
  kept, and one event probes it about once a minute until the token works again;
* rejected → dead letters with TikTok's message.

Before sending, events TikTok already accepted are skipped (exactly-once effect), and events that
cannot be valid any more (too old, or past the retry horizon) are dead-lettered with the reason.
TikTok's rules for the event itself were checked at ingest; they are checked again only for a
request TikTok refuses as invalid, not for every event sent (measured: a sixth of the worker's
time went to re-validating).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from redis.typing import EncodableT, FieldT

from gateway.delivery.client import (
    Answer,
    Destination,
    SandboxDestination,
    TikTokClient,
    Verdict,
    body_prefix,
    chunks,
    event_problem,
    with_events,
)
from gateway.delivery.outbox import Entry, Outbox, Outcome
from gateway.delivery.ratelimit import RateLimit, RateLimiter
from gateway.delivery.sandbox import Sandbox
from gateway.integrations import SANDBOX, Integrations, IntegrationStore, TokenBox, keep_fresh
from gateway.logs import get_logger
from gateway.operate.metrics import (
    DELIVERY_OUTCOMES,
    DELIVERY_SECONDS,
    INTEGRATION_PAUSES,
    RATE_LIMIT_WAIT_SECONDS,
    REQUEST_EVENTS,
    event_label,
)
from gateway.operate.stats import count_coverage, count_flow, present_keys
from gateway.settings import Integration, Settings
from gateway.store import keys
from gateway.store.connections import LuaCall, RedisClient, RedisOptions, is_outage, make_redis

log = get_logger("gateway.delivery")
MOVE_DUE_ROUNDS = 20
EXPEDITE_BATCH = 10_000
SHAPES_KEPT = 10_000
REDIS_BACKOFF_FIRST_S = 0.1  # the first wait after Redis went away, doubling with jitter
REDIS_BACKOFF_CAP_S = 5.0
SETTLE_BACKOFF_CAP_S = 1.0  # a settle TikTok's answer decided is tried again sooner
SETTLE_GLITCH_RETRIES = 5  # other errors a settle is tried again after, before it gives up
LANE_BLOCKED_S = 1.0  # a lane whose limiter grants nothing for longer is waiting, not moving
LANE_SLOW_HOLD_S = 10.0  # and stays "slow" this long after such a wait (no flapping)
PARKED_READ_COUNT = 5000  # entries a read takes while a slow lane parks most of them
WORKER_RESTART_CAP_S = 30.0

_shapes: dict[tuple[str, tuple[str, ...]], Mapping[str, Any]] = {}
# settles of requests TikTok accepted, kept from garbage collection and from cancellation
_committing: set[asyncio.Future[None]] = set()
_settling: set[str] = set()  # their stream ids: no worker of this process may pick them up again


async def finish_settles(timeout_s: float) -> int:
    """Wait up to ``timeout_s`` for settles of accepted requests still waiting for Redis; how
    many are still waiting then (their events will be sent again once reclaimed)."""
    if _committing:
        await asyncio.wait(set(_committing), timeout=timeout_s)
    return len(_committing)


def coverage_shape(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """What the match-key coverage counters read of an event: its name and the keys it carries.

    Events alike share one object, so a batch in flight keeps no parsed copy of its events alive
    (measured: 1,000 parsed events kept per batch cost 1.7 µs an event in garbage collection).
    """
    user = event.get("user")
    carried = tuple(present_keys(event)) if isinstance(user, dict) else ()
    key = (event_label(str(event.get("event", ""))), carried)  # bounded: standard or custom
    shape = _shapes.get(key)
    if shape is None:
        if len(_shapes) >= SHAPES_KEPT:
            _shapes.clear()
        shape = _shapes[key] = {"event": key[0], "user": dict.fromkeys(carried, True)}
    return shape


@dataclass(frozen=True, slots=True)
class Sent:
    """One request as sent and TikTok's answer; ``data_at``: where its first event begins."""

    body: bytes
    data_at: int
    answer: Answer


@dataclass(frozen=True, slots=True)
class Route:
    """Where one pixel's events go."""

    integration: Integration
    destination: Destination


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


class Pauses:
    """Integrations paused for token or permission errors, shared in Redis."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def get(self, pixel: str) -> dict[str, object] | None:
        """The pause record of ``pixel``, or None."""
        raw = await self.redis.hget(keys.PAUSED_HASH, pixel)
        return None if raw is None else dict(orjson.loads(raw))

    async def pause(self, pixel: str, answer: Answer, now_ms: int) -> None:
        """Pause ``pixel`` and raise an alert."""
        record: dict[str, str | int | None] = {
            "reason": "auth",
            "code": answer.code,
            "http_status": answer.http_status,
            "message": answer.message,
            "since_ms": now_ms,
        }
        alert: dict[FieldT, EncodableT] = {
            "pixel": pixel,
            "kind": "paused",
        }
        alert.update({k: "" if v is None else str(v) for k, v in record.items()})
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(keys.PAUSED_HASH, pixel, orjson.dumps(record))
        pipe.xadd(keys.ALERTS_STREAM, alert, maxlen=1000, approximate=True)
        await pipe.execute()

    async def resume(self, pixel: str) -> bool:
        """Lift the pause; True when there was one."""
        return bool(await self.redis.hdel(keys.PAUSED_HASH, pixel))

    async def claim_probe(self, pixel: str, interval_s: float) -> bool:
        """True for the one worker that may probe ``pixel`` now (at most once per interval)."""
        key = keys.PROBE_LOCK_PREFIX + pixel
        return bool(await self.redis.set(key, "1", nx=True, px=int(interval_s * 1000)))


@dataclass(slots=True)
class Lane:
    """One pixel's batches in this worker: its own runners, so one pixel's trouble (a throttled
    limiter) never holds another pixel's events or the worker's send slots.

    A slow lane (its limiter made it wait over ``LANE_BLOCKED_S`` in the last
    ``LANE_SLOW_HOLD_S``) holds at most ``Worker._lane_max`` entries; what it reads beyond that is
    *parked*: only the stream id is kept here, the entry stays pending in the consumer group
    (kept fresh by the heartbeat, so nobody reclaims it) and is claimed back with its data when
    the lane has room. The stream behind it, other pixels' events included, is read on.
    """

    batches: deque[list[Entry]] = field(default_factory=deque)
    parked: deque[str] = field(default_factory=deque)
    held: int = 0  # entries waiting or in flight (parked ones not counted)
    runners: int = 0
    slow_until: float = 0.0  # monotonic time until which the lane counts as slow

    @property
    def slow(self) -> bool:
        """The pixel's limiter keeps this lane waiting."""
        return self.slow_until > time.monotonic()


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
        self.routes = routes
        self.limiter = limiter
        self.consumer = consumer or consumer_name()
        self.outbox = Outbox(redis, receipt_ttl_s=settings.receipt_ttl_s)
        self.pauses = Pauses(redis)
        self._slots = asyncio.Semaphore(settings.delivery_concurrency)  # HTTP requests in flight
        self._lanes: dict[str, Lane] = {}
        self._held = 0  # entries held by every lane
        self._space = asyncio.Event()  # set whenever lanes release entries
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: set[str] = set()  # stream ids read by this worker and not settled yet
        self._recover = False  # a Redis error left read entries unsettled: re-read them
        self._stopping = False
        self._failing: set[str] = set()
        self._throttled_at: dict[str, float] = {}

    @property
    def _read_ahead(self) -> int:
        """Entries held (of lanes not waiting on their limiter) before the worker stops reading."""
        return self.settings.delivery_concurrency * self.settings.batch_max_events * 2

    @property
    def _lane_max(self) -> int:
        """Entries a slow lane holds; what it reads beyond that is parked (see :class:`Lane`)."""
        return self.settings.delivery_concurrency * self.settings.batch_max_events

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
                if self._busy() >= self._read_ahead:
                    self._space.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._space.wait(), keys.DELIVERY_BLOCK_MS / 1000)
                    continue
                try:
                    if self._recover:
                        self._recover = False
                        await self._recover_own()
                    entries = await self.outbox.read(
                        self.consumer, self._read_count(), keys.DELIVERY_BLOCK_MS
                    )
                    await self._dispatch(entries)
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
                    self._unpark_all()
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

    def _unpark_all(self) -> None:
        """After an outage, forget parked ids: any still ours come back from our own pending
        entries (:meth:`_recover_own`); one another worker reclaimed meanwhile is not claimed
        back from it."""
        for lane in self._lanes.values():
            self._inflight.difference_update(lane.parked)
            lane.parked.clear()

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
            await self._dispatch(fresh)
            await self._wait_for_room()
        if recovered:
            log.info("recovered", consumer=self.consumer, events=recovered)

    def _new(self, entry: Entry) -> bool:
        """Not already in hand here: not in flight, parked, or being settled."""
        return entry.stream_id not in self._inflight and entry.stream_id not in _settling

    def _busy(self) -> int:
        """Entries held by lanes that are moving: a lane waiting on its limiter does not count."""
        return self._held - sum(lane.held for lane in self._lanes.values() if lane.slow)

    def _read_count(self) -> int:
        """Bigger reads while a slow lane parks most of what is read."""
        if any(lane.slow for lane in self._lanes.values()):
            return PARKED_READ_COUNT
        return keys.DELIVERY_READ_COUNT

    async def _wait_for_room(self) -> None:
        while self._busy() >= self._read_ahead and not self._stopping:
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), keys.DELIVERY_BLOCK_MS / 1000)

    async def _finish(self) -> None:
        """Give in-flight requests ``SHUTDOWN_GRACE_S``; cancelled ones put their events back
        (not those TikTok accepted: their settles go on, see :data:`_committing`)."""
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
        # a full batch means more are due (after an outage): keep moving, a bounded number
        for _ in range(MOVE_DUE_ROUNDS):
            if (
                await self.outbox.move_due(limit=keys.DELIVERY_READ_COUNT)
                < keys.DELIVERY_READ_COUNT
            ):
                return

    async def _heartbeat(self) -> None:
        # a batch may wait for a send slot or the rate limiter longer than the reclaim idle time
        if self._inflight:
            await self.outbox.touch(self.consumer, sorted(self._inflight))

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
            await self._dispatch(entries)
            if start == "0-0":
                break
            await self._wait_for_room()
        if total:
            log.info("reclaimed", events=total)

    async def _dispatch(self, entries: Sequence[Entry]) -> None:
        by_pixel: dict[str, list[Entry]] = {}
        for entry in entries:
            self._inflight.add(entry.stream_id)
            by_pixel.setdefault(entry.pixel, []).append(entry)
        for pixel, group in by_pixel.items():
            lane = self._lanes.get(pixel)
            if lane is None:
                lane = self._lanes[pixel] = Lane()
            if lane.slow and lane.held + len(group) > self._lane_max:
                keep = max(self._lane_max - lane.held, 0)
                lane.parked.extend(e.stream_id for e in group[keep:])
                group = group[:keep]
            self._hold(lane, group)
            while lane.runners < self.settings.delivery_concurrency and lane.runners < len(
                lane.batches
            ):
                lane.runners += 1
                task = asyncio.create_task(self._run_lane(pixel, lane))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _hold(self, lane: Lane, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        sizes = [len(e.data) for e in entries]
        for part in chunks(sizes, max_events=self.settings.batch_max_events):
            lane.batches.append(list(entries[part.start : part.stop]))
        lane.held += len(entries)
        self._held += len(entries)

    async def _unpark(self, lane: Lane) -> None:
        """Claim parked entries back, with their data, as far as the lane has room."""
        room = max(self._lane_max - lane.held, self.settings.batch_max_events)
        ids = [lane.parked.popleft() for _ in range(min(room, len(lane.parked)))]
        try:
            entries = await self.outbox.claim(self.consumer, ids)
        except Exception:
            lane.parked.extendleft(reversed(ids))  # still pending here: another try later
            raise
        found = {e.stream_id for e in entries}
        self._inflight.difference_update(i for i in ids if i not in found)  # settled meanwhile
        self._hold(lane, entries)

    async def _run_lane(self, pixel: str, lane: Lane) -> None:
        try:
            while lane.batches or lane.parked:
                if not lane.batches:
                    try:
                        await self._unpark(lane)
                    except Exception as exc:
                        if not is_outage(exc):
                            raise
                        self._recover = True
                        log.warning("unpark_waiting_for_redis", pixel=pixel, error=repr(exc))
                        return
                    continue
                batch = lane.batches.popleft()
                try:
                    await self._deliver(pixel, batch, lane)
                finally:
                    lane.held -= len(batch)
                    self._held -= len(batch)
                    self._space.set()
        finally:
            lane.runners -= 1
            idle = lane.runners == 0 and not lane.batches and not lane.parked
            if idle and self._lanes.get(pixel) is lane:
                del self._lanes[pixel]

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Deliver everything queued now (retries included as they fall due); for tests and CLI."""
        await self.outbox.ensure_group()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self._move_due()
            entries = await self.outbox.read(self.consumer, keys.DELIVERY_READ_COUNT, 10)
            await self._dispatch(entries)
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            elif not entries and not await self.redis.zcard(keys.RETRY_ZSET):
                return
            else:
                await asyncio.sleep(keys.RETRY_POLL_INTERVAL_S)  # waiting for retries to fall due
        raise TimeoutError("the queue did not drain in time")

    async def _commit(self, calls: Sequence[LuaCall]) -> None:
        """Settle, retrying while Redis is away: what TikTok's answer decided must be written,
        or the events would be sent again once reclaimed. Each settle script is idempotent."""
        delay_s = REDIS_BACKOFF_FIRST_S
        glitches = 0
        while True:
            try:
                await self.outbox.settle(calls)
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

    # --- one request ------------------------------------------------------------------------

    async def _deliver(self, pixel: str, entries: list[Entry], lane: Lane | None = None) -> None:
        settled: set[str] = set()
        try:
            await self._send(pixel, entries, settled, lane)
        except asyncio.CancelledError:
            await self._give_back([e for e in entries if e.stream_id not in settled])
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
            self._inflight.difference_update(e.stream_id for e in entries)

    async def _give_back(self, entries: Sequence[Entry]) -> None:
        """Shutdown: return unsettled entries for immediate pickup (no attempt counted)."""
        now_ms = int(time.time() * 1000)
        calls = [
            self.outbox.retry(e, now_ms, Outcome(message="worker stopped"), now_ms, count=False)
            for e in entries
        ]
        await asyncio.shield(self.outbox.settle(calls))

    async def _send(
        self, pixel: str, entries: list[Entry], settled: set[str], lane: Lane | None = None
    ) -> None:
        now = time.time()
        now_ms = int(now * 1000)
        calls: list[LuaCall] = []
        route = self.routes(pixel)
        live: list[Entry] = []
        sent = await self.outbox.already_sent(entries)
        unknown = Outcome(message=f"no enabled integration for pixel {pixel}")
        for entry, done in zip(entries, sent, strict=True):
            reason = None if done or route is None else self._unsendable(entry, now)
            if done:
                calls.append(self.outbox.skip_sent(entry))
                DELIVERY_OUTCOMES.labels("duplicate").inc()
            elif route is None:
                # just created through the admin API (this worker reloads within seconds), or
                # disabled: keep it, with backoff, until it is deliverable or its horizon passes
                entry.attempts += 1
                calls.append(self._retry_or_dead(entry, unknown, now_ms))
            elif reason is not None:
                calls.append(self.outbox.dead(entry, reason, Outcome(), now_ms))
                DELIVERY_OUTCOMES.labels("dead").inc()
            else:
                live.append(entry)
                continue
            settled.add(entry.stream_id)
        await self._commit(calls)
        if not live or route is None:
            return
        paused = await self.pauses.get(pixel)
        if paused is not None:
            if not await self.pauses.claim_probe(pixel, self.settings.paused_probe_s):
                await self._postpone(
                    live, now_ms + int(self.settings.paused_probe_s * 1000), settled
                )
                return
            live, rest = live[:1], live[1:]  # one event probes the token
            await self._postpone(rest, now_ms + int(self.settings.paused_probe_s * 1000), settled)
        await self._request(pixel, route, live, settled, probing=paused is not None, lane=lane)

    def _unsendable(self, entry: Entry, now: float) -> str | None:
        """Why an entry cannot be sent now, from what changes with time; None if it can.

        TikTok's rules for the event itself were checked at ingest and are not checked again
        per event: a request TikTok refuses as invalid is checked then (:meth:`_isolate`).
        """
        if (now * 1000 - entry.received_ms) / 1000 > self.settings.dead_letter_after_s:
            return f"not delivered within {self.settings.dead_letter_after_s} s of arrival"
        try:
            event = orjson.loads(entry.data)
        except orjson.JSONDecodeError:
            return "the queued event is not valid JSON"
        if not isinstance(event, dict):
            return "the queued event is not a JSON object"
        event_time = event.get("event_time", 0)
        if not isinstance(event_time, (int, float)):
            return "invalid: event_time is not a number"
        if event_time > now:  # clamp: TikTok documents no tolerance
            event["event_time"] = int(now)
            entry.data = orjson.dumps(event)
        entry.shape = coverage_shape(event)
        if event_time < now - self.settings.event_max_age_s:
            return f"stale: event_time is more than {self.settings.event_max_age_s} s old"
        return None

    async def _postpone(self, entries: Sequence[Entry], due_ms: int, settled: set[str]) -> None:
        now_ms = int(time.time() * 1000)
        outcome = Outcome(message="integration paused: waiting for a working access token")
        await self._commit(
            [self.outbox.retry(e, due_ms, outcome, now_ms, count=False) for e in entries]
        )
        settled.update(e.stream_id for e in entries)

    async def _request(
        self,
        pixel: str,
        route: Route,
        entries: list[Entry],
        settled: set[str],
        *,
        probing: bool,
        lane: Lane | None = None,
    ) -> None:
        integration = route.integration
        prefix = body_prefix(pixel, test_event_code=integration.test_event_code)
        body = with_events(prefix, [e.data for e in entries])
        RATE_LIMIT_WAIT_SECONDS.observe(await self._acquire(pixel, lane))
        for entry in entries:
            entry.attempts += 1
        started = time.monotonic()
        async with self._slots:  # a send slot only for the request itself, not the limiter wait
            answer = await route.destination.send(body, integration.access_token)
        DELIVERY_SECONDS.observe(time.monotonic() - started)
        REQUEST_EVENTS.observe(len(entries))
        log.info(
            "batch",
            pixel=pixel,
            events=len(entries),
            verdict=answer.verdict.value,
            code=answer.code,
            http_status=answer.http_status,
            request_id=answer.request_id,
            elapsed_ms=round(answer.elapsed_ms, 1),
        )
        sent = Sent(body, len(prefix), answer)
        await self._settle(pixel, route, entries, sent, settled, probing=probing)

    async def _settle(
        self,
        pixel: str,
        route: Route,
        entries: list[Entry],
        sent: Sent,
        settled: set[str],
        *,
        probing: bool,
    ) -> None:
        now_ms = int(time.time() * 1000)
        answer = sent.answer
        outcome = Outcome(answer.http_status, answer.code, answer.message, answer.request_id)
        verdict = answer.verdict
        calls: list[LuaCall] = []
        if verdict is Verdict.DELIVERED:
            # written first: TikTok has these events, nothing may send them again. Shielded: a
            # stop or a restart of this worker cancels its tasks, and a cancelled settle would
            # hand the events back to be sent again; this one goes on until Redis takes it.
            # Marked settled first, so a cancel here does not hand them back either.
            settled.update(e.stream_id for e in entries)
            ids = [e.stream_id for e in entries]
            _settling.update(ids)
            commit = asyncio.ensure_future(
                self._commit(
                    [self.outbox.delivered(entries, outcome, now_ms, sent.body, sent.data_at)]
                )
            )
            _committing.add(commit)

            def done(task: asyncio.Future[None]) -> None:
                _committing.discard(task)
                _settling.difference_update(ids)

            commit.add_done_callback(done)
            await asyncio.shield(commit)
            DELIVERY_OUTCOMES.labels(verdict.value).inc(len(entries))
            await self._after_success(pixel, probing=probing)
            await self._chart(verdict, entries, [])
            return
        if verdict is Verdict.INVALID and len(entries) > 1:
            valid = await self._isolate(pixel, entries, outcome, now_ms, settled)
            if valid and len(valid) < len(entries):
                await self._request(pixel, route, valid, settled, probing=probing)
            elif valid:  # nothing found here: halve until TikTok's one bad event is alone
                half = len(valid) // 2
                for part in (valid[:half], valid[half:]):
                    await self._request(pixel, route, part, settled, probing=probing)
            return
        if verdict in (Verdict.INVALID, Verdict.REJECTED):
            calls = [
                self.outbox.dead(e, f"rejected by TikTok: {answer.message}", outcome, now_ms)
                for e in entries
            ]
        elif verdict is Verdict.AUTH:
            await self.pauses.pause(pixel, answer, now_ms)
            INTEGRATION_PAUSES.labels(pixel).inc()
            log.error(
                "integration_paused",
                pixel=pixel,
                code=answer.code,
                http_status=answer.http_status,
                message=answer.message,
            )
            due = now_ms + int(self.settings.paused_probe_s * 1000)
            calls = [self.outbox.retry(e, due, outcome, now_ms, count=False) for e in entries]
        else:
            if (
                verdict is Verdict.THROTTLED
                and time.monotonic() - self._throttled_at.get(pixel, -9.0) >= 1
            ):
                # one slow-down per second: several requests in flight answer the same throttle
                self._throttled_at[pixel] = time.monotonic()
                await self.limiter.throttled(pixel)
            self._failing.add(pixel)
            calls = [self._retry_or_dead(e, outcome, now_ms) for e in entries]
        await self._commit(calls)
        settled.update(e.stream_id for e in entries)
        DELIVERY_OUTCOMES.labels(verdict.value).inc(len(entries))
        await self._chart(verdict, entries, calls)

    async def _acquire(self, pixel: str, lane: Lane | None) -> float:
        """Wait for the pixel's limiter; a long wait makes the lane slow, so its backlog is parked
        rather than hold the stream. Seconds waited."""
        started = time.monotonic()
        while True:
            wait_s = await self.limiter.reserve(pixel)
            if wait_s == 0.0:
                return time.monotonic() - started
            if lane is not None and wait_s > LANE_BLOCKED_S:
                lane.slow_until = time.monotonic() + wait_s + LANE_SLOW_HOLD_S
            await asyncio.sleep(wait_s)  # Redis's clock decides; ours only paces the next try

    async def _after_success(self, pixel: str, *, probing: bool) -> None:
        """Bookkeeping once TikTok accepted a request; best effort (the events are settled)."""
        try:
            await self.limiter.succeeded(pixel)
            if probing and await self.pauses.resume(pixel):
                log.warning("integration_resumed", pixel=pixel)
            if pixel in self._failing:
                self._failing.discard(pixel)
                while await self.outbox.expedite() >= EXPEDITE_BATCH:
                    pass  # every scheduled retry, 10,000 at a time
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning("after_success_failed", pixel=pixel, error=type(exc).__name__)

    async def _isolate(
        self, pixel: str, entries: list[Entry], outcome: Outcome, now_ms: int, settled: set[str]
    ) -> list[Entry]:
        """TikTok refused a request as invalid: dead-letter the events TikTok's rules (checked
        here, as the emulator checks them) refuse, with the reason; the others, to send again."""
        now = now_ms / 1000
        valid: list[Entry] = []
        calls: list[LuaCall] = []
        dead: list[str] = []
        for entry in entries:
            problem = event_problem(orjson.loads(entry.data), pixel, now)
            if problem is None:
                valid.append(entry)
            else:
                calls.append(self.outbox.dead(entry, f"invalid: {problem}", outcome, now_ms))
                dead.append(entry.stream_id)
        if calls:
            await self._commit(calls)
            settled.update(dead)
            DELIVERY_OUTCOMES.labels("dead").inc(len(calls))
            await self._chart(Verdict.INVALID, [], calls)
        return valid

    async def _chart(self, verdict: Verdict, entries: list[Entry], calls: list[LuaCall]) -> None:
        """Feed the operator's time series; best effort, after the events are settled."""
        dead = sum(1 for call in calls if call[0] is self.outbox.dead_script)
        counts = (
            {"delivered": len(entries)}
            if verdict is Verdict.DELIVERED
            else {"retried": len(calls) - dead, "dead": dead}
        )
        try:
            await count_flow(self.redis, counts)
            if verdict is Verdict.DELIVERED:
                shapes = (e.shape or coverage_shape(orjson.loads(e.data)) for e in entries)
                await count_coverage(self.redis, shapes)
        except Exception as exc:
            log.warning("stats_failed", error=type(exc).__name__)

    def _retry_or_dead(self, entry: Entry, outcome: Outcome, now_ms: int) -> LuaCall:
        ceiling = min(
            self.settings.retry_cap_s, self.settings.retry_base_s * 2 ** (entry.attempts - 1)
        )
        due_ms = now_ms + int(random.uniform(0, ceiling) * 1000)  # full jitter
        if due_ms - entry.received_ms > self.settings.dead_letter_after_s * 1000:
            reason = f"gave up after {entry.attempts} attempts: {outcome.message}"
            return self.outbox.dead(entry, reason, outcome, now_ms)
        return self.outbox.retry(entry, due_ms, outcome, now_ms)


def make_routes(
    settings: Settings,
    redis: RedisClient,
    session: aiohttp.ClientSession,
    registry: Integrations | None = None,
) -> Callable[[str], Route | None]:
    """Each pixel's integration (as the registry knows it now) and destination."""
    tiktok = TikTokClient(session, settings.tiktok_api_url)
    sandbox = SandboxDestination(Sandbox(redis))
    integrations = registry or Integrations(settings)

    def route(pixel: str) -> Route | None:
        integration = integrations.by_pixel(pixel)
        if integration is None:
            return None
        return Route(integration, sandbox if integration is SANDBOX else tiktok)

    return route


def http_session() -> aiohttp.ClientSession:
    """The worker's one client session: explicit time-outs, a per-host connection limit."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=keys.HTTP_TOTAL_TIMEOUT_S, sock_connect=keys.HTTP_CONNECT_TIMEOUT_S
        ),
        connector=aiohttp.TCPConnector(limit_per_host=keys.HTTP_CONNECTIONS_PER_HOST),
    )


async def serve_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Run one delivery worker with its own Redis client and HTTP session until ``stop``."""
    assert settings.redis_url is not None
    # a socket time-out above XREADGROUP's block time: an idle read is not an error
    redis = make_redis(
        settings.redis_url, RedisOptions(socket_timeout_s=keys.DELIVERY_BLOCK_MS / 1000 + 10)
    )
    session = http_session()
    registry = Integrations(settings)
    store = IntegrationStore(redis, TokenBox(settings.secret_key))
    refresher = asyncio.create_task(keep_fresh(registry, store, stop))
    try:
        await _first_refresh(registry, store, stop)
        limit = RateLimit(settings.rate_limit_rps, settings.rate_limit_burst)
        routes = make_routes(settings, redis, session, registry)
        name = consumer_name()  # kept across restarts: a new worker re-reads what it had read
        await supervise(
            lambda: Worker(redis, settings, routes, RateLimiter(redis, limit), consumer=name), stop
        )
        left = await finish_settles(keys.SHUTDOWN_GRACE_S)
        if left:
            log.error("settles_abandoned", requests=left, reason="Redis still away at stop")
    finally:
        refresher.cancel()
        await asyncio.gather(refresher, return_exceptions=True)
        await session.close()
        await redis.aclose()


async def _first_refresh(
    registry: Integrations, store: IntegrationStore, stop: asyncio.Event
) -> None:
    """Load the integrations kept in Redis, waiting for Redis if it is away at start."""
    delay_s = REDIS_BACKOFF_FIRST_S
    while not stop.is_set():
        try:
            await registry.refresh(store, force=True)
            return
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning("redis_unavailable", error=repr(exc), retry_in_s=round(delay_s, 2))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay_s)
        delay_s = min(delay_s * 2, REDIS_BACKOFF_CAP_S)


async def supervise(make: Callable[[], Worker], stop: asyncio.Event) -> None:
    """Run a worker until ``stop``; one that fails (a bug, not an outage: those it rides out
    itself) is logged and started again with backoff, so no dependency ends the process."""
    delay_s = REDIS_BACKOFF_FIRST_S
    while not stop.is_set():
        started = time.monotonic()
        try:
            await make().run(stop)
        except Exception as exc:
            log.error("worker_failed", error=repr(exc), restart_in_s=round(delay_s, 1))
            if time.monotonic() - started > WORKER_RESTART_CAP_S:
                delay_s = REDIS_BACKOFF_FIRST_S  # it ran a while: a new failure, not a loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
            delay_s = min(delay_s * 2, WORKER_RESTART_CAP_S)
