"""A strict local emulator of TikTok's Events API 2.0: ``POST /open_api/v1.3/event/track/``.

Nothing in this project can reach TikTok, so tests, benchmarks and sandbox mode send here. The
emulator is *strict* (it rejects every shape mistake the reference lets us detect) and *faithful*
(it answers the way TikTok answers: HTTP 200 with ``{"code", "message", "request_id", "data"}``
even for errors, TikTok's quoted message texts, one 40002 naming the first bad element path for
the whole request). Facts and their confidence are in ``reference/tiktok-events-api.md``.

Where the reference is silent the emulator errs strict, so a gateway that passes here is safe:
event_time older than ``max_event_age_s`` (7 d) or more than 5 min ahead, event names that differ
from a known one only in case, and non-web ``event_source`` values are rejected.

The emulator's memory and scripts are in :mod:`gateway.tiktok.emulator_state`; the control
endpoints (``/_emulator/*``, loopback test use only) in :mod:`gateway.tiktok.emulator_control`.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.tiktok.api import (
    API_PREFIX,
    DEFAULT_MESSAGES,
    MSG_INTERNAL,
    MSG_OK,
    MSG_THROTTLED,
    TRACK_PATH,
    Rejected,
    new_request_id,
)
from gateway.tiktok.emulator_control import add_control_routes
from gateway.tiktok.emulator_state import (
    STATE_KEY,
    EmulatorConfig,
    EmulatorState,
    Outcome,
    RequestRecord,
    Script,
)
from gateway.tiktok.validation import validate_body


@dataclass(frozen=True)
class _Reply:
    status: int
    code: int | None  # None: not an API answer but an HTML page, as a proxy in front would send
    message: str

    @classmethod
    def api(cls, code: int, message: str) -> _Reply:
        return cls(200, code, message)

    @classmethod
    def page(cls, status: int) -> _Reply:
        try:
            return cls(status, None, f"{status} {HTTPStatus(status).phrase}")
        except ValueError:
            return cls(status, None, f"{status} Error")

    def response(self, request_id: str) -> web.Response:
        if self.code is not None:
            body = {
                "code": self.code,
                "message": self.message,
                "request_id": request_id,
                "data": {},
            }
            return web.Response(
                status=self.status, body=orjson.dumps(body), content_type="application/json"
            )
        title = self.message
        html = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>"
            f"{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        )
        return web.Response(status=self.status, text=html, content_type="text/html")


async def _scripted(state: EmulatorState, step: Script) -> _Reply:
    if step.outcome is Outcome.THROTTLE:
        return _Reply.api(40100, MSG_THROTTLED)
    if step.outcome is Outcome.CODE:
        return _Reply.api(step.code, step.message or DEFAULT_MESSAGES.get(step.code, "Error"))
    if step.outcome is Outcome.HANG:
        await state._hold(step.hang_s)
        return _Reply.page(500)
    if step.http_status == 200:
        return _Reply.api(50000, step.message or MSG_INTERNAL)
    return _Reply.page(step.http_status)


@dataclass(frozen=True)
class _Incoming:
    """A request body, read once and parsed once (bodies can hold 1000 events)."""

    size: int
    too_big: bool
    parsed: Any = None
    json_error: str | None = None

    @classmethod
    async def read(cls, request: web.Request) -> _Incoming:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return cls(request.content_length or 0, too_big=True)
        try:
            return cls(len(body), False, orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            return cls(len(body), False, json_error=str(exc))

    def summary(self) -> tuple[str | None, int]:
        """(pixel, event count) for the request log, as far as the body shows them."""
        if not isinstance(self.parsed, dict):
            return None, 0
        pixel, data = self.parsed.get("event_source_id"), self.parsed.get("data")
        return pixel if isinstance(pixel, str) else None, len(data) if isinstance(data, list) else 0


def _json_object(request: web.Request, incoming: _Incoming) -> dict[str, Any]:
    if request.content_type != "application/json":
        got = request.headers.get("Content-Type", "")
        raise Rejected(
            40000, f"Invalid parameters: Content-Type must be application/json, got {got!r}."
        )
    if incoming.json_error is not None:
        raise Rejected(
            40000, f"Invalid parameters: body is not valid JSON ({incoming.json_error})."
        )
    if not isinstance(incoming.parsed, dict):
        raise Rejected(40000, "Invalid parameters: request body must be a JSON object.")
    return incoming.parsed


async def _answer(
    request: web.Request, state: EmulatorState, incoming: _Incoming, now: float, request_id: str
) -> tuple[_Reply, Outcome | None]:
    over_qps = state._over_qps(now)  # every request counts, scripted or not
    step = state._next_script()
    if step is not None and step.outcome is Outcome.SLOW:
        await state._hold(step.hang_s)  # TikTok took its time, then answered as usual
    elif step is not None and step.outcome is not Outcome.OK:
        return await _scripted(state, step), step.outcome
    if over_qps:
        return _Reply.api(40100, MSG_THROTTLED), None
    if incoming.too_big:
        return _Reply.page(413), None
    try:
        body = _json_object(request, incoming)
        state._check_token(request.headers.get("Access-Token", "").strip(), incoming.summary()[0])
        rejection = validate_body(body, state.config, now)
    except Rejected as exc:
        rejection = exc.rejection
    if rejection is not None:
        return _Reply.api(rejection.code, rejection.message), None
    state._accept(body, request_id, now)
    return _Reply.api(0, MSG_OK), None


async def _track(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.config.latency_ms > 0:
        await asyncio.sleep(state.config.latency_ms / 1000)
    now = state.clock()
    incoming = await _Incoming.read(request)
    request_id = new_request_id(now)
    reply, scripted = await _answer(request, state, incoming, now, request_id)
    pixel, count = incoming.summary()
    api = reply.code is not None
    state.requests.append(
        RequestRecord(
            now,
            pixel,
            count,
            reply.code,
            reply.message,
            reply.status,
            request_id if api else None,
            incoming.size,
            scripted,
        )
    )
    return reply.response(request_id)


@web.middleware
async def _plain_not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    # TikTok's front end answers unknown paths before any API logic, without the JSON envelope.
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.Response(status=404, text="page not found")


async def _release_on_shutdown(app: web.Application) -> None:
    # Hung handlers would otherwise hold the runner's graceful shutdown for up to hang_s.
    app[STATE_KEY].release_hangs()


def create_emulator_app(state: EmulatorState) -> web.Application:
    """The emulator as an aiohttp application serving the track route and `/_emulator/*`."""
    # Oversized bodies surface as HTTPRequestEntityTooLarge, answered 413 by the track handler.
    app = web.Application(
        middlewares=[_plain_not_found], client_max_size=state.config.max_body_bytes
    )
    app[STATE_KEY] = state
    app.router.add_post(TRACK_PATH, _track)
    add_control_routes(app.router)
    app.on_shutdown.append(_release_on_shutdown)
    return app


async def serve_emulator(state: EmulatorState, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start the emulator on host:port (0 = any free port); returns the runner and bound port.

    The caller owns the runner and must `await runner.cleanup()`.
    """
    runner = web.AppRunner(create_emulator_app(state), shutdown_timeout=5.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound: int = runner.addresses[0][1]
    return runner, bound


def api_base_url(host: str, port: int) -> str:
    """The value for TTGW_TIKTOK_API_URL that points at an emulator on host:port."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{API_PREFIX}"


async def _serve_until_signalled(host: str, port: int, config: EmulatorConfig) -> None:
    if not config.tokens:  # nothing would ever be accepted; give the user one to copy
        config = replace(config, tokens={secrets.token_urlsafe(24): None})
    state = EmulatorState(config)
    runner, bound = await serve_emulator(state, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        tokens = "; ".join(
            f"{t} ({'any pixel' if p is None else ', '.join(sorted(p))})"
            for t, p in config.tokens.items()
        )
        base = api_base_url(host, bound)
        print(
            f"TikTok Events API emulator: TTGW_TIKTOK_API_URL={base} tokens: {tokens} "
            f"(control: {base.removesuffix(API_PREFIX)}/_emulator/, loopback only)",
            flush=True,
        )
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def run_emulator(host: str, port: int, config: EmulatorConfig) -> None:
    """Serve the emulator until SIGINT/SIGTERM (blocking); prints the base URL and tokens.

    With no tokens configured, one is generated (any pixel) and printed.
    """
    asyncio.run(_serve_until_signalled(host, port, config))


def parse_token_spec(spec: str) -> tuple[str, set[str] | None]:
    """Parse a CLI token spec: ``TOKEN`` (any pixel) or ``TOKEN=PIX1,PIX2``."""
    token, sep, pixel_list = spec.strip().partition("=")
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(
            f"bad token spec {spec!r}: expected TOKEN or TOKEN=PIX1,PIX2 "
            "(token must be non-empty, without spaces)"
        )
    if not sep:
        return token, None
    pixels = [p.strip() for p in pixel_list.split(",")]
    if not pixels or any(not p or any(c.isspace() for c in p) for p in pixels):
        raise ValueError(
            f"bad token spec {spec!r}: after '=' give a comma-separated list of "
            "non-empty pixel codes, e.g. TOKEN=PIX1,PIX2"
        )
    return token, set(pixels)
