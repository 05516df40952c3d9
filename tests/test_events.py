"""The ingest envelope (``gateway.events``): name table, event_id, timestamps, properties, batches.

Every name and every properties object the gateway produces must also pass TikTok's own strict
rules (``tiktok_spec.validate_body``): an event that parses here but that TikTok refuses would be
dead-lettered long after the client was told 202.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest.envelope import (
    CONSENT_KEYS,
    FORBIDDEN_FIELDS,
    MAX_EVENTS,
    Envelope,
    EventType,
    derive_event_id,
    parse_event,
    split_batch,
)
from gateway.ingest.fields import FieldError
from gateway.ingest.name_table import SEGMENT_NAMES, NameTable
from gateway.ingest.properties import MAX_CONTENTS, parse_properties
from gateway.ingest.timestamps import parse_timestamp
from gateway.tiktok.names import (
    ACCEPTED_EVENTS,
    LEGACY_EVENTS,
    PAGEVIEW,
    RESERVED_EVENTS,
    RESERVED_TARGETS,
    STANDARD_EVENTS,
    SUPPORTED_CURRENCIES,
)
from gateway.tiktok.validation import DefaultLimits, validate_body

NOW = 1_781_430_082.0  # 2026-06-14T09:41:22Z
MAX_AGE = 7 * 86400
NAMES = NameTable()


def parse(raw: Any, names: NameTable = NAMES, *, now: float = NOW) -> Envelope:
    return parse_event(raw, names, now=now, max_age_s=MAX_AGE)


def field_of(exc: pytest.ExceptionInfo[FieldError]) -> str:
    return exc.value.field


def attempt(function: Callable[..., Any], *args: Any) -> tuple[Any, FieldError | None]:
    """``(result, None)`` or ``(None, the FieldError)``; any other exception propagates."""
    try:
        return function(*args), None
    except FieldError as exc:
        return None, exc


def tiktok_body(event: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """A minimal /event/track/ body TikTok accepts, carrying ``event`` (and ``properties``)."""
    item: dict[str, Any] = {
        "event": event,
        "event_time": int(NOW),
        "event_id": "evt-1",
        "page": {"url": "https://store.example/p"},
    }
    if properties is not None:
        item["properties"] = properties
    return {"event_source": "web", "event_source_id": "CPIXEL123", "data": [item]}


def tiktok_accepts(event: str, properties: dict[str, Any] | None = None) -> None:
    assert validate_body(tiktok_body(event, properties), DefaultLimits(), now=NOW) is None


# --- 1. name table ------------------------------------------------------------------------------


def test_tiktok_validator_sanity() -> None:
    """The helper's body is valid and a refused name really is refused (the check can fail)."""
    tiktok_accepts("Purchase")
    assert validate_body(tiktok_body("purchase"), DefaultLimits(), now=NOW) is not None
    assert validate_body(tiktok_body("Checkout"), DefaultLimits(), now=NOW) is not None


@pytest.mark.parametrize("name", sorted(STANDARD_EVENTS | LEGACY_EVENTS | {PAGEVIEW}))
def test_tiktok_names_pass_unchanged(name: str) -> None:
    assert NAMES.resolve(name) == name
    # the configured purchase name never rewrites a literal TikTok name (pixel dedup)
    assert NameTable(purchase_event="CompletePayment").resolve(name) == name
    assert parse({"event": name}).event == name


SEGMENT_CASES = [
    ("Order Completed", "Purchase"),
    ("Order Placed", "PlaceAnOrder"),
    ("Product Viewed", "ViewContent"),
    ("Product Clicked", "ClickButton"),
    ("Product Added", "AddToCart"),
    ("Wishlist Product Added to Cart", "AddToCart"),
    ("Product Added to Wishlist", "AddToWishlist"),
    ("Checkout Started", "InitiateCheckout"),
    ("Payment Info Entered", "AddPaymentInfo"),
    ("Products Searched", "Search"),
    ("Signed Up", "CompleteRegistration"),
    ("Lead Generated", "Lead"),
    ("Form Submitted", "Lead"),
    ("Callback Started", "Contact"),
    ("Download Link Clicked", "Download"),
    ("Subscribed", "Subscribe"),
    ("Subscription Created", "Subscribe"),
    ("Trial Started", "StartTrial"),
    ("Page Viewed", PAGEVIEW),
    ("Application Submitted", "SubmitApplication"),
]


def test_segment_cases_cover_the_whole_table() -> None:
    assert {s for s, _ in SEGMENT_CASES} == set(SEGMENT_NAMES)


@pytest.mark.parametrize(("name", "target"), SEGMENT_CASES)
def test_segment_names_map(name: str, target: str) -> None:
    assert NAMES.resolve(name) == target
    assert parse({"event": name}).event == target


@pytest.mark.parametrize(
    "name",
    [
        "order completed",
        "ORDER COMPLETED",
        "order  completed",
        " Order\tCompleted ",
        "oRdEr cOmPlEtEd",
        "order_completed",
        "order-completed",
        "OrderCompleted",
    ],
)
def test_segment_names_are_case_and_space_insensitive(name: str) -> None:
    assert NAMES.resolve(name) == "Purchase"
    assert NameTable(purchase_event="CompletePayment").resolve(name) == "CompletePayment"


def test_order_completed_follows_the_configured_purchase_name() -> None:
    assert NameTable().resolve("Order Completed") == "Purchase"
    assert NameTable(purchase_event="CompletePayment").resolve("Order Completed") == (
        "CompletePayment"
    )
    # only Order Completed follows it
    assert NameTable(purchase_event="CompletePayment").resolve("Product Added") == "AddToCart"


def test_segment_multiword_names_with_other_spacing() -> None:
    assert NAMES.resolve("product  added   to wishlist") == "AddToWishlist"
    assert NAMES.resolve("PRODUCTS SEARCHED") == "Search"


@pytest.mark.parametrize(("name", "target"), sorted(RESERVED_TARGETS.items()))
def test_reserved_names_map_to_their_target(name: str, target: str) -> None:
    assert NAMES.resolve(name) == target
    assert target in ACCEPTED_EVENTS


def test_reserved_table_covers_tiktoks_reserved_list() -> None:
    assert set(RESERVED_TARGETS) == RESERVED_EVENTS
    assert RESERVED_TARGETS["Checkout"] == "PlaceAnOrder"
    assert RESERVED_TARGETS["Browse"] == PAGEVIEW


def test_overrides_win_over_every_other_rule() -> None:
    table = NameTable(
        overrides=(
            ("Purchase", "CompletePayment"),
            ("Order Completed", "PlaceAnOrder"),
            ("Checkout", "InitiateCheckout"),
            ("purchase", "Purchase"),
            ("quiz_done", "Lead"),
        )
    )
    assert table.resolve("Purchase") == "CompletePayment"
    assert table.resolve("Order Completed") == "PlaceAnOrder"
    assert table.resolve("Checkout") == "InitiateCheckout"
    assert table.resolve("purchase") == "Purchase"  # otherwise the purchase name
    assert table.resolve("quiz_done") == "Lead"
    # overrides match the exact name only
    assert table.resolve("order completed") == "Purchase"
    assert table.resolve("AddToCart") == "AddToCart"
    assert parse({"event": "Checkout"}, table).event == "InitiateCheckout"


