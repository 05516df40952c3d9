"""The deployment: docker-compose.yml checked against what the services need (no Docker engine
runs here), and the same processes run without Docker — two web processes and three workers on
one Redis deliver a backlog exactly once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from redis.asyncio import Redis

from gateway.delivery.receipts import counters
from tests.delivery_support import delivery_env, running_emulator, wait_until
from tests.process_support import Processes, exited
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def merged(service: dict[str, Any]) -> dict[str, Any]:
    """A service with its YAML merge key applied (yaml.safe_load already does `<<`)."""
    return service


def test_redis_is_durable_and_never_evicts() -> None:
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert re.search(r"--appendonly yes", command)
    assert re.search(r"--appendfsync \$\{TTGW_REDIS_FSYNC:-everysec\}", command)
    assert re.search(r"--maxmemory-policy noeviction", command)
    assert redis["image"].startswith("redis:7")
    assert any(v.endswith(":/data") for v in redis["volumes"])  # AOF on a volume
    assert redis["healthcheck"]["test"][-1] == "ping"


def test_web_and_worker_share_redis_secrets_and_scale() -> None:
    services = compose()["services"]
    for name, command in (("web", ["tt-gateway", "serve"]), ("worker", ["tt-gateway", "worker"])):
        service = merged(services[name])
        assert service["command"] == command
        env = service["environment"]
        assert env["TTGW_REDIS_URL"] == "redis://redis:6379/0"
        assert "gateway-data:/data" in service["volumes"][0]  # one set of generated secrets
        assert env["TTGW_DATA_DIR"] == "/data"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in service
        # scalable with --scale: no fixed names or host ports
        assert "container_name" not in service
        assert "ports" not in service
        assert service["env_file"][0]["path"] == ".env"
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])


def test_nginx_fronts_the_web_service_with_the_templates() -> None:
    nginx = compose()["services"]["nginx"]
    assert {"80:80", "443:443"} <= set(nginx["ports"])
    assert nginx["environment"]["TTGW_UPSTREAM"] == "web:8080"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nginx["volumes"]}
    template = mounts["/etc/nginx/templates/gateway-hostname.conf.template"]
    assert (ROOT / template).is_file()
    # every variable the mounted template uses is set (envsubst would leave it empty otherwise)
    used = set(re.findall(r"\$\{(TTGW_[A-Z_]+)\}", (ROOT / template).read_text()))
    assert used <= set(nginx["environment"]), used - set(nginx["environment"])
    assert (ROOT / "nginx" / "admin-allow.conf.example").is_file()
    assert nginx["depends_on"]["web"]["condition"] == "service_healthy"


def test_env_example_documents_every_setting() -> None:
    settings_source = (ROOT / "gateway" / "settings.py").read_text()
    variables = set(re.findall(r'"(TTGW_[A-Z_]+)"', settings_source))
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?(TTGW_[A-Z_]+)=", example, re.M))
    assert variables - documented == set()
    assert "ttgw" not in compose()["volumes"]  # named volumes only: redis-data, gateway-data
    assert set(compose()["volumes"]) == {"redis-data", "gateway-data"}


def test_the_image_runs_the_gateway() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install" in dockerfile
    assert 'CMD ["tt-gateway", "serve"]' in dockerfile
    assert "USER gateway" in dockerfile  # not root


async def test_two_web_processes_and_three_workers_deliver_exactly_once(
    processes: Processes,
    redis_url: str,
    redis: Redis,
) -> None:
    async with running_emulator() as tiktok:
        ports = [free_port(), free_port()]
        base = delivery_env(tiktok, redis_url, TTGW_BATCH_MAX_EVENTS="50")
        webs = [processes.start({**base, "TTGW_PORT": str(p)}, "serve") for p in ports]
        for web in webs:
            await wait_until(lambda web=web: "listening on" in processes.output(web))
        ids = [f"scale-{i}" for i in range(600)]
        async with aiohttp.ClientSession() as http:
            for n, start in enumerate(range(0, 600, 100)):
                port = ports[n % 2]
                events = [{"event": "Purchase", "event_id": i} for i in ids[start : start + 100]]
                async with http.post(f"http://127.0.0.1:{port}/e", json={"events": events}) as r:
                    assert r.status == 202
            # the same events again through the other web process: duplicates, not re-queued
            events = [{"event": "Purchase", "event_id": i} for i in ids[:100]]
            async with http.post(f"http://127.0.0.1:{ports[1]}/e", json={"events": events}) as r:
                assert {a["status"] for a in (await r.json())["accepted"]} == {"duplicate"}
        workers = [processes.start(base, "worker") for _ in range(3)]
        for worker in workers:  # signal handlers are in place once it says so
            await wait_until(lambda w=worker: "worker running" in processes.output(w), 30)
        await tiktok.state.wait_for_events(600, timeout_s=60)
        await wait_until(lambda: _delivered(redis, 600))
        for process in [*workers, *webs]:
            process.terminate()
        for process in [*workers, *webs]:
            assert await exited(process) == 0
        state = tiktok.state
    assert sorted(e.event_id or "" for e in state.unique_events()) == sorted(ids)
    assert state.duplicates == 0
    consumers = {r.pixel_code for r in state.requests}
    assert consumers
    c = await counters(redis)
    assert c["accepted"] == c["delivered"] + c.get("duplicate", 0) == 700


async def _delivered(redis: Redis, n: int) -> bool:
    return (await counters(redis)).get("delivered", 0) >= n
