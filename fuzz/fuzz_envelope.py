"""Coverage-guided fuzzing (atheris/libFuzzer) of the envelope parser and identifier hashing.

Every input is used twice:

* as a request body: the raw bytes as JSON (what ``POST /e`` and ``/v1/track`` parse), or, when
  the first byte is odd, an envelope built field by field from the bytes (so the fuzzer reaches
  deep fields without having to guess key names). ``split_batch`` and ``parse_event`` may refuse
  it only with :class:`gateway.ingest.fields.FieldError`; what they accept must keep the
  envelope's invariants (valid IP, absolute http(s) page URL, a time inside the accepted
  window, finite non-negative amounts, an ``event_id`` for every event).
* as text: ``identity.hash_email``, ``hash_phone(text, "FR")``, ``hash_phone(text, None)``,
  ``normalize_place`` and ``redact_url`` must never raise (``redact_url`` may refuse with
  ``ValueError`` only a text that ``urllib`` cannot split or that holds lone surrogates, as its
  callers expect), and every hash is 64 lowercase hex characters of the normalized value.

Run it from the repository root (see ``fuzz/README.md``)::

    .venv/bin/python fuzz/fuzz_envelope.py -max_total_time=60

Any other exception, or a broken invariant (``AssertionError``), is a crash: libFuzzer writes the
input to ``crash-<sha1>`` and exits non-zero; replay it with ``python fuzz/fuzz_envelope.py FILE``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import atheris

# Importable from a plain checkout (``pip install -e .`` makes this a no-op).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # a C extension: nothing to instrument

with atheris.instrument_imports():
    from gateway.identity import normalize as identity
    from gateway.identity.redaction import redact_url
    from gateway.ingest import envelope as events
    from gateway.ingest.fields import FieldError
    from gateway.ingest.name_table import NameTable

NOW = float(int(time.time()))
MAX_AGE_S = 7 * 86400
NAMES = NameTable(purchase_event="Purchase", overrides=(("Custom Order", "Purchase"),))
HEX64 = re.compile(r"[0-9a-f]{64}")
# E.164 caps numbers at 15 digits, but phonenumbers' metadata calls some longer national numbers
# valid (Germany's go to 15 digits after the country code): the gateway follows phonenumbers.
E164 = re.compile(r"\+[1-9][0-9]{1,18}")
PII_NAMES = ("email", "phone", "tel", "mail")

# Keys and values the structured mode draws from: the envelope's own vocabulary, so mutations
# explore field combinations instead of guessing key names byte by byte.
# fmt: off
TOP_KEYS = ("type", "event", "event_id", "eventId", "timestamp", "anonymous_id", "anonymousId",
            "user_id", "userId", "user", "traits", "context", "properties", "page", "consent",
            "messageId", "message_id", "limited_data_use", "events", "pixel_code", "api_url")
USER_KEYS = ("email", "phone", "phone_number", "external_id", "first_name", "last_name",
             "zip_code", "city", "state", "country", "locale", "ttclid", "ttp", "ip",
             "user_agent")
PROPERTY_KEYS = ("value", "revenue", "total", "currency", "contents", "products", "content_ids",
                 "content_type", "order_id", "query", "search_string", "num_items",
                 "predicted_ltv", "description", "shop_id", "price", "quantity", "content_id",
                 "product_id", "sku", "id", "name", "category", "brand")
OTHER_KEYS = ("url", "referrer", "ip", "userAgent", "locale", "page", "ad_user_data",
              "ad_personalization", "ad_storage", "analytics_storage")
WORDS = ("track", "page", "identify", "Purchase", "Order Completed", "CompletePayment",
         "ViewContent", "purchase", "granted", "denied", "EUR", "usd", "XXX", "FR", "fr", "zz",
         "203.0.113.24", "::ffff:1.2.3.4", "fe80::1%eth0", "999.1.1.1",
         "https://shop.example/p?ttclid=E.C.P.x&email=a%40b.c", "http://[::1]/", "http://[x/",
         "//evil.example", "javascript:alert(1)", "android-app://com.x", "A@B.com ",
         "06 12 34 56 78", "+33 6 12 34 56 78", "0033612345678", "1e400", "NaN", "-1",
         "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00", "a" * 64, "ABCDEF" * 11)
# fmt: on


def consume_value(fdp: atheris.FuzzedDataProvider, depth: int, keys: tuple[str, ...]) -> Any:
    """A JSON value drawn from ``fdp``; objects take their keys from ``keys``."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**63), 2**64 - 1)
    if kind == 3:
        number = fdp.ConsumeRegularFloat()
        return number if math.isfinite(number) else 0.0
    if kind == 4:
        return fdp.PickValueInList(list(WORDS))
    if kind in (5, 6):
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80))
    if kind == 7:
        return [consume_value(fdp, depth + 1, keys) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return consume_object(fdp, depth + 1, keys)


def consume_object(fdp: atheris.FuzzedDataProvider, depth: int, keys: tuple[str, ...]) -> Any:
    """An object whose keys come from ``keys`` (sometimes any text) and values from ``fdp``."""
    obj: dict[str, Any] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        if fdp.ConsumeIntInRange(0, 15) == 0:
            key = fdp.ConsumeUnicodeNoSurrogates(8)
        else:
            key = fdp.PickValueInList(list(keys))
        nested = {
            "user": USER_KEYS,
            "traits": USER_KEYS,
            "properties": PROPERTY_KEYS,
            "contents": PROPERTY_KEYS,
            "products": PROPERTY_KEYS,
            "events": TOP_KEYS,
        }.get(key, OTHER_KEYS)
        obj[key] = consume_value(fdp, depth, nested)
    return obj


def check_refusal(exc: FieldError) -> None:
    """A refusal names the field and says what is wrong with it."""
    assert isinstance(exc.field, str) and exc.field and exc.error, exc


def check_envelope(body: Any) -> None:
    """split_batch + parse_event refuse only with FieldError; accepted events keep invariants."""
    try:
        raw_events = events.split_batch(body)
    except FieldError as exc:
        check_refusal(exc)
        return
    assert 1 <= len(raw_events) <= events.MAX_EVENTS
    for raw in raw_events:
        try:
            envelope = events.parse_event(raw, NAMES, now=NOW, max_age_s=MAX_AGE_S)
        except FieldError as exc:
            check_refusal(exc)
            continue
        check_parsed(envelope)


def check_parsed(envelope: events.Envelope) -> None:
    """What the parser lets through is safe to hash, queue and send."""
    assert (envelope.event is None) is (envelope.type is events.EventType.IDENTIFY)
    assert NOW - MAX_AGE_S <= envelope.timestamp_s <= NOW, envelope.timestamp_s
    user = envelope.user
    if user.ip is not None:
        assert str(ipaddress.ip_address(user.ip)) == user.ip, user.ip
    if envelope.page_url is not None:
        assert urlsplit(envelope.page_url).scheme in ("http", "https"), envelope.page_url
    for values in (user.emails, user.phones, user.external_ids):
        assert len(values) <= 10 and all(isinstance(v, str) and v for v in values)
    props = envelope.properties
    for key in ("value", "predicted_ltv"):
        if key in props:
            assert math.isfinite(props[key]) and props[key] >= 0, props
    for item in props.get("contents", []):
        assert isinstance(item["content_id"], str) and item["content_id"], item
    orjson.dumps(props)  # what is queued must serialize
    event_id = events.derive_event_id(envelope)
    assert isinstance(event_id, str) and event_id, event_id


def check_hash(digest: str | None, text: str, normalized: str | None) -> None:
    """``digest`` is None, a pre-hashed value passed through, or SHA-256 of ``normalized``."""
    if digest is None:
        return
    assert HEX64.fullmatch(digest), digest
    prehashed = identity.as_sha256(text)
    if prehashed is not None:
        assert digest == prehashed
        return
    assert normalized is not None
    assert digest == hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def check_identifiers(text: str) -> None:
    """The hashers and normalizers take any text; their output has the documented shape."""
    email = identity.normalize_email(text)
    if email is not None:
        assert email.count("@") == 1 and email == email.strip(), email
        assert not any(ch.isspace() for ch in email), email
    check_hash(identity.hash_email(text), text, email)
    for region in ("FR", None):
        phone = identity.normalize_phone(text, region)
        if phone is not None:
            assert E164.fullmatch(phone), phone
        check_hash(identity.hash_phone(text, region), text, phone)
    place = identity.normalize_place(text)
    if place is not None:
        assert place and all(
            unicodedata.category(ch)[0] in "LM" or ch.isdecimal() for ch in place
        ), place
    check_redaction(text)


def check_redaction(text: str) -> None:
    """No contact data survives in the query; host and scheme never move; idempotent."""
    try:
        redacted = redact_url(text)
    except ValueError:
        # Documented refusals only: the envelope's referrer parsing relies on them.
        unsplittable = False
        try:
            urlsplit(text)
        except ValueError:
            unsplittable = True
        assert unsplittable or any(0xD800 <= ord(ch) <= 0xDFFF for ch in text), repr(text)
        return
    before, after = urlsplit(text), urlsplit(redacted)
    if before.netloc:
        assert (after.scheme, after.netloc) == (before.scheme, before.netloc), (text, redacted)
    for name, value in parse_qsl(after.query, keep_blank_values=True):
        assert "@" not in value, (text, redacted)
        assert name.strip().lower() not in PII_NAMES, (text, redacted)
    assert redact_url(redacted) == redacted, (text, redacted)


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    """One fuzzing iteration."""
    if not data:
        return
    selector, payload = data[0], data[1:]
    body: Any = None
    if selector & 1:
        body = consume_object(atheris.FuzzedDataProvider(payload), 0, TOP_KEYS)
        if selector & 2:
            body = {"events": [body]}
    else:
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            body = None
    if body is not None:
        check_envelope(body)
    text_source = atheris.FuzzedDataProvider(payload)
    check_identifiers(text_source.ConsumeUnicode(len(payload)))


def main() -> None:
    """Hand the target to libFuzzer with the command-line flags (``-max_total_time`` etc.)."""
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