@pytest.mark.parametrize(
    "name",
    ["newsletter_signup", "Quiz-Done", "a", "Z9", "x" * 50, "A" + "_-9" * 16 + "b", "Purchase2"],
)
def test_valid_custom_names_pass(name: str) -> None:
    assert NAMES.resolve(name) == name
    assert parse({"event": name}).event == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "9lives",
        "_private",
        "-dash",
        "has space",
        "x" * 51,
        "é",
        "café",
        "dot.name",
        "slash/name",
        "emoji😀",
        "Checkout Step Completed!",
    ],
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(FieldError) as exc:
        NAMES.resolve(name)
    assert field_of(exc) == "event"


@pytest.mark.parametrize(
    ("name", "target"),
    [
        # a name that differs from TikTok's only in case or spacing is TikTok's (issue 15; it
        # used to be refused): sent in TikTok's casing, so the pixel's copy still pairs
        ("purchase", "Purchase"),
        ("PURCHASE", "Purchase"),
        ("Purchase\n", "Purchase"),
        ("pageview", PAGEVIEW),
        ("PageView", PAGEVIEW),
        ("completepayment", "CompletePayment"),
        ("addtocart", "AddToCart"),
        ("SubscriBe", "Subscribe"),
        ("submitform", "SubmitForm"),
        ("view_content", "ViewContent"),
        ("application approval", "ApplicationApproval"),
        ("checkout", "PlaceAnOrder"),  # a reserved name, in another case
        ("registration", "CompleteRegistration"),
    ],
)
def test_tiktok_names_in_another_case_or_spacing_are_tiktoks(name: str, target: str) -> None:
    assert NAMES.resolve(name) == target
    assert parse({"event": name}).event == target


def test_resolve_uses_the_given_field_name() -> None:
    with pytest.raises(FieldError) as exc:
        NAMES.resolve("9lives", field_name="properties.name")
    assert field_of(exc) == "properties.name"


RESOLVABLE = sorted(
    ACCEPTED_EVENTS
    | set(RESERVED_TARGETS)
    | {s for s, _ in SEGMENT_CASES}
    | {"order  completed", "newsletter_signup", "Quiz-Done", "x" * 50}
)


@pytest.mark.parametrize("name", RESOLVABLE)
def test_every_resolved_name_is_accepted_by_tiktok(name: str) -> None:
    for table in (NameTable(), NameTable(purchase_event="CompletePayment")):
        tiktok_accepts(table.resolve(name))


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=60),
        st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,60}", fullmatch=True),
        st.sampled_from(sorted(ACCEPTED_EVENTS | RESERVED_EVENTS)).map(str.lower),
    )
)
def test_any_name_resolves_to_a_tiktok_name_or_a_field_error(name: str) -> None:
    resolved, error = attempt(NAMES.resolve, name)
    if error is not None:
        assert error.field == "event"
        return
    tiktok_accepts(resolved)


# --- 2. event_id --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given_id",
    [
        "ord_84213",
        "  spaced id  ",
        "naïve—ünïcode ✓ 注文",
        "a b\tc",
        "0",
        "x" * 256,
        "0084213",
    ],
)
def test_event_id_strings_are_kept_exactly(given_id: str) -> None:
    envelope = parse({"event": "Purchase", "event_id": given_id})
    assert envelope.event_id == given_id
    assert derive_event_id(envelope) == given_id


@pytest.mark.parametrize(
    ("given_id", "expected"),
    [
        (84213, "84213"),
        (0, "0"),
        (-7, "-7"),
        (2**63 - 1, str(2**63 - 1)),
        (84213.0, "84213"),
        (1e15, "1000000000000000"),
        (-0.0, "0"),
    ],
)
def test_numeric_event_ids_become_decimal_strings(given_id: float, expected: str) -> None:
    assert parse({"event": "Purchase", "event_id": given_id}).event_id == expected


def test_event_id_alias_eventid() -> None:
    assert parse({"event": "Purchase", "eventId": "abc"}).event_id == "abc"
    # event_id wins over the alias
    assert parse({"event": "Purchase", "event_id": "a", "eventId": "b"}).event_id == "a"


@pytest.mark.parametrize(
    "given_id", [True, False, {}, {"id": "x"}, [], ["x"], 1.5, "x" * 257, float("inf")]
)
def test_bad_event_ids_are_refused(given_id: Any) -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "event_id": given_id})
    assert field_of(exc) == "event_id"


def test_huge_integral_float_event_id_is_refused() -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "event_id": 1e300})
    assert field_of(exc) == "event_id"


@pytest.mark.parametrize("empty", [None, ""])
def test_empty_event_id_counts_as_missing(empty: Any) -> None:
    envelope = parse({"event": "Purchase", "event_id": empty, "properties": {"order_id": "84213"}})
    assert envelope.event_id is None
    assert derive_event_id(envelope) == "ord_84213"


@pytest.mark.parametrize(
    ("order_id", "expected"),
    [("84213", "ord_84213"), (84213, "ord_84213"), (84213.0, "ord_84213"), ("A-1 b", "ord_A-1 b")],
)
def test_derived_event_id_from_order_id(order_id: Any, expected: str) -> None:
    envelope = parse(
        {"event": "Order Completed", "messageId": "msg-1", "properties": {"order_id": order_id}}
    )
    assert envelope.event_id is None
    assert derive_event_id(envelope) == expected


def test_given_event_id_beats_order_id_and_message_id() -> None:
    envelope = parse(
        {
            "event": "Purchase",
            "event_id": "given",
            "messageId": "msg-1",
            "properties": {"order_id": "84213"},
        }
    )
    assert derive_event_id(envelope) == "given"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"messageId": "ajs-next-123"}, "ajs-next-123"),
        ({"message_id": "m-2"}, "m-2"),
        ({"messageId": 99}, "99"),
        ({"messageId": "a", "message_id": "b"}, "a"),
    ],
)
def test_derived_event_id_from_message_id(raw: dict[str, Any], expected: str) -> None:
    envelope = parse({"event": "Purchase", **raw})
    assert envelope.message_id == expected
    assert derive_event_id(envelope) == expected


def test_bad_message_id_is_refused() -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "messageId": ["x"]})
    assert field_of(exc) == "messageId"


def test_derived_event_id_is_a_fresh_uuid_otherwise() -> None:
    envelope = parse({"event": "Purchase", "messageId": "", "properties": {"order_id": ""}})
    assert envelope.message_id is None
    assert "order_id" not in envelope.properties
    ids = {derive_event_id(envelope) for _ in range(5)}
    assert len(ids) == 5
    for value in ids:
        assert str(uuid.UUID(value)) == value
        assert uuid.UUID(value).version == 4


