"""The ``tt-gateway`` command line (also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import signal
import sys
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.app import create_app
from gateway.config import SettingsError
from gateway.delivery.serve import serve_worker
from gateway.logs import configure_logging, get_logger
from gateway.operate import commands, web_workers
from gateway.operate.erasure import add_forget_parser, forget_command
from gateway.settings import Settings
from gateway.store import keys
from gateway.store.embedded import EmbeddedRedis, EmbeddedRedisError

log = get_logger("gateway.cli")

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of processes: {text!r}") from None
    if not 1 <= workers <= web_workers.MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"must be between 1 and {web_workers.MAX_WORKERS}, got {workers}"
        )
    return workers


def _listen_options(parser: argparse.ArgumentParser, default_port: str = "TTGW_PORT") -> None:
    parser.add_argument("--host", help="listen address (overrides TTGW_HOST)")
    parser.add_argument("--port", type=_port, help=f"listen port (overrides {default_port})")


def build_parser() -> argparse.ArgumentParser:
    """Every command of the design, with its options."""
    parser = argparse.ArgumentParser(
        prog="tt-gateway",
        description="First-party server-side tag gateway for the TikTok Events API.",
        epilog="Configuration comes from TTGW_* environment variables; see the README.",
    )
    parser.add_argument("--version", action="version", version=f"tt-gateway {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = subcommands.add_parser(
        "run",
        help="web server and delivery worker in one process (embedded Redis by default)",
    )
    _listen_options(run)
    serve = subcommands.add_parser("serve", help="web server only (ingest, admin, dashboard)")
    _listen_options(serve)
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="web processes sharing the port through SO_REUSEPORT (1..64; default 1: this one)",
    )
    serve.add_argument("--web-child", action="store_true", help=argparse.SUPPRESS)
    subcommands.add_parser("worker", help="delivery worker only: Redis queue -> TikTok Events API")

    replay = subcommands.add_parser(
        "replay", help="send dead letters again (all, by event id, or dead-lettered in a range)"
    )
    replay.add_argument("--event-id", action="append", default=[], help="replay this event id")
    replay.add_argument("--since", help="dead-lettered at or after (ISO-8601 or Unix seconds)")
    replay.add_argument("--until", help="dead-lettered at or before (ISO-8601 or Unix seconds)")
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed")

    doctor = subcommands.add_parser(
        "doctor", help="check configuration, Redis, tokens and the deployment"
    )
    doctor.add_argument(
        "--check-host",
        action="append",
        default=[],
        metavar="GATEWAY=STOREFRONT",
        help="check Safari's 7-day cookie cap for the gateway host on this storefront host "
        "(repeatable), e.g. t.shop.example=www.shop.example",
    )
    send_test = subcommands.add_parser(
        "send-test", help="send one test event through the integration's test_event_code"
    )
    send_test.add_argument("--pixel", help="pixel code of the integration (default: the first)")
    send_test.add_argument(
        "--test-event-code", help="Events Manager's test code (default: the integration's)"
    )

    add_forget_parser(subcommands)

    pixel = subcommands.add_parser(
        "shopify-pixel", help="print the Custom Pixel to paste into Shopify's Customer events"
    )
    pixel.add_argument(
        "--url", required=True, help="the gateway's URL, e.g. https://t.shop.example"
    )

    emulator = subcommands.add_parser(
        "emulator", help="run the local TikTok Events API emulator (for tests and trials)"
    )
    emulator.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    emulator.add_argument("--port", type=_port, default=9009, help="listen port (9009)")
    emulator.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN[=PIXEL,...]",
        help="an access token to accept, for any pixel or only the listed ones (repeatable; "
        "default: one generated token for any pixel)",
    )
    emulator.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    emulator.add_argument("--qps-limit", type=int, help="answer 40100 above this many requests/s")
    emulator.add_argument(
        "--max-event-age-s", type=int, default=7 * 86400, help="reject older event_time values"
    )
    emulator.add_argument(
        "--require-page-url", action="store_true", help="refuse web events without page.url"
    )
    # the default since page.url became optional; kept so existing invocations keep working
    emulator.add_argument("--no-page-url", action="store_true", help=argparse.SUPPRESS)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    host: str | None = getattr(args, "host", None)
    port: int | None = getattr(args, "port", None)
    return dataclasses.replace(
        settings,
        host=host or settings.host,
        port=settings.port if port is None else port,
    )


@contextlib.contextmanager
def redis_for(settings: Settings, *, watch: bool = False) -> Iterator[Settings]:
    """Yield settings with a Redis URL, starting the data dir's embedded Redis when none is set
    (``watch``: started again if it dies while the servers run)."""
    if settings.redis_url is not None:
        yield settings
        return
    embedded = EmbeddedRedis(settings.data_dir, fsync=settings.redis_fsync)
    url = embedded.start()
    source = embedded.source or "already running"
    print(f"tt-gateway: embedded Redis ({source}) at {url}, appendfsync {settings.redis_fsync}",
          flush=True)  # fmt: skip
    if watch:
        embedded.watch()
    try:
        yield dataclasses.replace(settings, redis_url=url)
    finally:
        embedded.stop()


def _banner(settings: Settings, port: int, *, worker: bool) -> None:
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    base = f"http://{host}:{port}"
    lines = [
        f"tt-gateway {__version__} listening on {base}",
        f"  collector:   {base}/c.js",
        f"  dashboard:   {base}/dashboard",
    ]
    # A storefront on its own origin meets a 403 on /e first of all: say so up front.
    origins = ", ".join(settings.allowed_origins)
    if origins:
        lines.append(
            f"  origins:     same-origin pages and {origins} (TTGW_ALLOWED_ORIGINS; add a "
            "storefront to that comma list)"
        )
    else:
        lines.append(
            "  origins:     same-origin pages only (TTGW_ALLOWED_ORIGINS is empty): a storefront "
            "on another origin gets 403 on /e until it is listed, e.g. "
            "TTGW_ALLOWED_ORIGINS=https://www.shop.example"
        )
    # A secret is printed only by the start that generated it: logs outlive it (docker logs,
    # journald), and one the operator supplied is theirs to keep.
    kept = settings.secrets_file
    for name, secret, label, variable, use in (
        ("admin_token", settings.admin_token, "admin token:", "TTGW_ADMIN_TOKEN",
         "for /v1/admin/* and the dashboard"),
        ("write_key", settings.write_key, "write key:  ", "TTGW_WRITE_KEY",
         "Authorization: Bearer ... on POST /v1/track; the Segment and RudderStack SDKs' "
         "write key for /v1/batch"),
    ):  # fmt: skip
        if name in settings.generated_secrets:
            shown = f"{secret}  (new, kept in {kept}; printed only now; {use})"
        elif name in settings.stored_secrets:
            shown = f"kept in {kept} (not printed; {use})"
        else:
            shown = f"from {variable} (not printed; {use})"
        lines.append(f"  {label} {shown}")
    if settings.sandbox:
        lines.append(
            "  SANDBOX MODE: no pixel configured (TTGW_PIXEL_CODE, TTGW_ACCESS_TOKEN); events are "
            "checked as TikTok would and recorded in Redis by the built-in sandbox, "
            "not sent to TikTok"
        )
    elif worker:
        pixels = ", ".join(i.pixel_code for i in settings.integrations if i.enabled)
        lines.append(f"  delivering to TikTok for pixel(s) {pixels} via {settings.tiktok_api_url}")
    if not worker:
        lines.append("  no delivery worker in this process: run `tt-gateway worker` beside it")
    if settings.generated_secrets:
        generated = ", ".join(settings.generated_secrets)
        lines.append(f"  generated on this start and kept in {kept}: {generated}")
    print("\n".join(lines), flush=True)


async def _serve(settings: Settings, *, web_server: bool, worker: bool, banner: bool = True) -> int:
    """Serve until SIGINT or SIGTERM, then shut down in order: intake, delivery, resources."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner: web.AppRunner | None = None
    worker_stop = asyncio.Event()
    delivery: asyncio.Task[None] | None = None
    try:
        if web_server:
            runner = web.AppRunner(
                create_app(settings),
                access_log=None,
                shutdown_timeout=keys.SHUTDOWN_GRACE_S,
                keepalive_timeout=75,  # aiohttp's default is an hour of idle connections
            )
            await runner.setup()
            site = web.TCPSite(runner, settings.host, settings.port, reuse_port=True)
            await site.start()
            port: int = runner.addresses[0][1]  # the bound one, when port 0 asked for any
            # what exists now (modules, app, settings) lives as long as the process: keep it out
            # of the collector's full passes, whose pause every request in flight would wait on
            gc.freeze()
            if banner:
                _banner(settings, port, worker=worker)
            log.info("started", host=settings.host, port=port, sandbox=settings.sandbox)
        if worker:
            delivery = asyncio.create_task(serve_worker(settings, worker_stop))
            if not web_server:
                print(f"tt-gateway {__version__}: delivery worker running", flush=True)
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
        if delivery is not None:
            waiters.append(delivery)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping")
    finally:
        if runner is not None:
            await runner.cleanup()  # intake stops first
        worker_stop.set()
        if delivery is not None:
            await asyncio.wait([delivery], timeout=keys.SHUTDOWN_GRACE_S + 5)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if delivery is not None and delivery.done() and not stop.is_set():
        error = delivery.exception()
        log.error("worker_died", error=repr(error))
        return 1
    return 0


