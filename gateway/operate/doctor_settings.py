"""Doctor's checks of the settings: where events go, allowed origins, phones, the cookie domain.

``TTGW_COOKIE_DOMAIN`` is checked against the Public Suffix List (settings refuse a public suffix
at start-up; doctor fails on one too) and against the hosts doctor knows of: a gateway host outside
it gets host-only cookies, a storefront outside it cannot read ``_ttp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from gateway.config import cookie_domain_problem
from gateway.integrations import Integrations
from gateway.operate.doctor_check import Check, Level
from gateway.settings import Settings

_NO_ORIGINS = (
    "TTGW_ALLOWED_ORIGINS is empty: browsers on another origin (the storefront) cannot post "
    "events; list them, e.g. https://www.shop.example"
)
_TEST_CODE = (
    "has a test_event_code (TTGW_TEST_EVENT_CODE or TTGW_CONFIG): events go to Test events, "
    "not live; remove it in production"
)


def check_settings(settings: Settings) -> list[Check]:
    """What the settings say, and the choices that quietly change where events go."""
    enabled = Integrations(settings).enabled
    if settings.sandbox:
        what = "sandbox mode: no pixel configured, events are recorded in Redis, not sent"
    else:
        pixels = ", ".join(f"{i.pixel_code} ({i.name})" for i in enabled)
        what = f"pixel(s) {pixels} via {settings.tiktok_api_url}"
    origins = ", ".join(settings.allowed_origins) or "none"
    checks = [Check("settings", Level.OK, f"{what}; allowed origins: {origins}")]
    if not settings.allowed_origins:
        checks.append(Check("settings", Level.WARN, _NO_ORIGINS))
    if not settings.sandbox:
        api = urlsplit(settings.tiktok_api_url)
        host = (api.hostname or "").lower()
        problems = []
        if api.scheme != "https":
            problems.append("is not https")
        if host != "tiktok.com" and not host.endswith(".tiktok.com"):
            problems.append(f"points at {host}, not TikTok (an emulator?): events do not reach it")
        if problems:
            checks.append(
                Check("settings", Level.WARN, f"TTGW_TIKTOK_API_URL {' and '.join(problems)}")
            )
        checks += [
            Check("settings", Level.WARN, f"pixel {i.pixel_code} {_TEST_CODE}")
            for i in enabled
            if i.test_event_code
        ]
    without = [i for i in enabled if not i.default_phone_region]
    if without and not settings.default_phone_region:
        pixels = ", ".join(i.pixel_code for i in without)
        checks.append(Check("phones", Level.WARN, f"pixel(s) {pixels}: {_NO_PHONE_REGION}"))
    return checks


_NO_PHONE_REGION = (
    "no default phone region: a phone number written without + and a country code (06 12 34 "
    "56 78) is dropped unless its event names user.country; set TTGW_DEFAULT_PHONE_REGION (or "
    "default_phone_region per integration) to your shoppers' country"
)


def check_cookie_domain(settings: Settings, hosts: Sequence[tuple[str, str]] = ()) -> list[Check]:
    """Will browsers keep cookies for ``TTGW_COOKIE_DOMAIN`` on the hosts doctor knows of?

    Those are the integrations' ``hostnames`` and the ``--check-host`` pairs. Nothing is said
    when the variable is unset: every cookie is then the gateway host's own.
    """
    domain = settings.cookie_domain
    if domain is None:
        return []
    if (problem := cookie_domain_problem(domain)) is not None:
        return [Check("cookies", Level.FAIL, f"TTGW_COOKIE_DOMAIN: {problem}")]
    served = [h for i in Integrations(settings).enabled for h in i.hostnames]
    served += [gateway for gateway, _ in hosts]
    storefronts = [storefront for _, storefront in hosts]
    checks = [
        Check(
            "cookies",
            Level.WARN,
            f"{host} is not under TTGW_COOKIE_DOMAIN {domain}: the gateway's cookies there are "
            f"host-only (no Domain), not shared with {domain}",
        )
        for host in dict.fromkeys(served)
        if not _under(host, domain)
    ]
    checks += [
        Check(
            "cookies",
            Level.WARN,
            f"storefront {host} is not under TTGW_COOKIE_DOMAIN {domain}: "
            "a pixel on its pages cannot read the _ttp cookie",
        )
        for host in dict.fromkeys(storefronts)
        if not _under(host, domain)
    ]
    return checks or [Check("cookies", Level.OK, f"cookies for {domain} (not a public suffix)")]


def _under(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)
