"""A strict local emulator of TikTok's Events API 2.0: ``POST /open_api/v1.3/event/track/``.

Nothing in this project can reach TikTok, so tests, benchmarks and sandbox mode send here. The
emulator is *strict* (it rejects every shape mistake the reference lets us detect) and *faithful*
(it answers the way TikTok answers: HTTP 200 with ``{"code", "message", "request_id", "data"}``
even for errors, TikTok's quoted message texts, one 40002 naming the first bad element path for
the whole request). Facts and their confidence are in ``reference/tiktok-events-api.md``.

Where the reference is silent the emulator errs strict, so a gateway that passes here is safe:
event_time older than ``max_event_age_s`` (7 d) or more than 5 min ahead, event names that differ
from a known one only in case, and non-web ``event_source`` values are rejected.

Besides the API route, control endpoints let an out-of-process test or a CLI user drive it:
``GET /_emulator/events?since=N``, ``GET /_emulator/requests``, ``POST /_emulator/script`` (a
Script object or a list), ``POST /_emulator/revoke`` and ``/restore`` (``{"token", "pixels"}``),
``POST /_emulator/reset``, ``POST /_emulator/release``. They have no authentication: they are for
tests on loopback, so bind the emulator to loopback only.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.tiktok.spec import (
    API_PREFIX,
    DEDUP_WINDOW_S,
    DEFAULT_MESSAGES,
    MSG_AUTH_MISSING,
    MSG_AUTH_REVOKED,
    MSG_INTERNAL,
    MSG_OK,
    MSG_THROTTLED,
    TRACK_PATH,
    Rejected,
    new_request_id,
    validate_body,
)


class Outcome(StrEnum):
    """What a scripted request does instead of (or before) normal processing."""

    OK = "ok"  # process normally; lets a script skip requests
    THROTTLE = "throttle"  # HTTP 200, code 40100
    FAIL = "fail"  # HTTP `http_status` with an HTML proxy page (code 50000 JSON when 200)
    HANG = "hang"  # no answer for `hang_s` or until release_hangs(), then HTTP 500
    SLOW = "slow"  # no answer for `hang_s` or until release_hangs(), then processed normally
    CODE = "code"  # HTTP 200 with the given body code/message; nothing is recorded


@dataclass
class Script:
    """One scripted behaviour, applied to the next `times` requests to the track endpoint."""

    outcome: Outcome
    times: int = 1
    code: int = 0
    message: str = ""
    http_status: int = 500
    hang_s: float = 30.0

    def __post_init__(self) -> None:
        self.outcome = Outcome(self.outcome)  # also accepts the value string ("throttle")
        if isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1:
            raise ValueError(f"Script.times must be an integer >= 1, got {self.times!r}")
        if not isinstance(self.code, int) or not isinstance(self.message, str):
            raise ValueError("Script.code must be an integer and Script.message a string")
        if not 100 <= self.http_status <= 599:
            raise ValueError(f"Script.http_status must be 100-599, got {self.http_status!r}")
        if self.hang_s < 0:
            raise ValueError(f"Script.hang_s must be >= 0, got {self.hang_s!r}")


@dataclass(frozen=True)
class AcceptedEvent:
    """One event of a successful request; `payload` is the event object as received."""

    pixel_code: str
    event: str
    event_id: str | None
    event_time: int
    test_event_code: str | None
    request_id: str
    received_at: float
    duplicate: bool
    payload: dict[str, Any]


@dataclass(frozen=True)
class RequestRecord:
    """One request to the track endpoint. `code` is None when the answer was not JSON."""

    at: float
    pixel_code: str | None
    event_count: int
    code: int | None
    message: str
    http_status: int
    request_id: str | None
    body_bytes: int
    scripted: Outcome | None


@dataclass
class EmulatorConfig:
    """Tokens and strictness knobs. `tokens` maps an access token to its pixels (None = any)."""

    tokens: dict[str, set[str] | None]
    latency_ms: float = 0.0
    qps_limit: int | None = None
    max_event_age_s: int = 7 * 86400
    max_future_skew_s: int = 300
    require_page_url: bool = True
    max_body_bytes: int = 2 * 1024 * 1024


class EmulatorState:
    """Everything the emulator remembers; shared by its app and the test or bench driving it.

    Not thread-safe: use it from the event loop that serves the app. `clock` (wall-clock seconds)
    exists so tests can move time for the QPS window, event_time bounds and the 48 h dedup.
    """

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.accepted: list[AcceptedEvent] = []
        self.requests: list[RequestRecord] = []
        self._scripts: deque[Script] = deque()
        self._left = 0  # requests the head script still applies to
        self._tokens: dict[str, set[str] | None] = {}
        self._revoked: set[str] = set()
        self._first_seen: dict[tuple[str, str, str], float] = {}
        self._qps_window = (0, 0)  # (second, requests seen in it)
        self._hangs: set[asyncio.Event] = set()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Event]] = []
        self.reset()

    def script(self, *scripts: Script) -> None:
        """Queue behaviours, consumed FIFO one request at a time."""
        if not self._scripts and scripts:
            self._left = scripts[0].times
        self._scripts.extend(scripts)

    def revoke(self, token: str) -> None:
        """Make `token` answer 40105 until restored."""
        self._revoked.add(token)

    def restore(self, token: str, pixels: set[str] | None = None) -> None:
        """Un-revoke `token`. With `pixels`, also set its pixels; an unknown token is added
        (allowed any pixel when `pixels` is None)."""
        self._revoked.discard(token)
        if pixels is not None or token not in self._tokens:
            self._tokens[token] = None if pixels is None else set(pixels)

    def release_hangs(self) -> None:
        """Let every hanging request finish now (with HTTP 500)."""
        for hang in self._hangs:
            hang.set()
        self._hangs.clear()

    @property
    def hanging(self) -> int:
        """Requests currently held by a HANG script."""
        return len(self._hangs)

    def reset(self) -> None:
        """Forget records, scripts, dedup memory and token changes (back to the config)."""
        self.accepted.clear()
        self.requests.clear()
        self._scripts.clear()
        self._left = 0
        self._tokens = {t: None if p is None else set(p) for t, p in self.config.tokens.items()}
        self._revoked.clear()
        self._first_seen.clear()
        self._qps_window = (0, 0)

    def unique_events(self) -> list[AcceptedEvent]:
        """Accepted events TikTok would count: duplicates within 48 h left out."""
        return [e for e in self.accepted if not e.duplicate]

    @property
    def duplicates(self) -> int:
        """How many accepted events TikTok would have deduplicated away."""
        return sum(e.duplicate for e in self.accepted)

    async def wait_for_events(self, n: int, timeout_s: float = 10.0) -> list[AcceptedEvent]:
        """Return all accepted events once at least `n` were accepted; TimeoutError otherwise."""
        await self._wait(
            lambda: len(self.accepted) >= n,
            timeout_s,
            lambda: f"{len(self.accepted)} of {n} events accepted",
        )
        return list(self.accepted)

    async def wait_for(self, ready: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until ``ready()`` holds (checked as requests arrive)."""
        await self._wait(ready, timeout_s, lambda: f"{len(self.accepted)} events accepted")

    async def wait_for_hanging(self, n: int = 1, timeout_s: float = 10.0) -> None:
        """Return once at least `n` requests are hanging; TimeoutError otherwise."""
        await self._wait(
            lambda: self.hanging >= n, timeout_s, lambda: f"{self.hanging} of {n} requests hanging"
        )

    async def _wait(
        self, ready: Callable[[], bool], timeout_s: float, progress: Callable[[], str]
    ) -> None:
        if ready():
            return
        woken = asyncio.Event()
        waiter = (ready, woken)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await woken.wait()
        except TimeoutError:
            raise TimeoutError(f"after {timeout_s} s only {progress()}") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _hold(self, hang_s: float) -> None:
        released = asyncio.Event()
        self._hangs.add(released)
        self._notify()
        try:
            async with asyncio.timeout(hang_s):
                await released.wait()
        except TimeoutError:
            pass
        finally:
            self._hangs.discard(released)

    def _notify(self) -> None:
        for waiter in [w for w in self._waiters if w[0]()]:
            self._waiters.remove(waiter)
            waiter[1].set()

    def _next_script(self) -> Script | None:
        if not self._scripts:
            return None
        step = self._scripts[0]
        self._left -= 1
        if self._left <= 0:
            self._scripts.popleft()
            self._left = self._scripts[0].times if self._scripts else 0
        return step

    def _over_qps(self, now: float) -> bool:
        second, seen = self._qps_window
        seen = seen + 1 if int(now) == second else 1
        self._qps_window = (int(now), seen)
        return self.config.qps_limit is not None and seen > self.config.qps_limit

    def _check_token(self, token: str, pixel: str | None) -> None:
        if not token:
            raise Rejected(40104, MSG_AUTH_MISSING)
        if token not in self._tokens or token in self._revoked:
            raise Rejected(40105, MSG_AUTH_REVOKED)
        allowed = self._tokens[token]
        if allowed is not None and pixel is not None and pixel not in allowed:
            raise Rejected(
                40001,
                f"No permission to operate pixel code: {pixel}. You must be "
                "an admin or operator of this advertiser account.",
            )

    def _accept(self, body: dict[str, Any], request_id: str, now: float) -> None:
        pixel: str = body["event_source_id"]
        for item in body["data"]:
            event_id = item.get("event_id")
            duplicate = False
            if event_id is not None:
                key = (pixel, item["event"], event_id)
                first = self._first_seen.get(key)
                duplicate = first is not None and now - first < DEDUP_WINDOW_S
                if not duplicate:
                    self._first_seen[key] = now
            self.accepted.append(
                AcceptedEvent(
                    pixel,
                    item["event"],
                    event_id,
                    item["event_time"],
                    body.get("test_event_code"),
                    request_id,
                    now,
                    duplicate,
                    item,
                )
            )
        self._notify()


