"""``tt-gateway doctor`` against the real test Redis, the TikTok emulator and DNS rules."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from gateway.config import SettingsError
from gateway.operate.doctor import doctor_command, render, run_checks
from gateway.operate.doctor_check import Check, Level
from gateway.operate.doctor_dns import check_dns
from gateway.operate.itp import (
    Resolution,
    SystemResolver,
    cname_target,
    parse_host_pair,
    shares_prefix,
)
from gateway.settings import Settings
from gateway.store import keys
from tests.delivery_support import PIXEL, TOKEN, Emulator, delivery_env, running_emulator
from tests.support import free_port, wait_for_port

SECRETS = {
    "TTGW_ADMIN_TOKEN": "tta_doctor-admin-token-0123456789",
    "TTGW_WRITE_KEY": "ttw_doctor-write-key-0123456789",
    "TTGW_SECRET_KEY": "doctor-secret-key-0123456789abcdef0123456789",
}
ORIGINS = {"TTGW_ALLOWED_ORIGINS": "https://www.shop.example"}
TEST_CODE = "TEST40213"

MakeSettings = Callable[..., Settings]


class TableResolver:
    """A DNS stand-in: answers from a table of host -> Resolution; other hosts do not resolve."""

    def __init__(self, table: dict[str, Resolution]) -> None:
        self.table = table

    async def resolve(self, host: str) -> Resolution:
        return self.table.get(host, Resolution(host, ()))


def by_name(checks: list[Check], name: str) -> list[Check]:
    return [c for c in checks if c.name == name]


def assert_no_secrets(text: str, settings: Settings) -> None:
    for secret in (TOKEN, settings.admin_token, settings.write_key, settings.secret_key):
        assert secret not in text


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with running_emulator() as running:
        yield running


@pytest.fixture
def healthy(emulator: Emulator, redis_url: str, make_settings: MakeSettings) -> Settings:
    return make_settings(
        **delivery_env(emulator, redis_url, TTGW_TEST_EVENT_CODE=TEST_CODE, **ORIGINS, **SECRETS),
        TTGW_DEFAULT_PHONE_REGION="FR",
    )


async def restore(client: Redis) -> None:
    """Back to what the session's Redis was started with (see conftest)."""
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("save", "")
    await client.config_set("appendonly", "yes")


# --- the whole command ------------------------------------------------------------------------


