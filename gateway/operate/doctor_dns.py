"""Doctor's DNS check: will Safari keep the gateway's cookies for their full life?

It applies WebKit's third-party cloaking rules (``reference/architecture.md`` §B.6), which
:mod:`gateway.operate.itp` implements: Safari caps cookies to 7 days when the gateway host is a
CNAME to another domain, or when its address shares fewer than 16 (IPv4) or 64 (IPv6) leading bits
with the storefront's, a family mismatch counting as no match. WebKit applies the address rule to
hosts without a CNAME; doctor applies it to every gateway host, because the heuristic has been
tightened before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.operate.doctor_check import Check, Level
from gateway.operate.itp import (
    IPV4_PREFIX_BITS,
    IPV6_PREFIX_BITS,
    Resolver,
    cname_target,
    normal_host,
    registrable_domain,
    shares_prefix,
    split_families,
)

_SAFARI_CNAME = (
    "Safari caps cookies set through a CNAME to another domain to 7 days: "
    "use an A/AAAA record or a path of the shop (/_t/)"
)


async def check_dns(gateway: str, storefront: str, resolver: Resolver) -> list[Check]:
    """Will Safari keep the gateway's cookies for their full life on ``storefront``'s pages?"""
    gw, shop = await asyncio.gather(resolver.resolve(gateway), resolver.resolve(storefront))
    missing = [host for host, r in ((gateway, gw), (storefront, shop)) if not r.addresses]
    if missing:
        return [
            Check("dns", Level.FAIL, f"{host} does not resolve (no A or AAAA record)")
            for host in missing
        ]
    checks = []
    target = cname_target(gateway, gw)
    if (
        target is not None
        and registrable_domain(target) != registrable_domain(storefront)
        and target != normal_host(shop.canonical)  # the top host's own CNAME target is first party
    ):
        checks.append(
            Check("dns", Level.WARN, f"{gateway} is a CNAME to {target}: {_SAFARI_CNAME}")
        )
    gw4, gw6 = split_families(gw.addresses)
    shop4, shop6 = split_families(shop.addresses)
    shared = []
    for ours, theirs, bits, family in (
        (gw4, shop4, IPV4_PREFIX_BITS, "IPv4"),
        (gw6, shop6, IPV6_PREFIX_BITS, "IPv6"),
    ):
        if not ours or not theirs:
            continue
        if any(shares_prefix(a, b) for a in ours for b in theirs):
            shared.append(f"/{bits}")
            continue
        apart = (
            f"{gateway} ({', '.join(ours)}) shares no /{bits} with {storefront} "
            f"({', '.join(theirs)}): Safari caps cookies to 7 days when the gateway's {family} "
            f"address matches fewer than {bits} leading bits of the site's; serve the gateway "
            "from the shop's own servers, load balancer or CDN, or as a path (/_t/)"
        )
        checks.append(Check("dns", Level.WARN, apart))
    if bool(gw4) != bool(shop4) or bool(gw6) != bool(shop6):
        mismatch = (
            f"{storefront} has {_family_names(shop4, shop6)} but {gateway} has "
            f"{_family_names(gw4, gw6)}: a dual-stack Safari may compare across families, "
            "which counts as no match and caps cookies to 7 days; publish AAAA (and A) for "
            "the gateway if and only if the shop does"
        )
        checks.append(Check("dns", Level.WARN, mismatch))
    if not checks:
        record = "an A/AAAA record" if target is None else f"a CNAME to first-party {target}"
        pair = (
            f"{gateway} ({', '.join(gw.addresses)}) for {storefront} ({', '.join(shop.addresses)})"
        )
        checks.append(Check("dns", Level.OK, f"{pair}: {record}, {' and '.join(shared)} shared"))
    return checks


def _family_names(v4: Sequence[str], v6: Sequence[str]) -> str:
    names = [name for name, found in (("A (IPv4)", v4), ("AAAA (IPv6)", v6)) if found]
    return " and ".join(names) + " records"
