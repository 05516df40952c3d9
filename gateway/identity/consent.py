"""Consent (design §5): what the visitor's consent state does to one event.

The envelope carries the state (``ad_user_data``, ``ad_personalization``, ``ad_storage``,
``analytics_storage``: granted or denied, Google Consent Mode v2 names). With no state given, the
integration's default applies; out of the box no category is required.

* An integration's required categories that are not granted: the event is not sent, and its
  receipt says ``suppressed: consent``.
* ``ad_user_data`` denied: e-mail, phone, external_id, names and zip code are removed and the event
  is flagged ``limited_data_use`` (TikTok's only consent field, reference §9). The identifiers are
  not linked to the visitor either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PERSONAL_USER_FIELDS = ("email", "phone", "external_id", "first_name", "last_name", "zip_code")


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    """The effect of a consent state on one event."""

    send: bool
    keep_personal_data: bool
    limited_data_use: bool
    reason: str | None = None


def decide(
    state: Mapping[str, bool], required: Sequence[str], limited_data_use: bool | None = None
) -> ConsentDecision:
    """Apply the integration's ``required`` categories and ``ad_user_data`` to ``state``."""
    missing = [category for category in required if state.get(category) is not True]
    if missing:
        return ConsentDecision(False, False, True, reason="consent")
    denied = state.get("ad_user_data") is False
    return ConsentDecision(
        send=True,
        keep_personal_data=not denied,
        limited_data_use=denied or bool(limited_data_use),
    )