# --- 3. timestamps ------------------------------------------------------------------------------


def ts(value: Any, max_age_s: int = MAX_AGE) -> int:
    return parse_timestamp(value, NOW, max_age_s)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, int(NOW)),
        (int(NOW) - 60, int(NOW) - 60),
        (NOW - 60.75, int(NOW - 60.75)),
        ((int(NOW) - 60) * 1000, int(NOW) - 60),
        ((int(NOW) - 60) * 1000 + 999, int(NOW) - 60),
        (str(int(NOW) - 60), int(NOW) - 60),
        (f" {int(NOW) - 60} ", int(NOW) - 60),
        (f"{int(NOW) - 60}.5", int(NOW) - 60),
        (str((int(NOW) - 60) * 1000), int(NOW) - 60),
        ("2026-06-14T08:41:22Z", int(NOW) - 3600),
        ("2026-06-14T10:41:22+02:00", int(NOW) - 3600),
        ("2026-06-14T08:41:22.500+00:00", int(NOW) - 3600),
        ("2026-06-14T03:41:22-05:00", int(NOW) - 3600),
        (int(NOW) - MAX_AGE, int(NOW) - MAX_AGE),  # the bound is inclusive
    ],
)
def test_timestamps_accepted(value: Any, expected: int) -> None:
    assert ts(value) == expected


@pytest.mark.parametrize(
    "value", [NOW + 1, NOW + 299, (NOW + 120) * 1000, str(int(NOW) + 10), (NOW + 60) * 10**6]
)
def test_a_clock_a_few_minutes_ahead_is_clamped_to_now(value: Any) -> None:
    assert ts(value) == int(NOW)


@pytest.mark.parametrize(
    "value",
    [
        NOW + 2 * 86400,
        NOW + 10**9,
        NOW + 86400 * 365,
        (NOW + 3600) * 1000,
        "2030-01-01T00:00:00Z",
        (NOW + 3600) * 10**9,
    ],
)
def test_far_future_timestamps_are_refused_naming_the_field(value: Any) -> None:
    """Issue 13: "now + 2 days" and "now + 10^9 s" silently became now; they are refused."""
    with pytest.raises(FieldError, match="future") as exc:
        ts(value)
    assert field_of(exc) == "timestamp"


@pytest.mark.parametrize("unit", [1, 1_000, 1_000_000, 1_000_000_000])
def test_the_unit_is_told_by_magnitude(unit: int) -> None:
    """Seconds, milliseconds, microseconds and nanoseconds of the same time read the same."""
    an_hour_ago = int(NOW) - 3600
    assert ts(an_hour_ago * unit) == an_hour_ago
    thirty_days_ago = int(NOW) - 30 * 86400  # older than MAX_AGE in any unit: refused
    with pytest.raises(FieldError, match="old"):
        ts(thirty_days_ago * unit, max_age_s=7 * 86400)


@pytest.mark.parametrize(
    "value",
    [
        int(NOW) - MAX_AGE - 1,
        (int(NOW) - MAX_AGE - 1) * 1000,
        "2020-01-01T00:00:00Z",
        str(int(NOW) - MAX_AGE - 10),
        1,
    ],
)
def test_stale_timestamps_are_refused(value: Any) -> None:
    with pytest.raises(FieldError, match="old") as exc:
        ts(value)
    assert field_of(exc) == "timestamp"


def test_milliseconds_threshold_is_1e11() -> None:
    """Above 1e11 a number is milliseconds (1e11 s is the year 5138; 1e11 ms is 1973)."""
    forever = int(NOW)
    assert parse_timestamp(100_000_000_001, NOW, forever) == 100_000_000
    with pytest.raises(FieldError, match="future"):  # seconds, the year 5138: refused
        parse_timestamp(99_999_999_999, NOW, forever)


def test_max_age_is_the_callers() -> None:
    assert ts(int(NOW) - 100, max_age_s=100) == int(NOW) - 100
    with pytest.raises(FieldError):
        ts(int(NOW) - 101, max_age_s=100)


@pytest.mark.parametrize(
    "value",
    [
        "2026-06-14T08:41:22",  # no offset
        "2026-06-14",
        "yesterday",
        "",
        "   ",
        "12:00",
        "nan",
        "inf",
        "-inf",
        "1e400",
        True,
        False,
        -5,
        0,
        -1.5,
        "-100",
        [],
        {},
        [int(NOW)],
        float("nan"),
        float("inf"),
    ],
)
def test_bad_timestamps_are_refused(value: Any) -> None:
    with pytest.raises(FieldError) as exc:
        ts(value)
    assert field_of(exc) == "timestamp"


def test_iso_without_offset_says_so() -> None:
    with pytest.raises(FieldError, match="offset"):
        ts("2026-06-14T08:41:22")


def test_timestamp_field_name_is_the_callers() -> None:
    with pytest.raises(FieldError) as exc:
        parse_timestamp("garbage", NOW, MAX_AGE, name="events[3].timestamp")
    assert field_of(exc) == "events[3].timestamp"


def test_envelope_timestamp() -> None:
    assert parse({"event": "Purchase"}).timestamp_s == int(NOW)
    assert parse({"event": "Purchase", "timestamp": "2026-06-14T08:41:22Z"}).timestamp_s == (
        int(NOW) - 3600
    )
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "timestamp": "2026-06-14T08:41:22"})
    assert field_of(exc) == "timestamp"


# --- 4. properties ------------------------------------------------------------------------------


def test_segment_products_become_tiktok_contents() -> None:
    props = parse_properties(
        {
            "order_id": "84213",
            "currency": "eur",
            "products": [
                {
                    "product_id": "SKU-2481",
                    "name": "Linen shirt",
                    "category": "Shirts",
                    "brand": "Acme",
                    "price": 129.0,
                    "quantity": 1,
                    "coupon": "SUMMER",
                },
                {"sku": 4412, "name": "Socks", "price": "5.5", "quantity": 2},
                {"id": "id-3", "price": 10},
            ],
        }
    )
    assert props["contents"] == [
        {
            "content_id": "SKU-2481",
            "content_name": "Linen shirt",
            "content_category": "Shirts",
            "brand": "Acme",
            "price": 129.0,
            "quantity": 1,
        },
        {"content_id": "4412", "content_name": "Socks", "price": 5.5, "quantity": 2},
        {"content_id": "id-3", "price": 10.0},
    ]
    assert props["content_ids"] == ["SKU-2481", "4412", "id-3"]
    assert props["content_type"] == "product"
    assert props["currency"] == "EUR"
    assert props["order_id"] == "84213"
    assert props["value"] == 150.0  # 129 + 5.5 * 2 + 10 * 1 (quantity defaults to 1)
    assert isinstance(props["contents"][0]["quantity"], int)
    tiktok_accepts("Purchase", props)


