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

import phonenumbers

__all__ = [
    "MAX_EMAIL_CHARS",
    "MAX_PHONE_CHARS",
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
