"""A short soak in the suite: the 10-minute `bench/soak.py` run for 20 seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import require_binary

ROOT = Path(__file__).resolve().parent.parent


def test_twenty_seconds_of_chaos_balance_the_books() -> None:
    require_binary("redis-server")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "20", "--no-record"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| accepted = delivered + dead + suppressed + duplicate | PASS |" in result.stdout
    assert "| each delivered event counted once by TikTok | PASS |" in result.stdout
    chaos = next(line for line in result.stdout.splitlines() if line.startswith("| chaos |"))
    assert "×" in chaos  # failures really were injected