@pytest.mark.parametrize(
    ("item", "content_id"),
    [
        ({"product_id": "p", "sku": "s", "id": "i"}, "p"),
        ({"sku": "s", "id": "i"}, "s"),
        ({"id": "i"}, "i"),
        ({"product_id": "", "sku": "s"}, "s"),
        ({"product_id": None, "id": 7}, "7"),
        ({"content_id": "c"}, "c"),
        ({"product_id": 0}, "0"),
        ({"product_id": 12.0}, "12"),
    ],
)
def test_segment_product_id_precedence(item: dict[str, Any], content_id: str) -> None:
    props = parse_properties({"products": [item]})
    assert props["contents"][0]["content_id"] == content_id
    assert props["content_ids"] == [content_id]


def test_tiktok_contents_numeric_content_id_becomes_string() -> None:
    props = parse_properties({"contents": [{"content_id": 2481, "quantity": 3, "price": 2}]})
    assert props["contents"] == [{"content_id": "2481", "quantity": 3, "price": 2.0}]
    assert props["content_ids"] == ["2481"]
    assert props["value"] == 6.0
    tiktok_accepts("AddToCart", props)


def test_contents_win_over_products() -> None:
    props = parse_properties({"contents": [{"content_id": "c"}], "products": [{"id": "p"}]})
    assert props["content_ids"] == ["c"]


def test_content_name_wins_over_segment_name() -> None:
    props = parse_properties(
        {
            "products": [
                {
                    "id": "a",
                    "content_name": "TikTok",
                    "name": "Segment",
                    "content_category": "TC",
                    "category": "SC",
                }
            ]
        }
    )
    assert props["contents"][0]["content_name"] == "TikTok"
    assert props["contents"][0]["content_category"] == "TC"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ({"value": 184.5, "revenue": 1, "total": 2}, 184.5),
        ({"value": 0, "total": 2}, 0.0),
        ({"value": "184.50"}, 184.5),
        ({"revenue": 99, "total": 120}, 99.0),
        ({"total": 120}, 120.0),
        ({"value": None, "revenue": None, "total": 7}, 7.0),
        ({"value": 5, "products": [{"id": "a", "price": 100}]}, 5.0),
        ({"revenue": 5, "products": [{"id": "a", "price": 100}]}, 5.0),
        ({"products": [{"id": "a", "price": 19.99, "quantity": 3}]}, 59.97),
        ({"products": [{"id": "a", "price": 0.1}, {"id": "b", "price": 0.2}]}, 0.3),
        ({"products": [{"id": "a", "price": 10, "quantity": 0}]}, 0.0),
        ({"products": [{"id": "a", "price": 10}, {"id": "b"}]}, 10.0),
    ],
)
def test_value(raw: dict[str, Any], value: float) -> None:
    props = parse_properties(raw)
    assert props["value"] == value
    assert isinstance(props["value"], float)
    tiktok_accepts("Purchase", props)


def test_no_value_without_prices() -> None:
    assert "value" not in parse_properties({"products": [{"id": "a", "quantity": 2}]})
    assert "value" not in parse_properties({"currency": "USD"})


def test_derived_value_is_finite_or_refused() -> None:
    try:
        props = parse_properties({"products": [{"id": "a", "price": 1e308, "quantity": 10}]})
    except FieldError:
        return
    assert math.isfinite(props["value"])
    tiktok_accepts("Purchase", props)


def test_supported_currencies() -> None:
    assert len(SUPPORTED_CURRENCIES) == 62
    for currency in sorted(SUPPORTED_CURRENCIES):
        assert parse_properties({"currency": currency})["currency"] == currency
        assert parse_properties({"currency": f" {currency.lower()} "})["currency"] == currency
        tiktok_accepts("Purchase", parse_properties({"value": 1, "currency": currency}))


@pytest.mark.parametrize("currency", ["XYZ", "usd$", "EURO", "€", 978, True, ["EUR"]])
def test_bad_currencies_are_refused(currency: Any) -> None:
    with pytest.raises(FieldError) as exc:
        parse_properties({"currency": currency})
    assert field_of(exc) == "properties.currency"


def test_empty_currency_is_ignored() -> None:
    assert "currency" not in parse_properties({"currency": ""})
    assert "currency" not in parse_properties({"currency": None})


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"value": -1}, "properties.value"),
        ({"value": "12,50"}, "properties.value"),
        ({"value": "$12"}, "properties.value"),
        ({"value": "nan"}, "properties.value"),
        ({"value": True}, "properties.value"),
        ({"value": [1]}, "properties.value"),
        ({"value": {}}, "properties.value"),
        ({"revenue": "abc"}, "properties.revenue"),
        ({"total": -0.01}, "properties.total"),
        ({"products": "SKU-1"}, "properties.products"),
        ({"products": {"id": "a"}}, "properties.products"),
        ({"products": [{"id": "a"}, {"name": "no id"}]}, "properties.products[1].content_id"),
        ({"products": [{"id": "a"}, {"id": ""}]}, "properties.products[1].content_id"),
        ({"products": [{"id": "a"}, "b"]}, "properties.products[1]"),
        ({"products": [{"id": True}]}, "properties.products[0].content_id"),
        ({"products": [{"id": ["a"]}]}, "properties.products[0].content_id"),
        ({"products": [{"id": "x" * 257}]}, "properties.products[0].content_id"),
        ({"products": [{"id": "a", "price": -1}]}, "properties.products[0].price"),
        ({"products": [{"id": "a", "price": "free"}]}, "properties.products[0].price"),
        ({"products": [{"id": "a", "quantity": "two"}]}, "properties.products[0].quantity"),
        ({"products": [{"id": "a", "quantity": -2}]}, "properties.products[0].quantity"),
        ({"products": [{"id": "a", "name": 5}]}, "properties.products[0].name"),
        ({"products": [{"id": "a", "category": "c" * 501}]}, "properties.products[0].category"),
        ({"products": [{"id": "a", "brand": ["b"]}]}, "properties.products[0].brand"),
        ({"contents": [{"id": "a"}]}, "properties.contents[0].content_id"),
        ({"contents": [{"content_id": "a"}, {"sku": "b"}]}, "properties.contents[1].content_id"),
        ({"products": [{"id": str(i)} for i in range(MAX_CONTENTS + 1)]}, "properties.products"),
        ({"order_id": True}, "properties.order_id"),
        ({"order_id": {"id": 1}}, "properties.order_id"),
        ({"content_ids": "a"}, "properties.content_ids"),
        ({"content_ids": ["a", False]}, "properties.content_ids[1]"),
        ({"content_type": "video"}, "properties.content_type"),
        ({"content_type": 5}, "properties.content_type"),
        ({"products": [{"id": "a"}], "content_type": "sku"}, "properties.content_type"),
        ({"num_items": -1}, "properties.num_items"),
        ({"num_items": "many"}, "properties.num_items"),
        ({"description": 42}, "properties.description"),
        ({"query": 42}, "properties.query"),
        ({"query": "q" * 501}, "properties.query"),
    ],
)
def test_property_errors_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as exc:
        parse_properties(raw)
    assert field_of(exc) == field


