"""Safari's 7-day cookie cap: CNAME and address-prefix checks of a gateway host.

Each gateway host is checked against its storefront's, after WebKit's rules as summarised in
``reference/architecture.md`` §B.6; :func:`gateway.operate.doctor_dns.check_dns` turns the
results into findings.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "IPV4_PREFIX_BITS",
    "IPV6_PREFIX_BITS",
    "Resolution",
    "Resolver",
    "SystemResolver",
    "cname_target",
    "normal_host",
    "parse_host_pair",
    "registrable_domain",
    "shares_prefix",
    "split_families",
]

IPV4_PREFIX_BITS = 16  # WebKit's thresholds for "the same server as the site"
IPV6_PREFIX_BITS = 64

_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class Resolution:
    """A host's canonical name (its CNAME target, or itself) and addresses; none: unresolvable."""

    canonical: str
    addresses: tuple[str, ...]


class Resolver(Protocol):
    """Resolves a host name as a browser's system resolver would."""

    async def resolve(self, host: str) -> Resolution:
        """The host's canonical name and its IPv4 and IPv6 addresses (empty if unresolvable)."""
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``), run in a thread."""

    async def resolve(self, host: str) -> Resolution:
        """See :class:`Resolver`."""
        return await asyncio.to_thread(_resolve_blocking, host)


def _resolve_blocking(host: str) -> Resolution:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP, flags=socket.AI_CANONNAME)
    except (OSError, UnicodeError):  # NXDOMAIN, no address, or not even a valid name
        return Resolution(host, ())
    addresses = tuple(dict.fromkeys(str(info[4][0]).partition("%")[0] for info in infos))
    try:
        canonical = socket.gethostbyname_ex(host)[0]
    except (OSError, UnicodeError):  # no IPv4 address: getaddrinfo's canonical name then
        canonical = next((info[3] for info in infos if info[3]), host)
    return Resolution(canonical, addresses)


def normal_host(host: str) -> str:
    """``host`` lower-cased, without surrounding spaces or a trailing dot."""
    return host.strip().rstrip(".").lower()


def cname_target(host: str, resolution: Resolution) -> str | None:
    """The name ``host`` is an alias of, or None when it is canonical itself."""
    canonical = normal_host(resolution.canonical)
    return None if not canonical or canonical == normal_host(host) else canonical


def registrable_domain(host: str) -> str:
    """The last two labels of ``host``.

    An approximation: under a multi-label public suffix (``co.uk``, ``com.au``) it gives the
    suffix itself, so two different shops there look like one domain and a CNAME between them
    goes unreported. Doctor only warns, so a missed warning is the cost; there is no false alarm.
    """
    return ".".join(normal_host(host).split(".")[-2:])


def shares_prefix(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are of one family and share the /16 (IPv4) or /64 (IPv6)."""
    first, second = ipaddress.ip_address(a), ipaddress.ip_address(b)
    if first.version != second.version:
        return False  # WebKit counts a family mismatch as 0 matching bits
    bits = IPV4_PREFIX_BITS if first.version == 4 else IPV6_PREFIX_BITS
    shift = first.max_prefixlen - bits
    return int(first) >> shift == int(second) >> shift


def split_families(addresses: Sequence[str]) -> tuple[list[str], list[str]]:
    """``addresses`` as (IPv4, IPv6) lists, each in its given order."""
    parsed = [ipaddress.ip_address(a) for a in addresses]
    return [str(a) for a in parsed if a.version == 4], [str(a) for a in parsed if a.version == 6]


def parse_host_pair(text: str) -> tuple[str, str]:
    """``"t.shop.example=www.shop.example"`` (gateway host = storefront host) as a pair."""
    gateway, sep, storefront = text.strip().partition("=")
    if not sep or "=" in storefront:
        raise ValueError(
            f"expected GATEWAY=STOREFRONT, e.g. t.shop.example=www.shop.example, got {text!r}"
        )
    return _host_name(gateway, text), _host_name(storefront, text)


def _host_name(raw: str, text: str) -> str:
    name = normal_host(raw)
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        name = ""
    if not name or len(name) > 253 or not all(_LABEL_RE.fullmatch(p) for p in name.split(".")):
        raise ValueError(
            f"{raw.strip()!r} in {text!r} is not a host name: give bare names like "
            "t.shop.example=www.shop.example, without scheme, port or path"
        )
    return name
