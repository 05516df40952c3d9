"""Redis goes away under real gateway processes: killed and restarted, down at start, failed over.

Each test streams events through real ``serve``/``worker`` or ``run`` processes the way a backend
does (a 503 or a refused connection is retried until the gateway answers 202), hurts Redis from
outside, and then counts what TikTok (the emulator) received: every acknowledged event exactly
once, and no gateway process gone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.delivery.receipts import counters
from gateway.store import keys
from gateway.store.connections import make_redis
from gateway.tiktok.emulator_state import Outcome, Script
from tests.delivery_support import Emulator, delivery_env, enqueue, running_emulator, wait_until
from tests.process_support import Processes, exited
from tests.support import free_port, redis_server_args, require_binary, wait_for_port

WRITE_KEY = "write-key-faults-0001"
EVENTS = 1000


class RedisNode:
    """One redis-server of a test's own, that the test can SIGKILL and start again."""

    def __init__(self, binary: Path, workdir: Path, *extra: str, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.extra = list(extra)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = redis_server_args(str(self.binary), self.port, self.workdir)
        self.process = subprocess.Popen(
            [*args, "--appendfsync", "always", *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def node(redis_server_binary: Path, tmp_path: Path) -> Iterator[RedisNode]:
    server = RedisNode(redis_server_binary, tmp_path / "redis")
    yield server
    server.stop()


@dataclass
class Backend:
    """A merchant backend posting orders one by one, retrying until each is acknowledged."""

    base: str
    acked: list[str] = field(default_factory=list)
    refused: int = 0
    trouble: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, ids: list[str], *, browser: bool = False) -> None:
        headers = {} if browser else {"Authorization": f"Bearer {WRITE_KEY}"}
        path = "/e" if browser else "/v1/track"
        async with aiohttp.ClientSession() as http:
            for event_id in ids:
                body = {
                    "event": "Purchase",
                    "event_id": event_id,
                    "user": {"email": f"{event_id}@example.com", "ip": "203.0.113.7",
                             "user_agent": "Mozilla/5.0"},
                    "properties": {"value": 10, "currency": "EUR"},
                    "page": {"url": "https://shop.example/thank-you"},
                }  # fmt: skip
                while True:
                    try:
                        async with http.post(
                            self.base + path, json=body, headers=headers
                        ) as response:
                            if response.status == 202:
                                self.acked.append(event_id)
                                break
                            assert response.status == 503, await response.text()
                    except aiohttp.ClientError:
                        pass
                    self.refused += 1
                    self.trouble.set()
                    await asyncio.sleep(0.05)  # a backend's retry pace; nothing to await


def port_of(processes: Processes, process: subprocess.Popen[bytes]) -> int:
    return int(processes.output(process).split("listening on http://127.0.0.1:")[1].split()[0])


def gateway_env(tiktok: Emulator, redis_url: str) -> dict[str, str]:
    return delivery_env(tiktok, redis_url, TTGW_PORT="0", TTGW_WRITE_KEY=WRITE_KEY)


async def kill_and_restart_mid_stream(
    backend: Backend, node: RedisNode, noticed: Callable[[], bool]
) -> asyncio.Task[None]:
    ids = [f"o{i}" for i in range(EVENTS)]
    stream = asyncio.create_task(backend.send(ids))
    await wait_until(lambda: len(backend.acked) >= EVENTS // 3, 60)
    node.kill()
    await asyncio.wait_for(backend.trouble.wait(), 30)  # ingest noticed: 503s
    await wait_until(noticed, 30)  # and so did the worker's read loop
    node.start()
    return stream


async def all_delivered_once(tiktok: Emulator, redis: Redis, backend: Backend) -> None:
    await tiktok.state.wait_for(lambda: len(tiktok.state.unique_events()) >= EVENTS, 90)
    await wait_until(lambda: _settled(redis), 30)
    delivered = {e.event_id for e in tiktok.state.unique_events()}
    assert set(backend.acked) <= delivered  # nothing acknowledged was lost
    assert len(backend.acked) == EVENTS
    assert tiktok.state.duplicates == 0  # and nothing was sent twice


async def _settled(redis: Redis) -> bool:
    pending = await redis.xpending(keys.EVENTS_STREAM, keys.DELIVERY_GROUP)
    return pending["pending"] == 0 and (await counters(redis)).get("delivered", 0) >= EVENTS


async def test_serve_and_worker_ride_out_a_redis_kill_and_restart(
    processes: Processes, node: RedisNode
) -> None:
    node.start()
    async with running_emulator() as tiktok:
        env = gateway_env(tiktok, node.url)
        serve = processes.start(env, "serve")
        worker = processes.start(env, "worker")
        await wait_until(lambda: "listening on" in processes.output(serve))
        backend = Backend(f"http://127.0.0.1:{port_of(processes, serve)}")
        stream = await kill_and_restart_mid_stream(
            backend, node, lambda: "redis_unavailable" in processes.output(worker)
        )
        await asyncio.wait_for(stream, 120)
        redis = Redis.from_url(node.url)
        try:
            await all_delivered_once(tiktok, redis, backend)
        finally:
            await redis.aclose()
        assert backend.refused > 0
        assert serve.poll() is None and worker.poll() is None, processes.output(worker)
        assert "redis_available" in processes.output(worker)
        worker.send_signal(signal.SIGTERM)
        serve.send_signal(signal.SIGTERM)
        assert await exited(worker) == 0
        assert await exited(serve) == 0


async def test_run_rides_out_a_redis_kill_and_restart(
    processes: Processes, node: RedisNode
) -> None:
    node.start()
    async with running_emulator() as tiktok:
        run = processes.start(gateway_env(tiktok, node.url), "run")
        await wait_until(lambda: "listening on" in processes.output(run))
        backend = Backend(f"http://127.0.0.1:{port_of(processes, run)}")
        stream = await kill_and_restart_mid_stream(
            backend, node, lambda: "redis_unavailable" in processes.output(run)
        )
        await asyncio.wait_for(stream, 120)
        redis = Redis.from_url(node.url)
        try:
            await all_delivered_once(tiktok, redis, backend)
        finally:
            await redis.aclose()
        assert run.poll() is None, processes.output(run)
        run.send_signal(signal.SIGTERM)
        assert await exited(run) == 0


async def test_a_worker_started_while_redis_is_down_waits_for_it(
    processes: Processes, node: RedisNode
) -> None:
    async with running_emulator() as tiktok:
        worker = processes.start(gateway_env(tiktok, node.url), "worker")
        await wait_until(lambda: "redis_unavailable" in processes.output(worker))
        assert worker.poll() is None
        node.start()
        await enqueue(node.url, ["late-1", "late-2"])
        await tiktok.state.wait_for_events(2, timeout_s=30)
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        assert await exited(worker) == 0


async def test_a_success_settled_while_redis_is_away_is_not_sent_again(
    processes: Processes, node: RedisNode
) -> None:
    node.start()
    ids = [f"s{i}" for i in range(20)]
    await enqueue(node.url, ids)
    async with running_emulator() as tiktok:
        tiktok.state.script(Script(Outcome.SLOW, times=1, hang_s=60))
        # a reclaim time of 1 s: an unsettled entry would be picked up and sent again at once
        env = gateway_env(tiktok, node.url) | {"TTGW_RECLAIM_IDLE_S": "1"}
        worker = processes.start(env, "worker")
        await tiktok.state.wait_for_hanging(1, timeout_s=20)
        node.kill()  # TikTok is about to accept the batch, and Redis is gone
        tiktok.state.release_hangs()
        await tiktok.state.wait_for_events(20, timeout_s=20)
        await wait_until(lambda: "settle_waiting_for_redis" in processes.output(worker))
        node.start()
        redis = Redis.from_url(node.url)
        try:
            await wait_until(lambda: _all_settled(redis, 20), 30)
            receipts = await counters(redis)
        finally:
            await redis.aclose()
        worker.send_signal(signal.SIGTERM)
        assert await exited(worker) == 0
    assert receipts.get("delivered") == 20
    assert tiktok.state.duplicates == 0
    assert len(tiktok.state.requests) == 1


async def _all_settled(redis: Redis, n: int) -> bool:
    pending = await redis.xpending(keys.EVENTS_STREAM, keys.DELIVERY_GROUP)
    return pending["pending"] == 0 and (await counters(redis)).get("delivered", 0) >= n


# --- Sentinel: a master, a replica, three Sentinels; the master is SIGKILLed ----------------


@dataclass
class SentinelSet:
    master: RedisNode
    replica: RedisNode
    sentinels: list[subprocess.Popen[bytes]]
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://:{DATA_PASSWORD}@{hosts}/faults"

    async def master_port(self) -> int:
        client = Redis(port=self.sentinel_ports[0])
        try:
            _host, port = await client.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "faults"
            )
            return int(port)
        finally:
            await client.aclose()


DATA_PASSWORD = "data-nodes-secret"  # the data nodes want it; the Sentinels have none


def start_sentinel(
    binary: Path, workdir: Path, master_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    """One Sentinel (no password of its own) watching the data nodes (which have one)."""
    port = free_port()
    conf = workdir / f"sentinel-{port}.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor faults 127.0.0.1 {master_port} 2\n"
        f"sentinel auth-pass faults {DATA_PASSWORD}\n"
        "sentinel down-after-milliseconds faults 1000\n"
        "sentinel failover-timeout faults 5000\n"
        "sentinel parallel-syncs faults 1\n"
    )
    process = subprocess.Popen(
        [str(binary), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port, process)
    return process, port


@asynccontextmanager
async def sentinel_set(binary: Path, tmp_path: Path) -> AsyncIterator[SentinelSet]:
    auth = ["--requirepass", DATA_PASSWORD, "--masterauth", DATA_PASSWORD]
    master = RedisNode(binary, tmp_path / "master", *auth)
    master.start()
    replica = RedisNode(
        binary, tmp_path / "replica", *auth, "--replicaof", "127.0.0.1", str(master.port)
    )
    replica.start()
    sentinels: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for _ in range(3):
            process, port = start_sentinel(binary, tmp_path, master.port)
            sentinels.append(process)
            ports.append(port)
        replica_client = Redis(port=replica.port, password=DATA_PASSWORD)
        try:  # the replica has synced before the test begins
            await wait_until(lambda: _link_up(replica_client), 20)
        finally:
            await replica_client.aclose()
        yield SentinelSet(master, replica, sentinels, ports)
    finally:
        for process in sentinels:
            process.terminate()
        for process in sentinels:
            process.wait(10)
        replica.stop()
        master.stop()


async def _link_up(client: Redis) -> bool:
    info = await client.info("replication")
    return info.get("master_link_status") == "up"


async def test_serve_and_worker_ride_out_a_sentinel_failover(
    processes: Processes, redis_server_binary: Path, tmp_path: Path
) -> None:
    require_binary("redis-server")
    async with sentinel_set(redis_server_binary, tmp_path) as cluster, running_emulator() as tiktok:
        env = gateway_env(tiktok, cluster.url)
        serve = processes.start(env, "serve")
        worker = processes.start(env, "worker")
        await wait_until(lambda: "listening on" in processes.output(serve))
        backend = Backend(f"http://127.0.0.1:{port_of(processes, serve)}")
        stream = asyncio.create_task(backend.send([f"o{i}" for i in range(EVENTS)]))
        await wait_until(lambda: len(backend.acked) >= EVENTS // 3, 60)
        cluster.master.kill()
        await wait_until(lambda: _promoted(cluster), 30)
        await asyncio.wait_for(stream, 120)
        redis = Redis(port=cluster.replica.port, password=DATA_PASSWORD)
        try:
            await all_delivered_once(tiktok, redis, backend)
        finally:
            await redis.aclose()
        assert serve.poll() is None and worker.poll() is None, processes.output(worker)
        worker.send_signal(signal.SIGTERM)
        serve.send_signal(signal.SIGTERM)
        assert await exited(worker) == 0
        assert await exited(serve) == 0


async def _promoted(cluster: SentinelSet) -> bool:
    return await cluster.master_port() == cluster.replica.port


async def test_a_sentinel_url_gives_each_server_its_own_credentials_and_time_outs() -> None:
    url = "redis+sentinel://:data-secret@127.0.0.1:26379,127.0.0.1:26380/svc?sentinel_password=s1"
    client = make_redis(url)
    try:
        data = client.connection_pool.connection_kwargs  # type: ignore[union-attr]
        assert data["password"] == "data-secret"
        manager = client.connection_pool.sentinel_manager  # type: ignore[union-attr]
        for sentinel in manager.sentinels:
            kwargs = sentinel.connection_pool.connection_kwargs
            assert kwargs["password"] == "s1"  # never the data nodes' password
            assert kwargs["socket_timeout"] and kwargs["socket_connect_timeout"]
        plain = make_redis("redis+sentinel://:data-secret@127.0.0.1:26379/svc")
        for sentinel in plain.connection_pool.sentinel_manager.sentinels:  # type: ignore[union-attr]
            assert sentinel.connection_pool.connection_kwargs.get("password") is None
        await plain.aclose()
    finally:
        await client.aclose()


async def test_run_restarts_its_embedded_redis_when_it_is_killed(
    processes: Processes, tmp_path: Path
) -> None:
    require_binary("redis-server")
    async with running_emulator() as tiktok:
        env = gateway_env(tiktok, "") | {"TTGW_REDIS_FSYNC": "always"}
        env.pop("TTGW_REDIS_URL")
        run = processes.start(env, "run")
        await wait_until(lambda: "listening on" in processes.output(run), 30)
        assert "appendfsync always" in processes.output(run)
        pidfile = tmp_path / "data" / "redis" / "redis.pid"
        first_pid = int(pidfile.read_text())
        backend = Backend(f"http://127.0.0.1:{port_of(processes, run)}")
        stream = asyncio.create_task(backend.send([f"o{i}" for i in range(EVENTS)]))
        await wait_until(lambda: len(backend.acked) >= EVENTS // 3, 60)
        os.kill(first_pid, signal.SIGKILL)
        await wait_until(lambda: "starting it again" in processes.output(run), 30)
        await asyncio.wait_for(stream, 120)
        url = f"unix://{tmp_path / 'data' / 'redis' / 'redis.sock'}"
        redis = Redis.from_url(url)
        try:
            await all_delivered_once(tiktok, redis, backend)
        finally:
            await redis.aclose()
        assert int(pidfile.read_text()) != first_pid
        assert run.poll() is None, processes.output(run)
        run.send_signal(signal.SIGTERM)
        assert await exited(run) == 0


# --- Cluster: three masters; the node holding the queue is SIGKILLed and started again ------


async def _cluster_ok(ports: list[int]) -> bool:
    for port in ports:
        client = Redis(port=port)
        try:
            info = await client.execute_command("CLUSTER", "INFO")
        finally:
            await client.aclose()
        text = info.decode() if isinstance(info, bytes) else str(info)
        if "cluster_state:ok" not in text:
            return False
    return True


async def _queue_node(ports: list[int]) -> int:
    """The port of the node that serves the queue's hash tag ``{q}``."""
    client = Redis(port=ports[0])
    try:
        slot = int(await client.execute_command("CLUSTER", "KEYSLOT", keys.EVENTS_STREAM))
        for start, end, owner, *_ in await client.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(owner[1])
    finally:
        await client.aclose()
    raise AssertionError("no node serves the queue's slot")


async def test_serve_and_worker_ride_out_a_cluster_node_restart(
    processes: Processes, redis_server_binary: Path, tmp_path: Path
) -> None:
    from tests.test_redis_topologies import cluster_port

    cli = require_binary("redis-cli")
    nodes = []
    for i in range(3):
        workdir = tmp_path / f"node{i}"
        conf = ["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
                "--cluster-node-timeout", "1000"]  # fmt: skip
        nodes.append(RedisNode(redis_server_binary, workdir, *conf, port=cluster_port()))
    try:
        for node in nodes:
            node.start()
        ports = [n.port for n in nodes]
        await asyncio.to_thread(
            subprocess.run,
            [str(cli), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        await wait_until(lambda: _cluster_ok(ports), 30)
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        queue_port = await _queue_node(ports)
        victim = next(n for n in nodes if n.port == queue_port)
        async with running_emulator() as tiktok:
            env = gateway_env(tiktok, url)
            serve = processes.start(env, "serve")
            worker = processes.start(env, "worker")
            await wait_until(lambda: "listening on" in processes.output(serve))
            backend = Backend(f"http://127.0.0.1:{port_of(processes, serve)}")
            stream = await kill_and_restart_mid_stream(
                backend, victim, lambda: "redis_unavailable" in processes.output(worker)
            )
            await wait_until(lambda: _cluster_ok(ports), 30)
            await asyncio.wait_for(stream, 120)
            redis = Redis(port=queue_port)
            try:
                await all_delivered_once(tiktok, redis, backend)
            finally:
                await redis.aclose()
            assert serve.poll() is None and worker.poll() is None, processes.output(worker)
            worker.send_signal(signal.SIGTERM)
            serve.send_signal(signal.SIGTERM)
            assert await exited(worker) == 0
            assert await exited(serve) == 0
    finally:
        for node in nodes:
            node.stop()
