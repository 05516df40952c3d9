"""Run every benchmark in sequence, each in its own process; print a one-line summary of each.

``.venv/bin/python bench/run_all.py [--only ingest,delivery] [--hotspots] [--hiredis-dir DIR]``

Each benchmark appends its section to ``bench/RESULTS.md``. ``--hotspots`` also runs the
diagnosis (``bench/hotspots.py``: profiles and what-if variants), which has no targets. The exit
status is 1 when a benchmark could not run, never because a target failed: benchmarks report,
tests assert (STYLE.md, habit 9).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ("collector", "ingest", "delivery", "memory", "recovery")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help=f"comma list out of {', '.join(ORDER)}")
    parser.add_argument("--hotspots", action="store_true", help="also run bench/hotspots.py")
    parser.add_argument("--hiredis-dir", help="passed to hotspots.py")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(ORDER)
    unknown = set(names) - set(ORDER)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    runs: list[tuple[str, list[str]]] = [(n, []) for n in names]
    if args.hotspots:
        extra = ["--hiredis-dir", args.hiredis_dir] if args.hiredis_dir else []
        runs.append(("hotspots", extra))
    summary: list[str] = []
    failed = False
    for name, extra in runs:
        print(f"\n===== {name} =====", flush=True)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(BENCH / f"{name}.py"), *extra],
            cwd=BENCH.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        sys.stdout.write(proc.stdout)
        last = next(
            (ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(f"{name}: ")),
            f"{name}: did not finish (exit {proc.returncode})",
        )
        failed |= proc.returncode != 0
        summary.append(f"{last.split('  (appended')[0]}  [{time.monotonic() - started:.0f} s]")
    print("\n===== summary =====")
    print("\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
