"""Which integration (pixel, token, rules) an incoming request belongs to.

The client never chooses: a request maps to an integration by its ``Host`` — the integration whose
``hostnames`` list it (or a parent domain of it), else the only enabled integration when there is
just one. With no pixel configured, every request belongs to the sandbox.
"""

from __future__ import annotations

from gateway.events import NameTable
from gateway.settings import SANDBOX_PIXEL_CODE, Integration, Settings

SANDBOX = Integration(name="sandbox", pixel_code=SANDBOX_PIXEL_CODE, access_token="")


class Integrations:
    """The configured integrations, looked up by host."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = tuple(i for i in settings.integrations if i.enabled) or (SANDBOX,)
        self.purchase_event = settings.purchase_event
        self._names = {
            i.pixel_code: NameTable(self.purchase_event, i.event_overrides) for i in self.enabled
        }

    def for_host(self, host: str | None) -> Integration | None:
        """The integration serving ``host`` (port ignored), or None when none does."""
        name = (host or "").rsplit(":", 1)[0].strip("[]").lower() if host else ""
        for integration in self.enabled:
            for served in integration.hostnames:
                if name == served or name.endswith("." + served):
                    return integration
        return self.enabled[0] if len(self.enabled) == 1 else None

    def names(self, integration: Integration) -> NameTable:
        """The event-name table of ``integration``."""
        return self._names.get(integration.pixel_code) or NameTable(self.purchase_event)