# --- HTTP ---

STATE_KEY = web.AppKey("emulator_state", EmulatorState)


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


# --- control endpoints (loopback test use only: no authentication) ---


def _control_error(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    return orjson.loads(raw) if raw.strip() else {}


def _script_from_json(obj: object) -> Script:
    if not isinstance(obj, dict) or not isinstance(obj.get("outcome"), str):
        raise ValueError("each script needs an 'outcome' string")
    unknown = set(obj) - Script.__dataclass_fields__.keys()
    if unknown:
        raise ValueError(f"unknown script field(s): {', '.join(sorted(unknown))}")
    return Script(**obj)


async def _control_script(request: web.Request) -> web.Response:
    try:
        payload = await _json_body(request)
        items = payload if isinstance(payload, list) else [payload]
        scripts = [_script_from_json(item) for item in items]
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        return _control_error(f"bad script: {exc}")
    request.app[STATE_KEY].script(*scripts)
    return web.json_response({"queued": len(scripts)})


async def _control_token(request: web.Request) -> web.Response:
    try:
        payload = await _json_body(request)
    except ValueError as exc:
        return _control_error(f"bad JSON: {exc}")
    token = payload.get("token") if isinstance(payload, dict) else None
    pixels = payload.get("pixels") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token:
        return _control_error("'token' must be a non-empty string")
    if pixels is not None and not (
        isinstance(pixels, list) and all(isinstance(p, str) for p in pixels)
    ):
        return _control_error("'pixels' must be a list of strings or null")
    state = request.app[STATE_KEY]
    if request.path.endswith("/revoke"):
        state.revoke(token)
    else:
        state.restore(token, None if pixels is None else set(pixels))
    return web.json_response({"token": token})


async def _control_events(request: web.Request) -> web.Response:
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return _control_error("'since' must be an integer index")
    state = request.app[STATE_KEY]
    events = [asdict(e) for e in state.accepted[max(since, 0) :]]
    return web.Response(
        body=orjson.dumps(
            {"events": events, "total": len(state.accepted), "duplicates": state.duplicates}
        ),
        content_type="application/json",
    )


async def _control_requests(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    records = [asdict(r) for r in state.requests]
    return web.Response(
        body=orjson.dumps({"requests": records, "hanging": state.hanging}),
        content_type="application/json",
    )


async def _control_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"reset": True})


async def _control_release(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    released = state.hanging
    state.release_hangs()
    return web.json_response({"released": released})


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
    app.router.add_get("/_emulator/events", _control_events)
    app.router.add_get("/_emulator/requests", _control_requests)
    app.router.add_post("/_emulator/script", _control_script)
    app.router.add_post("/_emulator/revoke", _control_token)
    app.router.add_post("/_emulator/restore", _control_token)
    app.router.add_post("/_emulator/reset", _control_reset)
    app.router.add_post("/_emulator/release", _control_release)
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
