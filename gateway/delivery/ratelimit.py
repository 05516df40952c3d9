"""One rate limiter per pixel, shared by every delivery process through Redis.

TikTok limits ``/event/track/`` per request, whatever the batch size, so each request costs one
cell. The limiter is GCRA (generic cell rate algorithm) in one Lua script that reads the clock with
Redis ``TIME``: every worker process shares one clock and one state, so together they never exceed
the limit, and no worker's clock skew matters.

State, under the pixel's own hash tag ``{rl:<pixel>}`` (see :mod:`gateway.store.keys`):

* :func:`keys.ratelimit_key` — a string, the theoretical arrival time (TAT) in µs of Redis time.
  Its expiry is set to the moment the TAT falls into the past, when an absent key means the same.
* :func:`keys.throttle_key` — a string, the slow-down factor while TikTok throttles the pixel.
  TikTok answers throttling with HTTP 200 and a body code (40100, 40016, 40133, 40132) and no
  ``Retry-After``; each such answer doubles the factor (up to :data:`THROTTLE_MAX_FACTOR`), each
  success shrinks it by :data:`THROTTLE_DECAY` back toward 1, and the key expires
  :data:`THROTTLE_TTL_S` after the last throttle (TikTok: a QPM throttle means pause ~5 min).

The factor stretches the emission interval; the burst tolerance stays what it is at full speed,
measured in time, so a throttled pixel also gets a smaller burst and a change of factor never
frees cells already spent.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from gateway.store import keys
from gateway.store.connections import Lua, LuaCall, RedisClient, eval_many

THROTTLE_MULTIPLIER = 2.0  # per throttling answer from TikTok
THROTTLE_MAX_FACTOR = 64.0
THROTTLE_DECAY = 0.9  # per success, down to 1
THROTTLE_TTL_S = 300  # after the last throttle the factor is forgotten

_US_PER_S = 1_000_000

_RESERVE = Lua("""
-- KEYS: gcra state (TAT in us of Redis time), throttle factor
-- ARGV: emission interval at full speed in us, burst
-- Returns 0 when the cell is taken, else the us to wait before trying again (nothing taken).
redis.replicate_commands()
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local base = tonumber(ARGV[1])
local factor = math.max(tonumber(redis.call('GET', KEYS[2])) or 1, 1)
local tat = math.max(tonumber(redis.call('GET', KEYS[1])) or now, now)
-- the tolerance is the burst at full speed, in time; one cell more always fits
local wait = tat - now - (tonumber(ARGV[2]) - 1) * base
if wait > 0 then
  return math.ceil(wait)
end
tat = tat + base * factor
redis.call('SET', KEYS[1], string.format('%.17g', tat),
  'PX', string.format('%d', math.ceil((tat - now) / 1000)))
return 0
""")

_THROTTLED = Lua("""
-- KEYS: throttle factor
-- ARGV: multiplier, max factor, ttl s
-- Returns the new factor.
local factor = (tonumber(redis.call('GET', KEYS[1])) or 1) * tonumber(ARGV[1])
local text = string.format('%.10g', math.min(factor, tonumber(ARGV[2])))
redis.call('SET', KEYS[1], text, 'EX', ARGV[3])
return text
""")

_SUCCEEDED = Lua("""
-- KEYS: throttle factor
-- ARGV: decay
-- The expiry is kept: the factor is forgotten a fixed time after the last throttle.
local factor = tonumber(redis.call('GET', KEYS[1]))
if not factor then
  return 0
end
factor = factor * tonumber(ARGV[1])
if factor <= 1 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.10g', factor), 'KEEPTTL')
end
return 0
""")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests per second to TikTok for one pixel, and how many may go at once after a pause."""

    requests_per_s: float = keys.RATE_LIMIT_REQUESTS_PER_S
    burst: int = keys.RATE_LIMIT_BURST

    def __post_init__(self) -> None:
        if not (math.isfinite(self.requests_per_s) and self.requests_per_s > 0):
            raise ValueError(f"requests_per_s must be > 0, got {self.requests_per_s!r}")
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst!r}")

    @property
    def interval_us(self) -> float:
        """The emission interval at full speed, in microseconds."""
        return _US_PER_S / self.requests_per_s


class RateLimiter:
    """Per-pixel GCRA limiter in Redis, slowed down while TikTok throttles the pixel."""

    def __init__(self, redis: RedisClient, limit: RateLimit) -> None:
        self._redis = redis
        self._limit = limit

    @property
    def limit(self) -> RateLimit:
        """The limit at full speed."""
        return self._limit

    async def reserve(self, pixel: str) -> float:
        """Take one cell: 0.0 when a request may go now, else the seconds to wait (none taken)."""
        [wait_us] = await eval_many(
            self._redis,
            [
                (
                    _RESERVE,
                    [keys.ratelimit_key(pixel), keys.throttle_key(pixel)],
                    [repr(self._limit.interval_us), self._limit.burst],
                )
            ],
        )
        return int(wait_us) / _US_PER_S

    async def acquire(self, pixel: str, *, max_wait_s: float = 300.0) -> float:
        """Wait until a request may go; the seconds waited (0.0 when it could go at once).

        Raises :class:`TimeoutError` without waiting further when the next try would come later
        than ``max_wait_s`` after the call.
        """
        start = time.monotonic()
        wait_s = await self.reserve(pixel)
        if wait_s == 0.0:
            return 0.0
        while True:
            waited_s = time.monotonic() - start
            if waited_s + wait_s > max_wait_s:
                raise TimeoutError(
                    f"rate limit of pixel {pixel}: no request slot within {max_wait_s} s"
                )
            # the server's clock decides; sleeping on ours only paces the next try
            await asyncio.sleep(wait_s)
            wait_s = await self.reserve(pixel)
            if wait_s == 0.0:
                return time.monotonic() - start

    async def throttled(self, pixel: str) -> float:
        """TikTok throttled this pixel: double the slow-down factor (capped); the new factor."""
        [factor] = await eval_many(
            self._redis,
            [
                (
                    _THROTTLED,
                    [keys.throttle_key(pixel)],
                    [THROTTLE_MULTIPLIER, THROTTLE_MAX_FACTOR, THROTTLE_TTL_S],
                )
            ],
        )
        return float(factor)

    async def succeeded(self, pixel: str) -> None:
        """TikTok accepted a request for this pixel: bring the factor closer to 1."""
        await eval_many(self._redis, [self.succeeded_call(pixel)])

    def succeeded_call(self, pixel: str) -> LuaCall:
        """:meth:`succeeded` as a script call, for a round trip made anyway."""
        return (_SUCCEEDED, [keys.throttle_key(pixel)], [THROTTLE_DECAY])

    async def factor(self, pixel: str) -> float:
        """The current slow-down factor of the pixel (1.0 when TikTok is not throttling it)."""
        value = await self._redis.get(keys.throttle_key(pixel))
        return 1.0 if value is None else float(value)
