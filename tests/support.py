"""Helpers shared by the tests: system binaries, free ports, waiting for a process to listen."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REQUIRE_BINARIES = os.environ.get("TTGW_TEST_REQUIRE_BINARIES") == "1"


def require_binary(name: str, fallback: Path | None = None) -> Path:
    """The path of a system binary the test needs; skip (or fail in CI) when it is absent."""
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    if fallback is not None and fallback.is_file():
        return fallback
    message = f"{name} is not installed"
    if REQUIRE_BINARIES:
        pytest.fail(f"{message} (TTGW_TEST_REQUIRE_BINARIES=1 forbids skipping)")
    pytest.skip(message)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Return once something accepts connections on ``port``; fail if ``process`` dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)  # another process is starting; there is nothing to await on
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


def redis_server_args(binary: str, port: int, workdir: Path) -> list[str]:
    """A loopback redis-server configured like production: AOF everysec, no RDB, noeviction."""
    return [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
    ]  # fmt: skip
