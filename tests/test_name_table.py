"""The one name table (issue 15): Segment's spec, GA4's recommended events, TikTok's reserved
aliases and TikTok's own names in any case, as the code has them and as the README shows them."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from gateway.ingest.name_table import (
    FOLDED,
    GA4_NAMES,
    PURCHASE,
    SEGMENT_CUSTOM,
    SEGMENT_NAMES,
    NameTable,
    custom_name,
    fold,
)
from gateway.tiktok.names import ACCEPTED_EVENTS, RESERVED_TARGETS, canonical_event
from gateway.tiktok.validation import DefaultLimits, validate_body

README = Path(__file__).parent.parent / "README.md"
TABLE_HEADER = "| source | name sent | → TikTok |"
NAMES = NameTable()
COMPLETE_PAYMENT = NameTable(purchase_event="CompletePayment")


def readme_rows() -> list[tuple[str, list[str], str]]:
    """(source, names, what they become) of each row of the README's name table."""
    text = README.read_text()
    assert TABLE_HEADER in text
    lines = text.split(TABLE_HEADER, 1)[1].strip().splitlines()[1:]
    rows, source = [], ""
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        source = cells[0] or source
        rows.append((source, re.findall(r"`([^`]+)`", cells[1]), cells[2]))
    return rows


def expected(name: str, target: str, targets: list[str], names: list[str]) -> str:
    """What the README says ``name`` becomes."""
    if "words joined" in target:
        return custom_name(name)
    if "purchase name" in target:
        return "Purchase"
    if "as given" in target:
        return name
    if len(targets) == len(names):
        return targets[names.index(name)]
    (only,) = targets
    return only


def test_the_readme_shows_the_table_the_code_has() -> None:
    rows = readme_rows()
    shown: set[str] = set()
    for _, names, target in rows:
        targets = re.findall(r"`([^`]+)`", target)
        for name in names:
            assert NAMES.resolve(name) == expected(name, target, targets, names), name
            shown.add(name)
    assert set(SEGMENT_NAMES) | set(SEGMENT_CUSTOM) | set(GA4_NAMES) <= shown
    assert set(RESERVED_TARGETS) <= shown
    sources = {source for source, _, _ in rows}
    assert {"Segment e-commerce", "GA4 recommended events", "TikTok reserved names"} <= sources


def test_no_entry_is_shadowed_by_another_that_folds_the_same() -> None:
    for name, target in {**SEGMENT_NAMES, **GA4_NAMES}.items():
        assert FOLDED[fold(name)] == target, name
    for name in SEGMENT_CUSTOM:
        assert FOLDED[fold(name)] == custom_name(name)
    # the only TikTok names a source table takes over are the ones it maps to themselves
    for name in ACCEPTED_EVENTS:
        assert FOLDED[fold(name)] in (name, PURCHASE), name


@pytest.mark.parametrize("name", sorted(SEGMENT_CUSTOM))
def test_segment_names_with_no_tiktok_event_are_valid_custom_events(name: str) -> None:
    custom = NAMES.resolve(name)
    assert custom == custom_name(name) and " " not in custom
    assert fold(custom) not in {fold(n) for n in ACCEPTED_EVENTS | set(RESERVED_TARGETS)}
    assert NAMES.resolve(custom) == custom
    assert NAMES.resolve(name.lower().replace(" ", "_")) == custom


def test_the_purchase_name_follows_the_setting_and_exact_tiktok_names_never_change() -> None:
    for name in ("Order Completed", "order_completed", "purchase", "PURCHASE"):
        assert NAMES.resolve(name) == "Purchase"
        assert COMPLETE_PAYMENT.resolve(name) == "CompletePayment"
    assert COMPLETE_PAYMENT.resolve("Purchase") == "Purchase"
    assert COMPLETE_PAYMENT.resolve("CompletePayment") == "CompletePayment"
    assert canonical_event(COMPLETE_PAYMENT.resolve("purchase")) == "Purchase"


@pytest.mark.parametrize("name", sorted(ACCEPTED_EVENTS))
def test_tiktok_names_match_in_any_case_and_spacing(name: str) -> None:
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)  # AddToCart -> Add To Cart
    for variant in (name.lower(), name.upper(), spaced, spaced.lower().replace(" ", "_")):
        assert NAMES.resolve(variant) == name, variant


@pytest.mark.parametrize(
    "name",
    sorted({*SEGMENT_NAMES, *SEGMENT_CUSTOM, *GA4_NAMES, *RESERVED_TARGETS, *ACCEPTED_EVENTS}),
)
def test_every_name_of_the_table_becomes_one_tiktok_takes(name: str) -> None:
    for table in (NAMES, COMPLETE_PAYMENT):
        event = {"event": table.resolve(name), "event_time": int(time.time()), "event_id": "e-1"}
        body = {"event_source": "web", "event_source_id": "CPIXEL123", "data": [event]}
        assert validate_body(body, DefaultLimits(), now=time.time()) is None, name
