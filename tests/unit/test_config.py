"""shared.config: PAYMENTS_* read once; a bad value names its variable; secrets never print."""

from decimal import Decimal

import pytest

from shared import healing
from shared.config import CallbackRoute, Settings
from shared.errors import ConfigError


def test_defaults_are_the_embedded_stack_and_the_spec_settings() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///var/payments.db"
    assert settings.broker_url == "sqla+sqlite:///var/broker.db"
    assert settings.api_token is None
    assert str(settings.time_zone) == "Australia/Sydney"
    assert (settings.auto_topup_low_limit, settings.auto_topup_default_amount) == (20_00, 100_00)
    assert (settings.auto_topup_min_amount, settings.auto_topup_max_amount) == (50_00, 2000_00)
    assert (settings.manual_topup_min, settings.manual_topup_max_balance) == (50_00, 2000_00)
    assert settings.transfer_max == 2000_00
    assert settings.auto_topup_max_charge == 2000_00
    assert settings.settlement_fee_percent == Decimal("2.00")
    assert (settings.card_refund_fee_percent, settings.card_refund_window_days) == (Decimal("3.00"), 84)


def test_variables_override_the_defaults() -> None:
    settings = Settings.from_env(
        {
            "PAYMENTS_AUTO_TOPUP_LOW_LIMIT": "25.50",
            "PAYMENTS_SETTLEMENT_FEE_PERCENT": "1.75",
            "PAYMENTS_TIME_ZONE": "Australia/Perth",
            "PAYMENTS_CALLBACK_ROUTES": "EVT=events.paid@events, CLB=clubs.paid",
            "PAYMENTS_NOTIFY_TASK": "notify.send@mail",
        }
    )
    assert settings.auto_topup_low_limit == 25_50
    assert settings.settlement_fee_percent == Decimal("1.75")
    assert str(settings.time_zone) == "Australia/Perth"
    assert settings.callback_routes == {
        "EVT": CallbackRoute("events.paid", "events"),
        "CLB": CallbackRoute("clubs.paid", "celery"),
    }
    assert settings.notify_task == CallbackRoute("notify.send", "mail")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PAYMENTS_AUTO_TOPUP_LOW_LIMIT", "twenty"),
        ("PAYMENTS_AUTO_TOPUP_LOW_LIMIT", "20.001"),
        ("PAYMENTS_TRANSFER_MAX", "-1"),
        ("PAYMENTS_SETTLEMENT_FEE_PERCENT", "101"),
        ("PAYMENTS_SETTLEMENT_FEE_PERCENT", "NaN"),
        ("PAYMENTS_TIME_ZONE", "Mars/Olympus"),
        ("PAYMENTS_CARD_REFUND_WINDOW_DAYS", "12w"),
        ("PAYMENTS_CALLBACK_ROUTES", "no-equals-sign"),
        ("PAYMENTS_CALLBACK_ROUTES", "X=bad task@q"),
        ("PAYMENTS_AUTO_TOPUP_DEFAULT_AMOUNT", "10.00"),
        ("PAYMENTS_AUTO_TOPUP_MAX_CHARGE", "49.99"),
        ("PAYMENTS_AUTO_TOPUP_MAX_CHARGE", "lots"),
        ("PAYMENTS_HEAL_MAX_TRIES", "many"),
        ("PAYMENTS_HEAL_BACKOFF_SECONDS", "0"),
        ("PAYMENTS_HEAL_BACKOFF_MAX_SECONDS", "a day"),
        ("PAYMENTS_HEAL_BATCH", "-5"),
        ("PAYMENTS_INBOX_MAX_ATTEMPTS", "1.5"),
        ("PAYMENTS_CARD_REFUND_WINDOW_DAYS", "8²"),  # a digit to str.isdigit, not to int()
        ("PAYMENTS_OUTBOX_MAX_ATTEMPTS", "³"),
        ("PAYMENTS_METRICS_ADDRESS", "127.0.0.1:90²"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert caught.value.field == name
    assert name in caught.value.message


def test_secrets_never_appear_in_the_settings_repr() -> None:
    settings = Settings.from_env(
        {
            "PAYMENTS_API_TOKEN": "tok-123-secret-long-enough-for-the-bootstrap",
            "PAYMENTS_STRIPE_API_KEY": "sk_test_secret",
            "PAYMENTS_STRIPE_WEBHOOK_SECRET": "whsec_secret",
            "PAYMENTS_SMTP_URL": "smtp://user:pw-secret@mail",
        }
    )
    shown = repr(settings)
    for secret in ("tok-123-secret-long-enough-for-the-bootstrap", "sk_test_secret", "whsec_secret", "pw-secret"):
        assert secret not in shown


def test_healing_limits_default_to_twelve_tries_backed_off_from_a_minute_to_an_hour() -> None:
    settings = Settings.from_env({})
    assert (settings.heal_max_tries, settings.heal_batch, settings.inbox_max_attempts) == (12, 500, 50)
    assert [healing.backoff(tries, settings).total_seconds() for tries in (1, 2, 3, 6, 7, 12)] == [
        60, 120, 240, 1920, 3600, 3600]
    changed = Settings.from_env({"PAYMENTS_HEAL_MAX_TRIES": "5", "PAYMENTS_HEAL_BACKOFF_SECONDS": "2",
                                 "PAYMENTS_HEAL_BACKOFF_MAX_SECONDS": "10", "PAYMENTS_HEAL_BATCH": "50"})
    assert (changed.heal_max_tries, changed.heal_batch) == (5, 50)
    assert [healing.backoff(tries, changed).total_seconds() for tries in (1, 3, 4, 40)] == [2, 8, 10, 10]


@pytest.mark.parametrize("token", ["s3cr3t", "dev-token", "x" * 31, " " + "y" * 31 + " "])
def test_a_bootstrap_token_shorter_than_32_characters_is_refused_without_showing_it(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"PAYMENTS_API_TOKEN": token})
    assert caught.value.field == "PAYMENTS_API_TOKEN"
    assert token.strip() not in caught.value.message


def test_a_bootstrap_token_of_32_characters_is_accepted() -> None:
    assert Settings.from_env({"PAYMENTS_API_TOKEN": "z" * 32}).api_token == "z" * 32


def test_migrations_run_with_the_owners_url_when_given_and_else_with_the_service_url() -> None:
    plain = Settings.from_env({"PAYMENTS_DATABASE_URL": "postgresql://svc:pw@db/payments"})
    assert (plain.owner_database_url, plain.database_runtime_role) == ("postgresql://svc:pw@db/payments", None)
    split = Settings.from_env({"PAYMENTS_DATABASE_URL": "postgresql://payments_runtime:pw@db/payments",
                               "PAYMENTS_MIGRATE_DATABASE_URL": "postgresql://owner:owner-secret@db/payments",
                               "PAYMENTS_DATABASE_RUNTIME_ROLE": "payments_runtime"})
    assert split.owner_database_url == "postgresql://owner:owner-secret@db/payments"
    assert split.database_runtime_role == "payments_runtime"
    assert "owner-secret" not in repr(split)


@pytest.mark.parametrize("role", ["Payments", "payments-runtime", "x; DROP TABLE postings", "r" * 64, "1role"])
def test_a_runtime_role_that_is_not_a_plain_role_name_is_refused(role: str) -> None:
    with pytest.raises(ConfigError, match="PAYMENTS_DATABASE_RUNTIME_ROLE"):
        Settings.from_env({"PAYMENTS_DATABASE_RUNTIME_ROLE": role})