async def test_healthy_setup_passes_and_sends_one_test_event(
    healthy: Settings, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    checks = await run_checks(healthy, hosts=[("localhost", "localhost")])

    assert [c.name for c in checks if c.level is Level.OK] == [
        "settings", "redis", "persistence", "eviction", "queue", "token", "dns",
    ]  # fmt: skip
    # a test setup can't be warning-free: it posts test events to an emulator on http
    warnings = [c.detail for c in checks if c.level is not Level.OK]
    assert len(warnings) == 2
    assert warnings[0].startswith("TTGW_TIKTOK_API_URL is not https and points at 127.0.0.1")
    assert "events go to Test events, not live" in warnings[1]
    assert "AOF on (appendfsync everysec)" in by_name(checks, "persistence")[0].detail
    assert re.fullmatch(
        r"Redis [67]\.\d+\.\d+ at redis://127\.0\.0\.1:\d+/0", by_name(checks, "redis")[0].detail
    )
    [event] = emulator.state.accepted
    assert event.test_event_code == TEST_CODE
    assert event.pixel_code == PIXEL
    assert event.event_id is not None and event.event_id.startswith("ttgw-doctor-")

    assert await doctor_command(healthy, [("localhost", "localhost")]) == 0
    out = capsys.readouterr().out
    assert "ok    redis       Redis " in out
    assert "ok    token       pixel " in out
    assert out.rstrip().endswith("9 checks: 0 failed, 2 warnings")
    assert_no_secrets(out, healthy)


async def test_revoked_token_fails_with_tiktok_code(
    healthy: Settings, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.state.revoke(TOKEN)

    assert await doctor_command(healthy, []) == 1

    out = capsys.readouterr().out
    [token] = [line for line in out.splitlines() if line.startswith("fail  token")]
    assert "40105" in token
    assert "incorrect or revoked" in token
    assert_no_secrets(out, healthy)


async def test_without_test_code_the_token_is_not_checked(
    redis_url: str, make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    # TikTok's real URL: nothing may be sent, and the settings are then warning-free
    settings = make_settings(
        TTGW_REDIS_URL=redis_url, TTGW_PIXEL_CODE=PIXEL, TTGW_ACCESS_TOKEN=TOKEN, **ORIGINS
    )

    checks = await run_checks(settings)

    assert [(c.name, c.level) for c in by_name(checks, "settings")] == [("settings", Level.OK)]
    [token] = by_name(checks, "token")
    assert token.level is Level.WARN
    assert "no test_event_code: token not checked" in token.detail
    assert await doctor_command(settings, []) == 0
    assert_no_secrets(capsys.readouterr().out, settings)


async def test_no_default_phone_region_warns(redis_url: str, make_settings: MakeSettings) -> None:
    without = await run_checks(make_settings(TTGW_REDIS_URL=redis_url))
    [phones] = by_name(without, "phones")
    assert phones.level is Level.WARN
    assert "TTGW_DEFAULT_PHONE_REGION" in phones.detail and "dropped" in phones.detail
    with_region = await run_checks(
        make_settings(TTGW_REDIS_URL=redis_url, TTGW_DEFAULT_PHONE_REGION="fr")
    )
    assert by_name(with_region, "phones") == []


async def test_sandbox_sends_nothing_and_warns_about_missing_origins(
    redis_url: str, make_settings: MakeSettings
) -> None:
    checks = await run_checks(make_settings(TTGW_REDIS_URL=redis_url))

    settings = by_name(checks, "settings")
    assert settings[0].level is Level.OK and "sandbox" in settings[0].detail
    assert settings[1].level is Level.WARN and "TTGW_ALLOWED_ORIGINS is empty" in settings[1].detail
    assert by_name(checks, "token") == [Check("token", Level.OK, "sandbox: nothing is sent")]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://business-api.tiktok.com/open_api/v1.3/", "is not https"),
        ("https://collector.elsewhere.example/open_api/v1.3/", "points at collector.elsewhere"),
    ],
)
async def test_api_url_outside_tiktok_warns(
    url: str, problem: str, redis_url: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(
        TTGW_REDIS_URL=redis_url,
        TTGW_PIXEL_CODE=PIXEL,
        TTGW_ACCESS_TOKEN=TOKEN,
        TTGW_TIKTOK_API_URL=url,
        **ORIGINS,
    )

    checks = by_name(await run_checks(settings), "settings")

    assert [c.level for c in checks] == [Level.OK, Level.WARN]
    assert problem in checks[1].detail


# --- the cookie domain ------------------------------------------------------------------------


async def test_a_public_suffix_cookie_domain_fails_naming_the_variable(
    redis_url: str, make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    # Settings.from_env refuses it (the CLI then exits 2); doctor judges what it is given as well
    settings = dataclasses.replace(
        make_settings(TTGW_REDIS_URL=redis_url, **ORIGINS), cookie_domain="myshopify.com"
    )

    assert await doctor_command(settings, []) == 1

    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if line.startswith("fail  cookies")]
    assert "TTGW_COOKIE_DOMAIN: 'myshopify.com' is a public suffix" in line
    assert "browsers refuse cookies for it" in line


async def test_hosts_outside_the_cookie_domain_warn(
    redis_url: str, make_settings: MakeSettings, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[[integrations]]
name = "shop"
pixel_code = "{PIXEL}"
access_token = "{TOKEN}"
hostnames = ["t.shop.example", "pay.elsewhere.example"]
"""
    )
    settings = make_settings(
        TTGW_REDIS_URL=redis_url,
        TTGW_CONFIG=str(config),
        TTGW_COOKIE_DOMAIN="shop.example",
        **ORIGINS,
    )
    hosts = [(GW, SHOP), ("t.other.example", "www.other.example")]

    checks = by_name(await run_checks(settings, hosts=hosts, resolver=TableResolver({})), "cookies")

    assert [c.level for c in checks] == [Level.WARN, Level.WARN, Level.WARN]
    assert checks[0].detail.startswith("pay.elsewhere.example is not under TTGW_COOKIE_DOMAIN")
    assert "host-only" in checks[0].detail
    assert checks[1].detail.startswith("t.other.example is not under TTGW_COOKIE_DOMAIN")
    assert checks[2].detail.startswith("storefront www.other.example is not under")
    covered = await run_checks(settings, hosts=[(GW, SHOP)], resolver=TableResolver({}))
    assert by_name(covered, "cookies") == [
        Check("cookies", Level.WARN, checks[0].detail)  # the integration's other host
    ]


async def test_a_cookie_domain_covering_every_host_is_ok(
    redis_url: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(TTGW_REDIS_URL=redis_url, TTGW_COOKIE_DOMAIN="shop.co.uk", **ORIGINS)

    checks = await run_checks(
        settings, hosts=[("t.shop.co.uk", "shop.co.uk")], resolver=TableResolver({})
    )

    assert by_name(checks, "cookies") == [
        Check("cookies", Level.OK, "cookies for shop.co.uk (not a public suffix)")
    ]


# --- Redis ------------------------------------------------------------------------------------


async def test_unreachable_redis_fails_without_showing_its_password(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    settings = make_settings(TTGW_REDIS_URL=f"redis://doctor:pa55-w0rd-x@127.0.0.1:{port}/0")

    assert await doctor_command(settings, []) == 1

    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if " redis " in line]
    assert line.startswith(f"fail  redis       cannot use Redis at redis://127.0.0.1:{port}/0")
    assert "pa55-w0rd-x" not in out
    assert "persistence" not in out  # nothing else is read from a Redis that is not there


async def test_lru_eviction_policy_fails(
    redis_url: str, redis: Redis, make_settings: MakeSettings
) -> None:
    try:
        await redis.config_set("maxmemory-policy", "allkeys-lru")
        checks = await run_checks(make_settings(TTGW_REDIS_URL=redis_url, **ORIGINS))
    finally:
        await restore(redis)

    [eviction] = by_name(checks, "eviction")
    assert eviction.level is Level.FAIL
    assert eviction.detail.startswith("maxmemory-policy allkeys-lru: ")


async def test_rdb_only_warns_and_no_persistence_fails(
    redis_url: str, redis: Redis, make_settings: MakeSettings
) -> None:
    settings = make_settings(TTGW_REDIS_URL=redis_url, **ORIGINS)
    try:
        await redis.config_set("appendonly", "no")
        await redis.config_set("save", "3600 1")
        rdb_only = by_name(await run_checks(settings), "persistence")
        await redis.config_set("save", "")
        nothing = by_name(await run_checks(settings), "persistence")
    finally:
        await restore(redis)

    assert rdb_only[0].level is Level.WARN
    assert rdb_only[0].detail.startswith("AOF off, RDB save 3600 1: ")
    assert nothing[0].level is Level.FAIL
    assert "no persistence" in nothing[0].detail


async def test_dead_letters_and_paused_integrations_warn(
    redis_url: str, redis: Redis, make_settings: MakeSettings
) -> None:
    await redis.xadd(keys.DEAD_STREAM, {"pixel": PIXEL, "reason": "rejected"})
    record = {
        "reason": "auth",
        "code": 40105,
        "message": "Access token is incorrect or has been revoked.",
    }
    await redis.hset(keys.PAUSED_HASH, PIXEL, orjson.dumps(record))
    await redis.xadd(keys.EVENTS_STREAM, {"pixel": PIXEL})

    [queue] = by_name(await run_checks(make_settings(TTGW_REDIS_URL=redis_url)), "queue")

    assert queue.level is Level.WARN
    assert queue.detail.startswith("1 queued, 0 waiting to retry; 1 dead letter(s): ")
    assert f"pixel {PIXEL} is paused (40105 Access token is incorrect" in queue.detail


@pytest.fixture
def managed_redis_url(redis_server_binary: Path, tmp_path: Path) -> Iterator[str]:
    """A Redis like a managed one: CONFIG renamed away; it also evicts (volatile-lru)."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(redis_server_binary), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(tmp_path), "--save", "", "--appendonly", "yes",
            "--maxmemory-policy", "volatile-lru", "--rename-command", "CONFIG", "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


async def test_managed_redis_without_config_warns_and_still_checks_eviction(
    managed_redis_url: str, make_settings: MakeSettings
) -> None:
    checks = await run_checks(make_settings(TTGW_REDIS_URL=managed_redis_url))

    levels = {(c.name, c.level) for c in checks}
    assert ("redis", Level.WARN) in levels
    assert any("CONFIG is disabled" in c.detail for c in by_name(checks, "redis"))
    [eviction] = by_name(checks, "eviction")
    assert (eviction.level, eviction.detail.split(":")[0]) == (
        Level.FAIL,
        "maxmemory-policy volatile-lru",
    )
    [persistence] = by_name(checks, "persistence")
    assert persistence == Check(
        "persistence", Level.OK, "AOF on (appendfsync unknown), RDB unknown"
    )


# --- DNS and Safari's cookie cap ------------------------------------------------------------

GW, SHOP = "t.shop.example", "www.shop.example"


def here(*addresses: str, canonical: str | None = None) -> Callable[[str], Resolution]:
    return lambda host: Resolution(canonical or host, addresses)


@pytest.mark.parametrize(
    ("gateway", "storefront", "levels", "words"),
    [
        pytest.param(
            here("203.0.113.7"), here("203.0.200.5"), [Level.OK], "/16 shared", id="same-16"
        ),
        pytest.param(
            here("198.51.100.7"), here("203.0.113.5"), [Level.WARN], "7 days", id="other-16"
        ),
        pytest.param(
            here("203.0.113.7", canonical="edge.gateway-host.example"),
            here("203.0.113.5"),
            [Level.WARN],
            "CNAME to another domain to 7 days",
            id="cname-elsewhere",
        ),
        pytest.param(
            here("203.0.113.7", canonical="lb.shop.example."),
            here("203.0.113.5"),
            [Level.OK],
            "a CNAME to first-party lb.shop.example",
            id="cname-first-party",
        ),
        pytest.param(
            here("203.0.113.7", canonical="shop.cdn.example"),
            here("203.0.113.5", canonical="shop.cdn.example"),
            [Level.OK],
            "first-party shop.cdn.example",
            id="cname-same-as-the-site",
        ),
        pytest.param(
            here("203.0.113.7", "2001:db8:1:2::10"),
            here("203.0.113.5", "2001:db8:1:2:ffff::20"),
            [Level.OK],
            "/16 and /64 shared",
            id="ipv6-same-64",
        ),
        pytest.param(
            here("203.0.113.7", "2001:db8:1:3::10"),
            here("203.0.113.5", "2001:db8:1:2::20"),
            [Level.WARN],
            "shares no /64",
            id="ipv6-other-64",
        ),
        pytest.param(
            here("203.0.113.7"),
            here("203.0.113.5", "2001:db8:1:2::20"),
            [Level.WARN],
            "has A (IPv4) and AAAA (IPv6) records but t.shop.example has A (IPv4) records",
            id="family-mismatch",
        ),
        pytest.param(
            here("2001:db8:1:2::10"),
            here("203.0.113.5"),
            [Level.WARN],
            "compare across families",
            id="no-common-family",
        ),
        pytest.param(here(), here("203.0.113.5"), [Level.FAIL], "does not resolve", id="no-gw"),
        pytest.param(here("203.0.113.5"), here(), [Level.FAIL], f"{SHOP} does not", id="no-shop"),
    ],
)
async def test_dns_rules(
    gateway: Callable[[str], Resolution],
    storefront: Callable[[str], Resolution],
    levels: list[Level],
    words: str,
) -> None:
    resolver = TableResolver({GW: gateway(GW), SHOP: storefront(SHOP)})

    checks = await check_dns(GW, SHOP, resolver)

    assert [c.level for c in checks] == levels
    assert all(c.name == "dns" for c in checks)
    assert words in checks[0].detail


async def test_dns_reports_each_problem_and_fails_the_command(
    healthy: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    resolver = TableResolver(
        {
            GW: Resolution("gw.hosting.example", ("198.51.100.7",)),
            SHOP: Resolution(SHOP, ("203.0.113.5", "2001:db8::5")),
        }
    )

    checks = await run_checks(
        healthy, hosts=[(GW, SHOP), ("gone.shop.example", SHOP)], resolver=resolver
    )

    dns = by_name(checks, "dns")
    assert [c.level for c in dns] == [Level.WARN, Level.WARN, Level.WARN, Level.FAIL]
    assert "CNAME to gw.hosting.example" in dns[0].detail
    assert "(198.51.100.7) shares no /16 with www.shop.example (203.0.113.5)" in dns[1].detail
    assert "AAAA" in dns[2].detail
    assert dns[3].detail == "gone.shop.example does not resolve (no A or AAAA record)"
    assert render(checks).endswith(f"{len(checks)} checks: 1 failed, 5 warnings")
    assert "fail  dns         gone.shop.example does not resolve" in render(checks)


@pytest.mark.parametrize(
    ("a", "b", "shared"),
    [
        ("203.0.113.5", "203.0.1.1", True),
        ("10.0.0.1", "10.0.255.255", True),
        ("203.0.113.5", "203.1.113.5", False),
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", True),
        ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
        ("203.0.113.5", "::ffff:203.0.113.5", False),  # a family mismatch is no match
        ("::1", "127.0.0.1", False),
    ],
)
def test_shares_prefix(a: str, b: str, shared: bool) -> None:
    assert shares_prefix(a, b) is shared
    assert shares_prefix(b, a) is shared


async def test_system_resolver_resolves_localhost() -> None:
    resolver = SystemResolver()

    resolution = await resolver.resolve("localhost")
    dotted = await resolver.resolve("LOCALHOST.")
    broken = await resolver.resolve("a..example")

    assert resolution.addresses
    assert all(a in ("127.0.0.1", "::1") for a in resolution.addresses)
    assert cname_target("localhost", resolution) is None
    assert cname_target("LOCALHOST.", dotted) is None
    assert broken == Resolution("a..example", ())
    [ok] = await check_dns("localhost", "localhost", resolver)
    assert ok.level is Level.OK


def test_cname_target_ignores_case_and_trailing_dot() -> None:
    assert cname_target("T.Shop.Example", Resolution("t.shop.example.", ())) is None
    assert cname_target(GW, Resolution("Edge.CDN.example.", ())) == "edge.cdn.example"


# --- the --check-host option --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("t.shop.example=www.shop.example", ("t.shop.example", "www.shop.example")),
        (" T.Shop.Example.=WWW.shop.example ", ("t.shop.example", "www.shop.example")),
        ("shop.example=shop.example", ("shop.example", "shop.example")),
        ("t.bücher.example=bücher.example", ("t.xn--bcher-kva.example", "xn--bcher-kva.example")),
    ],
)
def test_parse_host_pair(text: str, pair: tuple[str, str]) -> None:
    assert parse_host_pair(text) == pair


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t.shop.example", "expected GATEWAY=STOREFRONT"),
        ("a=b=c", "expected GATEWAY=STOREFRONT"),
        ("=www.shop.example", "'' in '=www.shop.example' is not a host name"),
        ("https://t.shop.example=www.shop.example", "'https://t.shop.example'"),
        ("t.shop.example:8443=www.shop.example", "without scheme, port or path"),
        ("t.shop.example=www.shop.example/_t/", "'www.shop.example/_t/'"),
        ("t_shop.example=www.shop.example", "is not a host name"),
    ],
)
def test_parse_host_pair_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"GATEWAY=STOREFRONT|not a host name") as error:
        parse_host_pair(text)
    assert message in str(error.value)


async def test_run_checks_needs_a_redis_url(make_settings: MakeSettings) -> None:
    with pytest.raises(SettingsError, match=r"^TTGW_REDIS_URL: doctor needs a Redis URL"):
        await run_checks(make_settings())
