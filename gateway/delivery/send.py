"""One request to TikTok and its settle: one pixel's batch sent, then its events written back by
TikTok's answer.

Each request waits for a cell of the pixel's rate limiter (shared in Redis by every worker), then
for a send slot of the worker. The answer's body ``code`` decides what happens to the events (see
:class:`gateway.delivery.verdicts.Verdict`):

* delivered → settled, the whole request in one script call (receipts, the request's events
  stored once, compressed);
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
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster

from gateway.delivery.client import body_prefix, event_problem, with_events
from gateway.delivery.commit import commit, commit_accepted
from gateway.delivery.destinations import Route
from gateway.delivery.entry import Entry, Outcome
from gateway.delivery.lanes import LANE_BLOCKED_S, LANE_SLOW_HOLD_S, Lane
from gateway.delivery.outbox import Outbox
from gateway.delivery.pauses import Pauses
from gateway.delivery.ratelimit import RateLimiter
from gateway.delivery.sent import already_sent_in, look_up_sent
from gateway.delivery.verdicts import Answer, Verdict
from gateway.logs import get_logger
from gateway.operate.health import delivered_calls
from gateway.operate.metrics import (
    DELIVERY_OUTCOMES,
    DELIVERY_SECONDS,
    INTEGRATION_PAUSES,
    RATE_LIMIT_WAIT_SECONDS,
    REQUEST_EVENTS,
    event_label,
)
from gateway.operate.stats import MATCH_KEYS, count_flow, flow_calls
from gateway.settings import Settings
from gateway.store.connections import LuaCall, RedisClient, eval_many, is_outage

log = get_logger("gateway.delivery")
EXPEDITE_BATCH = 10_000
SHAPES_KEPT = 10_000

_shapes: dict[tuple[str, tuple[str, ...]], Mapping[str, Any]] = {}


def coverage_shape(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """What the match-key coverage counters read of an event: its name and the keys it carries.

    Events alike share one object, so a batch in flight keeps no parsed copy of its events alive
    (measured: 1,000 parsed events kept per batch cost 1.7 µs an event in garbage collection).
    """
    user = event.get("user")
    carried = tuple([k for k in MATCH_KEYS if user.get(k)]) if isinstance(user, dict) else ()
    key = (event_label(str(event.get("event", ""))), carried)  # bounded: standard or custom
    shape = _shapes.get(key)
    if shape is None:
        if len(_shapes) >= SHAPES_KEPT:
            _shapes.clear()
        shape = _shapes[key] = {"event": key[0], "user": dict.fromkeys(carried, True)}
    return shape


class Sender:
    """Sends one pixel's batch to its destination and settles every event by TikTok's answer."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        routes: Callable[[str], Route | None],
        limiter: RateLimiter,
        outbox: Outbox,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.routes = routes
        self.limiter = limiter
        self.outbox = outbox
        self.pauses = Pauses(redis)
        self._slots = asyncio.Semaphore(settings.delivery_concurrency)  # HTTP requests in flight
        self._failing: set[str] = set()
        self._throttled_at: dict[str, float] = {}

    async def send(
        self, pixel: str, entries: list[Entry], settled: set[str], lane: Lane | None = None
    ) -> None:
        """Send one batch of ``pixel`` (skipping, dead-lettering or postponing what should not go
        now) and settle every entry by TikTok's answer; ``settled`` collects the stream ids settled
        so far (what a cancel must give back is the rest)."""
        now = time.time()
        now_ms = int(now * 1000)
        calls: list[LuaCall] = []
        route = self.routes(pixel)
        live: list[Entry] = []
        sent, paused = await self._look_up(pixel, entries)
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
        await commit(self.outbox, calls)
        if not live or route is None:
            return
        if paused is not None:
            if not await self.pauses.claim_probe(pixel, self.settings.paused_probe_s):
                await self._postpone(
                    live, now_ms + int(self.settings.paused_probe_s * 1000), settled
                )
                return
            live, rest = live[:1], live[1:]  # one event probes the token
            await self._postpone(rest, now_ms + int(self.settings.paused_probe_s * 1000), settled)
        await self._request(pixel, route, live, settled, probing=paused is not None, lane=lane)

    async def _look_up(
        self, pixel: str, entries: Sequence[Entry]
    ) -> tuple[list[bool], dict[str, object] | None]:
        """Which entries TikTok already has, and the pixel's pause record: one round trip."""
        if isinstance(self.redis, RedisCluster):  # reads of two slots: two round trips
            return await self.outbox.already_sent(entries), await self.pauses.get(pixel)
        pipe = self.redis.pipeline(transaction=False)
        self.pauses.look_up(pipe, pixel)
        lookup = look_up_sent(pipe, entries)
        pause, *replies = await pipe.execute()
        return already_sent_in(entries, lookup, replies), self.pauses.record(pause)

    async def give_back(self, entries: Sequence[Entry]) -> None:
        """Shutdown: return unsettled entries for immediate pickup (no attempt counted)."""
        now_ms = int(time.time() * 1000)
        calls = [
            self.outbox.retry(e, now_ms, Outcome(message="worker stopped"), now_ms, count=False)
            for e in entries
        ]
        await asyncio.shield(self.outbox.settle(calls))

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
        await commit(
            self.outbox,
            [self.outbox.retry(e, due_ms, outcome, now_ms, count=False) for e in entries],
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
        await self._settle(pixel, route, entries, answer, settled, probing=probing)

    async def _settle(
        self,
        pixel: str,
        route: Route,
        entries: list[Entry],
        answer: Answer,
        settled: set[str],
        *,
        probing: bool,
    ) -> None:
        now_ms = int(time.time() * 1000)
        outcome = Outcome(answer.http_status, answer.code, answer.message, answer.request_id)
        verdict = answer.verdict
        calls: list[LuaCall] = []
        if verdict is Verdict.DELIVERED:
            # written first: TikTok has these events, nothing may send them again. The settle
            # goes on through a cancel (see commit_accepted); marked settled first, so a cancel
            # here does not hand them back either.
            settled.update(e.stream_id for e in entries)
            call = self.outbox.delivered(entries, outcome, now_ms)
            await commit_accepted(self.outbox, call, [e.stream_id for e in entries])
            DELIVERY_OUTCOMES.labels(verdict.value).inc(len(entries))
            await self._after_success(pixel, entries, probing=probing)
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
        await commit(self.outbox, calls)
        settled.update(e.stream_id for e in entries)
        DELIVERY_OUTCOMES.labels(verdict.value).inc(len(entries))
        await self._chart(calls)

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

    async def _after_success(self, pixel: str, entries: list[Entry], *, probing: bool) -> None:
        """Bookkeeping once TikTok accepted a request, best effort (the events are settled): the
        limiter's factor, the flow, coverage and health counters in one round trip."""
        delivered = [
            (e.event, e.source, e.shape or coverage_shape(orjson.loads(e.data))) for e in entries
        ]
        try:
            await eval_many(
                self.redis,
                [
                    self.limiter.succeeded_call(pixel),
                    *flow_calls({"delivered": len(entries)}),
                    *delivered_calls(delivered),
                ],
            )
        except Exception as exc:
            log.warning("after_success_failed", pixel=pixel, error=type(exc).__name__)
        try:
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
            await commit(self.outbox, calls)
            settled.update(dead)
            DELIVERY_OUTCOMES.labels("dead").inc(len(calls))
            await self._chart(calls)
        return valid

    async def _chart(self, calls: list[LuaCall]) -> None:
        """Feed the operator's time series with what failed; best effort, after the settle."""
        dead = sum(1 for call in calls if call[0] is self.outbox.dead_script)
        try:
            await count_flow(self.redis, {"retried": len(calls) - dead, "dead": dead})
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
