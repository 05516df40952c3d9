"""The ingest baseline: a bare aiohttp handler on uvloop that only parses the JSON of ``POST /e``.

``python bench/bare_server.py PORT [REDIS_URL]`` serves ``POST /e`` (read the body,
``orjson.loads`` it, answer 202 with a small JSON) and ``GET /healthz`` on 127.0.0.1:PORT with
``SO_REUSEPORT``, so two of them on one port share the load as two gateway ``serve`` processes do.
No access log. With ``REDIS_URL`` each request also does one durable write, ``XADD`` of the body
to a bench-only stream through redis-py — the least a handler that answers "queued" must do
(``bench/hotspots.py`` uses it to price one Redis round trip).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import orjson
import uvloop
from aiohttp import web
from redis.asyncio import Redis

ANSWER = orjson.dumps(
    {"accepted": [{"index": 0, "event": "AddToCart", "status": "queued"}], "errors": []}
)
STREAM = "bench:bare:events"
REDIS: web.AppKey[Redis] = web.AppKey("redis", Redis)


async def collect(request: web.Request) -> web.Response:
    """Parse the body as the gateway does; nothing else."""
    orjson.loads(await request.read())
    return web.Response(status=202, body=ANSWER, content_type="application/json")


async def collect_and_write(request: web.Request) -> web.Response:
    """Parse the body and append it to a Redis stream before answering."""
    body = await request.read()
    orjson.loads(body)
    await request.app[REDIS].xadd(STREAM, {"data": body})
    return web.Response(status=202, body=ANSWER, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """Up."""
    return web.Response(text="ok")


def main() -> None:
    """Serve until SIGTERM or SIGINT."""
    app = web.Application(client_max_size=64 * 1024)
    if len(sys.argv) > 2:
        url = sys.argv[2]

        async def redis_context(app: web.Application) -> AsyncIterator[None]:
            app[REDIS] = Redis.from_url(url)
            yield
            await app[REDIS].aclose()

        app.cleanup_ctx.append(redis_context)
        app.router.add_post("/e", collect_and_write)
    else:
        app.router.add_post("/e", collect)
    app.router.add_get("/healthz", healthz)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        reuse_port=True,
        access_log=None,
        print=None,
        shutdown_timeout=1.0,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
