"""A Shopify order (the REST Admin API's order resource, as ``orders/create`` and ``orders/paid``
webhooks carry it) read into our envelope: one order in, one purchase envelope dict out.

Everything here is pure; the route (``gateway.ingest.webhooks``) checks the signature, then hands
the envelope to the same parsing, stitching and queueing as ``/v1/track``. The fields:

* ``id`` → ``event_id`` ``ord_<id>`` and ``properties.order_id``: the collector's and the Custom
  Pixel's convention, so the browser's purchase and the webhook's are one event.
* ``created_at`` → the event time (also for ``orders/paid``: the purchase happened then, and the
  pixel reported it then); an order older than ``TTGW_EVENT_MAX_AGE_S`` is not sent.
* ``email``, else ``contact_email``, else ``customer.email`` → ``user.email``; ``phone``, else
  ``billing_address.phone``, ``shipping_address.phone``, ``customer.phone`` → ``user.phone``, read
  in the billing (else shipping) address's ``country_code``; the billing (else shipping) address's
  names, ``zip``, ``city``, ``province_code`` and ``country_code`` → the person's.
* ``customer.id`` → ``user_id`` (hashed as ``external_id``).
* ``browser_ip``, ``client_details.user_agent`` (and ``customer_locale``) → the buyer's.
* ``total_price`` and ``currency`` (Shopify's prices are strings: the envelope converts them).
* ``line_items`` → ``contents``: ``product_id`` (else ``variant_id``, else ``sku``) as
  ``content_id``, ``title``, ``price``, ``quantity``.
* ``landing_site`` (a path and query on the shop, e.g. ``/products/x?ttclid=…``) → ``page.url`` on
  the shop's domain, whose ``ttclid`` is the order's click; ``referring_site`` → ``page.referrer``.
* ``note_attributes`` ``_ttgw_visitor`` (the signed visitor the collector writes into the cart's
  attributes) → ``anonymous_id``: that visitor's stored click, ``_ttp`` and session apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.ingest.fields import FieldError

VISITOR_ATTRIBUTE = "_ttgw_visitor"  # the cart attribute the collector writes on Shopify stores
PURCHASE = "Order Completed"  # the name table's purchase: TTGW_PURCHASE_EVENT


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _first(*values: Any) -> Any:
    return next((v for v in values if v not in (None, "")), None)


def order_id(order: Any) -> str:
    """The order's id as text; a FieldError when the body is no order."""
    if not isinstance(order, dict):
        raise FieldError("body", "must be an order object")
    value = order.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str) or str(value).strip() == "":
        raise FieldError("id", "an order needs its id")
    return str(value).strip()


def visitor_attribute(attributes: Any) -> str | None:
    """The value of the ``_ttgw_visitor`` attribute in a list of ``{"name", "value"}``."""
    if not isinstance(attributes, list):
        return None
    for item in attributes:
        if isinstance(item, dict) and item.get("name") == VISITOR_ATTRIBUTE:
            value = item.get("value")
            return value if isinstance(value, str) and value else None
    return None


def _contents(items: Any) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        content_id = _first(item.get("product_id"), item.get("variant_id"), item.get("sku"))
        if content_id is None:
            continue
        content: dict[str, Any] = {"content_id": str(content_id)}
        for ours, theirs in (("content_name", "title"), ("price", "price"),
                             ("quantity", "quantity")):  # fmt: skip
            if item.get(theirs) not in (None, ""):
                content[ours] = item[theirs]
        contents.append(content)
    return contents


def purchase_envelope(
    ident: str,
    timestamp: Any,
    user: dict[str, Any],
    value_currency: tuple[Any, Any],
    contents: list[dict[str, Any]],
) -> dict[str, Any]:
    """An order as our envelope's purchase, ``ord_<order id>``: what both platforms share."""
    properties: dict[str, Any] = {"order_id": ident}
    for key, value in zip(("value", "currency"), value_currency, strict=True):
        if value not in (None, ""):
            properties[key] = value
    if contents:
        properties["contents"] = contents
    return {
        "type": "track",
        "event": PURCHASE,
        "event_id": f"ord_{ident}",
        "timestamp": timestamp,
        "user": user,
        "properties": properties,
    }


def landing_url(landing_site: Any, shop_domain: str | None) -> str | None:
    """The landing page as a URL: a path on ``shop_domain``, or the URL Shopify kept."""
    if not isinstance(landing_site, str) or not landing_site.strip():
        return None
    landing = landing_site.strip()
    if landing.startswith(("http://", "https://")):
        return landing
    if not shop_domain or not landing.startswith("/"):
        return None
    return f"https://{shop_domain}{landing}"


def to_envelope(order: Any, shop_domain: str | None) -> dict[str, Any]:
    """Our envelope for one Shopify order; a FieldError when it has no id."""
    ident = order_id(order)
    billing = _object(order.get("billing_address"))
    shipping = _object(order.get("shipping_address"))
    customer = _object(order.get("customer"))
    client = _object(order.get("client_details"))
    user: dict[str, Any] = {}
    person = {
        "email": _first(order.get("email"), order.get("contact_email"), customer.get("email")),
        "phone": _first(
            order.get("phone"), billing.get("phone"), shipping.get("phone"), customer.get("phone")
        ),
        "country": _first(billing.get("country_code"), shipping.get("country_code")),
        "first_name": _first(billing.get("first_name"), customer.get("first_name")),
        "last_name": _first(billing.get("last_name"), customer.get("last_name")),
        "zip_code": _first(billing.get("zip"), shipping.get("zip")),
        "city": _first(billing.get("city"), shipping.get("city")),
        "state": _first(billing.get("province_code"), shipping.get("province_code")),
        "ip": order.get("browser_ip"),
        "user_agent": client.get("user_agent"),
        "locale": order.get("customer_locale"),
    }
    user.update({k: v for k, v in person.items() if v not in (None, "")})
    envelope = purchase_envelope(
        ident,
        _first(order.get("created_at"), order.get("processed_at")),
        user,
        (order.get("total_price"), order.get("currency")),
        _contents(order.get("line_items")),
    )
    customer_id = customer.get("id")
    if customer_id not in (None, "") and not isinstance(customer_id, bool):
        envelope["user_id"] = str(customer_id)
    visitor = visitor_attribute(order.get("note_attributes"))
    if visitor:
        envelope["anonymous_id"] = visitor
    url = landing_url(order.get("landing_site"), shop_domain)
    if url:
        page = {"url": url}
        referrer = order.get("referring_site")
        if isinstance(referrer, str) and referrer.strip():
            page["referrer"] = referrer.strip()
        envelope["page"] = page
    return envelope