def test_property_field_names_are_prefixed_with_the_callers_name() -> None:
    with pytest.raises(FieldError) as exc:
        parse_properties({"products": [{"id": "a"}, {}]}, name="events[2].properties")
    assert field_of(exc) == "events[2].properties.products[1].content_id"


def test_properties_error_through_the_envelope() -> None:
    envelope = parse({"event": "Purchase", "properties": {"products": [{"id": "a"}, {"price": 3}]}})
    assert [w.field for w in envelope.warnings] == ["properties.products[1].content_id"]
    assert [c["content_id"] for c in envelope.properties["contents"]] == ["a"]  # the rest kept


@pytest.mark.parametrize("raw", [[], "x", 5, True])
def test_properties_must_be_an_object(raw: Any) -> None:
    with pytest.raises(FieldError) as exc:
        parse_properties(raw)
    assert field_of(exc) == "properties"


def test_missing_properties_are_empty() -> None:
    assert parse_properties(None) == {}
    assert parse_properties({}) == {}
    assert parse({"event": "Purchase"}).properties == {}


@pytest.mark.parametrize(
    ("raw", "query"),
    [
        ({"query": "linen shirt"}, "linen shirt"),
        ({"search_string": "linen shirt"}, "linen shirt"),
        ({"search_string": "a", "query": "b"}, "a"),
        ({"query": "  padded  "}, "padded"),
    ],
)
def test_query_and_search_string_are_both_set(raw: dict[str, Any], query: str) -> None:
    props = parse_properties(raw)
    assert props["query"] == query
    assert props["search_string"] == query
    tiktok_accepts("Search", props)


def test_empty_query_is_ignored() -> None:
    props = parse_properties({"query": ""})
    assert "query" not in props
    assert "search_string" not in props


def test_unknown_properties_are_dropped() -> None:
    props = parse_properties(
        {
            "email": "jane@example.com",
            "phone": "+33612345678",
            "coupon": "SUMMER",
            "discount": 5,
            "affiliation": "Store",
            "checkout_id": "c1",
            "user": {"email": "x@y.z"},
            "value": 10,
            "currency": "USD",
        }
    )
    assert props == {"value": 10.0, "currency": "USD"}


def test_unknown_product_fields_are_dropped() -> None:
    props = parse_properties(
        {
            "products": [
                {
                    "id": "a",
                    "url": "https://x/p",
                    "image_url": "https://x/i",
                    "coupon": "c",
                    "variant": "red",
                    "email": "jane@example.com",
                }
            ]
        }
    )
    assert props["contents"] == [{"content_id": "a"}]


def test_pass_through_properties() -> None:
    props = parse_properties(
        {
            "content_type": "product_group",
            "description": " summer sale ",
            "delivery_category": "home_delivery",
            "shop_id": "shop-1",
            "predicted_ltv": "120.5",
            "num_items": 3,
            "products": [{"id": "g1"}],
        }
    )
    assert props["content_type"] == "product_group"  # given wins over the derived "product"
    assert props["description"] == "summer sale"
    assert props["delivery_category"] == "home_delivery"
    assert props["shop_id"] == "shop-1"
    assert props["predicted_ltv"] == 120.5  # a number, as TikTok wants it
    assert props["num_items"] == 3
    assert isinstance(props["num_items"], int)


def test_content_ids_given_win_and_become_strings() -> None:
    props = parse_properties({"content_ids": [1, "b", 3.0], "products": [{"id": "x"}]})
    assert props["content_ids"] == ["1", "b", "3"]
    tiktok_accepts("ViewContent", props)


def test_no_content_type_without_contents() -> None:
    assert "content_type" not in parse_properties({"value": 1})
    assert "content_type" not in parse_properties({"products": []})
    assert "content_ids" not in parse_properties({"products": []})


def test_parsed_properties_pass_tiktoks_rules() -> None:
    props = parse_properties(
        {
            "value": "184.50",
            "currency": "eur",
            "order_id": 84213,
            "num_items": 2.0,
            "query": "shirt",
            "content_type": "product",
            "products": [
                {"product_id": 1, "price": "129", "quantity": "1"},
                {"sku": "S-2", "price": 55.5, "quantity": 1.0, "brand": "B"},
            ],
        }
    )
    assert props["order_id"] == "84213"
    assert props["contents"][1]["quantity"] == 1
    assert isinstance(props["contents"][1]["quantity"], int)
    tiktok_accepts("Purchase", props)


# --- 5. envelope --------------------------------------------------------------------------------


def test_full_envelope_from_the_design_example() -> None:
    envelope = parse(
        {
            "type": "track",
            "event": "CompletePayment",
            "event_id": "ord_84213",
            "timestamp": int(NOW) - 30,
            "anonymous_id": "visitor-1",
            "user_id": "cust_34982",
            "user": {
                "email": "A@B.com ",
                "phone": "06 12 34 56 78",
                "ttclid": "E.C.P.abc",
                "ttp": "ttp-1",
                "ip": "203.0.113.24",
                "user_agent": "Mozilla/5.0",
                "country": "FR",
            },
            "properties": {
                "value": 184.5,
                "currency": "EUR",
                "order_id": "84213",
                "contents": [{"content_id": "SKU-2481", "quantity": 1, "price": 129.0}],
            },
            "page": {
                "url": "https://store.example/checkout/thank-you",
                "referrer": "https://store.example/checkout",
            },
            "consent": {"ad_user_data": "granted", "ad_personalization": "denied"},
        }
    )
    assert envelope.type is EventType.TRACK
    assert envelope.event == "CompletePayment"
    assert envelope.event_id == "ord_84213"
    assert envelope.timestamp_s == int(NOW) - 30
    assert envelope.anonymous_id == "visitor-1"
    assert envelope.user_id == "cust_34982"
    assert envelope.user.emails == ["A@B.com"]  # trimmed; hashing is identity's job
    assert envelope.user.phones == ["06 12 34 56 78"]
    assert envelope.user.ttclid == "E.C.P.abc"
    assert envelope.user.ttp == "ttp-1"
    assert envelope.user.ip == "203.0.113.24"
    assert envelope.user.user_agent == "Mozilla/5.0"
    assert envelope.user.country == "FR"
    assert envelope.properties["value"] == 184.5
    assert envelope.page_url == "https://store.example/checkout/thank-you"
    assert envelope.page_referrer == "https://store.example/checkout"
    assert envelope.consent == {"ad_user_data": True, "ad_personalization": False}
    assert envelope.limited_data_use is None
    assert envelope.message_id is None


@pytest.mark.parametrize(
    ("raw", "kind", "event"),
    [
        ({"event": "Purchase"}, EventType.TRACK, "Purchase"),
        ({"type": "track", "event": "Product Added"}, EventType.TRACK, "AddToCart"),
        ({"type": "page"}, EventType.PAGE, PAGEVIEW),
        ({"type": "page", "event": "Purchase"}, EventType.PAGE, PAGEVIEW),
        ({"type": "page", "event": 5}, EventType.PAGE, PAGEVIEW),
        ({"type": "identify", "traits": {"email": "a@b.c"}}, EventType.IDENTIFY, None),
        ({"type": "identify", "event": "Purchase"}, EventType.IDENTIFY, None),
    ],
)
def test_types(raw: dict[str, Any], kind: EventType, event: str | None) -> None:
    envelope = parse(raw)
    assert envelope.type is kind
    assert envelope.event == event


