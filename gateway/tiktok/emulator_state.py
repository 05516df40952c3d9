"""What the TikTok emulator remembers and how it is driven: config, scripts, records and state.

:class:`EmulatorState` is shared by the emulator's app (:mod:`gateway.tiktok.emulator`) and the
test or bench driving it in process: it holds the tokens, the scripted behaviours (throttle, fail,
hang, a given code) queued for the next requests, the 48 h dedup memory, the QPS window, and a
record of every request and accepted event, with waits for them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web

from gateway.tiktok.api import DEDUP_WINDOW_S, MSG_AUTH_MISSING, MSG_AUTH_REVOKED, Rejected


class Outcome(StrEnum):
    """What a scripted request does instead of (or before) normal processing."""

    OK = "ok"  # process normally; lets a script skip requests
    THROTTLE = "throttle"  # HTTP 200, code 40100
    FAIL = "fail"  # HTTP `http_status` with an HTML proxy page (code 50000 JSON when 200)
    HANG = "hang"  # no answer for `hang_s` or until release_hangs(), then HTTP 500
    SLOW = "slow"  # no answer for `hang_s` or until release_hangs(), then processed normally
    CODE = "code"  # HTTP 200 with the given body code/message; nothing is recorded


@dataclass
class Script:
    """One scripted behaviour, applied to the next `times` requests to the track endpoint."""

    outcome: Outcome
    times: int = 1
    code: int = 0
    message: str = ""
    http_status: int = 500
    hang_s: float = 30.0

    def __post_init__(self) -> None:
        self.outcome = Outcome(self.outcome)  # also accepts the value string ("throttle")
        if isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1:
            raise ValueError(f"Script.times must be an integer >= 1, got {self.times!r}")
        if not isinstance(self.code, int) or not isinstance(self.message, str):
            raise ValueError("Script.code must be an integer and Script.message a string")
        if not 100 <= self.http_status <= 599:
            raise ValueError(f"Script.http_status must be 100-599, got {self.http_status!r}")
        if self.hang_s < 0:
            raise ValueError(f"Script.hang_s must be >= 0, got {self.hang_s!r}")


@dataclass(frozen=True)
class AcceptedEvent:
    """One event of a successful request; `payload` is the event object as received."""

    pixel_code: str
    event: str
    event_id: str | None
    event_time: int
    test_event_code: str | None
    request_id: str
    received_at: float
    duplicate: bool
    payload: dict[str, Any]


@dataclass(frozen=True)
class RequestRecord:
    """One request to the track endpoint. `code` is None when the answer was not JSON."""

    at: float
    pixel_code: str | None
    event_count: int
    code: int | None
    message: str
    http_status: int
    request_id: str | None
    body_bytes: int
    scripted: Outcome | None


@dataclass
class EmulatorConfig:
    """Tokens and strictness knobs. `tokens` maps an access token to its pixels (None = any)."""

    tokens: dict[str, set[str] | None]
    latency_ms: float = 0.0
    qps_limit: int | None = None
    max_event_age_s: int = 7 * 86400
    max_future_skew_s: int = 300
    require_page_url: bool = False  # the stricter reading (see validation.DefaultLimits)
    max_body_bytes: int = 2 * 1024 * 1024


class EmulatorState:
    """Everything the emulator remembers; shared by its app and the test or bench driving it.

    Not thread-safe: use it from the event loop that serves the app. `clock` (wall-clock seconds)
    exists so tests can move time for the QPS window, event_time bounds and the 48 h dedup.
    """

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.accepted: list[AcceptedEvent] = []
        self.requests: list[RequestRecord] = []
        self._scripts: deque[Script] = deque()
        self._left = 0  # requests the head script still applies to
        self._tokens: dict[str, set[str] | None] = {}
        self._revoked: set[str] = set()
        self._first_seen: dict[tuple[str, str, str], float] = {}
        self._qps_window = (0, 0)  # (second, requests seen in it)
        self._hangs: set[asyncio.Event] = set()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Event]] = []
        self.reset()

    def script(self, *scripts: Script) -> None:
        """Queue behaviours, consumed FIFO one request at a time."""
        if not self._scripts and scripts:
            self._left = scripts[0].times
        self._scripts.extend(scripts)

    def revoke(self, token: str) -> None:
        """Make `token` answer 40105 until restored."""
        self._revoked.add(token)

    def restore(self, token: str, pixels: set[str] | None = None) -> None:
        """Un-revoke `token`. With `pixels`, also set its pixels; an unknown token is added
        (allowed any pixel when `pixels` is None)."""
        self._revoked.discard(token)
        if pixels is not None or token not in self._tokens:
            self._tokens[token] = None if pixels is None else set(pixels)

    def release_hangs(self) -> None:
        """Let every hanging request finish now (with HTTP 500)."""
        for hang in self._hangs:
            hang.set()
        self._hangs.clear()

    @property
    def hanging(self) -> int:
        """Requests currently held by a HANG script."""
        return len(self._hangs)

    def reset(self) -> None:
        """Forget records, scripts, dedup memory and token changes (back to the config)."""
        self.accepted.clear()
        self.requests.clear()
        self._scripts.clear()
        self._left = 0
        self._tokens = {t: None if p is None else set(p) for t, p in self.config.tokens.items()}
        self._revoked.clear()
        self._first_seen.clear()
        self._qps_window = (0, 0)

    def unique_events(self) -> list[AcceptedEvent]:
        """Accepted events TikTok would count: duplicates within 48 h left out."""
        return [e for e in self.accepted if not e.duplicate]

    @property
    def duplicates(self) -> int:
        """How many accepted events TikTok would have deduplicated away."""
        return sum(e.duplicate for e in self.accepted)

    async def wait_for_events(self, n: int, timeout_s: float = 10.0) -> list[AcceptedEvent]:
        """Return all accepted events once at least `n` were accepted; TimeoutError otherwise."""
        await self._wait(
            lambda: len(self.accepted) >= n,
            timeout_s,
            lambda: f"{len(self.accepted)} of {n} events accepted",
        )
        return list(self.accepted)

    async def wait_for(self, ready: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until ``ready()`` holds (checked as requests arrive)."""
        await self._wait(ready, timeout_s, lambda: f"{len(self.accepted)} events accepted")

    async def wait_for_hanging(self, n: int = 1, timeout_s: float = 10.0) -> None:
        """Return once at least `n` requests are hanging; TimeoutError otherwise."""
        await self._wait(
            lambda: self.hanging >= n, timeout_s, lambda: f"{self.hanging} of {n} requests hanging"
        )

    async def _wait(
        self, ready: Callable[[], bool], timeout_s: float, progress: Callable[[], str]
    ) -> None:
        if ready():
            return
        woken = asyncio.Event()
        waiter = (ready, woken)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await woken.wait()
        except TimeoutError:
            raise TimeoutError(f"after {timeout_s} s only {progress()}") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _hold(self, hang_s: float) -> None:
        released = asyncio.Event()
        self._hangs.add(released)
        self._notify()
        try:
            async with asyncio.timeout(hang_s):
                await released.wait()
        except TimeoutError:
            pass
        finally:
            self._hangs.discard(released)

    def _notify(self) -> None:
        for waiter in [w for w in self._waiters if w[0]()]:
            self._waiters.remove(waiter)
            waiter[1].set()

    def _next_script(self) -> Script | None:
        if not self._scripts:
            return None
        step = self._scripts[0]
        self._left -= 1
        if self._left <= 0:
            self._scripts.popleft()
            self._left = self._scripts[0].times if self._scripts else 0
        return step

    def _over_qps(self, now: float) -> bool:
        second, seen = self._qps_window
        seen = seen + 1 if int(now) == second else 1
        self._qps_window = (int(now), seen)
        return self.config.qps_limit is not None and seen > self.config.qps_limit

    def _check_token(self, token: str, pixel: str | None) -> None:
        if not token:
            raise Rejected(40104, MSG_AUTH_MISSING)
        if token not in self._tokens or token in self._revoked:
            raise Rejected(40105, MSG_AUTH_REVOKED)
        allowed = self._tokens[token]
        if allowed is not None and pixel is not None and pixel not in allowed:
            raise Rejected(
                40001,
                f"No permission to operate pixel code: {pixel}. You must be "
                "an admin or operator of this advertiser account.",
            )

    def _accept(self, body: dict[str, Any], request_id: str, now: float) -> None:
        pixel: str = body["event_source_id"]
        for item in body["data"]:
            event_id = item.get("event_id")
            duplicate = False
            if event_id is not None:
                key = (pixel, item["event"], event_id)
                first = self._first_seen.get(key)
                duplicate = first is not None and now - first < DEDUP_WINDOW_S
                if not duplicate:
                    self._first_seen[key] = now
            self.accepted.append(
                AcceptedEvent(
                    pixel,
                    item["event"],
                    event_id,
                    item["event_time"],
                    body.get("test_event_code"),
                    request_id,
                    now,
                    duplicate,
                    item,
                )
            )
        self._notify()


# Where the emulator's app keeps its state: read by the track route and the control endpoints.
STATE_KEY = web.AppKey("emulator_state", EmulatorState)
