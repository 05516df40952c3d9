"""Contact data removed from URLs: pure functions, no I/O.

Page URLs, landing URLs and referrers are stored and sent to TikTok, and they carry contact data:
marketing links (``?email=…``), single-page apps' routes in the fragment (``#/confirm?email=…``),
account pages (``/account/jane@example.com``). :func:`redact_url` removes it and keeps everything
else byte for byte; the rules are in its docstring.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["REDACTED_SEGMENT", "redact_url"]

# Query parameters that name contact data; their values never leave the request handler.
_PII_PARAMS = frozenset(
    {"email", "e-mail", "mail", "emailaddress", "email_address", "phone", "phone_number", "tel",
     "telephone", "mobile", "first_name", "last_name", "firstname", "lastname", "name", "address",
     "zip", "zip_code", "postcode"}
)  # fmt: skip
# Other names that say e-mail or phone (billing_phone, phoneNumber, customer_tel, e_mail), once
# camel humps are split with "_"; "tel" only as a word, so "hotel" is not one.
_CONTACT_NAME = re.compile(r"e[-_]?mail|phone|mobile|(?<![a-z])tel(?![a-z])")
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_DIGITS_ONLY = re.compile(r"\+?[0-9][0-9 ().-]{6,}")
# An address anywhere in a text. The last label needs letters, so a CDN path such as
# "react@18.2.0" is not one; the bounded repeats keep the search linear on long input.
_EMAIL = re.compile(
    r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}@(?:[\w-]{1,63}\.){1,8}(?:[^\W\d_]{2,63}|xn--[\w-]{1,59})"
)
# E.164-looking: "+" and 8 to 15 digits, perhaps grouped. Not right after a letter or digit: in
# "shoe+10000012" the "+" stands for a space.
_E164 = re.compile(r"(?<![0-9A-Za-z])\+[0-9](?:[ .()-]{0,2}[0-9]){7,14}(?![0-9])")
# What each rule below needs, looked for first (plain substring tests are cheap; one regex over
# all of them is not): most URLs have none and are returned as given.
_SUSPECT_WORDS = ("@", "mail", "phone", "mobile", "tel", "name", "address", "zip", "postcode")
_DIGIT_RUN = re.compile(r"[0-9][0-9 ().+-]{6}")
# "%2540" is "@" encoded twice; a third round catches what a redirect chain adds.
_DECODE_ROUNDS = 3
# What a path or fragment segment holding contact data is replaced with.
REDACTED_SEGMENT = "redacted"


def redact_url(url: str) -> str:
    """``url`` without the e-mail addresses and phone numbers it carries.

    Page URLs, landing URLs and referrers are stored and sent to TikTok, and they carry contact
    data: marketing links (``?email=…``), single-page apps' routes in the fragment
    (``#/confirm?email=…``), account pages (``/account/jane@example.com``). Each text is looked at
    as given and percent-decoded up to three times (``%40``, ``%2540``). In the query, and in a
    query-like part of the fragment (after its first ``?``), a parameter is removed when its name
    says contact data (``email``, ``phone``, ``billing_phone``, ``tel``, ``mobile``, names,
    addresses…), or when it holds an ``@``, a number such as ``+14155552671`` or a value made only
    of 7 or more digits and separators. In the path and the rest of the fragment, a segment that
    holds an address, an E.164-looking number, or a ``name=value`` with such a name becomes
    :data:`REDACTED_SEGMENT`. Everything else (``ttclid``, UTM fields, ids, order numbers in the
    path) is kept byte for byte, and redacting again changes nothing.

    Raises ``ValueError`` for text :func:`urllib.parse.urlsplit` cannot split.
    """
    parts = urlsplit(url)
    # urlsplit drops tabs and newlines: look at what it kept, not at ``url``.
    probe = f"{parts.path}?{parts.query}#{parts.fragment}"
    if not any(_suspect(form) for form in _decoded(probe)):
        return url
    path, query, fragment = (
        _redact_path(parts.path),
        _redact_query(parts.query),
        _redact_fragment(parts.fragment),
    )
    if (path, query, fragment) == (parts.path, parts.query, parts.fragment):
        return url
    rebuilt = urlunsplit(parts._replace(path=path, query=query, fragment=fragment))
    if not parts.netloc and path.startswith("//"):
        # an empty authority ("////x"): urlunsplit drops it, and the path would read as a host
        rest = urlunsplit(parts._replace(scheme="", path=path, query=query, fragment=fragment))
        rebuilt = (f"{parts.scheme}:" if parts.scheme else "") + "//" + rest
    return rebuilt


def _suspect(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in _SUSPECT_WORDS) or _DIGIT_RUN.search(text) is not None


def _redact_query(query: str) -> str:
    pieces = query.split("&")
    kept = [piece for piece in pieces if not _contact_parameter(piece)]
    return query if len(kept) == len(pieces) else "&".join(kept)


def _redact_path(path: str) -> str:
    segments = path.split("/")
    redacted = [REDACTED_SEGMENT if _contact_segment(s) else s for s in segments]
    return path if redacted == segments else "/".join(redacted)


def _redact_fragment(fragment: str) -> str:
    # Hash routers (Vue, Angular, React Router's HashRouter) keep a route and its own query here.
    route, mark, query = fragment.partition("?")
    kept = _redact_query(query)
    # A "?" left with nothing after it goes too; the route is read the same either way.
    tail = "" if query and not kept else mark + kept
    return _redact_path(route) + tail


def _contact_parameter(piece: str) -> bool:
    """Whether one ``name=value`` of a query names or holds contact data."""
    if not piece:
        return False
    name, _, value = piece.partition("=")
    # A click id made only of digits is still the click, not a phone number.
    numeric_ok = name == "ttclid"
    if "%" not in piece and "+" not in piece:  # the usual case: one form, and no E.164 "+"
        return (
            "@" in piece
            or _contact_name(name)
            or (not numeric_ok and _DIGITS_ONLY.fullmatch(value.strip()) is not None)
        )
    if any(_contact_name(form) for form in _query_forms(name)):
        return True
    if not numeric_ok and any(_DIGITS_ONLY.fullmatch(f.strip()) for f in _query_forms(value)):
        return True
    return any("@" in form or ("+" in form and _E164.search(form)) for form in _query_forms(piece))


def _contact_segment(segment: str) -> bool:
    """Whether one path segment holds an address, a phone number or a contact parameter."""
    if not segment:
        return False
    for form in _decoded(segment):
        if "@" in form and _EMAIL.search(form):
            return True
        if "+" in form and _E164.search(form):
            return True
        if "=" in form and any(
            _contact_name(piece.partition("=")[0])
            for piece in re.split(r"[&;]", form)
            if "=" in piece
        ):
            return True
    return False


def _contact_name(name: str) -> bool:
    name = name.strip()
    lowered = name.lower()
    if lowered in _PII_PARAMS:
        return True
    if not any(word in lowered for word in ("mail", "phone", "mobile", "tel")):
        return False
    return _CONTACT_NAME.search(_CAMEL_HUMP.sub("_", name).lower()) is not None


def _query_forms(text: str) -> list[str]:
    # In a query "+" is a space, and a hash router may also mean a literal "+": try both.
    forms = _decoded(text.replace("+", " "))
    return forms + _decoded(text) if "+" in text else forms


def _decoded(text: str) -> list[str]:
    """``text`` and each of up to three rounds of percent-decoding it."""
    forms = [text]
    for _ in range(_DECODE_ROUNDS):
        if "%" not in text:
            break
        text = unquote(text)
        forms.append(text)
    return forms
