"""One queued event as the worker sees it (:class:`Entry`), and TikTok's answer to the request
it was in, as its receipt records it (:class:`Outcome`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.store import keys
from gateway.store.receipt_records import clean

ENTRY_FIELDS = (
    "pixel",
    "event",
    "event_id",
    "source",
    "received_ms",
    "data",
    "attempts",
    "first_try_ms",
    "receipt_ms",
)


@dataclass(slots=True)
class Entry:
    """One queued event as the worker sees it."""

    stream_id: str
    pixel: str
    event: str
    event_id: str
    source: str
    received_ms: int
    data: bytes
    attempts: int = 0
    first_try_ms: int = 0
    receipt_ms: int = 0  # when its receipt was received, if not ``received_ms`` (a replay)
    shape: Mapping[str, Any] | None = field(default=None, repr=False)  # for coverage counters

    @property
    def dedup(self) -> str:
        """TikTok's dedup identity of the event."""
        return keys.dedup_id(self.pixel, self.event, self.event_id)

    @property
    def receipts_key(self) -> str:
        """The hash (time bucket) its receipt is in."""
        return keys.receipts_key(keys.receipt_bucket(self.receipt_ms or self.received_ms))

    @property
    def pair(self) -> str:
        """``pixel\x1fevent``: what its receipt record is numbered by."""
        return f"{self.pixel}\x1f{self.event}"

    def as_fields(self) -> dict[str, str]:
        """The stream fields of the entry (what a retry puts back)."""
        fields = {
            "pixel": self.pixel,
            "event": self.event,
            "event_id": self.event_id,
            "source": self.source,
            "received_ms": str(self.received_ms),
            "data": self.data.decode(),
            "attempts": str(self.attempts),
            "first_try_ms": str(self.first_try_ms),
        }
        if self.receipt_ms:
            fields["receipt_ms"] = str(self.receipt_ms)
        return fields

    @classmethod
    def from_stream(cls, stream_id: bytes, fields: Mapping[bytes, bytes]) -> Entry | None:
        """An entry from XREADGROUP / XAUTOCLAIM; None for a malformed one."""
        try:
            return cls(
                stream_id=stream_id.decode(),
                pixel=fields[b"pixel"].decode(),
                event=fields[b"event"].decode(),
                event_id=fields[b"event_id"].decode(),
                source=fields.get(b"source", b"server").decode(),
                received_ms=int(fields[b"received_ms"]),
                data=fields[b"data"],
                attempts=int(fields.get(b"attempts", b"0")),
                first_try_ms=int(fields.get(b"first_try_ms", b"0")),
                receipt_ms=int(fields.get(b"receipt_ms", b"0")),
            )
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """TikTok's answer to the request an entry was in, as the receipt records it."""

    http_status: int | None = None
    code: int | None = None
    message: str = ""
    request_id: str | None = None

    def fields(self) -> list[str]:
        """Receipt field/value pairs."""
        pairs = ["message", clean(self.message[:1000])]
        for name, value in (
            ("http_status", self.http_status),
            ("code", self.code),
            ("request_id", self.request_id),
        ):
            pairs += [name, "" if value is None else clean(str(value))]
        return pairs
