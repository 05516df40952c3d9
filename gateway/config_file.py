"""``TTGW_CONFIG``: integrations read from a TOML file, one ``[[integrations]]`` table each.

Every table is checked as strictly as the environment: an unknown key, a bad pixel code, host
name, phone region, consent category or event name raises :class:`SettingsError` naming the
table and key, e.g. ``TTGW_CONFIG integrations[1].pixel_code``. A table's order-webhook keys
(``shopify_shop_domain``, ``shopify_webhook_secret``, ``shopify_topics``,
``woocommerce_source``, ``woocommerce_webhook_secret``) become a :class:`ShopWebhooks`, apart
from the integration.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config import (
    CONSENT_CATEGORIES,
    Integration,
    SettingsError,
    ShopWebhooks,
    _hostname,
    _pixel,
    _region,
    _topics,
)
from gateway.tiktok.names import event_name_problem

__all__ = ["config_from_toml", "integrations_from_toml"]

_TABLE_KEYS = frozenset(
    {
        "name", "pixel_code", "access_token", "test_event_code", "hostnames",
        "default_phone_region", "required_consent", "event_overrides", "enabled",
        "shopify_shop_domain", "shopify_webhook_secret", "shopify_topics", "woocommerce_source",
        "woocommerce_webhook_secret",
    }
)  # fmt: skip


def integrations_from_toml(path: Path) -> list[Integration]:
    """The integrations of the TOML file at ``path``, in file order, each one checked."""
    return config_from_toml(path)[0]


def config_from_toml(path: Path) -> tuple[list[Integration], list[ShopWebhooks]]:
    """The integrations of the TOML file at ``path`` and the order webhooks of those that have
    some, in file order, each one checked."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError("TTGW_CONFIG", f"cannot read {str(path)!r}: {exc}") from exc
    unknown = set(document) - {"integrations"}
    if unknown:
        raise SettingsError("TTGW_CONFIG", f"unknown top-level keys: {', '.join(sorted(unknown))}")
    tables = document.get("integrations", [])
    if not isinstance(tables, list):
        raise SettingsError(
            "TTGW_CONFIG", "integrations must be an array of tables [[integrations]]"
        )
    integrations: list[Integration] = []
    webhooks: list[ShopWebhooks] = []
    for n, table in enumerate(tables):
        integration = _integration_from_table(n, table)
        integrations.append(integration)
        hooks = _webhooks_from_table(n, table, integration.pixel_code)
        if hooks != ShopWebhooks(integration.pixel_code):
            webhooks.append(hooks)
    return integrations, webhooks


def _webhooks_from_table(n: int, table: dict[str, Any], pixel: str) -> ShopWebhooks:
    where = f"TTGW_CONFIG integrations[{n}]"
    found: dict[str, str] = {}
    for key in ("shopify_shop_domain", "shopify_webhook_secret", "woocommerce_source",
                "woocommerce_webhook_secret"):  # fmt: skip
        value = table.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"{where}.{key}", "must be a non-empty string")
        found[key] = value.strip()
    topics = table.get("shopify_topics")
    if topics is not None and (
        not isinstance(topics, list) or not all(isinstance(t, str) for t in topics)
    ):
        raise SettingsError(f"{where}.shopify_topics", "must be a list of strings")
    domain, source = found.get("shopify_shop_domain"), found.get("woocommerce_source")
    return ShopWebhooks(
        pixel_code=pixel,
        shopify_shop_domain=_hostname(f"{where}.shopify_shop_domain", domain) if domain else None,
        shopify_webhook_secret=found.get("shopify_webhook_secret"),
        shopify_topics=_topics(f"{where}.shopify_topics", ",".join(topics)) if topics else (),
        woocommerce_source=_source_host(f"{where}.woocommerce_source", source) if source else None,
        woocommerce_webhook_secret=found.get("woocommerce_webhook_secret"),
    )


def _source_host(variable: str, raw: str) -> str:
    """A WooCommerce site as its host name: ``shop.example`` or ``https://shop.example/``."""
    host = urlsplit(raw).hostname if "://" in raw else raw.strip("/")
    return _hostname(variable, host or raw)


def _integration_from_table(n: int, table: Any) -> Integration:
    where = f"TTGW_CONFIG integrations[{n}]"
    if not isinstance(table, dict):
        raise SettingsError(where, "must be a table")
    unknown = set(table) - _TABLE_KEYS
    if unknown:
        raise SettingsError(where, f"unknown keys: {', '.join(sorted(unknown))}")

    def text(key: str, *, required: bool = False) -> str | None:
        value = table.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"{where}.{key}", "must be a non-empty string")
        return value.strip()

    def texts(key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SettingsError(f"{where}.{key}", "must be a list of strings")
        return tuple(value)

    pixel = _pixel(f"{where}.pixel_code", text("pixel_code", required=True) or "")
    consent = texts("required_consent")
    bad = [c for c in consent if c not in CONSENT_CATEGORIES]
    if bad:
        raise SettingsError(f"{where}.required_consent", f"unknown categories: {', '.join(bad)}")
    overrides = table.get("event_overrides", {})
    if not isinstance(overrides, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in overrides.items()
    ):
        raise SettingsError(f"{where}.event_overrides", "must be a table of name = name strings")
    for target in overrides.values():
        problem = event_name_problem(target)
        if problem is not None:
            raise SettingsError(f"{where}.event_overrides", problem)
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SettingsError(f"{where}.enabled", "must be true or false")
    return Integration(
        name=text("name") or pixel,
        pixel_code=pixel,
        access_token=text("access_token", required=True) or "",
        test_event_code=text("test_event_code"),
        hostnames=tuple(_hostname(f"{where}.hostnames", h) for h in texts("hostnames")),
        default_phone_region=_region(f"{where}.default_phone_region", text("default_phone_region")),
        required_consent=consent,
        event_overrides=tuple(sorted(overrides.items())),
        enabled=enabled,
    )
