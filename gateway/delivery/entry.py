"""One queued event as the worker sees it (:class:`Entry`), and TikTok's answer to the request
it was in, as its receipt records it (:class:`Outcome`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

_INGEST_ORDER = [b"pixel", b"event", b"event_id", b"source", b"received_ms", b"data"]


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
        try:  # positional, and no int() of absent counters: a read of 1,000 runs this 1,000 times
            attempts = fields.get(b"attempts")
            first_try_ms = fields.get(b"first_try_ms")
            receipt_ms = fields.get(b"receipt_ms")
            return cls(
                stream_id.decode(),
                fields[b"pixel"].decode(),
                fields[b"event"].decode(),
                fields[b"event_id"].decode(),
                fields[b"source"].decode() if b"source" in fields else "server",
                int(fields[b"received_ms"]),
                fields[b"data"],
                0 if attempts is None else int(attempts),
                0 if first_try_ms is None else int(first_try_ms),
                0 if receipt_ms is None else int(receipt_ms),
            )
        except (KeyError, ValueError):
            return None

    @classmethod
    def from_flat(cls, stream_id: bytes, flat: Sequence[bytes]) -> Entry | None:
        """An entry from a stream entry's field/value list as Redis sends it; None for a
        malformed one. The fields in the order ingest writes them are read by position (no
        dict built: a read of 5,000 runs this 5,000 times), any other order by name."""
        if flat[::2] == _INGEST_ORDER:
            try:
                return cls(
                    stream_id.decode(),
                    flat[1].decode(),
                    flat[3].decode(),
                    flat[5].decode(),
                    flat[7].decode(),
                    int(flat[9]),
                    flat[11],
                )
            except ValueError:
                return None
        it = iter(flat)
        return cls.from_stream(stream_id, dict(zip(it, it, strict=False)))


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
