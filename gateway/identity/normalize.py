"""Normalization and hashing of match keys: pure functions, no I/O.

TikTok matches on SHA-256 (lowercase hex) of normalized values, so two sides (``ttq.identify`` in
the browser and this gateway) only match when they normalize identically. Every ``hash_*``
function passes a value that already is 64 hex characters (any case) through, lowercased, as
TikTok's own GTM template and the integrators do; it returns ``None`` for a value that is empty or
not plausibly what it claims to be, so the caller simply leaves the field out.

Rules (TikTok Events API reference §2.3 and §6.1):

* email: trim and lowercase. No Gmail dot or plus rules: TikTok documents none, and applying them
  would make our hash differ from the pixel's.
* phone: E.164 **with** the leading ``+``, normalized by ``phonenumbers``:

  1. Strip surrounding whitespace; refuse anything longer than 64 characters.
  2. Drop a trailing extension (``ext. 12``, ``extension 12``, ``x12``, ``#12``, ``;ext=12``).
     Any other letter makes the value invalid: a vanity number such as ``1-800-FLOWERS`` is not
     something a user would type as their own number.
  3. A value whose first significant character is ``+``, or whose digits start with the ``00``
     international prefix, is parsed as international whatever the region.
  4. Otherwise it is parsed as a national number of the region the caller gives (the event's
     country, else the integration's default). An unknown region counts as none.
  5. With no region, a value made only of 8 to 15 digits (after removing spaces, dots, dashes and
     parentheses) is tried as international by prefixing ``+``: Shopify and others store
     ``33612345678``. Any other value without a region is invalid.
  6. Whatever ``phonenumbers`` cannot parse, or does not call a valid number
     (``is_valid_number``), is invalid. No input string makes these functions raise.

* external_id: trim only. Lowercasing would break parity with TikTok's template and with the raw
  value ``ttq.identify`` hashes in the browser.
* first/last name: lowercase, keep letters (accented too) and digits, hash.
* zip: lowercase, remove spaces and dashes, hash.
* city/state/country: sent plain, lowercase, letters and digits only.

The raw values are personal data: nothing here logs them or keeps them beyond the call.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from urllib.parse import unquote, urlsplit, urlunsplit

import phonenumbers

__all__ = [
    "MAX_EMAIL_CHARS",
    "MAX_PHONE_CHARS",
    "REDACTED_SEGMENT",
    "as_sha256",
    "hash_email",
    "hash_external_id",
    "hash_name",
    "hash_phone",
    "hash_zip",
    "normalize_email",
    "normalize_phone",
    "normalize_place",
    "normalize_region",
    "redact_url",
    "sha256_hex",
]

# RFC 5321: 64 octets of local part, "@", 255 of domain. Longer is not an address.
MAX_EMAIL_CHARS = 320
# The longest real formatting of a 15-digit number with an extension fits comfortably; longer
# input only costs phonenumbers' regexes time.
MAX_PHONE_CHARS = 64

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_PHONE_EXTENSION = re.compile(
    r"\s*[,;]?\s*(?:ext(?:ension|n)?\.?|x|#)\s*[:=]?\s*[0-9]{1,10}\s*#?$",
    re.IGNORECASE,
)
_PHONE_SEPARATORS = re.compile(r"[\s.()\-]")
_BARE_INTERNATIONAL = re.compile(r"[0-9]{8,15}")


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of ``value`` encoded as UTF-8.

    Raises ``UnicodeEncodeError`` for a string with lone surrogates, which has no UTF-8 form; the
    ``hash_*`` functions return ``None`` for those instead.
    """
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def as_sha256(value: str) -> str | None:
    """``value`` lowercased if, once stripped, it already is a SHA-256 hex digest; else ``None``."""
    stripped = value.strip()
    return stripped.lower() if _SHA256_HEX.fullmatch(stripped) else None


def normalize_email(raw: str) -> str | None:
    """Trimmed, lowercased address, or ``None`` when it is not plausibly an email address.

    Plausible means: exactly one ``@``, a non-empty local part, no whitespace or control
    characters, and a domain with a dot between non-empty labels or an IP literal such as
    ``[192.0.2.1]``. Unicode domains are kept as given (lowercased, not converted to punycode)
    because the browser side hashes what the user typed.
    """
    email = raw.strip().lower()
    if not email or len(email) > MAX_EMAIL_CHARS or email.count("@") != 1:
        return None
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cs") for ch in email):
        return None
    local, domain = email.split("@")
    if not local or not _plausible_domain(domain):
        return None
    return email


def hash_email(raw: str) -> str | None:
    """Hash of :func:`normalize_email`, a pre-hashed value passed through, or ``None``."""
    prehashed = as_sha256(raw)
    if prehashed is not None:
        return prehashed
    email = normalize_email(raw)
    return None if email is None else _hash(email)


