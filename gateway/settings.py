"""Settings: one frozen, typed object built once from the environment.

Nothing else in the package reads ``os.environ``. Every ``TTGW_*`` variable of the design is parsed
and checked here, each value by its check in :mod:`gateway.config`; a bad value raises
:class:`~gateway.config.SettingsError` naming the variable, and the CLI turns that into a one-line
message and exit status 2. The integrations file ``TTGW_CONFIG`` names is read by
:mod:`gateway.config_file`. Secrets not given are generated once and kept in the data dir.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.config import (
    Integration,
    IPNetwork,
    SettingsError,
    ShopWebhooks,
    _api_url,
    _choice,
    _cookie_domain,
    _decimal,
    _integer,
    _networks,
    _origin,
    _origins,
    _pixel,
    _port,
    _redis_url,
    _region,
    _token,
    _topics,
)
from gateway.config_file import config_from_toml
from gateway.store import keys

DEFAULT_TIKTOK_API_URL = "https://business-api.tiktok.com/open_api/v1.3/"
DEFAULT_TRUSTED_PROXIES = "127.0.0.0/8,::1/128"
SECRETS_FILE = "secrets.json"
SANDBOX_PIXEL_CODE = "SANDBOX0000000000000"

LOG_LEVELS = ("debug", "info", "warning", "error")
ACCESS_LOG_MODES = ("all", "errors", "off")  # errors: status >= 400 and 1 in 100 of the rest
REDIS_FSYNC = ("everysec", "always")  # the embedded Redis's appendfsync
PURCHASE_EVENTS = ("Purchase", "CompletePayment", "PlaceAnOrder")

_TOKEN_MIN_CHARS = 16
_SECRET_KEY_MIN_CHARS = 32


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the gateway; build it with :meth:`from_env`."""

    redis_url: str | None
    data_dir: Path
    host: str
    port: int
    integrations: tuple[Integration, ...]
    tiktok_api_url: str
    admin_token: str = field(repr=False)
    write_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    cookie_domain: str | None
    allowed_origins: tuple[str, ...]
    trusted_proxies: tuple[IPNetwork, ...]
    config_path: Path | None
    log_level: str
    redis_fsync: str = "everysec"
    access_log: str = "all"
    default_phone_region: str | None = None  # for integrations without their own
    purchase_event: str = "Purchase"
    queue_max_events: int = 1_000_000
    event_max_age_s: int = keys.EVENT_MAX_AGE_S
    retry_base_s: float = keys.RETRY_BASE_S
    retry_cap_s: float = keys.RETRY_CAP_S
    dead_letter_after_s: int = keys.DEAD_LETTER_HORIZON_S
    receipt_ttl_s: int = keys.RECEIPT_TTL_S
    session_ttl_s: int = keys.VISITOR_TTL_S  # visitors and links, after their last activity
    click_ttl_s: int = keys.CLICK_TTL_S  # the longest click-through attribution window served
    rate_limit_rps: float = keys.RATE_LIMIT_REQUESTS_PER_S
    rate_limit_burst: int = keys.RATE_LIMIT_BURST
    delivery_concurrency: int = keys.DELIVERY_CONCURRENCY
    reclaim_idle_s: float = keys.RECLAIM_IDLE_S
    batch_max_events: int = keys.BATCH_MAX_EVENTS
    paused_probe_s: float = keys.PAUSED_PROBE_INTERVAL_S
    pixel_origin: str = "https://analytics.tiktok.com"
    coverage_drop_alert: float = 0.3
    # order webhooks (DESIGN §8): the shared secrets, and those of TTGW_CONFIG's integrations
    shopify_webhook_secret: str | None = field(default=None, repr=False)
    shopify_topics: tuple[str, ...] = ("orders/create",)
    woocommerce_webhook_secret: str | None = field(default=None, repr=False)
    webhooks: tuple[ShopWebhooks, ...] = ()
    # Where each secret came from on this start: generated now (and written to the data dir's
    # secrets file), read from that file, else (in neither) given by the environment.
    generated_secrets: tuple[str, ...] = ()
    stored_secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.receipt_ttl_s < max(self.dead_letter_after_s, keys.IDEMPOTENCY_TTL_S):
            raise SettingsError(
                "TTGW_RECEIPT_TTL_S",
                f"must be at least {keys.IDEMPOTENCY_TTL_S} (TikTok's 48 h dedup window: the "
                "receipt is the idempotency marker) and at least TTGW_DEAD_LETTER_AFTER_S "
                "(a receipt must outlive its event)",
            )
        if self.session_ttl_s < self.click_ttl_s:
            raise SettingsError(
                "TTGW_SESSION_TTL_S",
                f"must be at least TTGW_CLICK_TTL_S ({self.click_ttl_s}): a click lives in its "
                "visitor's record",
            )

    @property
    def sandbox(self) -> bool:
        """True when no pixel is configured: the built-in sandbox records events, none are sent."""
        return not any(i.enabled for i in self.integrations)

    @property
    def secrets_file(self) -> Path:
        """Where generated secrets are kept (mode 0600)."""
        return self.data_dir / SECRETS_FILE

    @property
    def embedded_redis(self) -> bool:
        """True when the gateway must start its own Redis under ``data_dir``."""
        return self.redis_url is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Check every ``TTGW_*`` variable; generate missing secrets once, in the data dir."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None:
                return None
            value = value.strip()
            return value or None

        data_dir = _data_dir(get("TTGW_DATA_DIR") or ".ttgw")
        config_path = _config_path(get("TTGW_CONFIG"))
        integrations, webhooks = _integrations(
            get("TTGW_PIXEL_CODE"),
            get("TTGW_ACCESS_TOKEN"),
            get("TTGW_TEST_EVENT_CODE"),
            config_path,
        )
        given = {
            "admin_token": _token("TTGW_ADMIN_TOKEN", get("TTGW_ADMIN_TOKEN"), _TOKEN_MIN_CHARS),
            "write_key": _token("TTGW_WRITE_KEY", get("TTGW_WRITE_KEY"), _TOKEN_MIN_CHARS),
            "secret_key": _token("TTGW_SECRET_KEY", get("TTGW_SECRET_KEY"), _SECRET_KEY_MIN_CHARS),
        }
        resolved, generated, stored = _resolve_secrets(data_dir, given)
        return cls(
            redis_url=_redis_url(get("TTGW_REDIS_URL")),
            data_dir=data_dir,
            host=get("TTGW_HOST") or "127.0.0.1",
            port=_port("TTGW_PORT", get("TTGW_PORT") or "8080"),
            integrations=integrations,
            tiktok_api_url=_api_url(get("TTGW_TIKTOK_API_URL") or DEFAULT_TIKTOK_API_URL),
            admin_token=resolved["admin_token"],
            write_key=resolved["write_key"],
            secret_key=resolved["secret_key"],
            cookie_domain=_cookie_domain(get("TTGW_COOKIE_DOMAIN")),
            allowed_origins=_origins(get("TTGW_ALLOWED_ORIGINS")),
            trusted_proxies=_networks(
                "TTGW_TRUSTED_PROXIES", env.get("TTGW_TRUSTED_PROXIES", DEFAULT_TRUSTED_PROXIES)
            ),
            config_path=config_path,
            log_level=_choice(
                "TTGW_LOG_LEVEL", (get("TTGW_LOG_LEVEL") or "info").lower(), LOG_LEVELS
            ),
            access_log=_choice(
                "TTGW_ACCESS_LOG", (get("TTGW_ACCESS_LOG") or "all").lower(), ACCESS_LOG_MODES
            ),
            default_phone_region=_phone_region(get("TTGW_DEFAULT_PHONE_REGION")),
            redis_fsync=_choice(
                "TTGW_REDIS_FSYNC", (get("TTGW_REDIS_FSYNC") or "everysec").lower(), REDIS_FSYNC
            ),
            purchase_event=_choice(
                "TTGW_PURCHASE_EVENT", get("TTGW_PURCHASE_EVENT") or "Purchase", PURCHASE_EVENTS
            ),
            queue_max_events=_integer(
                "TTGW_QUEUE_MAX_EVENTS", get("TTGW_QUEUE_MAX_EVENTS") or "1000000", 0, 10**9
            ),
            event_max_age_s=_integer(
                "TTGW_EVENT_MAX_AGE_S",
                get("TTGW_EVENT_MAX_AGE_S") or str(keys.EVENT_MAX_AGE_S),
                60,
                28 * 86400,
            ),
            retry_base_s=_decimal(
                "TTGW_RETRY_BASE_S", get("TTGW_RETRY_BASE_S") or str(keys.RETRY_BASE_S), 0.01, 3600
            ),
            retry_cap_s=_decimal(
                "TTGW_RETRY_CAP_S", get("TTGW_RETRY_CAP_S") or str(keys.RETRY_CAP_S), 0.01, 6 * 3600
            ),
            dead_letter_after_s=_integer(
                "TTGW_DEAD_LETTER_AFTER_S",
                get("TTGW_DEAD_LETTER_AFTER_S") or str(keys.DEAD_LETTER_HORIZON_S),
                1,
                47 * 3600,
            ),
            receipt_ttl_s=_integer(
                "TTGW_RECEIPT_TTL_S",
                get("TTGW_RECEIPT_TTL_S") or str(keys.RECEIPT_TTL_S),
                3600,
                400 * 86400,
            ),
            session_ttl_s=_integer(
                "TTGW_SESSION_TTL_S",
                get("TTGW_SESSION_TTL_S") or str(keys.VISITOR_TTL_S),
                86400,
                400 * 86400,
            ),
            click_ttl_s=_integer(
                "TTGW_CLICK_TTL_S",
                get("TTGW_CLICK_TTL_S") or str(keys.CLICK_TTL_S),
                86400,
                28 * 86400,
            ),
            rate_limit_rps=_decimal(
                "TTGW_RATE_LIMIT_RPS",
                get("TTGW_RATE_LIMIT_RPS") or str(keys.RATE_LIMIT_REQUESTS_PER_S),
                0.01,
                1000,
            ),
            rate_limit_burst=_integer(
                "TTGW_RATE_LIMIT_BURST",
                get("TTGW_RATE_LIMIT_BURST") or str(keys.RATE_LIMIT_BURST),
                1,
                1000,
            ),
            delivery_concurrency=_integer(
                "TTGW_DELIVERY_CONCURRENCY",
                get("TTGW_DELIVERY_CONCURRENCY") or str(keys.DELIVERY_CONCURRENCY),
                1,
                64,
            ),
            reclaim_idle_s=_decimal(
                "TTGW_RECLAIM_IDLE_S",
                get("TTGW_RECLAIM_IDLE_S") or str(keys.RECLAIM_IDLE_S),
                1,
                3600,
            ),
            batch_max_events=_integer(
                "TTGW_BATCH_MAX_EVENTS",
                get("TTGW_BATCH_MAX_EVENTS") or str(keys.BATCH_MAX_EVENTS),
                1,
                1000,
            ),
            paused_probe_s=_decimal(
                "TTGW_PAUSED_PROBE_S",
                get("TTGW_PAUSED_PROBE_S") or str(keys.PAUSED_PROBE_INTERVAL_S),
                0.1,
                3600,
            ),
            pixel_origin=_origin(
                "TTGW_PIXEL_ORIGIN", get("TTGW_PIXEL_ORIGIN") or "https://analytics.tiktok.com"
            ),
            coverage_drop_alert=_decimal(
                "TTGW_COVERAGE_DROP_ALERT", get("TTGW_COVERAGE_DROP_ALERT") or "0.3", 0.01, 1
            ),
            shopify_webhook_secret=get("TTGW_SHOPIFY_WEBHOOK_SECRET"),
            shopify_topics=_topics(
                "TTGW_SHOPIFY_TOPICS", get("TTGW_SHOPIFY_TOPICS") or "orders/create"
            ),
            woocommerce_webhook_secret=get("TTGW_WOOCOMMERCE_WEBHOOK_SECRET"),
            webhooks=webhooks,
            generated_secrets=generated,
            stored_secrets=stored,
        )


