"""The name table: how the event names clients send become the names TikTok is sent.

In order, the first rule that matches wins:

1. the integration's own overrides (``event_overrides``), matched exactly;
2. TikTok's standard and legacy names (``Purchase``, ``CompletePayment``, ``AddToCart``, ...) and
   ``Pageview``, exactly as given: the pixel and the server must use the same literal name for
   TikTok to deduplicate them; TikTok's reserved names become the standard event TikTok maps them
   to (``Checkout`` → ``PlaceAnOrder``; ``tiktok.names.RESERVED_TARGETS``);
3. the tables below, and TikTok's names again, matched without regard to case, spaces, ``_`` or
   ``-`` (``order completed``, ``order_completed``, ``purchase``, ``ADDTOCART``, ``page view``):
   Segment's spec (:data:`SEGMENT_NAMES`; the e-commerce events with no TikTok equivalent pass as
   custom events, their words joined: :data:`SEGMENT_CUSTOM`), GA4's recommended events
   (:data:`GA4_NAMES`), then TikTok's own names, sent in TikTok's casing. ``Order Completed`` and
   GA4's ``purchase`` become the configured purchase name (``TTGW_PURCHASE_EVENT``, default
   ``Purchase``; set ``CompletePayment`` when the pixel on the storefront sends that);
4. anything else passes as a custom event when it meets TikTok's rules (at most 50 letters,
   digits, ``_`` or ``-``, starting with a letter), else it is refused with a clear error.

Deduplication treats TikTok's aliases as one event (``tiktok.names.canonical_event``:
``CompletePayment`` = ``Purchase``), while the name resolved here is the one sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.ingest.fields import FieldError
from gateway.tiktok.names import ACCEPTED_EVENTS, PAGEVIEW, RESERVED_TARGETS, event_name_problem

PURCHASE = "<purchase>"  # stands for the integration's purchase name (TTGW_PURCHASE_EVENT)

# Segment's spec (e-commerce v2, B2B SaaS, and the names Segment's own TikTok presets map).
SEGMENT_NAMES: Mapping[str, str] = {
    "Products Searched": "Search",
    "Product Clicked": "ClickButton",
    "Product Viewed": "ViewContent",
    "Product Added": "AddToCart",
    "Product Added to Wishlist": "AddToWishlist",
    "Wishlist Product Added to Cart": "AddToCart",
    "Checkout Started": "InitiateCheckout",
    "Payment Info Entered": "AddPaymentInfo",
    "Order Placed": "PlaceAnOrder",
    "Order Completed": PURCHASE,
    "Signed Up": "CompleteRegistration",
    "Lead Generated": "Lead",
    "Form Submitted": "Lead",
    "Callback Started": "Contact",
    "Download Link Clicked": "Download",
    "Subscribed": "Subscribe",
    "Subscription Created": "Subscribe",
    "Trial Started": "StartTrial",
    "Application Submitted": "SubmitApplication",
    "Page Viewed": PAGEVIEW,
}

# Segment's e-commerce v2 events TikTok has no event for: custom events, their words joined
# (``Checkout Step Completed`` → ``CheckoutStepCompleted``), for reporting and audiences.
SEGMENT_CUSTOM = (
    "Product List Viewed",
    "Product List Filtered",
    "Promotion Viewed",
    "Promotion Clicked",
    "Product Removed",
    "Cart Viewed",
    "Checkout Step Viewed",
    "Checkout Step Completed",
    "Order Updated",
    "Order Refunded",
    "Order Cancelled",
    "Coupon Entered",
    "Coupon Applied",
    "Coupon Denied",
    "Coupon Removed",
    "Product Removed from Wishlist",
    "Product Shared",
    "Cart Shared",
    "Product Reviewed",
)

# GA4's recommended events with a TikTok equivalent (the mapping of TikTok's own server-side GTM
# template, plus lead and item selection); the others are valid custom names and pass as such.
GA4_NAMES: Mapping[str, str] = {
    "view_item": "ViewContent",
    "select_item": "ClickButton",
    "add_to_cart": "AddToCart",
    "add_to_wishlist": "AddToWishlist",
    "begin_checkout": "InitiateCheckout",
    "add_payment_info": "AddPaymentInfo",
    "purchase": PURCHASE,
    "sign_up": "CompleteRegistration",
    "generate_lead": "Lead",
    "search": "Search",
    "page_view": PAGEVIEW,
}

_SEPARATORS = re.compile(r"[\s_-]+")


def fold(name: str) -> str:
    """The key names are matched by: no case, no spaces, ``_`` or ``-``."""
    return _SEPARATORS.sub("", name).casefold()


def custom_name(segment_name: str) -> str:
    """A Segment name as a custom event name: its words joined, each capitalised."""
    return "".join(word[:1].upper() + word[1:] for word in segment_name.split())


def _folded() -> dict[str, str]:
    table = {fold(name): name for name in ACCEPTED_EVENTS}
    table.update({fold(name): target for name, target in RESERVED_TARGETS.items()})
    table.update({fold(name): custom_name(name) for name in SEGMENT_CUSTOM})
    table.update({fold(name): target for name, target in SEGMENT_NAMES.items()})
    table.update({fold(name): target for name, target in GA4_NAMES.items()})
    return table


FOLDED: Mapping[str, str] = _folded()


@dataclass(frozen=True, slots=True)
class NameTable:
    """How client event names become TikTok names for one integration."""

    purchase_event: str = "Purchase"
    overrides: tuple[tuple[str, str], ...] = ()

    def resolve(self, name: str, field_name: str = "event") -> str:
        """The TikTok name for ``name``, or a FieldError explaining why it cannot be sent."""
        for source, target in self.overrides:
            if source == name:
                return target
        if name in ACCEPTED_EVENTS:
            return name
        if name in RESERVED_TARGETS:
            return RESERVED_TARGETS[name]
        mapped = FOLDED.get(fold(name))
        if mapped is not None:
            return self.purchase_event if mapped == PURCHASE else mapped
        problem = event_name_problem(name)
        if problem is not None:
            raise FieldError(field_name, problem)
        return name
