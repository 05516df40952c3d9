"""Match-key normalization and hashing: TikTok's documented examples, real-world tables, properties.

Every phone expectation below was checked against phonenumbers' own metadata, not guessed.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.identity.normalize import (
    MAX_EMAIL_CHARS,
    as_sha256,
    hash_email,
    hash_external_id,
    hash_name,
    hash_phone,
    hash_zip,
    normalize_email,
    normalize_phone,
    normalize_place,
    normalize_region,
    sha256_hex,
)
from gateway.identity.redaction import redact_url

HEX64 = re.compile(r"[0-9a-f]{64}")
E164 = re.compile(r"\+[1-9][0-9]{6,14}")

# TikTok's documented examples (reference §6.1).
TT_EMAIL_HASH = "848a771458438fc2ec420560d769fb9b9b86851ee338ec56517baabd79d3bb4f"
TT_PHONE_HASH = "9f7ec22d72092cd3c0b58726ed9c2d91b92e51a3f29837508fb2948bb22dd2fd"
TT_EXTERNAL_ID_HASH = "80fba0ae1c48e3978e43e4efc365e14e12ea0c830ba8ba5b9a2dafc7e3f2ab8b"


# --- TikTok's examples ----------------------------------------------------------------------


def test_tiktok_email_example() -> None:
    assert normalize_email(" ALICE_abc@gmail.com ") == "alice_abc@gmail.com"
    assert hash_email(" ALICE_abc@gmail.com ") == TT_EMAIL_HASH


def test_tiktok_phone_example_hashes_the_plus() -> None:
    assert normalize_phone("(+1)2133734253", None) == "+12133734253"
    assert hash_phone("(+1)2133734253", None) == TT_PHONE_HASH
    # Without the '+' the hash would differ: the '+' is part of what TikTok hashes.
    assert sha256_hex("12133734253") != TT_PHONE_HASH


def test_tiktok_external_id_example() -> None:
    assert hash_external_id("user_123") == TT_EXTERNAL_ID_HASH


# --- sha256 / pre-hashed ----------------------------------------------------------------------


def test_sha256_hex_is_lowercase_hex_of_utf8() -> None:
    # FIPS 180-2 test vector.
    assert sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_hex("\u00e9") == hashlib.sha256(b"\xc3\xa9").hexdigest()


def test_sha256_hex_refuses_lone_surrogates_and_hashers_return_none() -> None:
    with pytest.raises(UnicodeEncodeError):
        sha256_hex("a\ud800")
    assert hash_external_id("a\ud800") is None
    assert hash_zip("75\ud80001") is None
    assert hash_email("a\ud800@example.com") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TT_EMAIL_HASH, TT_EMAIL_HASH),
        (TT_EMAIL_HASH.upper(), TT_EMAIL_HASH),
        (f"  {TT_EMAIL_HASH.upper()}\n", TT_EMAIL_HASH),
        (TT_EMAIL_HASH[:-1], None),
        (TT_EMAIL_HASH + "0", None),
        (TT_EMAIL_HASH[:-1] + "g", None),
        (TT_EMAIL_HASH[:32] + " " + TT_EMAIL_HASH[32:-1], None),
        ("", None),
        # Fullwidth digits are not hex even though int(..., 16) would accept some of them.
        ("\uff10" * 64, None),
    ],
)
def test_as_sha256(value: str, expected: str | None) -> None:
    assert as_sha256(value) == expected


@pytest.mark.parametrize(
    "hasher",
    [
        hash_email,
        hash_external_id,
        hash_name,
        hash_zip,
        lambda raw: hash_phone(raw, "FR"),
        lambda raw: hash_phone(raw, None),
    ],
)
def test_prehashed_values_pass_through_lowercased(hasher: Callable[[str], str | None]) -> None:
    assert hasher(f" {TT_PHONE_HASH.upper()} ") == TT_PHONE_HASH


# --- email ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice@example.com", "alice@example.com"),
        ("Alice.Smith@Example.COM", "alice.smith@example.com"),
        ("\t bob@example.org \r\n", "bob@example.org"),
        # Plus-addressing and dots are kept: TikTok documents no Gmail rules.
        ("Bob.Smith+promo@gmail.com", "bob.smith+promo@gmail.com"),
        ("j.o.h.n@googlemail.com", "j.o.h.n@googlemail.com"),
        ("o'connor@example.ie", "o'connor@example.ie"),
        ("user@mail.example.co.uk", "user@mail.example.co.uk"),
        # Unicode kept as given (not converted to punycode), only lowercased.
        ("Ünï@BÜCHER.de", "ünï@bücher.de"),
        ("user@xn--bcher-kva.de", "user@xn--bcher-kva.de"),
        ("a@[192.0.2.1]", "a@[192.0.2.1]"),
        ("a@[IPv6:2001:DB8::1]", "a@[ipv6:2001:db8::1]"),
    ],
)
def test_normalize_email_valid(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected
    assert hash_email(raw) == sha256_hex(expected)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "alice.example.com",
        "a@b@example.com",
        "alice smith@example.com",
        "alice@exa mple.com",
        "alice@example.com\tbob@example.com",
        "@b.com",
        "a@",
        "a@localhost",
        "a@b.",
        "a@.com",
        "a@b..com",
        "a@[999.1.1.1]",
        "a@[]",
        "a\x00b@example.com",
        "x" * (MAX_EMAIL_CHARS - len("@example.com") + 1) + "@example.com",
    ],
)
def test_normalize_email_invalid(raw: str) -> None:
    assert normalize_email(raw) is None
    assert hash_email(raw) is None


def test_email_length_limit_is_inclusive() -> None:
    at_limit = "x" * (MAX_EMAIL_CHARS - len("@example.com")) + "@example.com"
    assert len(at_limit) == MAX_EMAIL_CHARS
    assert normalize_email(f"  {at_limit}  ") == at_limit


# --- phone ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        # France: national with region, international with '+' or '00', no region needed.
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("06.12.34.56.78", "FR", "+33612345678"),
        ("+33 6 12 34 56 78", None, "+33612345678"),
        ("0033612345678", None, "+33612345678"),
        ("0033 6 12 34 56 78", "US", "+33612345678"),
        # Digits only, no region: stored without '+' by Shopify and others.
        ("33612345678", None, "+33612345678"),
        # Region codes are checked and upper-cased.
        ("06 12 34 56 78", " fr ", "+33612345678"),
        ("07911 123456", "GB", "+447911123456"),
        ("(213) 373-4253", "US", "+12133734253"),
        ("213.373.4253", "US", "+12133734253"),
        ("011 33 6 12 34 56 78", "US", "+33612345678"),
        ("030 123456789", "DE", "+4930123456789"),
        ("0151 23456789", "DE", "+4915123456789"),
        ("(11) 91234-5678", "BR", "+5511912345678"),
        ("98765 43210", "IN", "+919876543210"),
        ("090-1234-5678", "JP", "+819012345678"),
        ("0412 345 678", "AU", "+61412345678"),
        ("612 34 56 78", "ES", "+34612345678"),
        ("91 123 45 67", "ES", "+34911234567"),
        ("312 345 6789", "IT", "+393123456789"),
        # Italian landlines keep their leading 0 in E.164.
        ("06 1234 5678", "IT", "+390612345678"),
        ("06 12345678", "NL", "+31612345678"),
        ("020 123 4567", "NL", "+31201234567"),
        # Region mismatch: an explicit country code wins over the event's country.
        ("+44 7911 123456", "FR", "+447911123456"),
        ("+33612345678", "US", "+33612345678"),
        # Extensions are dropped.
        ("+1 213-373-4253 ext. 12", None, "+12133734253"),
        ("+1 213-373-4253 x12", None, "+12133734253"),
        ("+1 (213) 373-4253 #12", None, "+12133734253"),
        ("+1 213 373 4253;ext=12", None, "+12133734253"),
        ("(213) 373-4253 Extension 7", "US", "+12133734253"),
        # Fullwidth digits (Japanese input methods) are digits.
        ("\uff10\uff19\uff10-1234-5678", "JP", "+819012345678"),
        # Trailing padding from fixed-width columns does not count against the length limit.
        ("+33612345678" + " " * 100, None, "+33612345678"),
    ],
)
def test_normalize_phone_valid(raw: str, region: str | None, expected: str) -> None:
    assert normalize_phone(raw, region) == expected
    assert hash_phone(raw, region) == sha256_hex(expected)


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("", None),
        ("   ", "FR"),
        ("12", None),
        ("12", "FR"),
        ("abc", "US"),
        ("+999 123", None),
        ("06 12", "FR"),
        # Valid format for one country, wrong for the region given.
        ("07911 123456", "FR"),
        ("(213) 373-4253", "GB"),
        # A national number without a region cannot be placed.
        ("06 12 34 56 78", None),
        ("0612345678", None),
        # Unknown region counts as none.
        ("06 12 34 56 78", "ZZ"),
        ("06 12 34 56 78", "France"),
        # Bare digits that are no valid international number (a US number without its 1).
        ("2133734253", None),
        # Letters other than an extension.
        ("1-800-FLOWERS", "US"),
        ("+33 6 12 34 56 78 mobile", None),
        ("tel +33612345678", None),
        ("+1 213-373-4253 ext.", None),
        # Too many digits to be E.164.
        ("+33 6 12 34 56 78 90 12 34", None),
        # Pathological length, even if it would parse.
        ("+33" + " " * 70 + "612345678", None),
    ],
)
def test_normalize_phone_invalid(raw: str, region: str | None) -> None:
    assert normalize_phone(raw, region) is None
    assert hash_phone(raw, region) is None


def test_prehashed_phone_ignores_region() -> None:
    assert hash_phone(TT_PHONE_HASH.upper(), "GB") == TT_PHONE_HASH


# --- external_id ------------------------------------------------------------------------------


def test_external_id_keeps_case_and_trims() -> None:
    assert hash_external_id("User_123") != hash_external_id("user_123")
    assert hash_external_id("User_123") == sha256_hex("User_123")
    assert hash_external_id("\t user_123 \n") == TT_EXTERNAL_ID_HASH


@pytest.mark.parametrize("raw", ["", "   ", "\n\t"])
def test_external_id_empty_is_none(raw: str) -> None:
    assert hash_external_id(raw) is None


# --- names, zip, place, region ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("John", "john"),
        (" Jean-Luc ", "jeanluc"),
        ("O'Brien", "obrien"),
        ("Mary Ann", "maryann"),
        ("JOSÉ", "josé"),
        # Decomposed accent (e + U+0301) hashes like the precomposed letter.
        ("Jose\u0301", "josé"),
        ("Zoë", "zoë"),
        ("李 小龍", "李小龍"),
        ("प्रिया", "प्रिया"),
        ("Henry VIII, Jr.", "henryviiijr"),
        ("Anne-Marie 2nd", "annemarie2nd"),
    ],
)
def test_hash_name(raw: str, normalized: str) -> None:
    assert hash_name(raw) == sha256_hex(normalized)


@pytest.mark.parametrize("raw", ["", "   ", "-.' ,"])
def test_hash_name_empty_is_none(raw: str) -> None:
    assert hash_name(raw) is None


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("75001", "75001"),
        (" 75001 ", "75001"),
        ("12345-6789", "123456789"),
        ("SW1A 1AA", "sw1a1aa"),
        ("K1A 0B1", "k1a0b1"),
        ("100\u20130001", "1000001"),
    ],
)
def test_hash_zip(raw: str, normalized: str) -> None:
    assert hash_zip(raw) == sha256_hex(normalized)


@pytest.mark.parametrize("raw", ["", "  ", " - "])
def test_hash_zip_empty_is_none(raw: str) -> None:
    assert hash_zip(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("New York", "newyork"),
        ("  CA ", "ca"),
        ("Île-de-France", "îledefrance"),
        ("São Paulo", "sãopaulo"),
        ("St. John's", "stjohns"),
        ("MÜNCHEN", "münchen"),
        ("東京都", "東京都"),
        ("District 9", "district9"),
        ("", None),
        (" -- ", None),
    ],
)
def test_normalize_place(raw: str, expected: str | None) -> None:
    assert normalize_place(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("FR", "FR"),
        (" fr ", "FR"),
        ("gb", "GB"),
        ("UK", None),
        ("ZZ", None),
        ("USA", None),
        ("001", None),
        ("", None),
        (None, None),
        # Dotless i (U+0131) upper-cases to ASCII "I"; that is not a way to write Italy.
        ("\u0131t", None),
    ],
)
def test_normalize_region(raw: str | None, expected: str | None) -> None:
    assert normalize_region(raw) == expected


def test_every_supported_region_round_trips() -> None:
    assert all(normalize_region(code.lower()) == code for code in phonenumbers.SUPPORTED_REGIONS)


# --- properties -------------------------------------------------------------------------------

# st.text() never produces lone surrogates; lenient JSON decoders can, so mix them in.
any_text = st.lists(
    st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
).map("".join)
phoneish_text = st.text(alphabet="0123456789 +-().#xXetn;=\uff10\uff11", max_size=40)
regions = st.one_of(
    st.none(), st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)), st.text(max_size=3)
)


def _check_all(raw: str, region: str | None) -> None:
    for hashed in (
        as_sha256(raw),
        hash_email(raw),
        hash_external_id(raw),
        hash_name(raw),
        hash_zip(raw),
        hash_phone(raw, region),
    ):
        assert hashed is None or HEX64.fullmatch(hashed)
    email = normalize_email(raw)
    assert email is None or (email.count("@") == 1 and email == email.strip().lower())
    place = normalize_place(raw)
    assert place is None or (place != "" and not any(ch.isspace() for ch in place))
    assert normalize_region(raw) in {None, *phonenumbers.SUPPORTED_REGIONS}
    phone = normalize_phone(raw, region)
    if phone is not None:
        assert E164.fullmatch(phone)
        # E.164 output is a fixed point, whatever the region.
        assert normalize_phone(phone, None) == phone


@settings(max_examples=150, deadline=None)
@given(any_text, regions)
def test_no_function_raises_on_arbitrary_text(raw: str, region: str | None) -> None:
    _check_all(raw, region)


@settings(max_examples=150, deadline=None)
@given(phoneish_text, regions)
def test_no_function_raises_on_phone_like_text(raw: str, region: str | None) -> None:
    _check_all(raw, region)


local_parts = st.text(alphabet=string.ascii_letters + string.digits + "._%+-'", min_size=1)
domain_labels = st.text(alphabet=string.ascii_letters + string.digits + "-éüø", min_size=1)
addresses = st.builds(
    lambda local, labels: f"{local}@{'.'.join(labels)}",
    local_parts,
    st.lists(domain_labels, min_size=2, max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(addresses)
def test_email_hash_ignores_case_and_surrounding_space(address: str) -> None:
    assert hash_email(address) == sha256_hex(address.lower())
    assert hash_email(address) == hash_email(address.upper().center(len(address) + 4))


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_as_sha256_round_trips_sha256_hex(raw: str) -> None:
    digest = sha256_hex(raw)
    assert as_sha256(digest) == digest
    assert as_sha256(f" {digest.upper()}\t") == digest
    assert hash_email(digest) == digest


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://s.example/p?ttclid=E.C.P.x&utm_source=tiktok",
         "https://s.example/p?ttclid=E.C.P.x&utm_source=tiktok"),
        ("https://s.example/?email=a%40b.com&ttclid=E.C.P.x", "https://s.example/?ttclid=E.C.P.x"),
        ("https://s.example/?u=jane@example.com&sku=12", "https://s.example/?sku=12"),
        ("https://s.example/?Phone=0612345678&id=7", "https://s.example/?id=7"),
        ("https://s.example/?ref=%2B33%206%2012%2034%2056%2078", "https://s.example/"),
        ("https://s.example/checkout/thank-you", "https://s.example/checkout/thank-you"),
    ],
)  # fmt: skip
def test_redact_url_removes_contact_data(url: str, expected: str) -> None:
    assert redact_url(url) == expected
