"""The write key of the server routes: ``Authorization: Bearer <key>``, or HTTP Basic with the key
as the user name (and any password), as Segment's and RudderStack's SDKs send it.

The key presented is compared with ``hmac.compare_digest`` once and nothing else decides. A
refusal is a 401 naming ``Authorization`` that offers both schemes, the route's own first.
"""

from __future__ import annotations

import base64
import binascii
import hmac

import orjson
from aiohttp import web

from gateway.appkeys import SETTINGS

REALM = 'Basic realm="tt-gateway"'
ERROR = "a valid write key is required: Authorization: Bearer <key>, or Basic with the key as user"


def presented_key(header: str) -> str | None:
    """The write key an ``Authorization`` value presents, or None for another scheme."""
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return credentials.strip()
    if scheme != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, _ = decoded.partition(":")
    return user


def authorized(request: web.Request) -> bool:
    """Whether the request presents the write key."""
    key = presented_key(request.headers.get("Authorization", ""))
    expected = request.app[SETTINGS].write_key.encode()
    return key is not None and hmac.compare_digest(key.encode(), expected)


def refusal(*, basic_first: bool, **extra: str) -> web.Response:
    """The 401: ``{"error", "field": "Authorization", **extra}`` and both challenges."""
    body = {"error": ERROR, "field": "Authorization", **extra}
    response = web.Response(status=401, body=orjson.dumps(body), content_type="application/json")
    challenges = (REALM, "Bearer") if basic_first else ("Bearer", REALM)
    for challenge in challenges:
        response.headers.add("WWW-Authenticate", challenge)
    return response
