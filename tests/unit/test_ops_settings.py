"""Settings of the operations edges (ISSUE 12, items 5 and 7): webhook secrets for a rotation,
the metrics listener's address, the cache period and the event payload retention."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.errors import ConfigError


def test_the_webhook_secret_variable_takes_a_comma_separated_list() -> None:
    settings = Settings.from_env({"PAYMENTS_STRIPE_WEBHOOK_SECRET": " whsec_old , whsec_new ,, "})
    assert settings.webhook_secrets == ("whsec_old", "whsec_new")
    assert Settings.from_env({"PAYMENTS_STRIPE_WEBHOOK_SECRET": "whsec_one"}).webhook_secrets == ("whsec_one",)
    assert Settings.from_env({}).webhook_secrets == ()
    assert "whsec_old" not in repr(settings)


@pytest.mark.parametrize(("value", "address"), [
    ("9100", "127.0.0.1:9100"), ("0.0.0.0:9100", "0.0.0.0:9100"), ("[::1]:9100", "::1:9100"),
])
def test_the_metrics_address_is_loopback_unless_a_host_is_named(value: str, address: str) -> None:
    assert Settings.from_env({"PAYMENTS_METRICS_ADDRESS": value}).metrics_address == address
    assert Settings.from_env({}).metrics_address is None


@pytest.mark.parametrize(("name", "value"), [
    ("PAYMENTS_METRICS_ADDRESS", "host:"), ("PAYMENTS_METRICS_ADDRESS", "70000"), ("PAYMENTS_METRICS_ADDRESS", ":80x"),
    ("PAYMENTS_OPS_CACHE_SECONDS", "-1"), ("PAYMENTS_OPS_CACHE_SECONDS", "soon"), ("PAYMENTS_OPS_CACHE_SECONDS", "301"),
    ("PAYMENTS_EVENT_PAYLOAD_RETENTION_DAYS", "ninety"),
])
def test_a_bad_operations_setting_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({name: value})
    assert refused.value.field == name


def test_the_operations_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.ops_cache_seconds, settings.event_payload_retention_days) == (5.0, 90)
    assert Settings.from_env({"PAYMENTS_OPS_CACHE_SECONDS": "0"}).ops_cache_seconds == 0
