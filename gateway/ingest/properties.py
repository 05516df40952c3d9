"""The event's ``properties``: TikTok-shaped from TikTok or Segment-style input.

Contents (``contents``, or Segment's ``products``), value and currency, order id, search string,
content ids and the few other properties TikTok uses are read and checked. Anything else is
dropped rather than sent, because it could carry raw personal data, and said in the answer.
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
PASS_PROPERTIES = ("content_type", "description", "delivery_category", "shop_id")

# what parse_properties reads; any other property is dropped (it could carry raw PII) and said
KNOWN_PROPERTIES = frozenset(
    {"contents", "products", "value", "revenue", "total", "currency", "order_id",
     "search_string", "query", "content_ids", "predicted_ltv", "num_items", *PASS_PROPERTIES}
)  # fmt: skip


def parse_properties(
    raw: Any, name: str = "properties", notes: list[FieldWarning] | None = None
) -> dict[str, Any]:
    """TikTok-shaped properties from TikTok or Segment-style input.

    With ``notes``, a property that cannot be used (a value that is no number, a currency
    TikTok does not take, an unknown key) is dropped with a warning there and the rest kept;
    without, the first such problem raises :class:`FieldError`.
    """
    props = parse_object(raw, name)
    out: dict[str, Any] = {}
    if props.get("contents") is not None:
        contents = lenient(notes, lambda v, w: _contents(v, w, segment=False, notes=notes),
                           props["contents"], f"{name}.contents")  # fmt: skip
    elif props.get("products") is not None:
        contents = lenient(notes, lambda v, w: _contents(v, w, segment=True, notes=notes),
                           props["products"], f"{name}.products")  # fmt: skip
    else:
        contents = None
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
    if props.get("currency") not in (None, ""):
        currency = lenient(notes, _currency, props["currency"], f"{name}.currency")
        if currency is not None:
            out["currency"] = currency
    if props.get("order_id") not in (None, ""):
        order_id = lenient(notes, parse_identifier, props["order_id"], f"{name}.order_id")
        if order_id is not None:
            out["order_id"] = order_id
    for key in ("search_string", "query"):
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
        unknown = [k for k in props if k not in KNOWN_PROPERTIES]
        for key in unknown[:MAX_WARNINGS]:
            notes.append(FieldWarning.of(f"{name}.{str(key)[:64]}",
                                         "is not a property TikTok takes; dropped",
                                         label=f"{name}.*"))  # fmt: skip
        if len(unknown) > MAX_WARNINGS:
            notes.append(FieldWarning.of(f"{name}.*", f"{len(unknown) - MAX_WARNINGS} more "
                                         "properties TikTok does not take; dropped"))  # fmt: skip
    return out


def _contents(
    items: Any, name: str, *, segment: bool, notes: list[FieldWarning] | None = None
) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise FieldError(name, "must be a list")
    if len(items) > MAX_CONTENTS:
        raise FieldError(name, f"at most {MAX_CONTENTS} items")
    out = []
    for i, raw in enumerate(items):
        where = f"{name}[{i}]"
        if notes is None:
            out.append(_content(raw, where, segment, None))
        else:
            content = soft(notes, partial(_content, raw, where, segment, notes))
            if content is not None:
                out.append(content)
    return out


def _content(
    raw: Any, where: str, segment: bool, notes: list[FieldWarning] | None
) -> dict[str, Any]:
    item = parse_object(raw, where)
    keys = ("product_id", "sku", "id", "content_id") if segment else ("content_id",)
    content_id = next((item[k] for k in keys if item.get(k) not in (None, "")), None)
    if content_id is None:
        raise FieldError(f"{where}.content_id", "is required")
    content: dict[str, Any] = {"content_id": parse_identifier(content_id, f"{where}.content_id")}
    for source, target in (("content_name", "content_name"), ("name", "content_name"),
                           ("content_category", "content_category"),
                           ("category", "content_category"), ("brand", "brand")):  # fmt: skip
        if target not in content and item.get(source) not in (None, ""):
            content[target] = parse_text(item[source], f"{where}.{source}", limit=500)
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


def _id_list(ids: Any, where: str) -> list[str]:
    if not isinstance(ids, list):
        raise FieldError(where, "must be a list")
    return [parse_identifier(v, f"{where}[{i}]") for i, v in enumerate(ids)]
