"""The endpoint of TikTok's Events API 2.0 ``/event/track/`` and the way it answers.

TikTok answers HTTP 200 with ``{"code", "message", "request_id", "data"}`` even for errors; the
codes and quoted message texts come from ``reference/tiktok-events-api.md`` (§4.2). The emulator
answers with them, the sandbox records with them, and the gateway's client reads them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

API_PREFIX = "/open_api/v1.3/"
TRACK_PATH = API_PREFIX + "event/track/"
DEDUP_WINDOW_S = 48 * 3600
MAX_EVENTS_PER_REQUEST = 1000

MSG_OK = "OK"
MSG_THROTTLED = "Too many requests. Please retry in some time."
MSG_AUTH_MISSING = "Access token is null, you should set it in http header with key Access-Token."
MSG_AUTH_REVOKED = "Access token is incorrect or has been revoked."
MSG_INTERNAL = "Internal server error"
MSG_BAD_EVENT_SOURCE = "Invalid value for event_source: must be web, app or offline."
MSG_BAD_EVENT_ID = "Invalid value for event_id: not a valid string."

# Messages for scripted CODE answers given without one; quoted texts come from the reference §4.2.
DEFAULT_MESSAGES = {
    0: MSG_OK,
    20001: "Partially successful",
    40000: "Invalid parameters",
    40002: "Parameter error",
    40016: "Requests made too frequently.",
    40100: MSG_THROTTLED,
    40104: MSG_AUTH_MISSING,
    40105: MSG_AUTH_REVOKED,
    40132: "The request QPS is limited by pixel_code's value.",
    40133: "Advertiser's QPS reaches QPS limit.",
    50000: MSG_INTERNAL,
    50002: "Error processing request, please retry.",
    51001: "Internal service timed out. Please retry in sometime.",
    60001: "System in maintenance.",
}


@dataclass(frozen=True)
class Rejection:
    """An API-level refusal: HTTP 200 with this body code and message."""

    code: int
    message: str


class Rejected(Exception):
    """Raised by a check: the request is refused with this code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.rejection = Rejection(code, message)


def new_request_id(now: float) -> str:
    """A request id shaped like TikTok's: UTC timestamp digits then random upper-case hex."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M%S")
    return stamp + secrets.token_hex(10).upper()
