"""The event's ``properties``: TikTok-shaped from TikTok, Segment or GA4-style input.

Contents (``contents``, Segment's ``products``, GA4's ``items``, or one product given at the top
level, as Segment's Product Added and Viewed have it), value and currency, order id, search
string, content ids and the few other properties TikTok uses are read and checked. Ids given as
numbers become strings and numbers given as strings become numbers. Anything else is dropped
rather than sent, because it could carry raw personal data, and said in the answer.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from gateway.ingest.fields import (
    FieldError,
    FieldWarning,
    lenient,
    parse_count,
    parse_identifier,
    parse_number,
    parse_object,
    parse_text,
    soft,
)
from gateway.tiktok.names import SUPPORTED_CURRENCIES

MAX_CONTENTS = 200
MAX_WARNINGS = 20  # per event; the rest are summed up in one

# Properties TikTok uses; anything else is dropped rather than sent (it could carry raw PII).
PASS_PROPERTIES = ("content_type", "description", "delivery_category")

# Where each field of a content item is read from, first found wins: TikTok's own keys, Segment's
# (``products[]``), GA4's (``items[]``). The id's keys depend on the list (:data:`ID_KEYS`).
NAME_KEYS = ("content_name", "name", "item_name")
CATEGORY_KEYS = ("content_category", "category", "item_category")
BRAND_KEYS = ("brand", "item_brand")
ID_KEYS = {
    "contents": ("content_id",),
    "products": ("product_id", "sku", "id", "content_id"),
    "items": ("item_id",),
}
# one product at the top level of ``properties`` (Segment's Product Added, Product Viewed)
PRODUCT_KEYS = (*ID_KEYS["products"], *NAME_KEYS, *CATEGORY_KEYS, *BRAND_KEYS, "price",
                "quantity")  # fmt: skip

# what parse_properties reads; any other property is dropped (it could carry raw PII) and said
KNOWN_PROPERTIES = frozenset(
    {"contents", "products", "items", "value", "revenue", "total", "currency", "order_id",
     "transaction_id", "search_string", "query", "search_term", "content_ids", "predicted_ltv",
     "num_items", "shop_id", *PASS_PROPERTIES}
)  # fmt: skip


def parse_properties(
    raw: Any, name: str = "properties", notes: list[FieldWarning] | None = None
) -> dict[str, Any]:
    """TikTok-shaped properties from TikTok, Segment or GA4-style input.

    With ``notes``, a property that cannot be used (a value that is no number, a currency
    TikTok does not take, an unknown key) is dropped with a warning there and the rest kept;
    without, the first such problem raises :class:`FieldError`.
    """
    props = parse_object(raw, name)
    out: dict[str, Any] = {}
    contents = _all_contents(props, name, notes)
    if contents:
        out["contents"] = contents
    for key in ("value", "revenue", "total"):
        if props.get(key) is not None:
            value = lenient(notes, parse_number, props[key], f"{name}.{key}")
            if value is not None:
                out["value"] = value
            break
    else:
        priced = [c for c in out.get("contents", []) if "price" in c]
        if priced:
            total = sum(c["price"] * c.get("quantity", 1) for c in priced)
            if math.isfinite(total):
                out["value"] = round(total, 2)
            elif notes is None:
                raise FieldError(f"{name}.value", "the contents' price x quantity is not finite")
    currency_key, currency_raw = "currency", props.get("currency")
    if currency_raw in (None, "") and isinstance(props.get("items"), list):
        currency_key, currency_raw = "items[].currency", _shared_currency(props["items"])
    if currency_raw not in (None, ""):
        currency = lenient(notes, _currency, currency_raw, f"{name}.{currency_key}")
        if currency is not None:
            out["currency"] = currency
    for key in ("order_id", "transaction_id", "shop_id"):  # GA4's transaction_id is the order's
        target = "shop_id" if key == "shop_id" else "order_id"
        if props.get(key) not in (None, "") and target not in out:
            given = lenient(notes, parse_identifier, props[key], f"{name}.{key}")
            if given is not None:
                out[target] = given
    for key in ("search_string", "query", "search_term"):
        if props.get(key) not in (None, ""):
            query = lenient(notes, lambda v, w: parse_text(v, w, limit=500), props[key],
                            f"{name}.{key}")  # fmt: skip
            if query is not None:
                out["query"] = out["search_string"] = query
            break
    if props.get("content_ids") is not None:
        ids = lenient(notes, _id_list, props["content_ids"], f"{name}.content_ids")
        if ids is not None:
            out["content_ids"] = ids
    if "content_ids" not in out and out.get("contents"):
        out["content_ids"] = [c["content_id"] for c in out["contents"]]
    if out.get("contents"):
        out["content_type"] = "product"
    for key in PASS_PROPERTIES:
        if props.get(key) not in (None, ""):
            text = lenient(notes, lambda v, w: parse_text(v, w, limit=500), props[key],
                           f"{name}.{key}")  # fmt: skip
            if text is not None:
                out[key] = text
    if out.get("content_type") not in (None, "product", "product_group"):
        if notes is None:
            raise FieldError(f"{name}.content_type", "must be product or product_group")
        notes.append(FieldWarning.of(f"{name}.content_type",
                                     "must be product or product_group; dropped"))  # fmt: skip
        del out["content_type"]
    for key, parse in (("predicted_ltv", parse_number), ("num_items", parse_count)):
        if props.get(key) is not None:
            number = lenient(notes, parse, props[key], f"{name}.{key}")
            if number is not None:
                out[key] = number
    if notes is not None:
        # with no list of contents, the top-level product fields were read (or said unusable)
        lists = any(props.get(key) is not None for key in ID_KEYS)
        known = KNOWN_PROPERTIES if lists else KNOWN_PROPERTIES | set(PRODUCT_KEYS)
        unknown = [k for k in props if k not in known]
        for key in unknown[:MAX_WARNINGS]:
            notes.append(FieldWarning.of(f"{name}.{str(key)[:64]}",
                                         "is not a property TikTok takes; dropped",
                                         label=f"{name}.*"))  # fmt: skip
        if len(unknown) > MAX_WARNINGS:
            notes.append(FieldWarning.of(f"{name}.*", f"{len(unknown) - MAX_WARNINGS} more "
                                         "properties TikTok does not take; dropped"))  # fmt: skip
    return out


def _all_contents(
    props: dict[str, Any], name: str, notes: list[FieldWarning] | None
) -> list[dict[str, Any]] | None:
    """The event's contents: its first list (``contents``, ``products``, ``items``), else the one
    product given at the top level (when it names its id), else None."""
    for key, ids in ID_KEYS.items():
        if props.get(key) is not None:
            return lenient(notes, partial(_contents, ids=ids, notes=notes), props[key],
                           f"{name}.{key}")  # fmt: skip
    if any(props.get(key) not in (None, "") for key in ID_KEYS["products"]):
        content = lenient(notes, partial(_content, ids=ID_KEYS["products"], notes=notes), props,
                          name)  # fmt: skip
        return [content] if content is not None else None
    given = [key for key in PRODUCT_KEYS if props.get(key) not in (None, "")]
    if given and notes is not None:
        notes.append(FieldWarning.of(f"{name}.product_id", "is required for a product given at "
                                     f"the top level ({', '.join(given)}); dropped"))  # fmt: skip
    return None


def _contents(
    items: Any, name: str, ids: tuple[str, ...], notes: list[FieldWarning] | None = None
) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise FieldError(name, "must be a list")
    if len(items) > MAX_CONTENTS:
        raise FieldError(name, f"at most {MAX_CONTENTS} items")
    out = []
    for i, raw in enumerate(items):
        where = f"{name}[{i}]"
        if notes is None:
            out.append(_content(raw, where, ids, None))
        else:
            content = soft(notes, partial(_content, raw, where, ids, notes))
            if content is not None:
                out.append(content)
    return out


def _content(
    raw: Any, where: str, ids: tuple[str, ...], notes: list[FieldWarning] | None
) -> dict[str, Any]:
    item = parse_object(raw, where)
    content_id = next((item[k] for k in ids if item.get(k) not in (None, "")), None)
    if content_id is None:
        raise FieldError(f"{where}.content_id", f"is required ({' or '.join(ids)})")
    content: dict[str, Any] = {"content_id": parse_identifier(content_id, f"{where}.content_id")}
    for target, keys in (("content_name", NAME_KEYS), ("content_category", CATEGORY_KEYS),
                         ("brand", BRAND_KEYS)):  # fmt: skip
        source = next((k for k in keys if item.get(k) not in (None, "")), None)
        if source is not None:
            text = lenient(notes, lambda v, w: parse_text(v, w, limit=500), item[source],
                           f"{where}.{source}")  # fmt: skip
            if text is not None:
                content[target] = text
    for key, parse in (("price", parse_number), ("quantity", parse_count)):
        if item.get(key) is not None:
            value = lenient(notes, parse, item[key], f"{where}.{key}")
            if value is not None:
                content[key] = value
    return content


def _currency(value: Any, where: str) -> str:
    currency = parse_text(value, where, limit=3).upper()
    if currency not in SUPPORTED_CURRENCIES:
        raise FieldError(where, f"{currency!r} is not a currency TikTok supports")
    return currency


def _shared_currency(items: list[Any]) -> Any:
    """The currency GA4's items all name (TikTok's sGTM template takes the first), else None."""
    named = {item["currency"] for item in items if isinstance(item, dict) and item.get("currency")
             and isinstance(item["currency"], str)}  # fmt: skip
    return named.pop() if len(named) == 1 else None


def _id_list(ids: Any, where: str) -> list[str]:
    if not isinstance(ids, list):
        raise FieldError(where, "must be a list")
    return [parse_identifier(v, f"{where}[{i}]") for i, v in enumerate(ids)]
