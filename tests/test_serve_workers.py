"""``serve --workers N`` as real processes: one port, N listeners, signals, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.cli import build_parser
from gateway.store import keys
from tests.delivery_support import wait_until
from tests.process_support import Processes, exited

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


def children(parent: int) -> set[int]:
    """Pids whose parent is ``parent``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.add(int(entry.name))
    return found


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port``."""
    wanted = listening_inodes(port)
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return any(link.startswith("socket:[") and link[8:-1] in wanted for link in links)


async def start(processes: Processes, redis_url: str) -> tuple[subprocess.Popen[bytes], int]:
    env = {"TTGW_REDIS_URL": redis_url, "TTGW_PORT": "0"}
    parent = processes.start(env, "serve", "--workers", "2")
    await wait_until(lambda: "web workers: 2" in processes.output(parent), 30)
    out = processes.output(parent)
    port = int(out.split("listening on http://127.0.0.1:")[1].split()[0])
    assert out.count("listening on") == 1  # the banner once, from the parent
    await wait_until(lambda: _listening(parent.pid, port, 2), 30)
    return parent, port


def _listening(parent: int, port: int, n: int) -> bool:
    return sum(listens(pid, port) for pid in children(parent)) == n


async def test_two_workers_share_one_port_and_accept_events(
    processes: Processes, redis_url: str, redis: Redis
) -> None:
    parent, port = await start(processes, redis_url)
    assert not listens(parent.pid, port)  # the parent serves nothing itself
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
        for i in range(10):
            body = {"event": "Purchase", "event_id": f"w{i}", "user": {"email": "a@b.com"}}
            async with session.post(f"http://127.0.0.1:{port}/e", json=body) as response:
                assert response.status == 202
    assert await redis.xlen(keys.EVENTS_STREAM) == 10
    loop = asyncio.get_running_loop()
    started = loop.time()
    pids = children(parent.pid)
    parent.send_signal(signal.SIGTERM)
    assert await exited(parent, keys.SHUTDOWN_GRACE_S + 10) == 0, processes.output(parent)
    assert loop.time() - started < keys.SHUTDOWN_GRACE_S + 8
    await wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 5)


async def test_a_killed_worker_is_restarted(processes: Processes, redis_url: str) -> None:
    parent, port = await start(processes, redis_url)
    before = children(parent.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    await wait_until(lambda: len(children(parent.pid) - before) == 1, 30)
    await wait_until(lambda: _listening(parent.pid, port, 2), 30)
    assert "web_worker_died" in processes.output(parent)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        assert response.status == 200
    parent.send_signal(signal.SIGINT)
    assert await exited(parent, keys.SHUTDOWN_GRACE_S + 10) == 0


async def test_a_busy_port_fails_the_start(processes: Processes, redis_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {"TTGW_REDIS_URL": redis_url, "TTGW_PORT": str(taken.getsockname()[1])}
        parent = processes.start(env, "serve", "--workers", "2")
        assert await exited(parent) != 0
    assert "cannot listen" in processes.output(parent)


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_workers_is_validated(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", value])
    assert "--workers" in capsys.readouterr().err


def test_workers_defaults_to_one() -> None:
    assert build_parser().parse_args(["serve"]).workers == 1
