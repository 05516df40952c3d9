"""One worker's lanes: what it read, by pixel, so one pixel's trouble never holds another's.

The entries a worker reads are grouped by pixel and cut into requests of at most 1,000 events and
~900 KiB; each pixel's lane runs its own batches, several at once. A lane whose rate limiter keeps
it waiting is *slow*: it holds a bounded number of entries and parks the rest (see :class:`Lane`),
so the stream behind it, other pixels' events included, is read on.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from gateway.delivery.client import chunks
from gateway.delivery.entry import Entry
from gateway.delivery.outbox import Outbox
from gateway.logs import get_logger
from gateway.settings import Settings
from gateway.store import keys
from gateway.store.connections import is_outage

log = get_logger("gateway.delivery")
LANE_BLOCKED_S = 1.0  # a lane whose limiter grants nothing for longer is waiting, not moving
LANE_SLOW_HOLD_S = 10.0  # and stays "slow" this long after such a wait (no flapping)
PARKED_READ_COUNT = 5000  # entries a read takes while a slow lane parks most of them


@dataclass(slots=True)
class Lane:
    """One pixel's batches in this worker: its own runners, so one pixel's trouble (a throttled
    limiter) never holds another pixel's events or the worker's send slots.

    A slow lane (its limiter made it wait over ``LANE_BLOCKED_S`` in the last
    ``LANE_SLOW_HOLD_S``) holds at most :attr:`Lanes.lane_max` entries; what it reads beyond that
    is *parked*: only the stream id is kept here, the entry stays pending in the consumer group
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


Deliver = Callable[[str, list[Entry], Lane], Awaitable[None]]


class Lanes:
    """Every lane of one worker, by pixel: the entries it read and has not settled yet.

    ``deliver`` sends and settles one batch; ``redis_lost`` tells the worker that entries were
    left unsettled by an outage (it re-reads its own pending entries once Redis answers).
    """

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        consumer: str,
        deliver: Deliver,
        redis_lost: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.consumer = consumer
        self._deliver = deliver
        self._redis_lost = redis_lost
        self._lanes: dict[str, Lane] = {}
        self.held = 0  # entries held by every lane
        self.space = asyncio.Event()  # set whenever lanes release entries
        self.tasks: set[asyncio.Task[None]] = set()  # the lanes' runners
        self.inflight: set[str] = set()  # stream ids read by this worker and not settled yet

    @property
    def read_ahead(self) -> int:
        """Entries held (of lanes not waiting on their limiter) before the worker stops reading."""
        return self.settings.delivery_concurrency * self.settings.batch_max_events * 2

    @property
    def lane_max(self) -> int:
        """Entries a slow lane holds; what it reads beyond that is parked (see :class:`Lane`)."""
        return self.settings.delivery_concurrency * self.settings.batch_max_events

    def busy(self) -> int:
        """Entries held by lanes that are moving: a lane waiting on its limiter does not count."""
        return self.held - sum(lane.held for lane in self._lanes.values() if lane.slow)

    def read_count(self) -> int:
        """As many as the lanes have room for (in fewer, bigger reads: one round trip and one
        dispatch for several requests' worth), and big reads while a slow lane parks most of
        what is read."""
        if any(lane.slow for lane in self._lanes.values()):
            return PARKED_READ_COUNT
        return max(keys.DELIVERY_READ_COUNT, min(self.read_ahead - self.busy(), PARKED_READ_COUNT))

    def unpark_all(self) -> None:
        """After an outage, forget parked ids: any still ours come back from our own pending
        entries (the worker re-reads them); one another worker reclaimed meanwhile is not claimed
        back from it."""
        for lane in self._lanes.values():
            self.inflight.difference_update(lane.parked)
            lane.parked.clear()

    async def dispatch(self, entries: Sequence[Entry]) -> None:
        """Hand entries to their pixels' lanes (parking what a slow lane has no room for) and
        start the runners they need."""
        by_pixel: dict[str, list[Entry]] = {}
        for entry in entries:
            self.inflight.add(entry.stream_id)
            by_pixel.setdefault(entry.pixel, []).append(entry)
        for pixel, group in by_pixel.items():
            lane = self._lanes.get(pixel)
            if lane is None:
                lane = self._lanes[pixel] = Lane()
            if lane.slow and lane.held + len(group) > self.lane_max:
                keep = max(self.lane_max - lane.held, 0)
                lane.parked.extend(e.stream_id for e in group[keep:])
                group = group[:keep]
            self._hold(lane, group)
            while lane.runners < self.settings.delivery_concurrency and lane.runners < len(
                lane.batches
            ):
                lane.runners += 1
                task = asyncio.create_task(self._run_lane(pixel, lane))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    def _hold(self, lane: Lane, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        sizes = [len(e.data) for e in entries]
        for part in chunks(sizes, max_events=self.settings.batch_max_events):
            lane.batches.append(list(entries[part.start : part.stop]))
        lane.held += len(entries)
        self.held += len(entries)

    async def _unpark(self, lane: Lane) -> None:
        """Claim parked entries back, with their data, as far as the lane has room."""
        room = max(self.lane_max - lane.held, self.settings.batch_max_events)
        ids = [lane.parked.popleft() for _ in range(min(room, len(lane.parked)))]
        try:
            entries = await self.outbox.claim(self.consumer, ids)
        except Exception:
            lane.parked.extendleft(reversed(ids))  # still pending here: another try later
            raise
        found = {e.stream_id for e in entries}
        self.inflight.difference_update(i for i in ids if i not in found)  # settled meanwhile
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
                        self._redis_lost()
                        log.warning("unpark_waiting_for_redis", pixel=pixel, error=repr(exc))
                        return
                    continue
                batch = lane.batches.popleft()
                try:
                    await self._deliver(pixel, batch, lane)
                finally:
                    lane.held -= len(batch)
                    self.held -= len(batch)
                    self.space.set()
        finally:
            lane.runners -= 1
            idle = lane.runners == 0 and not lane.batches and not lane.parked
            if idle and self._lanes.get(pixel) is lane:
                del self._lanes[pixel]
