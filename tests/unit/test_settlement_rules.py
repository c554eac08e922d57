"""SPEC 5 settlement arithmetic and its defaults, as pure rules."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from shared.config import Settings
from shared.errors import InvalidInput
from shared.settlements import bank_amount, default_reference_date, parse


@pytest.mark.parametrize(
    ("net", "fee", "bank"),
    [
        (900_00, Decimal("2.00"), 882_00),  # SPEC's worked example: fee 18.00
        (1_00, Decimal("2.00"), 98),
        (25, Decimal("2.00"), 25),  # 24.5 cents rounds half up
        (75, Decimal("2.00"), 74),  # 73.5 cents rounds half up
        (100_00, Decimal("0"), 100_00),
        (100_00, Decimal("100"), 0),
        (333_33, Decimal("1.75"), 327_50),  # 327.4992... -> 327.50
    ],
)
def test_the_bank_amount_is_net_less_the_fee_rounded_half_up_to_the_cent(net: int, fee: Decimal, bank: int) -> None:
    assert bank_amount(net, fee) == bank


@pytest.mark.parametrize(
    ("today", "reference"),
    [(date(2026, 11, 26), date(2026, 10, 31)), (date(2026, 3, 1), date(2026, 2, 28)), (date(2026, 1, 15), date(2025, 12, 31))],
)
def test_the_default_reference_date_is_the_last_day_of_last_month(today: date, reference: date) -> None:
    assert default_reference_date(today) == reference


def test_the_reference_date_defaults_in_local_time_and_must_have_ended() -> None:
    # 2026-11-30 14:00 UTC is already 1 December in Sydney.
    now = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
    order = parse({"request_id": "s1", "organisations": [{"organisation_id": "club"}]}, Settings(), now=now)
    assert order.reference_date == date(2026, 11, 30)
    with pytest.raises(InvalidInput, match="reference_date: 2026-12-01 has not ended yet") as caught:
        parse({"request_id": "s1", "reference_date": "2026-12-01", "organisations": [{"organisation_id": "c"}]},
              Settings(), now=now)
    assert caught.value.field == "reference_date"


@pytest.mark.parametrize(
    ("organisations", "field"),
    [
        (None, "organisations"),
        ([], "organisations"),
        (["club"], "organisations"),
        ([{"organisation_id": "club"}, {"organisation_id": "club"}], "organisations"),
        ([{"organisation_id": "club", "override_amount": "0"}], "override_amount"),
        ([{"organisation_id": "club", "override_amount": 12.5}], "override_amount"),
        ([{"organisation_id": ""}], "organisation_id"),
    ],
)
def test_a_bad_settlement_request_names_the_field(organisations: object, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse({"request_id": "s1", "reference_date": "2026-10-31", "organisations": organisations}, Settings())
    assert caught.value.field == field
