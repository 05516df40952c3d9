"""The vocabulary of configuration: the error, one integration, and the checks of one value.

Both sources of configuration use it: :mod:`gateway.settings` reads the environment and
:mod:`gateway.config_file` the TOML file ``TTGW_CONFIG`` names. Each check takes the raw text and
returns the value, or raises :class:`SettingsError` naming the variable (or the file's table and
key). A cookie domain is checked against the Public Suffix List bundled with ``publicsuffixlist``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REDIS_SCHEMES = frozenset(
    {
        "redis",
        "rediss",
        "unix",
        "redis+sentinel",
        "rediss+sentinel",
        "redis+cluster",
        "rediss+cluster",
    }
)
CONSENT_CATEGORIES = frozenset(
    {"ad_user_data", "ad_personalization", "ad_storage", "analytics_storage"}
)

_PIXEL_RE = re.compile(r"^[A-Z0-9]{10,40}$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class SettingsError(ValueError):
    """A configuration value is wrong; the message starts with the variable's name."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class Integration:
    """One TikTok pixel the gateway delivers to, with the access token that may write to it."""

    name: str
    pixel_code: str
    access_token: str = field(repr=False)
    test_event_code: str | None = None
    hostnames: tuple[str, ...] = ()
    default_phone_region: str | None = None
    required_consent: tuple[str, ...] = ()
    event_overrides: tuple[tuple[str, str], ...] = ()
    enabled: bool = True


SHOPIFY_TOPICS = ("orders/create", "orders/paid")


@dataclass(frozen=True, slots=True)
class ShopWebhooks:
    """The order webhooks of one integration's shop (``TTGW_CONFIG``), kept apart from
    :class:`Integration` so that no secret of theirs is stored, listed or answered with it."""

    pixel_code: str
    shopify_shop_domain: str | None = None  # X-Shopify-Shop-Domain, e.g. shop.myshopify.com
    shopify_webhook_secret: str | None = field(default=None, repr=False)
    shopify_topics: tuple[str, ...] = ()  # none: TTGW_SHOPIFY_TOPICS
    woocommerce_source: str | None = None  # X-WC-Webhook-Source's host, e.g. shop.example
    woocommerce_webhook_secret: str | None = field(default=None, repr=False)


def _topics(variable: str, raw: str) -> tuple[str, ...]:
    topics = tuple(dict.fromkeys(t.strip().lower() for t in raw.split(",") if t.strip()))
    bad = [t for t in topics if t not in SHOPIFY_TOPICS]
    if bad or not topics:
        raise SettingsError(
            variable, f"each topic must be one of {', '.join(SHOPIFY_TOPICS)}, got {raw!r}"
        )
    return topics


