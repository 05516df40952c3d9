"""Run ``python -m gateway ...`` with a what-if applied, for the ingest profile (never production).

``python bench/gateway_variant.py [--no-redis] [--extra-path DIR] [--profile OUT] -- serve
--port P``

* ``--no-redis``: the web process's group commit (``connections.Coalescer.run``) answers every
  script call at once without Redis (stitch: an unknown visitor; enqueue: queued) — everything
  else of ``POST /e`` runs unchanged. The ceiling of the Python path: what ingest would do if
  Redis cost nothing;
* ``--extra-path DIR``: put DIR first on ``sys.path`` — e.g. a ``pip install --target DIR
  hiredis``, which redis-py then uses to parse replies, without touching the venv;
* ``--profile FILE``: pyinstrument samples the whole process until it exits (SIGTERM/SIGINT end
  the gateway cleanly); the report goes to FILE (``.txt``: text, ``.pstats``: cProfile's
  deterministic profile instead, else pyinstrument's HTML).
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--extra-path")
    parser.add_argument("--profile")
    parser.add_argument("gateway_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    gateway_args = [a for a in args.gateway_args if a != "--"]
    if args.extra_path:
        sys.path.insert(0, args.extra_path)
    if args.no_redis:
        from gateway.identity import visitors
        from gateway.store import connections

        async def answer(_: object, calls: list[connections.LuaCall]) -> list[object]:
            return [[] if script is visitors._STITCH else b"0-1" for script, _, _ in calls]

        setattr(connections.Coalescer, "run", answer)  # noqa: B010  (a what-if, not a code change)
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
