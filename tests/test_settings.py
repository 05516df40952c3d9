from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from gateway.config import SettingsError
from gateway.settings import SANDBOX_PIXEL_CODE, Settings

PIXEL = "CXXXXXXXXXXXXXXXXXX0"
MakeSettings = Callable[..., Settings]


def test_defaults_match_the_design(make_settings: MakeSettings, tmp_path: Path) -> None:
    s = make_settings()
    assert s.redis_url is None and s.embedded_redis
    assert s.data_dir == (tmp_path / "data").resolve()
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.tiktok_api_url == "https://business-api.tiktok.com/open_api/v1.3/"
    assert s.integrations == () and s.sandbox
    assert s.cookie_domain is None
    assert s.allowed_origins == ()
    assert s.trusted_proxies == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert s.config_path is None
    assert s.log_level == "info"


def test_settings_are_frozen(make_settings: MakeSettings) -> None:
    s = make_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_secrets_are_not_in_repr(make_settings: MakeSettings) -> None:
    s = make_settings(TTGW_PIXEL_CODE=PIXEL, TTGW_ACCESS_TOKEN="secret-access-token-123")
    text = repr(s)
    for secret in (s.admin_token, s.write_key, s.secret_key, "secret-access-token-123"):
        assert secret not in text


def test_generated_secrets_are_kept_once(make_settings: MakeSettings, tmp_path: Path) -> None:
    first = make_settings()
    assert set(first.generated_secrets) == {"admin_token", "write_key", "secret_key"}
    assert first.admin_token.startswith("tta_") and len(first.admin_token) > 40
    assert first.write_key.startswith("ttw_")
    assert len(bytes.fromhex(first.secret_key)) == 32
    path = tmp_path / "data" / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = make_settings()
    assert second.generated_secrets == ()
    assert (second.admin_token, second.write_key, second.secret_key) == (
        first.admin_token,
        first.write_key,
        first.secret_key,
    )


def test_given_secrets_win_and_are_not_written(make_settings: MakeSettings, tmp_path: Path) -> None:
    s = make_settings(
        TTGW_ADMIN_TOKEN="admin-token-0123456789",
        TTGW_WRITE_KEY="write-key-0123456789",
        TTGW_SECRET_KEY="k" * 40,
    )
    assert (s.admin_token, s.write_key, s.secret_key) == (
        "admin-token-0123456789",
        "write-key-0123456789",
        "k" * 40,
    )
    assert not (tmp_path / "data" / "secrets.json").exists()


def test_concurrent_starts_agree_on_generated_secrets(tmp_path: Path) -> None:
    env = {"TTGW_DATA_DIR": str(tmp_path / "shared")}
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(Settings.from_env(env).admin_token))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1