def _port(variable: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise SettingsError(variable, f"must be an integer port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise SettingsError(variable, f"must be between 0 and 65535, got {port}")
    return port


def _integer(variable: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(variable, f"must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(variable, f"must be between {low} and {high}, got {value}")
    return value


def _decimal(variable: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(variable, f"must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(variable, f"must be between {low:g} and {high:g}, got {value:g}")
    return value


def _choice(variable: str, raw: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise SettingsError(variable, f"must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _token(variable: str, raw: str | None, min_chars: int) -> str | None:
    if raw is None:
        return None
    if len(raw) < min_chars or any(c.isspace() for c in raw):
        raise SettingsError(variable, f"must be at least {min_chars} characters without spaces")
    return raw


def _redis_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in REDIS_SCHEMES:
        raise SettingsError(
            "TTGW_REDIS_URL",
            f"scheme must be one of {', '.join(sorted(REDIS_SCHEMES))}, "
            f"got {parts.scheme or raw!r}",
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise SettingsError("TTGW_REDIS_URL", "a unix:// URL needs a socket path")
    elif not parts.netloc:
        raise SettingsError("TTGW_REDIS_URL", "needs a host, e.g. redis://127.0.0.1:6379/0")
    if parts.scheme.endswith("+sentinel") and not parts.path.strip("/"):
        raise SettingsError("TTGW_REDIS_URL", "a sentinel URL needs the service name as its path")
    return raw


def _origin(variable: str, raw: str) -> str:
    parts = urlsplit(raw.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise SettingsError(variable, f"must be an origin like https://host[:port], got {raw!r}")
    return f"{parts.scheme}://{parts.netloc}"


def _api_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError("TTGW_TIKTOK_API_URL", f"must be an absolute http(s) URL, got {raw!r}")
    if parts.query or parts.fragment:
        raise SettingsError("TTGW_TIKTOK_API_URL", "must not carry a query or fragment")
    return raw if raw.endswith("/") else raw + "/"


def _hostname(variable: str, raw: str) -> str:
    name = raw.strip().lower().lstrip(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise SettingsError(variable, f"not a valid host name: {raw!r}")
    return name


def _cookie_domain(raw: str | None) -> str | None:
    if raw is None:
        return None
    if _is_address(raw):  # before _hostname, which would call an IPv6 address a bad host name
        raise SettingsError("TTGW_COOKIE_DOMAIN", _address_problem(raw))
    name = _hostname("TTGW_COOKIE_DOMAIN", raw)
    if "." not in name and name != "localhost":
        raise SettingsError("TTGW_COOKIE_DOMAIN", f"must be a registrable domain, got {raw!r}")
    if (problem := cookie_domain_problem(name)) is not None:
        raise SettingsError("TTGW_COOKIE_DOMAIN", problem)
    return name


def cookie_domain_problem(domain: str) -> str | None:
    """Why browsers would refuse cookies with ``Domain=domain``; None when they keep them.

    An IP address cannot be a cookie domain, nor can a public suffix (``co.uk``, ``myshopify.com``,
    ``github.io``): browsers drop every cookie set for one. The suffixes are the Public Suffix
    List's, ICANN and private sections, from the snapshot bundled with ``publicsuffixlist``.
    """
    name = domain.strip().lower().lstrip(".")
    if _is_address(name):
        return _address_problem(domain)
    if name != "localhost" and _public_suffixes().is_public(name):
        return (
            f"{domain!r} is a public suffix: browsers refuse cookies for it; use your shop's own "
            f"domain, e.g. shop.{name}"
        )
    return None


def _is_address(text: str) -> bool:
    """An IP address, or a name browsers parse as one (its last label is a number: ``1.2.3``)."""
    name = text.strip().strip("[]").rstrip(".")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name.rpartition(".")[2].isdigit()
    return True


def _address_problem(raw: str) -> str:
    return (
        f"{raw!r} is an IP address: a cookie domain must be a domain name (leave it unset "
        "for cookies of the gateway's host only)"
    )


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the bundled list: never downloaded


def _origins(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    origins: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if item == "*":
            raise SettingsError(
                "TTGW_ALLOWED_ORIGINS", "'*' is not allowed: cookies need an exact origin list"
            )
        parts = urlsplit(item)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
        ):
            raise SettingsError(
                "TTGW_ALLOWED_ORIGINS",
                f"each origin must look like https://shop.example, got {item!r}",
            )
        if parts.query or parts.fragment:
            raise SettingsError("TTGW_ALLOWED_ORIGINS", f"an origin has no query: {item!r}")
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(dict.fromkeys(origins))


def _networks(variable: str, raw: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(variable, f"not an IP address or CIDR: {item!r}") from None
    return tuple(networks)


def _pixel(variable: str, raw: str) -> str:
    if not _PIXEL_RE.fullmatch(raw):
        raise SettingsError(
            variable, f"a TikTok pixel code is 10-40 upper-case letters and digits, got {raw!r}"
        )
    return raw


def _region(variable: str, raw: str | None) -> str | None:
    if raw is None:
        return None
    import phonenumbers  # imported here: 20 ms of start-up the other paths do not need

    region = raw.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise SettingsError(variable, f"not a supported ISO 3166 region for phone numbers: {raw!r}")
    return region
