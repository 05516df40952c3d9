from __future__ import annotations

import re

from redis.crc import key_slot

from gateway.store import keys

PIXEL, EVENT, EVENT_ID = "CXXXXXXXXXXXXXXXXXX0", "Purchase", "ord_84213"


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_queue_operation_keys_share_one_slot() -> None:
    """Ingest and settlement scripts touch these together; on Cluster they must be one slot."""
    together = [
        keys.EVENTS_STREAM,
        keys.RETRY_ZSET,
        keys.DEAD_STREAM,
        keys.SANDBOX_STREAM,
        keys.COUNTERS_HASH,
        keys.RECEIPT_PAIRS_HASH,
        keys.receipts_key(1),
        keys.receipts_key(70000),
        keys.receipt_log_key(70000),
        keys.request_key("18c2f1a3b4c5d6"),
        keys.RETRY_DATA_HASH,
        keys.RETRY_PACE_HASH,
        keys.retry_moved_key(PIXEL),
    ]
    assert len({slot(k) for k in together}) == 1


def test_identity_keys_share_one_slot() -> None:
    together = [keys.visitor_key("v1"), keys.visitor_key("v2"), keys.link_key("email", "ab" * 32)]
    assert len({slot(k) for k in together}) == 1


def test_rate_limit_keys_of_a_pixel_share_a_slot() -> None:
    assert slot(keys.ratelimit_key(PIXEL)) == slot(keys.throttle_key(PIXEL))


def test_config_and_stats_keys_share_their_tags() -> None:
    cfg = [keys.INTEGRATIONS_HASH, keys.PAUSED_HASH, keys.ALERTS_STREAM]
    assert len({slot(k) for k in cfg}) == 1
    assert slot(keys.minute_stats_key(1)) == slot(keys.coverage_key(2))


def test_every_key_has_the_prefix_and_one_hash_tag() -> None:
    samples = [
        value
        for name, value in vars(keys).items()
        if isinstance(value, str) and name.isupper() and value.startswith(keys.PREFIX + ":")
    ] + [
        keys.receipts_key(7),
        keys.receipt_log_key(7),
        keys.request_key("r"),
        keys.visitor_key("v"),
        keys.ratelimit_key(PIXEL),
        keys.minute_stats_key(7),
    ]
    assert len(samples) > 8
    for key in samples:
        assert key.startswith(f"{keys.PREFIX}:{{"), key
        assert len(re.findall(r"\{[^}]+\}", key)) >= 1


def test_dedup_identity_separates_its_parts() -> None:
    """("a:b", "c") and ("a", "b:c") must not collide."""
    assert keys.dedup_id("P", "a:b", "c") != keys.dedup_id("P", "a", "b:c")
    assert keys.split_dedup_id(keys.dedup_id("P", "a:b", "c\x1fd")) == ("P", "a:b", "c\x1fd")


def test_tunables_carry_units() -> None:
    tunables = [n for n, v in vars(keys).items() if n.isupper() and isinstance(v, int | float)]
    units = (
        "_S",
        "_MS",
        "_BYTES",
        "_EVENTS",
        "_COUNT",
        "_CONCURRENCY",
        "_PER_HOST",
        "_PER_S",
        "_BURST",
    )
    assert tunables
    assert [n for n in tunables if not n.endswith(units)] == []


def test_receipt_buckets_cover_the_windows() -> None:
    """Ingest looks back over 48 h of receipts plus the longest a delivery can take after the
    event arrived; readers over the whole retention."""
    now_ms = 1_781_430_082_000
    first, last = keys.idempotency_buckets(now_ms)[0], keys.idempotency_buckets(now_ms)[-1]
    assert first == keys.receipt_bucket(now_ms)
    window_ms = (keys.IDEMPOTENCY_TTL_S + keys.DEAD_LETTER_MAX_S) * 1000
    assert last == keys.receipt_bucket(now_ms - window_ms)
    retained = keys.retention_buckets(now_ms, keys.RECEIPT_TTL_S)
    assert retained[0] == first + 1
    assert retained[-1] < keys.receipt_bucket(now_ms - keys.RECEIPT_TTL_S * 1000)
    assert keys.bucket_expiry_ms(first, 100) == (first + 1) * keys.RECEIPT_BUCKET_MS + 100_000
