"""The gateway on Redis Cluster (three real nodes) and behind Redis Sentinel.

On Cluster every multi-key script and transaction must keep its keys in one slot, or Redis
refuses it with CROSSSLOT: running ingest, stitching, the admin API, delivery and replay here
proves they do.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import orjson
import pytest

from gateway.app import create_app
from gateway.delivery.receipts import counters
from gateway.delivery.replay import dead_letters, replay
from gateway.settings import Settings
from gateway.store.connections import make_redis
from tests.delivery_support import PIXEL, delivery_env, running_emulator, running_worker, wait_until
from tests.support import free_port, require_binary, wait_for_port

MakeSettings = Callable[..., Settings]


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is a valid, free port too."""
    for _ in range(100):
        port = free_port()
        if port < 55000:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


@contextmanager
def redis_processes(
    binary: Path, configs: list[list[str]], pick: Callable[[], int] = free_port
) -> Iterator[list[int]]:
    """Start one redis-server per argument list (each gets --port), stop them all at the end."""
    started: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for args in configs:
            port = pick()
            process = subprocess.Popen(
                [str(binary), *args, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            started.append(process)
            wait_for_port(port, process)
            ports.append(port)
        yield ports
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(10)


@pytest.fixture
def cluster_url(redis_server_binary: Path, tmp_path: Path) -> Iterator[str]:
    cli = require_binary("redis-cli")
    configs = []
    for i in range(3):
        node_dir = tmp_path / f"node{i}"
        node_dir.mkdir()
        configs.append(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--dir",
                str(node_dir),
                "--appendonly",
                "yes",
            ]
        )
    with redis_processes(redis_server_binary, configs, cluster_port) as ports:
        nodes = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            [str(cli), "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for port in ports:
            for _ in range(200):
                info = subprocess.run(
                    [str(cli), "-p", str(port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                if "cluster_state:ok" in info:
                    break
                subprocess.run([str(cli), "-p", str(port), "ping"], capture_output=True, check=True)
        yield "redis+cluster://" + ",".join(nodes)


@asynccontextmanager
async def exercised(aiohttp_client, settings: Settings) -> AsyncIterator[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Ingest, stitch, admin and deliver on ``settings``' Redis; yields what was observed."""
    client = await aiohttp_client(create_app(settings))
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    write = {"Authorization": f"Bearer {settings.write_key}"}
    url = "https://shop.example/p?ttclid=E.C.P.clusterclick"
    await client.post(
        "/e",
        json={
            "events": [
                {"event": "ViewContent", "event_id": "v1", "page": {"url": url}},
                {"type": "identify", "user": {"email": "c@example.com"}},
            ]
        },
    )
    landing = await client.get("/landing", headers={"X-Original-URI": "/?ttclid=E.C.P.landing"})
    assert landing.status == 204
    server = await client.post(
        "/v1/track",
        headers=write,
        json={
            "event": "Purchase",
            "user": {"email": "c@example.com"},
            "properties": {"order_id": "77", "value": 5, "currency": "EUR"},
        },
    )
    assert server.status == 202, await server.text()
    created = await client.post(
        "/v1/admin/integrations",
        headers=admin,
        json={"pixel_code": "CCLUSTERCLUSTERCLUS0", "access_token": "cluster-token-1234"},
    )
    assert created.status == 201, await created.text()
    yield {"client": client, "admin": admin}


async def test_everything_runs_on_redis_cluster(
    aiohttp_client, make_settings: MakeSettings, cluster_url: str
) -> None:
    async with running_emulator(max_event_age_s=86400) as tiktok:
        settings = make_settings(**delivery_env(tiktok, cluster_url))
        async with exercised(aiohttp_client, settings) as seen, running_worker(settings):
            events = await tiktok.state.wait_for_events(2)
            client, admin = seen["client"], seen["admin"]
            stats = await (await client.get("/v1/admin/stats", headers=admin)).json()  # type: ignore[attr-defined]
            assert stats["queue"]["dead"] == 0
        purchase = next(e for e in events if e.event == "Purchase")
        assert purchase.event_id == "ord_77"
        # the newer click (landing) replaced the older one, and the e-mail stitched it to the order
        assert purchase.payload["user"]["ttclid"] == "E.C.P.landing"
        # dead letters and replay on Cluster too
        redis = make_redis(cluster_url)
        try:
            from gateway.ingest.enqueue import IngestQueue, Outgoing
            from tests.delivery_support import event_data

            old = Outgoing(
                PIXEL, "Purchase", "old-1", event_data("old-1", age_s=2 * 86400), "server"
            )
            await IngestQueue(redis).submit([old], max_events=0)
            async with running_worker(settings):
                await wait_until(lambda: _count(redis, "dead", 1))
                tiktok.state.config.max_event_age_s = 7 * 86400
                assert await replay(redis, await dead_letters(redis)) == 1
                await tiktok.state.wait_for_events(3)
            assert (await counters(redis))["delivered"] == 3
        finally:
            await redis.aclose()
        assert tiktok.state.duplicates == 0


async def _count(redis, name: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return (await counters(redis)).get(name, 0) >= n


@pytest.fixture
def sentinel_url(redis_server_binary: Path, tmp_path: Path) -> Iterator[str]:
    with redis_processes(
        redis_server_binary, [["--appendonly", "yes", "--dir", str(tmp_path)]]
    ) as (master,):
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor gatewaymaster 127.0.0.1 {master} 1\n"
            "sentinel down-after-milliseconds gatewaymaster 5000\n"
        )
        with redis_processes(redis_server_binary, [[str(conf), "--sentinel"]]) as (sentinel,):
            yield f"redis+sentinel://127.0.0.1:{sentinel}/gatewaymaster"


async def test_everything_runs_behind_redis_sentinel(
    aiohttp_client, make_settings: MakeSettings, sentinel_url: str
) -> None:
    async with running_emulator() as tiktok:
        settings = make_settings(**delivery_env(tiktok, sentinel_url))
        async with exercised(aiohttp_client, settings), running_worker(settings):
            events = await tiktok.state.wait_for_events(2)
        assert {e.event_id for e in events} == {"v1", "ord_77"}
        assert orjson.dumps(events[0].payload)
