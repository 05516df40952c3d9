"""One structlog configuration: JSON lines with a timestamp, a level and the bound identifiers.

The web process sets :data:`REQUEST_ID` for each request (one ``ContextVar.set``, cheaper than
structlog's ``bind_contextvars``); every line logged while it is set carries it, as does every
value bound with ``structlog.contextvars.bind_contextvars``.
Nothing here ever logs a token or raw contact data: callers pass hashed or redacted values only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

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


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route every structlog logger of the process to JSON lines on ``stream`` (stdout)."""
    out = stream or sys.stdout
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.BytesLoggerFactory(
            file=out.buffer if hasattr(out, "buffer") else None
        ),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger that names its component in every line."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
