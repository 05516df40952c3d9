"""The time an event happened: Unix seconds, ms, µs or ns, or ISO-8601, to int seconds.

A unit is told apart by the number's magnitude. A time a few minutes ahead of our clock is
clamped to now; further ahead, or older than TikTok attributes, is refused naming the field.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from gateway.ingest.fields import FieldError

FUTURE_SKEW_S = 300  # clocks a few minutes ahead are clamped to now; further ahead is refused


def _seconds_from_text(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise FieldError(name, "must be Unix seconds or an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        raise FieldError(name, "an ISO-8601 date-time needs a UTC offset")
    return parsed.timestamp()


def seconds_by_magnitude(number: float) -> float:
    """Unix seconds from a number in seconds, milliseconds, microseconds or nanoseconds, told
    apart by magnitude (a time in seconds stays below 10^11 until the year 5138)."""
    for unit in (1, 1_000, 1_000_000, 1_000_000_000):
        if number / unit < 1e11:
            return number / unit
    return number / 1_000_000_000


def parse_timestamp(value: Any, now: float, max_age_s: int, name: str = "timestamp") -> int:
    """Unix seconds, ms, µs or ns (told apart by magnitude), or ISO-8601 → int seconds.

    A few minutes ahead of our clock (``FUTURE_SKEW_S``) is clamped to now; further ahead, or
    older than ``max_age_s``, is refused naming the field: neither would be the time it happened.
    """
    if value is None:
        return int(now)
    if isinstance(value, bool):
        raise FieldError(name, "must be Unix seconds or an ISO-8601 date-time")
    seconds: float
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _seconds_from_text(value.strip(), name)
    else:
        raise FieldError(name, "must be Unix seconds or an ISO-8601 date-time")
    if not math.isfinite(seconds) or seconds <= 0:
        raise FieldError(name, "must be a positive time")
    seconds = seconds_by_magnitude(seconds)
    if seconds > now + FUTURE_SKEW_S:
        raise FieldError(
            name,
            f"is {seconds - now:.0f} s in the future (more than {FUTURE_SKEW_S} s ahead); "
            "send Unix seconds, milliseconds or an ISO-8601 time with its offset",
        )
    if seconds > now:  # a clock a little ahead: TikTok takes no future time (reference §3)
        return int(now)
    if seconds < now - max_age_s:
        raise FieldError(name, f"is more than {max_age_s} s old; TikTok would not attribute it")
    return int(seconds)
