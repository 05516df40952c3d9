"""A WooCommerce order (the REST API v3 order, as the ``order.created`` and ``order.updated``
webhooks carry it) read into our envelope: one order in, one purchase envelope dict out, or
``None`` for an order that is no purchase yet.

Everything here is pure; the route (``gateway.ingest.webhooks``) checks the signature. The
fields:

* ``status``: ``processing`` (paid, to be shipped) or ``completed`` is a purchase; ``pending``,
  ``on-hold``, ``failed``, ``cancelled``, ``refunded`` and the rest are not sent.
* ``id`` → ``event_id`` ``ord_<id>`` and ``properties.order_id`` (as the collector's purchase).
* ``date_created_gmt`` (UTC without an offset; else ``date_created``, the site's time) → the
  event time; an order older than ``TTGW_EVENT_MAX_AGE_S`` is not sent.
* ``billing.email``, ``billing.phone`` (read in ``billing.country``, else
  ``shipping.country``), the billing names, ``postcode``, ``city``, ``state``, ``country``.
* ``customer_id`` → ``user_id`` (``0`` is a guest: no external id).
* ``customer_ip_address``, ``customer_user_agent`` → the buyer's.
* ``total`` and ``currency``; ``line_items`` → ``contents``: ``product_id`` (else ``sku``) as
  ``content_id``, ``name``, ``price``, ``quantity``.
* ``meta_data`` ``_ttgw_visitor`` (a signed visitor a shop's snippet copied from the ``_ttgw``
  cookie) → ``anonymous_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.ingest.shopify import VISITOR_ATTRIBUTE, order_id, purchase_envelope

PURCHASE_STATUSES = ("processing", "completed")
TOPICS = ("order.created", "order.updated")


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _first(*values: Any) -> Any:
    return next((v for v in values if v not in (None, "")), None)


def visitor_meta(meta: Any) -> str | None:
    """The value of ``_ttgw_visitor`` in ``meta_data`` (a list of ``{"key", "value"}``)."""
    if not isinstance(meta, list):
        return None
    for item in meta:
        if isinstance(item, dict) and item.get("key") in (VISITOR_ATTRIBUTE, "ttgw_visitor"):
            value = item.get("value")
            return value if isinstance(value, str) and value else None
    return None


def is_purchase(order: Any) -> bool:
    """Whether the order's status makes it a purchase."""
    return isinstance(order, dict) and str(order.get("status", "")).lower() in PURCHASE_STATUSES


def _time(order: Mapping[str, Any]) -> Any:
    """``date_created_gmt`` with its UTC offset said (WooCommerce writes none)."""
    gmt = order.get("date_created_gmt")
    if isinstance(gmt, str) and gmt.strip():
        text = gmt.strip()
        return text if text.endswith(("Z", "+00:00")) else text + "+00:00"
    return order.get("date_created")


def _contents(items: Any) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        product = item.get("product_id")
        content_id = _first(product if product not in (0, "0") else None, item.get("sku"))
        if content_id is None:
            continue
        content: dict[str, Any] = {"content_id": str(content_id)}
        for ours, theirs in (("content_name", "name"), ("price", "price"),
                             ("quantity", "quantity")):  # fmt: skip
            if item.get(theirs) not in (None, ""):
                content[ours] = item[theirs]
        contents.append(content)
    return contents


def to_envelope(order: Any) -> dict[str, Any]:
    """Our envelope for one WooCommerce order; a FieldError when it has no id."""
    ident = order_id(order)
    billing = _object(order.get("billing"))
    shipping = _object(order.get("shipping"))
    person = {
        "email": billing.get("email"),
        "phone": _first(billing.get("phone"), shipping.get("phone")),
        "country": _first(billing.get("country"), shipping.get("country")),
        "first_name": billing.get("first_name"),
        "last_name": billing.get("last_name"),
        "zip_code": _first(billing.get("postcode"), shipping.get("postcode")),
        "city": _first(billing.get("city"), shipping.get("city")),
        "state": _first(billing.get("state"), shipping.get("state")),
        "ip": order.get("customer_ip_address"),
        "user_agent": order.get("customer_user_agent"),
    }
    envelope = purchase_envelope(
        ident,
        _time(order),
        {k: v for k, v in person.items() if v not in (None, "")},
        (order.get("total"), order.get("currency")),
        _contents(order.get("line_items")),
    )
    customer = order.get("customer_id")
    if customer not in (None, "", 0, "0") and not isinstance(customer, bool):
        envelope["user_id"] = str(customer)
    visitor = visitor_meta(order.get("meta_data"))
    if visitor:
        envelope["anonymous_id"] = visitor
    return envelope
