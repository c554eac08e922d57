"""Settings: every PAYMENTS_* variable read once into a typed, frozen object (CONTRACT, SPEC 2).

A bad value raises `ConfigError` naming the variable. Secrets are kept out of `repr`, so a
settings object can be logged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.errors import ConfigError, InvalidAmount
from shared.money import parse_cents

DEFAULT_DATABASE_URL = "sqlite:///var/payments.db"
DEFAULT_BROKER_URL = "sqla+sqlite:///var/broker.db"
DEFAULT_RATE_LIMIT = "100/second;3000/minute"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
DEFAULT_STRIPE_JS_URL = "https://js.stripe.com/v3/"
# PAYMENTS_API_TOKEN is the bootstrap client `admin` (every scope): refused when shorter.
MIN_API_TOKEN_LENGTH = 32


@dataclass(frozen=True)
class CallbackRoute:
    task: str
    queue: str


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    # `payments db upgrade` connects as the schema's owner (default: database_url) and, on
    # PostgreSQL, grants `database_runtime_role` (the role database_url logs in as) its
    # privileges (migration 0010). Kept out of repr: the owner's URL carries its password.
    migrate_database_url: str | None = field(default=None, repr=False)
    database_runtime_role: str | None = None
    broker_url: str = DEFAULT_BROKER_URL
    api_token: str | None = field(default=None, repr=False)
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    stripe_publishable_key: str | None = None
    # Pages for people (CONTRACT): links in e-mails and answers start with public_url; the
    # pages load Stripe.js from stripe_js_url (localstripe's stand-in in tests), the only
    # origin their Content-Security-Policy allows besides their own.
    public_url: str = DEFAULT_PUBLIC_URL
    stripe_js_url: str = DEFAULT_STRIPE_JS_URL
    callback_routes: Mapping[str, CallbackRoute] = field(default_factory=dict)
    notify_task: CallbackRoute | None = None
    smtp_url: str | None = field(default=None, repr=False)
    time_zone: ZoneInfo = ZoneInfo("Australia/Sydney")
    # SPEC 2, in cents.
    auto_topup_low_limit: int = 20_00
    auto_topup_default_amount: int = 100_00
    auto_topup_min_amount: int = 50_00
    auto_topup_max_amount: int = 2000_00
    # SPEC 5: no auto top-up charges more than this; a payment needing more goes to step 3.
    auto_topup_max_charge: int = 2000_00
    manual_topup_min: int = 50_00
    manual_topup_max_balance: int = 2000_00
    transfer_max: int = 2000_00
    settlement_fee_percent: Decimal = Decimal("2.00")
    card_refund_fee_percent: Decimal = Decimal("3.00")
    card_refund_window_days: int = 84
    # The largest single amount any request may carry (adjustments included).
    max_amount: int = 1_000_000_00
    # Outbox delivery: tries before a message is dead, and the first backoff in seconds.
    outbox_max_attempts: int = 8
    outbox_backoff_seconds: float = 2.0
    low_balance_warning_days: int = 7
    # A request still `queued` this long after it arrived has its task sent again.
    redrive_after_seconds: float = 60.0
    # Card payments still open this long are finished from Stripe's state (the reconciler).
    reconcile_after_seconds: float = 600.0
    # A payment short of funds while another auto top-up of its member is in flight waits for
    # that top-up's outcome at most this long; then it is decided without it (SPEC 3 step 3).
    topup_wait_seconds: float = 120.0
    # Auto top-up sweeps in one window share attempt keys: a member is charged once a window.
    sweep_window_seconds: float = 3600.0
    # Healing jobs (DESIGN invariant 12): each stuck row is tried on its own, at most this often
    # (a request redriven, a card attempt reconciled or expired), waiting `heal_backoff_seconds`
    # after a try, doubling up to `heal_backoff_max_seconds`; then it ends `failed` with its
    # callback. A job takes at most `heal_batch` rows a run, the longest due first.
    heal_max_tries: int = 12
    heal_backoff_seconds: float = 60.0
    heal_backoff_max_seconds: float = 3600.0
    heal_batch: int = 500
    # A Stripe event is redriven until it has been tried this often (each task run is one try).
    inbox_max_attempts: int = 50
    # The workers' inbox consumers (`worker.inbox`, PostgreSQL) look for new events this often
    # even without a NOTIFY: the bound on how late an event whose NOTIFY was lost is processed.
    inbox_poll_seconds: float = 1.0
    # `/metrics` is served only on this internal listener (`[host:]port`, host 127.0.0.1 unless
    # given), never on the public one; None: not served at all.
    metrics_address: str | None = None
    # `/metrics` and `/readyz` reuse their answer this long (per process), so a flood of calls
    # costs the database and the broker one check per period; 0 recomputes every time.
    ops_cache_seconds: float = 5.0
    # A processed or ignored Stripe event keeps its full payload this long; then only its audit
    # form (`shared.inbox.audit_form`) is kept.
    event_payload_retention_days: int = 90
    # Each client's requests to `/api/*` (flask-limiter's notation, e.g. "100/second;3000/minute");
    # None: no limit. Counted in `rate_limit_storage_url`: the broker's Redis when the broker is
    # Redis (shared by every webhook process), else per process.
    rate_limit: str | None = DEFAULT_RATE_LIMIT
    rate_limit_storage_url: str = field(default="memory://", repr=False)

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        """Every webhook signing secret accepted now: PAYMENTS_STRIPE_WEBHOOK_SECRET holds a
        comma-separated list, so a new secret can be added before Stripe switches to it and the
        old one removed after (rotation without refusing a delivery)."""
        return tuple(s for s in (part.strip() for part in (self.stripe_webhook_secret or "").split(",")) if s)

    @property
    def owner_database_url(self) -> str:
        """The URL migrations run with: the schema owner's."""
        return self.migrate_database_url or self.database_url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def cents(name: str, default: int) -> int:
            value = text(name)
            if value is None:
                return default
            try:
                return parse_cents(value, name, minimum=0)
            except InvalidAmount as exc:
                raise ConfigError(exc.message, field=name) from None

        def percent(name: str, default: Decimal) -> Decimal:
            value = text(name)
            if value is None:
                return default
            try:
                number = Decimal(value)
            except InvalidOperation:
                raise ConfigError(f"{name}: {value!r} is not a number", field=name) from None
            if not number.is_finite() or not 0 <= number <= 100:
                raise ConfigError(f"{name}: {value!r} is not a percentage 0..100", field=name)
            return number

        def whole(name: str, default: int) -> int:
            value = text(name)
            if value is None:
                return default
            if not (value.isascii() and value.isdigit()):
                raise ConfigError(f"{name}: {value!r} is not a whole number", field=name)
            return int(value)

        def seconds(name: str, default: float) -> float:
            value = text(name)
            if value is None:
                return default
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"{name}: {value!r} is not a number of seconds", field=name) from None
            if not 0 < number <= 3600:
                raise ConfigError(f"{name}: {value!r} is not between 0 and 3600 seconds", field=name)
            return number

        zone_name = text("PAYMENTS_TIME_ZONE") or "Australia/Sydney"
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"PAYMENTS_TIME_ZONE: {zone_name!r} is not a known time zone",
                field="PAYMENTS_TIME_ZONE",
            ) from None

        notify = text("PAYMENTS_NOTIFY_TASK")
        api_token = text("PAYMENTS_API_TOKEN")
        if api_token is not None and len(api_token) < MIN_API_TOKEN_LENGTH:
            # The bootstrap client has every scope: a guessable token would open everything.
            raise ConfigError(
                f"PAYMENTS_API_TOKEN: shorter than {MIN_API_TOKEN_LENGTH} characters; make one with "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`",
                field="PAYMENTS_API_TOKEN",
            )
        settings = cls(
            database_url=text("PAYMENTS_DATABASE_URL") or DEFAULT_DATABASE_URL,
            migrate_database_url=text("PAYMENTS_MIGRATE_DATABASE_URL"),
            database_runtime_role=role_name("PAYMENTS_DATABASE_RUNTIME_ROLE", text("PAYMENTS_DATABASE_RUNTIME_ROLE")),
            broker_url=text("PAYMENTS_BROKER_URL") or DEFAULT_BROKER_URL,
            api_token=api_token,
            stripe_api_key=text("PAYMENTS_STRIPE_API_KEY"),
            stripe_api_base=text("PAYMENTS_STRIPE_API_BASE"),
            stripe_webhook_secret=text("PAYMENTS_STRIPE_WEBHOOK_SECRET"),
            stripe_publishable_key=text("PAYMENTS_STRIPE_PUBLISHABLE_KEY"),
            public_url=(text("PAYMENTS_PUBLIC_URL") or DEFAULT_PUBLIC_URL).rstrip("/"),
            stripe_js_url=text("PAYMENTS_STRIPE_JS_URL") or DEFAULT_STRIPE_JS_URL,
            callback_routes=parse_routes(text("PAYMENTS_CALLBACK_ROUTES") or ""),
            notify_task=parse_route("PAYMENTS_NOTIFY_TASK", notify) if notify else None,
            smtp_url=text("PAYMENTS_SMTP_URL"),
            time_zone=zone,
            auto_topup_low_limit=cents("PAYMENTS_AUTO_TOPUP_LOW_LIMIT", 20_00),
            auto_topup_default_amount=cents("PAYMENTS_AUTO_TOPUP_DEFAULT_AMOUNT", 100_00),
            auto_topup_min_amount=cents("PAYMENTS_AUTO_TOPUP_MIN_AMOUNT", 50_00),
            auto_topup_max_amount=cents("PAYMENTS_AUTO_TOPUP_MAX_AMOUNT", 2000_00),
            auto_topup_max_charge=cents("PAYMENTS_AUTO_TOPUP_MAX_CHARGE", 2000_00),
            manual_topup_min=cents("PAYMENTS_MANUAL_TOPUP_MIN", 50_00),
            manual_topup_max_balance=cents("PAYMENTS_MANUAL_TOPUP_MAX_BALANCE", 2000_00),
            transfer_max=cents("PAYMENTS_TRANSFER_MAX", 2000_00),
            settlement_fee_percent=percent("PAYMENTS_SETTLEMENT_FEE_PERCENT", Decimal("2.00")),
            card_refund_fee_percent=percent("PAYMENTS_CARD_REFUND_FEE_PERCENT", Decimal("3.00")),
            card_refund_window_days=whole("PAYMENTS_CARD_REFUND_WINDOW_DAYS", 84),
            max_amount=cents("PAYMENTS_MAX_AMOUNT", 1_000_000_00),
            outbox_max_attempts=max(1, whole("PAYMENTS_OUTBOX_MAX_ATTEMPTS", 8)),
            outbox_backoff_seconds=seconds("PAYMENTS_OUTBOX_BACKOFF_SECONDS", 2.0),
            low_balance_warning_days=whole("PAYMENTS_LOW_BALANCE_WARNING_DAYS", 7),
            redrive_after_seconds=seconds("PAYMENTS_REDRIVE_AFTER_SECONDS", 60.0),
            reconcile_after_seconds=seconds("PAYMENTS_RECONCILE_AFTER_SECONDS", 600.0),
            topup_wait_seconds=seconds("PAYMENTS_TOPUP_WAIT_SECONDS", 120.0),
            sweep_window_seconds=seconds("PAYMENTS_SWEEP_WINDOW_SECONDS", 3600.0),
            heal_max_tries=max(1, whole("PAYMENTS_HEAL_MAX_TRIES", 12)),
            heal_backoff_seconds=seconds("PAYMENTS_HEAL_BACKOFF_SECONDS", 60.0),
            heal_backoff_max_seconds=seconds("PAYMENTS_HEAL_BACKOFF_MAX_SECONDS", 3600.0),
            heal_batch=max(1, whole("PAYMENTS_HEAL_BATCH", 500)),
            inbox_max_attempts=max(1, whole("PAYMENTS_INBOX_MAX_ATTEMPTS", 50)),
            inbox_poll_seconds=max(0.05, seconds("PAYMENTS_INBOX_POLL_SECONDS", 1.0)),
            metrics_address=_address("PAYMENTS_METRICS_ADDRESS", text("PAYMENTS_METRICS_ADDRESS")),
            ops_cache_seconds=_cache_seconds(text("PAYMENTS_OPS_CACHE_SECONDS")),
            event_payload_retention_days=max(1, whole("PAYMENTS_EVENT_PAYLOAD_RETENTION_DAYS", 90)),
            rate_limit=_rate_limit(text("PAYMENTS_RATE_LIMIT")),
            rate_limit_storage_url=text("PAYMENTS_RATE_LIMIT_STORAGE_URL") or _limit_storage(
                text("PAYMENTS_BROKER_URL") or DEFAULT_BROKER_URL),
        )
        if not settings.auto_topup_min_amount <= settings.auto_topup_default_amount <= settings.auto_topup_max_amount:
            raise ConfigError(
                "PAYMENTS_AUTO_TOPUP_DEFAULT_AMOUNT must lie between "
                "PAYMENTS_AUTO_TOPUP_MIN_AMOUNT and PAYMENTS_AUTO_TOPUP_MAX_AMOUNT",
                field="PAYMENTS_AUTO_TOPUP_DEFAULT_AMOUNT",
            )
        if settings.auto_topup_max_charge < settings.auto_topup_min_amount:
            # Below the smallest auto amount no auto top-up could ever be charged.
            raise ConfigError(
                "PAYMENTS_AUTO_TOPUP_MAX_CHARGE must be at least PAYMENTS_AUTO_TOPUP_MIN_AMOUNT",
                field="PAYMENTS_AUTO_TOPUP_MAX_CHARGE",
            )
        return settings


def _rate_limit(value: str | None) -> str | None:
    """PAYMENTS_RATE_LIMIT: unset is the default, `off` is no limit, else limits' notation."""
    from limits import parse_many

    if value is None:
        return DEFAULT_RATE_LIMIT
    if value.strip().lower() == "off":
        return None
    try:
        parse_many(value)
    except ValueError:
        raise ConfigError(f"PAYMENTS_RATE_LIMIT: {value!r} is not a rate such as '100/second;3000/minute' "
                          "(or 'off')", field="PAYMENTS_RATE_LIMIT") from None
    return value.strip()


def is_redis(url: str) -> bool:
    """Whether a broker (or storage) URL is Redis's, rather than the embedded SQLite broker's."""
    return url.startswith(("redis://", "rediss://"))


def _limit_storage(broker_url: str) -> str:
    return broker_url if is_redis(broker_url) else "memory://"


def parse_address(name: str, value: str) -> tuple[str, int]:
    """`host:port` or `port` (host 127.0.0.1: internal unless an operator says otherwise)."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536 or not host:
        raise ConfigError(f"{name}: {value!r} is not of the form [host:]port", field=name)
    return host, int(port)


def _address(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    host, port = parse_address(name, value)
    return f"{host}:{port}"


def _cache_seconds(value: str | None) -> float:
    name = "PAYMENTS_OPS_CACHE_SECONDS"
    if value is None:
        return 5.0
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a number of seconds", field=name) from None
    if not 0 <= number <= 300:
        raise ConfigError(f"{name}: {value!r} is not between 0 and 300 seconds", field=name)
    return number


def role_name(name: str, value: str | None) -> str | None:
    """A PostgreSQL role name as written unquoted (lower case, digits, `_`, at most 63)."""
    if value is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
        raise ConfigError(
            f"{name}: {value!r} is not a plain role name (lower-case letters, digits and _)", field=name
        )
    return value


def parse_route(name: str, value: str) -> CallbackRoute:
    """Parse `task.name@queue` (queue defaults to `celery`)."""
    task, _, queue = value.strip().partition("@")
    task, queue = task.strip(), (queue.strip() or "celery")
    if not task or any(c.isspace() for c in task + queue):
        raise ConfigError(f"{name}: {value!r} is not of the form task.name@queue", field=name)
    return CallbackRoute(task=task, queue=queue)


def parse_routes(value: str) -> dict[str, CallbackRoute]:
    """Parse `CODE=task.name@queue,CODE2=...` into a mapping by route code."""
    routes: dict[str, CallbackRoute] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        code, sep, target = item.partition("=")
        if not sep or not code.strip():
            raise ConfigError(
                f"PAYMENTS_CALLBACK_ROUTES: {item!r} is not of the form CODE=task.name@queue",
                field="PAYMENTS_CALLBACK_ROUTES",
            )
        routes[code.strip()] = parse_route("PAYMENTS_CALLBACK_ROUTES", target)
    return routes
