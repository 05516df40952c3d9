"""Integrations paused for token or permission errors, shared in Redis by every worker: the pause
record (raised with an alert), and the lock that lets one worker at a time probe the token."""

from __future__ import annotations

import orjson
from redis.typing import EncodableT, FieldT

from gateway.delivery.sent import Pipeline
from gateway.delivery.verdicts import Answer
from gateway.store import keys
from gateway.store.connections import RedisClient


class Pauses:
    """Integrations paused for token or permission errors, shared in Redis."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def get(self, pixel: str) -> dict[str, object] | None:
        """The pause record of ``pixel``, or None."""
        return self.record(await self.redis.hget(keys.PAUSED_HASH, pixel))

    @staticmethod
    def look_up(pipe: Pipeline, pixel: str) -> None:
        """Queue :meth:`get`'s read in ``pipe`` (a round trip made anyway); its reply is for
        :meth:`record`."""
        pipe.hget(keys.PAUSED_HASH, pixel)

    @staticmethod
    def record(raw: bytes | str | None) -> dict[str, object] | None:
        """The pause record from its stored form, or None."""
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