def normalize_phone(raw: str, region: str | None) -> str | None:
    """E.164 form (``+33612345678``) of a phone number, or ``None`` when it is not a valid one.

    ``region`` is the ISO 3166-1 alpha-2 country a national number belongs to; it is checked with
    :func:`normalize_region`, so ``"fr"`` works and an unknown code counts as no region. The
    module docstring lists the rules.
    """
    text = raw.strip()
    if len(text) > MAX_PHONE_CHARS:
        return None
    # The extension is not part of the number TikTok matches on.
    text = _PHONE_EXTENSION.sub("", text, count=1)
    if not text or any(ch.isalpha() for ch in text):
        return None
    compact = _PHONE_SEPARATORS.sub("", text)
    default_region = normalize_region(region)
    parse_region: str | None = None
    if compact.startswith("00"):
        # phonenumbers only knows the region's own IDD prefix ("011" in the US); "00" is the one
        # most of the world uses and no national number starts with it.
        candidate = "+" + compact[2:]
    elif compact.startswith(("+", "\uff0b")):
        candidate = text
    elif default_region is not None:
        candidate, parse_region = text, default_region
    elif _BARE_INTERNATIONAL.fullmatch(compact):
        candidate = "+" + compact
    else:
        return None
    try:
        number = phonenumbers.parse(candidate, parse_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164


def hash_phone(raw: str, region: str | None) -> str | None:
    """Hash of :func:`normalize_phone` (with the ``+``), a pre-hashed value, or ``None``."""
    prehashed = as_sha256(raw)
    if prehashed is not None:
        return prehashed
    phone = normalize_phone(raw, region)
    return None if phone is None else _hash(phone)


def hash_external_id(raw: str) -> str | None:
    """Hash of the trimmed id, case kept; a pre-hashed value passed through; ``None`` if empty.

    No lowercasing: TikTok's own GTM template and ``ttq.identify`` hash the id as given, and
    ``"User_123"`` and ``"user_123"`` may be different customers.
    """
    prehashed = as_sha256(raw)
    if prehashed is not None:
        return prehashed
    external_id = raw.strip()
    return _hash(external_id) if external_id else None


def hash_name(raw: str) -> str | None:
    """Hash of a first or last name lowercased down to letters and digits, or ``None``.

    ``" Jean-Luc "`` and ``"jean luc"`` both hash ``"jeanluc"``; accents are kept (``"José"`` →
    ``"josé"``). A pre-hashed value is passed through.
    """
    prehashed = as_sha256(raw)
    if prehashed is not None:
        return prehashed
    name = _letters_and_digits(raw)
    return _hash(name) if name else None


def hash_zip(raw: str) -> str | None:
    """Hash of a postal code lowercased without spaces and dashes, a pre-hashed value, or ``None``.

    ``"SW1A 1AA"`` → ``"sw1a1aa"``, ``"12345-6789"`` → ``"123456789"``.
    """
    prehashed = as_sha256(raw)
    if prehashed is not None:
        return prehashed
    code = "".join(
        ch for ch in raw.lower() if not ch.isspace() and unicodedata.category(ch) != "Pd"
    )
    return _hash(code) if code else None


def normalize_place(raw: str) -> str | None:
    """City, state or country as TikTok takes them in plain text: lowercase letters and digits.

    ``"New York"`` → ``"newyork"``, ``"Île-de-France"`` → ``"îledefrance"``; ``None`` if nothing is
    left.
    """
    place = _letters_and_digits(raw)
    return place or None


def normalize_region(raw: str | None) -> str | None:
    """An ISO 3166-1 alpha-2 code ``phonenumbers`` knows (``" fr "`` → ``"FR"``), else ``None``."""
    if raw is None:
        return None
    code = raw.strip()
    # isascii: str.upper() maps a few non-ASCII letters (dotless i, U+0131) onto ASCII ones.
    if not code.isascii() or code.upper() not in phonenumbers.SUPPORTED_REGIONS:
        return None
    return code.upper()


def _plausible_domain(domain: str) -> bool:
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if literal.startswith("ipv6:"):
            literal = literal[len("ipv6:") :]
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            return False
        return True
    labels = domain.split(".")
    return len(labels) >= 2 and all(labels)


def _letters_and_digits(raw: str) -> str:
    # NFC first so that "é" typed as e + combining accent (macOS input, some databases) matches
    # the precomposed form. Marks are kept: scripts such as Devanagari spell names with them.
    text = unicodedata.normalize("NFC", raw.lower())
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LM" or ch.isdecimal())


def _hash(normalized: str) -> str | None:
    try:
        return sha256_hex(normalized)
    except UnicodeEncodeError:
        # Lone surrogates (from lenient JSON decoders) have no UTF-8 form: not a usable key.
        return None


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
