"""Run ``python -m gateway ...`` with a what-if applied, for the ingest profile (never production).

``python bench/gateway_variant.py [--uvloop] [--no-flow-count] [--extra-path DIR]
[--profile OUT] -- serve --port P``

* ``--uvloop``: the gateway's own code, unchanged, on uvloop's event loop (``asyncio.run`` picks
  the policy's loop) — what adding uvloop to ``gateway/cli.py`` would give;
* ``--no-flow-count``: ``POST /e`` skips its per-request ``count_flow`` round trip to Redis (the
  dashboard's per-minute "accepted" counter) — the upper bound of batching that counter in memory
  and flushing it once a second;
* ``--extra-path DIR``: put DIR first on ``sys.path`` — e.g. a ``pip install --target DIR
  hiredis``, which redis-py then uses to parse replies, without touching the venv;
* ``--profile FILE``: pyinstrument samples the whole process until it exits (SIGTERM/SIGINT end
  the gateway cleanly); the report goes to FILE (``.txt``: text, ``.pstats``: cProfile's
  deterministic profile instead, else pyinstrument's HTML).
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--no-flow-count", action="store_true")
    parser.add_argument("--extra-path")
    parser.add_argument("--profile")
    parser.add_argument("gateway_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    gateway_args = [a for a in args.gateway_args if a != "--"]
    if args.extra_path:
        sys.path.insert(0, args.extra_path)
    if args.no_flow_count:
        from gateway import collect

        async def no_count(*_: object, **__: object) -> None:
            return None

        setattr(collect, "count_flow", no_count)  # noqa: B010  (a what-if, not a code change)
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from gateway.cli import main as gateway_main

    if not args.profile:
        return gateway_main(gateway_args)
    if args.profile.endswith(".pstats"):
        import cProfile

        with cProfile.Profile() as cprofile:
            try:
                return gateway_main(gateway_args)
            finally:
                cprofile.dump_stats(args.profile)
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        return gateway_main(gateway_args)
    finally:
        profiler.stop()
        if args.profile.endswith(".txt"):
            text = profiler.output_text(unicode=True, color=False, show_all=False)
            with open(args.profile, "w") as out:
                out.write(text)
        else:
            with open(args.profile, "w") as out:
                out.write(profiler.output_html())


if __name__ == "__main__":
    sys.exit(main())
