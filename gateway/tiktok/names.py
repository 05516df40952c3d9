"""TikTok's event names: standard, legacy and reserved ones, aliases, and the currencies it takes.

From ``reference/tiktok-events-api.md`` (§5 for names, §2.4 for currencies). Ingest maps names
with these tables, the validator refuses what TikTok would refuse, and delivery deduplicates
TikTok's aliases as one event (:func:`canonical_event`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

STANDARD_EVENTS = frozenset(
    {
        "AddPaymentInfo",
        "AddToCart",
        "AddToWishlist",
        "ApplicationApproval",
        "CompleteRegistration",
        "Contact",
        "CustomizeProduct",
        "Download",
        "FindLocation",
        "InitiateCheckout",
        "Lead",
        "Purchase",
        "Schedule",
        "Search",
        "StartTrial",
        "SubmitApplication",
        "Subscribe",
        "ViewContent",
    }
)
LEGACY_EVENTS = frozenset({"ClickButton", "CompletePayment", "PlaceAnOrder", "SubmitForm"})
PAGEVIEW = "Pageview"
# Reserved names (reference §5): TikTok maps each to a standard event and refuses it as a custom
# name. Ingest sends the target instead (``ingest.name_table.NameTable``).
RESERVED_TARGETS: Mapping[str, str] = {
    "AddBilling": "AddPaymentInfo",
    "Browse": PAGEVIEW,
    "Checkout": "PlaceAnOrder",
    "ClickForm": "Lead",
    "ClickInDownloadPage": "ClickButton",
    "ClickToDownload": "Download",
    "Consult": "Contact",
    "ConsultByPhone": "Contact",
    "Registration": "CompleteRegistration",
    "StartCheckout": "InitiateCheckout",
    "ViewConsultationPage": "ViewContent",
    "ViewDownloadPage": "ViewContent",
    "ViewForm": "ViewContent",
}
RESERVED_EVENTS = frozenset(RESERVED_TARGETS)
# TikTok's aliases (reference §5, "Reserved names"): each name here is the same event as its
# target, so the gateway deduplicates them as one. ``CompletePayment`` is also a legacy name
# that is still sent as given (the pixel on a page may use it).
EVENT_ALIASES: Mapping[str, str] = {"CompletePayment": "Purchase", **RESERVED_TARGETS}
ACCEPTED_EVENTS = STANDARD_EVENTS | LEGACY_EVENTS | {PAGEVIEW}
# Case-folded known names: TikTok refuses "purchase" or "PageView" (ingest maps them first).
KNOWN_FOLDED = {n.casefold(): n for n in ACCEPTED_EVENTS | RESERVED_EVENTS}
CUSTOM_EVENT_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,49}")


def event_name_problem(name: str) -> str | None:
    """Why TikTok would refuse ``name`` as an event name (reference §5), or None if it would not."""
    if name in ACCEPTED_EVENTS:
        return None
    if name in RESERVED_EVENTS:
        return f"{name!r} is a reserved event name and cannot be a custom event"
    known = KNOWN_FOLDED.get(name.casefold())
    if known is not None:
        return f"{name!r} differs only in case from {known!r}; names are case-sensitive"
    if not CUSTOM_EVENT_RE.fullmatch(name):
        return (
            f"{name!r} is not a valid custom event name (at most 50 letters, "
            "digits, '_' or '-', starting with a letter)"
        )
    return None


def canonical_event(name: str) -> str:
    """The one name of an event among TikTok's aliases: ``CompletePayment`` → ``Purchase``,
    ``Checkout`` → ``PlaceAnOrder``, ...; any other name is its own.

    The gateway's idempotency identity ``(pixel, event, event_id)`` — receipts (the sent
    markers too), the queued entry's ``event`` field — uses this name, so a page's
    ``CompletePayment`` and a backend's ``Purchase`` for one order are one event.
    What is sent keeps its literal name.
    """
    return EVENT_ALIASES.get(name, name)


SUPPORTED_CURRENCIES = frozenset(
    {  # reference §2.4, TikTok's supported list
        "AED",
        "ARS",
        "AUD",
        "BDT",
        "BHD",
        "BIF",
        "BOB",
        "BRL",
        "CAD",
        "CHF",
        "CLP",
        "CNY",
        "COP",
        "CRC",
        "CZK",
        "DKK",
        "DZD",
        "EGP",
        "EUR",
        "GBP",
        "GTQ",
        "HKD",
        "HNL",
        "HUF",
        "IDR",
        "ILS",
        "INR",
        "ISK",
        "JPY",
        "KES",
        "KHR",
        "KRW",
        "KWD",
        "KZT",
        "MAD",
        "MOP",
        "MXN",
        "MYR",
        "NGN",
        "NIO",
        "NOK",
        "NZD",
        "OMR",
        "PEN",
        "PHP",
        "PKR",
        "PLN",
        "PYG",
        "QAR",
        "RON",
        "RUB",
        "SAR",
        "SEK",
        "SGD",
        "THB",
        "TRY",
        "TWD",
        "UAH",
        "USD",
        "VES",
        "VND",
        "ZAR",
    }
)
