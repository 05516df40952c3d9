"""Scale-out: ``POST /e`` peak of one web process against ``serve --workers 2`` (SO_REUSEPORT).

Both on the same port number in turn, alternating rounds in one run so both see the same machine;
the load is one new collector event per request, as in ``bench/ingest.py``.
``.venv/bin/python bench/workers.py [--rounds 2] [--seconds 6] [--connections 32]``
"""

from __future__ import annotations

import argparse
import sys
import time

from harness import LOOPBACK, Workspace, free_port, machine, median, peak_load, wait_for


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    results: dict[int, list[float]] = {1: [], 2: []}
    with Workspace("workers") as ws:
        env = ws.gateway_env(ws.redis())
        for r in range(args.rounds):
            for workers in (1, 2):
                port = free_port()
                name = f"web{workers}-{r}"
                cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
                proc = ws.spawn(name, [*cmd, "--workers", str(workers)], env)
                out = ws.dir / f"{name}.out"
                wait_for(lambda o=out: "listening on" in o.read_text(errors="replace"), 30, name)
                time.sleep(1.0)  # every child listening
                url = f"http://{LOOPBACK}:{port}/e"
                peak_load(ws.dir, url, f"warm{name}", connections=args.connections, duration_s=2)
                load = peak_load(ws.dir, url, f"w{name}{time.time_ns()}",
                                 connections=args.connections, duration_s=args.seconds)  # fmt: skip
                results[workers].append(load.rps)
                print(f"round {r + 1}, {workers} process(es): {load.rps:,.0f} req/s, "
                      f"p99 {load.p99_ms:.1f} ms, errors {load.errors}", flush=True)  # fmt: skip
                ws.stop(proc)
    one, two = median(results[1]), median(results[2])
    print(f"median peak: 1 process {one:,.0f} req/s, --workers 2 {two:,.0f} req/s: "
          f"x{two / one:.2f}", flush=True)  # fmt: skip
    print(machine(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
