"""Gateway processes started by tests: real commands, real signals, output kept for assertions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.delivery_support import wait_until


class Processes:
    """Gateway processes started by a test, killed at its end whatever happens."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("TTGW_")}
        full.update(env, TTGW_DATA_DIR=str(self.tmp_path / "data"))
        n = len(self.started)
        with (
            open(self.tmp_path / f"proc{n}.out", "wb") as out,
            open(self.tmp_path / f"proc{n}.err", "wb") as err,
        ):
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway", *args], env=full, stdout=out, stderr=err
            )
        self.started.append(process)
        return process

    def stdout(self, process: subprocess.Popen[bytes]) -> str:
        return (self.tmp_path / f"proc{self.started.index(process)}.out").read_text()

    def output(self, process: subprocess.Popen[bytes]) -> str:
        n = self.started.index(process)
        return self.stdout(process) + (self.tmp_path / f"proc{n}.err").read_text()


def stop_all(procs: Processes) -> None:
    """Kill whatever a test left running."""
    for process in procs.started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


async def exited(process: subprocess.Popen[bytes], timeout_s: float = 20) -> int:
    await wait_until(lambda: process.poll() is not None, timeout_s)
    return process.returncode