@pytest.mark.parametrize("kind", ["screen", "alias", "group", "Track", "PAGE", "", None, 1, []])
def test_unknown_types_are_refused(kind: Any) -> None:
    with pytest.raises(FieldError) as exc:
        parse({"type": kind, "event": "Purchase"})
    assert field_of(exc) == "type"


@pytest.mark.parametrize(
    "event", [None, "", "   ", 5, ["Purchase"], {"name": "Purchase"}, "x" * 101]
)
def test_track_needs_an_event_name(event: Any) -> None:
    raw: dict[str, Any] = {"type": "track"}
    if event is not None:
        raw["event"] = event
    with pytest.raises(FieldError) as exc:
        parse(raw)
    assert field_of(exc) == "event"


def test_event_name_is_trimmed_before_resolving() -> None:
    assert parse({"event": "  Purchase "}).event == "Purchase"
    assert parse({"event": " purchase "}).event == "Purchase"  # refused before issue 15
    with pytest.raises(FieldError) as exc:
        parse({"event": " has space "})
    assert field_of(exc) == "event"


@pytest.mark.parametrize("raw", [None, [], "Purchase", 5, True, {}])
def test_event_must_be_an_object_with_a_name(raw: Any) -> None:
    with pytest.raises(FieldError) as exc:
        parse(raw)
    assert field_of(exc) == "event"


def test_non_object_event_says_so() -> None:
    with pytest.raises(FieldError, match="object"):
        parse(["Purchase"])


@pytest.mark.parametrize("forbidden", FORBIDDEN_FIELDS)
@pytest.mark.parametrize("value", ["CPIXEL999", None, "", {"x": 1}])
def test_forbidden_fields_are_refused(forbidden: str, value: Any) -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", forbidden: value})
    assert field_of(exc) == forbidden


def test_forbidden_fields_are_checked_first() -> None:
    with pytest.raises(FieldError) as exc:
        parse({"type": "bogus", "event": "9lives", "pixel_code": "C1"})
    assert field_of(exc) == "pixel_code"


def test_forbidden_fields_cover_the_routing_keys() -> None:
    assert {"pixel_code", "access_token", "event_source_id", "test_event_code"} <= set(
        FORBIDDEN_FIELDS
    )


@pytest.mark.parametrize(
    ("user", "emails"),
    [
        ({"email": "a@b.com"}, ["a@b.com"]),
        ({"email": " a@b.com "}, ["a@b.com"]),
        ({"email": ["a@b.com", "c@d.com"]}, ["a@b.com", "c@d.com"]),
        ({"email": []}, []),
        ({"email": ""}, []),
        ({"email": None}, []),
        ({}, []),
    ],
)
def test_user_emails(user: dict[str, Any], emails: list[str]) -> None:
    assert parse({"event": "Purchase", "user": user}).user.emails == emails


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"user": "a@b.c"}, "user"),
        ({"user": ["a@b.c"]}, "user"),
        ({"context": "ctx"}, "context"),
    ],
)
def test_envelope_field_errors(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", **raw})
    assert field_of(exc) == field


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"user": {"email": 5}}, "user.email"),
        ({"user": {"email": ["a@b.c", 5]}}, "user.email[1]"),
        ({"user": {"email": ["a@b.c", "  "]}}, "user.email[1]"),
        ({"user": {"email": [f"{i}@b.c" for i in range(11)]}}, "user.email"),
        ({"user": {"email": "x" * 321}}, "user.email"),
        ({"user": {"email": ""}}, "user.email"),
        ({"user": {"phone": {"n": 1}}}, "user.phone"),
        ({"user": {"phone": "  "}}, "user.phone"),
        ({"user": {"external_id": True}}, "user.external_id"),
        ({"user": {"ttclid": 5}}, "user.ttclid"),
        ({"user": {"ttclid": "undefined"}}, "user.ttclid"),
        ({"user": {"ttclid": "null"}}, "user.ttclid"),
        ({"user": {"ttclid": "None"}}, "user.ttclid"),
        ({"user": {"ttclid": "__CLICKID__"}}, "user.ttclid"),
        ({"user": {"ttp": "t" * 129}}, "user.ttp"),
        ({"user": {"ttp": "undefined"}}, "user.ttp"),
        ({"user": {"country": ["FR"]}}, "user.country"),
        ({"user": {"user_agent": 1}}, "user.user_agent"),
        ({"user": {"ip": "not-an-ip"}}, "user.ip"),
        ({"user": {"ip": "300.1.1.1"}}, "user.ip"),
        ({"user": {"ip": "1.2.3"}}, "user.ip"),
        ({"user": {"ip": 12345}}, "user.ip"),
        ({"user": {"ip": "10.1.2.3"}}, "user.ip"),
        ({"user": {"ip": "127.0.0.1"}}, "user.ip"),
        ({"user": {"ip": "::1"}}, "user.ip"),
        ({"user": {"ip": "::ffff:192.168.1.9"}}, "user.ip"),
        ({"traits": {"email": 5}}, "traits.email"),
        ({"context": {"traits": {"phone": ["+1", {"n": 1}]}}}, "context.traits.phone[1]"),
        # identifiers that cannot be used are dropped, the event kept (issue 15: they refused it)
        ({"traits": "a@b.c"}, "traits"),
        ({"context": {"traits": []}}, "context.traits"),
        ({"anonymous_id": 5}, "anonymous_id"),
        ({"anonymousId": "a" * 129}, "anonymousId"),
        ({"user_id": True}, "user_id"),
        ({"user_id": "  "}, "user_id"),
        ({"userId": ["u"]}, "userId"),
        ({"context": {"userAgent": 5}}, "context.userAgent"),
        ({"context": {"locale": ["fr"]}}, "context.locale"),
        ({"context": {"ip": 5}}, "context.ip"),
        ({"properties": {"value": "abc"}}, "properties.value"),
        ({"properties": {"currency": "XYZ"}}, "properties.currency"),
        ({"properties": {"shipping_method": "dhl"}}, "properties.shipping_method"),
        ({"properties": {"contents": [{"price": 1}]}}, "properties.contents[0].content_id"),
        ({"page": {"url": "https://s.example/?ttclid=undefined"}}, "page.url.ttclid"),
    ],
)
def test_unusable_fields_are_dropped_with_a_warning_and_the_event_kept(
    raw: dict[str, Any], field: str
) -> None:
    """DESIGN §2: a field that cannot be used is dropped with a warning naming it (issue 13)."""
    envelope = parse({"event": "Purchase", **raw})
    assert field in [w.field for w in envelope.warnings], envelope.warnings
    assert all(w.warning.endswith(("dropped", "ignored", "(no click)")) for w in envelope.warnings)


