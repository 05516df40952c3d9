"""The name table: how the event names clients send become the names TikTok is sent.

* TikTok's standard and legacy names (``Purchase``, ``CompletePayment``, ``AddToCart``, ...) and
  ``Pageview`` pass exactly as given: the pixel and the server must use the same literal name for
  TikTok to deduplicate them.
* Segment-spec names map through :data:`SEGMENT_NAMES`; ``Order Completed`` becomes the configured
  purchase name (``TTGW_PURCHASE_EVENT``, default ``Purchase``, the current standard name —
  set ``CompletePayment`` when the pixel on the storefront sends that).
* TikTok's reserved names map to the standard event TikTok maps them to (``Checkout`` →
  ``PlaceAnOrder``, ...; the table is ``tiktok.names.RESERVED_TARGETS``).
* Deduplication treats TikTok's aliases as one event (``tiktok.names.canonical_event``:
  ``CompletePayment`` = ``Purchase``), while the name resolved here is the one sent.
* Anything else passes as a custom event when it meets TikTok's rules (at most 50 letters, digits,
  ``_`` or ``-``, starting with a letter); a name that differs from a standard one only in case,
  or breaks the rules, is refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.ingest.fields import FieldError
from gateway.tiktok.names import ACCEPTED_EVENTS, PAGEVIEW, RESERVED_TARGETS, event_name_problem

SEGMENT_NAMES: Mapping[str, str] = {
    "order completed": "<purchase>",
    "product viewed": "ViewContent",
    "product added": "AddToCart",
    "product added to wishlist": "AddToWishlist",
    "checkout started": "InitiateCheckout",
    "payment info entered": "AddPaymentInfo",
    "products searched": "Search",
    "signed up": "CompleteRegistration",
    "lead generated": "Lead",
    "form submitted": "Lead",
    "subscribed": "Subscribe",
    "trial started": "StartTrial",
    "page viewed": PAGEVIEW,
    "application submitted": "SubmitApplication",
}


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
        segment = SEGMENT_NAMES.get(" ".join(name.split()).casefold())
        if segment is not None:
            return self.purchase_event if segment == "<purchase>" else segment
        if name in RESERVED_TARGETS:
            return RESERVED_TARGETS[name]
        problem = event_name_problem(name)
        if problem is not None:
            raise FieldError(field_name, problem)
        return name