def _data_dir(raw: str) -> Path:
    path = Path(raw).expanduser()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            "TTGW_DATA_DIR", f"cannot create {str(path)!r}: {exc.strerror}"
        ) from exc
    if not os.access(path, os.W_OK):
        raise SettingsError("TTGW_DATA_DIR", f"{str(path)!r} is not writable")
    return path.resolve()


def _config_path(raw: str | None) -> Path | None:
    if raw is None:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise SettingsError("TTGW_CONFIG", f"no such file: {raw!r}")
    return path.resolve()


def _phone_region(raw: str | None) -> str | None:
    return _region("TTGW_DEFAULT_PHONE_REGION", raw)


def _integrations(
    pixel: str | None, token: str | None, test_code: str | None, config_path: Path | None
) -> tuple[tuple[Integration, ...], tuple[ShopWebhooks, ...]]:
    found: list[Integration] = []
    webhooks: list[ShopWebhooks] = []
    if pixel is not None or token is not None:
        if pixel is None:
            raise SettingsError("TTGW_PIXEL_CODE", "is required when TTGW_ACCESS_TOKEN is set")
        if token is None:
            raise SettingsError("TTGW_ACCESS_TOKEN", "is required when TTGW_PIXEL_CODE is set")
        found.append(
            Integration(
                name="default",
                pixel_code=_pixel("TTGW_PIXEL_CODE", pixel),
                access_token=token,
                test_event_code=test_code,
            )
        )
    elif test_code is not None:
        raise SettingsError("TTGW_TEST_EVENT_CODE", "needs TTGW_PIXEL_CODE and TTGW_ACCESS_TOKEN")
    if config_path is not None:
        from_file, webhooks = config_from_toml(config_path)
        found.extend(from_file)
    pixels = [i.pixel_code for i in found]
    duplicated = sorted({p for p in pixels if pixels.count(p) > 1})
    if duplicated:
        raise SettingsError("TTGW_CONFIG", f"pixel configured twice: {', '.join(duplicated)}")
    return tuple(found), tuple(webhooks)