def test_corrupt_secrets_file_is_reported(make_settings: MakeSettings, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secrets.json").write_text("{not json")
    with pytest.raises(SettingsError, match=r"^TTGW_DATA_DIR: .*corrupt"):
        make_settings()


def test_bootstrap_integration(make_settings: MakeSettings) -> None:
    s = make_settings(
        TTGW_PIXEL_CODE=PIXEL, TTGW_ACCESS_TOKEN="tok-abc", TTGW_TEST_EVENT_CODE="TEST123"
    )
    assert not s.sandbox
    (only,) = s.integrations
    assert (only.pixel_code, only.access_token, only.test_event_code) == (
        PIXEL,
        "tok-abc",
        "TEST123",
    )
    assert PIXEL != SANDBOX_PIXEL_CODE


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TTGW_PORT": "http"}, "TTGW_PORT"),
        ({"TTGW_PORT": "70000"}, "TTGW_PORT"),
        ({"TTGW_REDIS_URL": "http://localhost"}, "TTGW_REDIS_URL"),
        ({"TTGW_REDIS_URL": "redis://"}, "TTGW_REDIS_URL"),
        ({"TTGW_REDIS_URL": "redis+sentinel://h:26379"}, "TTGW_REDIS_URL"),
        ({"TTGW_TIKTOK_API_URL": "business-api.tiktok.com"}, "TTGW_TIKTOK_API_URL"),
        ({"TTGW_TIKTOK_API_URL": "https://x.test/?a=1"}, "TTGW_TIKTOK_API_URL"),
        ({"TTGW_PIXEL_CODE": "lower-case", "TTGW_ACCESS_TOKEN": "t"}, "TTGW_PIXEL_CODE"),
        ({"TTGW_PIXEL_CODE": PIXEL}, "TTGW_ACCESS_TOKEN"),
        ({"TTGW_ACCESS_TOKEN": "tok"}, "TTGW_PIXEL_CODE"),
        ({"TTGW_TEST_EVENT_CODE": "TEST1"}, "TTGW_TEST_EVENT_CODE"),
        ({"TTGW_ADMIN_TOKEN": "short"}, "TTGW_ADMIN_TOKEN"),
        ({"TTGW_WRITE_KEY": "has spaces in the key"}, "TTGW_WRITE_KEY"),
        ({"TTGW_SECRET_KEY": "x" * 31}, "TTGW_SECRET_KEY"),
        ({"TTGW_COOKIE_DOMAIN": "bad_domain!.com"}, "TTGW_COOKIE_DOMAIN"),
        ({"TTGW_COOKIE_DOMAIN": "com"}, "TTGW_COOKIE_DOMAIN"),
        # public suffixes, ICANN and private: browsers drop every cookie set for one
        ({"TTGW_COOKIE_DOMAIN": "co.uk"}, "TTGW_COOKIE_DOMAIN"),
        ({"TTGW_COOKIE_DOMAIN": "myshopify.com"}, "TTGW_COOKIE_DOMAIN"),
        ({"TTGW_COOKIE_DOMAIN": "github.io"}, "TTGW_COOKIE_DOMAIN"),
        ({"TTGW_COOKIE_DOMAIN": "herokuapp.com"}, "TTGW_COOKIE_DOMAIN"),
        ({"TTGW_COOKIE_DOMAIN": "com.au"}, "TTGW_COOKIE_DOMAIN"),
        ({"TTGW_COOKIE_DOMAIN": "203.0.113.9"}, "TTGW_COOKIE_DOMAIN"),
        ({"TTGW_ALLOWED_ORIGINS": "*"}, "TTGW_ALLOWED_ORIGINS"),
        ({"TTGW_ALLOWED_ORIGINS": "shop.example"}, "TTGW_ALLOWED_ORIGINS"),
        ({"TTGW_ALLOWED_ORIGINS": "https://shop.example/path"}, "TTGW_ALLOWED_ORIGINS"),
        ({"TTGW_TRUSTED_PROXIES": "10.0.0.0/8,nope"}, "TTGW_TRUSTED_PROXIES"),
        ({"TTGW_CONFIG": "/nonexistent/gateway.toml"}, "TTGW_CONFIG"),
        ({"TTGW_LOG_LEVEL": "chatty"}, "TTGW_LOG_LEVEL"),
        ({"TTGW_REDIS_FSYNC": "no"}, "TTGW_REDIS_FSYNC"),
        ({"TTGW_DEFAULT_PHONE_REGION": "XX"}, "TTGW_DEFAULT_PHONE_REGION"),
        ({"TTGW_PIXEL_ORIGIN": "https://analytics.tiktok.com/path"}, "TTGW_PIXEL_ORIGIN"),
        ({"TTGW_PIXEL_ORIGIN": "ftp://x"}, "TTGW_PIXEL_ORIGIN"),
        # the receipt is the 48 h idempotency marker: it cannot be kept for less
        ({"TTGW_RECEIPT_TTL_S": str(47 * 3600)}, "TTGW_RECEIPT_TTL_S"),
    ],
)
def test_bad_values_name_the_variable(
    make_settings: MakeSettings, env: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings(**env)
    assert str(caught.value).startswith(f"{variable}: ")
    assert caught.value.variable == variable


@pytest.mark.parametrize(
    ("domain", "why"),
    [
        ("myshopify.com", "'myshopify.com' is a public suffix: browsers refuse cookies for it"),
        (".co.uk", "'co.uk' is a public suffix"),  # the check reads the name without its dot
        ("GitHub.io", "'github.io' is a public suffix"),
        ("203.0.113.9", "'203.0.113.9' is an IP address"),
        ("[2001:db8::1]", "'[2001:db8::1]' is an IP address"),
    ],
)
def test_cookie_domain_is_not_a_public_suffix_or_address(
    make_settings: MakeSettings, domain: str, why: str
) -> None:
    with pytest.raises(SettingsError, match=r"^TTGW_COOKIE_DOMAIN: ") as caught:
        make_settings(TTGW_COOKIE_DOMAIN=domain)
    assert why in str(caught.value)


@pytest.mark.parametrize(
    ("domain", "kept"),
    [
        ("shop.example", "shop.example"),
        ("shop.co.uk", "shop.co.uk"),
        ("www.shop.co.uk", "www.shop.co.uk"),
        ("mystore.myshopify.com", "mystore.myshopify.com"),
        (".shop.com.au", "shop.com.au"),
        ("localhost", "localhost"),
    ],
)
def test_cookie_domain_accepts_registrable_domains_and_their_subdomains(
    make_settings: MakeSettings, domain: str, kept: str
) -> None:
    assert make_settings(TTGW_COOKIE_DOMAIN=domain).cookie_domain == kept


def test_unwritable_data_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SettingsError, match=r"^TTGW_DATA_DIR: "):
        Settings.from_env({"TTGW_DATA_DIR": str(blocker / "sub")})