def _run_emulator(args: argparse.Namespace) -> None:
    from gateway.tiktok.emulator import parse_token_spec, run_emulator
    from gateway.tiktok.emulator_state import EmulatorConfig

    tokens: dict[str, set[str] | None] = {}
    for spec in args.token:
        try:
            token, pixels = parse_token_spec(spec)
        except ValueError as exc:
            raise SettingsError("--token", str(exc)) from None
        tokens[token] = pixels
    config = EmulatorConfig(
        tokens=tokens,
        latency_ms=args.latency_ms,
        qps_limit=args.qps_limit,
        max_event_age_s=args.max_event_age_s,
        require_page_url=args.require_page_url,
    )
    run_emulator(args.host, args.port, config)


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the servers on uvloop where it is installed (measured: +7 % ingest), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tt-gateway``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "emulator":
            _run_emulator(args)
            return 0
        if args.command == "shopify-pixel":
            from gateway.operate.shopify_pixel import render

            try:
                print(render(args.url), end="")
            except ValueError as exc:
                raise SettingsError("--url", str(exc)) from None
            return 0
        settings = _settings(args)
        # the operator commands print results on stdout; their logs go to stderr
        servers = args.command in ("run", "serve", "worker")
        configure_logging(settings.log_level, None if servers else sys.stderr)
        if args.command == "serve" and args.web_child:
            web_workers.watch_parent()  # one of `serve --workers N`'s processes
            with redis_for(settings) as ready:  # the parent's Redis, or its embedded one, shared
                return run_loop(_serve(ready, web_server=True, worker=False, banner=False))
        if args.command in ("run", "serve", "worker"):
            with redis_for(settings, watch=True) as ready:
                if args.command == "serve" and args.workers > 1:
                    return web_workers.supervise(
                        ready, args.workers, lambda port: _banner(ready, port, worker=False)
                    )
                return run_loop(
                    _serve(
                        ready,
                        web_server=args.command != "worker",
                        worker=args.command != "serve",
                    )
                )
        if args.command == "replay":
            with redis_for(settings) as ready:
                return asyncio.run(commands.replay_command(ready, args))
        if args.command == "forget":
            with redis_for(settings) as ready:
                return asyncio.run(forget_command(ready, args))
        if args.command == "send-test":
            with redis_for(settings) as ready:
                return asyncio.run(commands.send_test(ready, args))
        from gateway.operate.doctor import doctor_command
        from gateway.operate.itp import parse_host_pair

        try:
            hosts = [parse_host_pair(text) for text in args.check_host]
        except ValueError as exc:
            raise SettingsError("--check-host", str(exc)) from None
        with redis_for(settings) as ready:
            return asyncio.run(doctor_command(ready, hosts))
    except SettingsError as exc:
        print(f"tt-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EmbeddedRedisError as exc:
        print(f"tt-gateway: embedded Redis: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
