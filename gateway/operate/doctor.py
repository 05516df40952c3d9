"""``tt-gateway doctor``: a self-check of the configuration, Redis, access tokens and DNS.

Every finding is a :class:`~gateway.operate.doctor_check.Check` at one of three levels: OK; WARN —
it works, but something will surprise the operator (test events, 7-day cookies in Safari, dead
letters); FAIL — events will be lost or not delivered. The command exits 1 when anything fails,
else 0. The checks live by subject: ``doctor_settings`` (settings and the cookie domain),
``doctor_redis``, ``doctor_tokens`` and ``doctor_dns`` (Safari's cookie cap).

Secrets never appear in the output: tokens and keys are not printed, and the Redis URL is shown
without its credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.config import SettingsError
from gateway.operate.doctor_check import Check, Level
from gateway.operate.doctor_dns import check_dns
from gateway.operate.doctor_redis import check_redis
from gateway.operate.doctor_settings import check_cookie_domain, check_settings
from gateway.operate.doctor_tokens import check_tokens
from gateway.operate.itp import Resolver, SystemResolver
from gateway.settings import Settings
from gateway.store.connections import RedisOptions, make_redis


async def run_checks(
    settings: Settings,
    *,
    hosts: Sequence[tuple[str, str]] = (),
    resolver: Resolver | None = None,
) -> list[Check]:
    """Every check, in order: settings, cookie domain, Redis, tokens, then DNS for each pair.

    ``settings.redis_url`` must be set: ``tt-gateway doctor`` starts the embedded Redis first
    when there is none, as ``replay`` and ``send-test`` do.
    """
    if settings.redis_url is None:
        raise SettingsError("TTGW_REDIS_URL", "doctor needs a Redis URL (the CLI starts one)")
    resolver = resolver or SystemResolver()
    client = make_redis(settings.redis_url, RedisOptions(retries=0, max_connections=4))
    try:
        groups = await asyncio.gather(
            check_redis(client, settings),
            check_tokens(client, settings),
            *(check_dns(gateway, storefront, resolver) for gateway, storefront in hosts),
        )
    finally:
        await client.aclose()
    first = check_settings(settings) + check_cookie_domain(settings, hosts)
    return first + [check for group in groups for check in group]


def render(checks: Sequence[Check]) -> str:
    """One aligned line per check, then a count of failures and warnings."""
    lines = [f"{c.level.value:<6}{c.name:<12}{c.detail}" for c in checks]
    failed = sum(c.level is Level.FAIL for c in checks)
    warned = sum(c.level is Level.WARN for c in checks)
    lines.append(
        f"{len(checks)} checks: {failed} failed, {warned} warning{'' if warned == 1 else 's'}"
    )
    return "\n".join(lines)


async def doctor_command(settings: Settings, hosts: Sequence[tuple[str, str]]) -> int:
    """``tt-gateway doctor``: print every check; 1 when one fails, else 0 (warnings included)."""
    checks = await run_checks(settings, hosts=hosts)
    print(render(checks), flush=True)
    return 1 if any(c.level is Level.FAIL for c in checks) else 0