@pytest.mark.parametrize(
    ("user", "phones"),
    [
        ({"phone": "+33612345678"}, ["+33612345678"]),
        ({"phone_number": "+33612345678"}, ["+33612345678"]),
        ({"phone": ["+1 202 555 0100", "06 12"]}, ["+1 202 555 0100", "06 12"]),
        ({"phone": "+1", "phone_number": "+2"}, ["+1"]),
    ],
)
def test_user_phones(user: dict[str, Any], phones: list[str]) -> None:
    assert parse({"event": "Purchase", "user": user}).user.phones == phones


@pytest.mark.parametrize(
    ("ip", "normalized"),
    [
        ("203.0.113.24", "203.0.113.24"),
        (" 203.0.113.24 ", "203.0.113.24"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:0db8:0000::0001", "2001:db8::1"),
        ("::FFFF:192.0.2.1", "192.0.2.1"),  # IPv4-mapped (Node's default): unwrapped
        ("::ffff:203.0.113.9", "203.0.113.9"),
    ],
)
def test_ip_is_validated_and_normalized(ip: str, normalized: str) -> None:
    assert parse({"event": "Purchase", "user": {"ip": ip}}).user.ip == normalized
    assert parse({"event": "Purchase", "context": {"ip": ip}}).user.ip == normalized


def test_invalid_context_ip_is_dropped_with_a_warning() -> None:
    envelope = parse({"event": "Purchase", "context": {"ip": "999.0.0.1"}})
    assert envelope.user.ip is None
    assert [w.field for w in envelope.warnings] == ["context.ip"]


def test_segment_context_and_traits_are_read() -> None:
    envelope = parse(
        {
            "event": "Order Completed",
            "anonymousId": "anon-1",
            "userId": 34982,
            "messageId": "ajs-1",
            "context": {
                "ip": "2001:db8::0:1",
                "userAgent": "Mozilla/5.0 (iPhone)",
                "locale": "fr-FR",
                "page": {"url": "https://store.example/thanks", "referrer": "https://t.co/x"},
            },
            "traits": {"email": "jane@example.com", "phone": "+33612345678"},
        }
    )
    assert envelope.event == "Purchase"
    assert envelope.anonymous_id == "anon-1"
    assert envelope.user_id == "34982"
    assert envelope.message_id == "ajs-1"
    assert envelope.user.ip == "2001:db8::1"
    assert envelope.user.user_agent == "Mozilla/5.0 (iPhone)"
    assert envelope.user.locale == "fr-FR"
    assert envelope.user.emails == ["jane@example.com"]
    assert envelope.user.phones == ["+33612345678"]
    assert envelope.page_url == "https://store.example/thanks"
    assert envelope.page_referrer == "https://t.co/x"


def test_explicit_user_fields_win_over_context_and_traits() -> None:
    envelope = parse(
        {
            "event": "Purchase",
            "user": {
                "email": "user@x.com",
                "phone": "+1",
                "ip": "192.0.2.1",
                "user_agent": "UA-user",
                "locale": "de",
            },
            "context": {
                "ip": "198.51.100.1",
                "userAgent": "UA-context",
                "locale": "fr",
                "page": {"url": "https://context.example/"},
            },
            "page": {"url": "https://page.example/"},
            "traits": {"email": "traits@x.com", "phone": "+2"},
        }
    )
    assert envelope.user.emails == ["user@x.com"]
    assert envelope.user.phones == ["+1"]
    assert envelope.user.ip == "192.0.2.1"
    assert envelope.user.user_agent == "UA-user"
    assert envelope.user.locale == "de"
    assert envelope.page_url == "https://page.example/"


def test_user_name_and_place_fields_are_read() -> None:
    user = parse(
        {
            "event": "Purchase",
            "user": {
                "first_name": " Jane ",
                "last_name": "Doe",
                "zip_code": "75001",
                "city": "Paris",
                "state": "IDF",
                "external_id": ["c1", "c2"],
            },
        }
    ).user
    assert (user.first_name, user.last_name, user.zip_code, user.city, user.state) == (
        "Jane",
        "Doe",
        "75001",
        "Paris",
        "IDF",
    )
    assert user.external_ids == ["c1", "c2"]


@pytest.mark.parametrize("key", CONSENT_KEYS)
@pytest.mark.parametrize(
    ("value", "state"),
    [
        ("granted", True),
        ("denied", False),
        (" GRANTED ", True),
        ("Denied", False),
        (True, True),
        (False, False),
    ],
)
def test_consent_values(key: str, value: Any, state: bool) -> None:
    assert parse({"event": "Purchase", "consent": {key: value}}).consent == {key: state}


@pytest.mark.parametrize("key", CONSENT_KEYS)
@pytest.mark.parametrize("value", ["yes", "no", "true", "1", "", 1, 0, [], {}])
def test_bad_consent_values_are_refused(key: str, value: Any) -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "consent": {key: value}})
    assert field_of(exc) == f"consent.{key}"


def test_consent_ad_user_data_error_field() -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "consent": {"ad_user_data": "maybe"}})
    assert field_of(exc) == "consent.ad_user_data"


def test_consent_nulls_and_unknown_keys_are_ignored() -> None:
    consent = parse(
        {"event": "Purchase", "consent": {"ad_user_data": None, "functionality": "granted"}}
    ).consent
    assert consent == {}
    assert parse({"event": "Purchase"}).consent == {}


@pytest.mark.parametrize("raw", ["granted", ["granted"], True])
def test_consent_must_be_an_object(raw: Any) -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "consent": raw})
    assert field_of(exc) == "consent"


@pytest.mark.parametrize(
    "url",
    [
        "https://store.example/p?x=1#f",
        "http://store.example",
        "https://127.0.0.1:8443/p",
        "https://[2001:db8::1]/p",
        "HTTPS://STORE.EXAMPLE/P",
    ],
)
def test_absolute_http_urls_are_accepted(url: str) -> None:
    envelope = parse({"event": "Purchase", "page": {"url": url, "referrer": url}})
    assert envelope.page_url == url
    assert envelope.page_referrer == url
    body = tiktok_body("Purchase")
    body["data"][0]["page"] = {"url": url}
    assert validate_body(body, DefaultLimits(), now=NOW) is None


@pytest.mark.parametrize(
    "url",
    [
        "/checkout",
        "store.example/checkout",
        "ftp://store.example/",
        "javascript:alert(1)",
        "data:text/html,x",
        "https://",
        "https:///path",
        "mailto:a@b.c",
        "   ",
        5,
        ["https://store.example/"],
        "https://store.example/" + "a" * 4096,
    ],
)
def test_bad_page_urls_are_refused(url: Any) -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "page": {"url": url}})
    assert field_of(exc) == "page.url"


@pytest.mark.parametrize(
    "referrer", ["android-app://com.zhiliaoapp.musically/", "/checkout", "store.example/x"]
)
def test_any_referrer_text_is_kept(referrer: str) -> None:
    """document.referrer may be any string (TikTok takes a string); only its contact data goes."""
    assert parse({"event": "Purchase", "page": {"referrer": referrer}}).page_referrer == referrer


