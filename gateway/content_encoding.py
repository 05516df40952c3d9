"""Request bodies that cannot be decoded are the client's mistake: 4xx JSON, never a traceback.

aiohttp decodes ``Content-Encoding: gzip`` and ``deflate`` bodies as they are read (and ``br`` or
``zstd`` when their optional modules are installed); a body that is not what its label says
raises ``RequestPayloadError`` in whatever handler reads it. :func:`decoded_bodies` turns that into
400 naming ``Content-Encoding`` for every route, the ``/v1/admin`` and ``/tt`` sub-applications
included (a parent's middlewares run for its sub-applications), and refuses a coding aiohttp would
pass through undecoded (``x-gzip``, ``gzip, deflate``, ``compress``...) with 415 before anything
reads the body.

A coding aiohttp knows but cannot decode here (``br`` without Brotli) is refused by aiohttp's
parser itself, before any middleware, with a plain-text 400 naming the coding; its logger is
:data:`SERVER_LOG`, whose filter writes one JSON line instead of a traceback.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError

from gateway.logs import get_logger

__all__ = ["DECODED", "SERVER_LOG", "decoded_bodies"]

# What aiohttp's parser decodes (br and zstd only with their modules; else it answers 400 itself).
DECODED = frozenset({"gzip", "deflate", "br", "zstd"})
_ACCEPTED = DECODED | {"identity"}
_ACCEPT_ENCODING = "gzip, deflate"  # RFC 7694: what a 415 tells the client to use instead

log = get_logger("gateway.http")


def _refusal(
    status: int, error: str, field: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": error, "field": field}),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def decoded_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """415 for a coding that is not decoded; 400 for a body its coding cannot decode."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding and coding not in _ACCEPTED and request.body_exists:
        return _refusal(
            415,
            f"Content-Encoding must be one of {_ACCEPT_ENCODING} or identity",
            "Content-Encoding",
            {"Accept-Encoding": _ACCEPT_ENCODING},
        )
    try:
        return await handler(request)
    except RequestPayloadError as exc:
        if isinstance(exc.__cause__, ContentEncodingError):
            refusal = _refusal(
                400, f"the body is not valid {coding} as Content-Encoding says", "Content-Encoding"
            )
        else:  # any other framing error aiohttp reports on the stream instead of its parser
            refusal = _refusal(400, "the body could not be read as sent", "body")
    # The parser gave up on this body: what else the client sends cannot be framed, so the
    # connection ends with the answer, and the stream is closed so that aiohttp does not read it
    # again after the answer (that read raises the same error: a traceback, aiohttp#1918).
    request.content.feed_eof()
    refusal.force_close()
    return refusal


class _ClientErrors(logging.Filter):
    """aiohttp's own 400 for a request it could not parse: a JSON line, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, BadHttpMessage):
            return True
        # the class names the mistake; its message may quote the request line (a query string)
        field = "Content-Encoding" if isinstance(error, ContentEncodingError) else None
        log.info("request_refused", status=error.code, error=type(error).__name__, field=field)
        return False


SERVER_LOG = logging.getLogger("gateway.http.server")
"""The logger of the gateway's HTTP server (``handler_args``); its own errors keep tracebacks."""
SERVER_LOG.addFilter(_ClientErrors())