_SECRET_FACTORIES = {
    "admin_token": lambda: "tta_" + secrets.token_urlsafe(32),
    "write_key": lambda: "ttw_" + secrets.token_urlsafe(32),
    "secret_key": lambda: secrets.token_hex(32),
}


def _resolve_secrets(
    data_dir: Path, given: Mapping[str, str | None]
) -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]:
    """Return every secret — the given ones, else those kept in the data dir, else new ones — with
    the names of those generated now and of those read from the data dir.

    Generated secrets are written once (mode 0600) under an exclusive lock, so a web process and
    a worker started together agree on the same values.
    """
    missing = [name for name, value in given.items() if value is None]
    if not missing:
        return {k: v for k, v in given.items() if v is not None}, (), ()
    path = data_dir / SECRETS_FILE
    try:
        with open(data_dir / ".secrets.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = _read_secrets(path)
            new = [name for name in missing if not isinstance(stored.get(name), str)]
            for name in new:
                stored[name] = _SECRET_FACTORIES[name]()
            if new:
                tmp = path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(orjson.dumps(stored, option=orjson.OPT_INDENT_2))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
    except OSError as exc:
        raise SettingsError(
            "TTGW_DATA_DIR", f"cannot keep secrets in {str(path)!r}: {exc}"
        ) from exc
    resolved = {
        name: value if value is not None else str(stored[name]) for name, value in given.items()
    }
    return resolved, tuple(new), tuple(name for name in missing if name not in new)


def _read_secrets(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        stored = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SettingsError(
            "TTGW_DATA_DIR", f"{str(path)!r} is corrupt; fix or remove it"
        ) from None
    if not isinstance(stored, dict):
        raise SettingsError("TTGW_DATA_DIR", f"{str(path)!r} is corrupt; fix or remove it")
    return stored