def test_values_are_normalized(make_settings: MakeSettings) -> None:
    s = make_settings(
        TTGW_TIKTOK_API_URL="http://127.0.0.1:9009/open_api/v1.3",
        TTGW_COOKIE_DOMAIN=".Shop.Example",
        TTGW_ALLOWED_ORIGINS="https://Shop.Example, https://shop.example ,http://localhost:3000",
        TTGW_TRUSTED_PROXIES="10.1.2.3, 2001:db8::/32",
        TTGW_REDIS_URL="redis+sentinel://s1:26379,s2:26379/mymaster",
        TTGW_PORT="0",
        TTGW_LOG_LEVEL="DEBUG",
    )
    assert s.tiktok_api_url == "http://127.0.0.1:9009/open_api/v1.3/"
    assert s.cookie_domain == "shop.example"
    assert s.allowed_origins == ("https://shop.example", "http://localhost:3000")
    assert s.trusted_proxies == (
        ipaddress.ip_network("10.1.2.3/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert s.port == 0 and s.log_level == "debug"


def test_empty_trusted_proxies_trusts_nobody(make_settings: MakeSettings) -> None:
    assert make_settings(TTGW_TRUSTED_PROXIES="").trusted_proxies == ()


def test_toml_config_adds_integrations(make_settings: MakeSettings, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        """
[[integrations]]
name = "shop-fr"
pixel_code = "CFRFRFRFRFRFRFRFRFR0"
access_token = "token-fr"
test_event_code = "TEST42"
hostnames = ["T.Shop.fr", "shop.fr"]
default_phone_region = "fr"
required_consent = ["ad_user_data"]
event_overrides = { "Order Completed" = "CompletePayment" }

[[integrations]]
pixel_code = "CDEDEDEDEDEDEDEDEDE0"
access_token = "token-de"
enabled = false
"""
    )
    s = make_settings(TTGW_CONFIG=str(config), TTGW_PIXEL_CODE=PIXEL, TTGW_ACCESS_TOKEN="tok")
    assert [i.pixel_code for i in s.integrations] == [
        PIXEL,
        "CFRFRFRFRFRFRFRFRFR0",
        "CDEDEDEDEDEDEDEDEDE0",
    ]
    fr = s.integrations[1]
    assert fr.name == "shop-fr" and fr.access_token == "token-fr"
    assert fr.hostnames == ("t.shop.fr", "shop.fr")
    assert fr.default_phone_region == "FR"
    assert fr.required_consent == ("ad_user_data",)
    assert dict(fr.event_overrides) == {"Order Completed": "CompletePayment"}
    assert s.integrations[2].name == "CDEDEDEDEDEDEDEDEDE0" and not s.integrations[2].enabled


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ('[[integrations]]\naccess_token = "t"\n', "integrations[0].pixel_code"),
        ('[[integrations]]\npixel_code = "CAAAAAAAAAAAAAAAAAA0"\n', "integrations[0].access_token"),
        (
            '[[integrations]]\npixel_code = "CAAAAAAAAAAAAAAAAAA0"\naccess_token = "t"\n'
            'default_phone_region = "XX"\n',
            "integrations[0].default_phone_region",
        ),
        (
            '[[integrations]]\npixel_code = "CAAAAAAAAAAAAAAAAAA0"\naccess_token = "t"\n'
            'required_consent = ["marketing"]\n',
            "integrations[0].required_consent",
        ),
        (
            '[[integrations]]\npixel_code = "CAAAAAAAAAAAAAAAAAA0"\naccess_token = "t"\n'
            "colour = 1\n",
            "integrations[0]",
        ),
        (
            '[[integrations]]\npixel_code = "CAAAAAAAAAAAAAAAAAA0"\naccess_token = "t"\n'
            'event_overrides = { "Order Completed" = "purchase" }\n',
            "integrations[0].event_overrides",
        ),
        ("pixel = 1\n", "TTGW_CONFIG"),
        ("[[integrations]\n", "TTGW_CONFIG"),
        (
            '[[integrations]]\npixel_code = "CAAAAAAAAAAAAAAAAAA0"\naccess_token = "t"\n'
            '[[integrations]]\npixel_code = "CAAAAAAAAAAAAAAAAAA0"\naccess_token = "u"\n',
            "TTGW_CONFIG",
        ),
    ],
)
def test_bad_toml_names_the_place(
    make_settings: MakeSettings, tmp_path: Path, toml: str, where: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    with pytest.raises(SettingsError) as caught:
        make_settings(TTGW_CONFIG=str(config))
    assert where in str(caught.value)
    assert str(caught.value).startswith("TTGW_CONFIG")


def test_nothing_else_reads_the_environment() -> None:
    """Only settings.py may read os.environ (house style: one place, checked at start-up)."""
    package = Path(__file__).resolve().parent.parent / "gateway"
    offenders = [
        p.name
        for p in package.rglob("*.py")
        if p.name != "settings.py" and ("os.environ" in p.read_text() or "getenv" in p.read_text())
    ]
    assert offenders == []


def test_secrets_file_content_is_json(make_settings: MakeSettings, tmp_path: Path) -> None:
    s = make_settings()
    stored = orjson.loads((tmp_path / "data" / "secrets.json").read_bytes())
    assert stored == {
        "admin_token": s.admin_token,
        "write_key": s.write_key,
        "secret_key": s.secret_key,
    }
    assert os.access(tmp_path / "data", os.W_OK)
