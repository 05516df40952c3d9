"""One structlog configuration: JSON lines with a timestamp, a level and the bound identifiers.

The web process sets :data:`REQUEST_ID` for each request (one ``ContextVar.set``, cheaper than
structlog's ``bind_contextvars``); every line logged while it is set carries it, as does every
value bound with ``structlog.contextvars.bind_contextvars``.
Nothing here ever logs a token or raw contact data: callers pass hashed or redacted values only.

Lines logged while an event loop runs are written together once per loop iteration (one
``write`` for every line of it, not one per line: the access line of each request was measured
at 13 µs, most of it the flush), in the order they were logged; with no loop running, at once.
Lines still held are written before a fork and at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _dumps(event: Any, **_: Any) -> bytes:
    return orjson.dumps(event, default=str)


class _Clock:
    """structlog's ``TimeStamper(fmt="iso", utc=True)``, the same text
    (``2026-12-02T19:04:05.123456Z``, no fraction on a whole second), the date part made once
    a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time_ns() // 1000
        second, micros = divmod(now, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{micros:06d}Z" if micros else f"{self._prefix}Z"
        return event


class LineWriter:
    """structlog's logger: JSON lines to ``file``, written once per event-loop iteration."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._lines: list[bytes] = []
        self._scheduled = False

    def msg(self, message: bytes) -> None:
        """Hold a line; write it at the end of this loop iteration (at once with no loop)."""
        self._lines.append(message)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg

    def flush(self) -> None:
        """Write every line held."""
        self._scheduled = False
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        lines.append(b"")
        try:
            self._file.write(b"\n".join(lines))
            self._file.flush()
        except (OSError, ValueError):  # the stream is gone (closed at exit, a broken pipe)
            pass


_writers: list[LineWriter] = []


def _flush_all() -> None:
    for writer in _writers:
        writer.flush()


atexit.register(_flush_all)
os.register_at_fork(before=_flush_all)  # a forked child must not write its parent's lines again


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route every structlog logger of the process to JSON lines on ``stream`` (stdout)."""
    out = stream or sys.stdout
    _flush_all()
    writer = LineWriter(out.buffer if hasattr(out, "buffer") else sys.stdout.buffer)
    _writers[:] = [writer]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_request_id,
            structlog.processors.add_log_level,
            _Clock(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger that names its component in every line."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