@pytest.mark.parametrize("referrer", [5, ["https://store.example/"], "   ", "x" * 5000])
def test_bad_referrers_are_dropped_with_a_warning(referrer: Any) -> None:
    envelope = parse({"event": "Purchase", "page": {"referrer": referrer}})
    assert envelope.page_referrer is None
    assert [w.field for w in envelope.warnings] == ["page.referrer"]


@pytest.mark.parametrize("url", ["http://[", "https://[::1/p", "https://]x/", "http://[abc]/"])
def test_malformed_bracket_urls_raise_field_error(url: str) -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "page": {"url": url}})
    assert field_of(exc) == "page.url"


@pytest.mark.parametrize("url", ["http://:80/", "https://user@/x", "https://:@/"])
def test_hostless_urls_are_refused(url: str) -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "page": {"url": url}})
    assert field_of(exc) == "page.url"


def test_page_url_is_optional() -> None:
    envelope = parse({"event": "Purchase", "page": {"url": ""}})
    assert envelope.page_url is None
    assert envelope.page_referrer is None


@pytest.mark.parametrize("ldu", [True, False, None])
def test_limited_data_use(ldu: bool | None) -> None:
    assert parse({"event": "Purchase", "limited_data_use": ldu}).limited_data_use is ldu


@pytest.mark.parametrize("ldu", ["true", 1, 0, "", [], {}])
def test_limited_data_use_must_be_a_boolean(ldu: Any) -> None:
    with pytest.raises(FieldError) as exc:
        parse({"event": "Purchase", "limited_data_use": ldu})
    assert field_of(exc) == "limited_data_use"


def test_anonymous_id_aliases() -> None:
    assert parse({"event": "Purchase", "anonymous_id": "a", "anonymousId": "b"}).anonymous_id == "a"
    assert parse({"event": "Purchase", "anonymousId": "b"}).anonymous_id == "b"
    assert parse({"event": "Purchase", "anonymous_id": ""}).anonymous_id is None


# --- 6. split_batch -----------------------------------------------------------------------------


def test_single_event_object() -> None:
    event = {"event": "Purchase"}
    assert split_batch(event) == [event]
    assert split_batch(event)[0] is event


@pytest.mark.parametrize("count", [1, 2, MAX_EVENTS])
def test_batch_of_events(count: int) -> None:
    events = [{"event": "Purchase", "event_id": str(i)} for i in range(count)]
    assert split_batch({"events": events}) == events


def test_batch_items_are_returned_unparsed() -> None:
    assert split_batch({"events": [1, "x", None]}) == [1, "x", None]


@pytest.mark.parametrize("events", [[], [{}] * (MAX_EVENTS + 1)])
def test_batch_size_limits(events: list[Any]) -> None:
    with pytest.raises(FieldError) as exc:
        split_batch({"events": events})
    assert field_of(exc) == "events"


@pytest.mark.parametrize("events", [None, {"event": "Purchase"}, "Purchase", 3])
def test_events_must_be_a_list(events: Any) -> None:
    with pytest.raises(FieldError) as exc:
        split_batch({"events": events})
    assert field_of(exc) == "events"


@pytest.mark.parametrize("body", [None, [], [{"event": "Purchase"}], "Purchase", 5, 1.5, True])
def test_body_must_be_an_object(body: Any) -> None:
    with pytest.raises(FieldError) as exc:
        split_batch(body)
    assert field_of(exc) == "body"


def test_max_events_matches_tiktoks_request_limit() -> None:
    assert MAX_EVENTS == 1000


# --- 7. properties: never an unexpected exception -----------------------------------------------

_KEYS = sorted(
    {
        "type",
        "event",
        "event_id",
        "eventId",
        "timestamp",
        "anonymous_id",
        "anonymousId",
        "user_id",
        "userId",
        "user",
        "properties",
        "page",
        "context",
        "consent",
        "traits",
        "messageId",
        "message_id",
        "limited_data_use",
        "events",
        "email",
        "phone",
        "phone_number",
        "external_id",
        "ttclid",
        "ttp",
        "ip",
        "user_agent",
        "userAgent",
        "country",
        "locale",
        "first_name",
        "last_name",
        "zip_code",
        "city",
        "state",
        "url",
        "referrer",
        "products",
        "contents",
        "product_id",
        "sku",
        "id",
        "content_id",
        "name",
        "content_name",
        "category",
        "content_category",
        "brand",
        "price",
        "quantity",
        "value",
        "revenue",
        "total",
        "currency",
        "order_id",
        "search_string",
        "query",
        "content_ids",
        "content_type",
        "num_items",
        "description",
        "delivery_category",
        "shop_id",
        "predicted_ltv",
        *CONSENT_KEYS,
    }
)
_TEXT = st.text(max_size=20) | st.sampled_from(
    [
        "",
        " ",
        "Purchase",
        "Order Completed",
        "granted",
        "EUR",
        "https://store.example/p",
        "203.0.113.24",
        "2026-06-14T08:41:22Z",
        str(int(NOW)),
        "track",
        "page",
        "identify",
    ]
)
# orjson parses integers beyond 64 bits as floats and refuses numbers beyond the float range,
# so the JSON values gateway.events can receive are exactly these.
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | _TEXT, children, max_size=6)
    ),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_parse_event_returns_an_envelope_or_a_field_error(raw: Any) -> None:
    envelope, error = attempt(parse, raw)
    if error is not None:
        assert error.field
        return
    assert isinstance(envelope, Envelope)
    assert envelope.timestamp_s <= int(NOW)
    event_id = derive_event_id(envelope)
    assert isinstance(event_id, str)
    assert event_id


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=10).map(
        lambda d: {k: v for k, v in d.items() if k not in FORBIDDEN_FIELDS}
    )
)
def test_event_shaped_objects_return_an_envelope_or_a_field_error(raw: dict[str, Any]) -> None:
    envelope, error = attempt(parse, raw)
    assert isinstance(envelope, Envelope) or (error is not None and error.field)


@settings(max_examples=120, deadline=None)
@given(_JSON | st.builds(lambda e: {"events": e}, _JSON))
def test_split_batch_returns_a_list_or_a_field_error(body: Any) -> None:
    events, error = attempt(split_batch, body)
    if error is not None:
        assert error.field in ("body", "events")
        return
    assert isinstance(events, list)
    assert 1 <= len(events) <= MAX_EVENTS


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=8))
def test_parse_properties_returns_a_dict_or_a_field_error(raw: dict[str, Any]) -> None:
    props, error = attempt(parse_properties, raw)
    if error is not None:
        assert error.field.startswith("properties")
        return
    assert set(props) <= {
        "contents",
        "value",
        "currency",
        "order_id",
        "query",
        "search_string",
        "content_ids",
        "content_type",
        "description",
        "delivery_category",
        "shop_id",
        "predicted_ltv",
        "num_items",
    }
