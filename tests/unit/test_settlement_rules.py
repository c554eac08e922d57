"""SPEC 5 settlement arithmetic and its defaults, as pure rules."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from shared.config import Settings
from shared.errors import InvalidInput
from shared.settlements import Position, SettlementOrder, assess, bank_amount, default_reference_date, parse


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


def test_all_is_stored_as_all_and_rebuilt_from_it() -> None:
    order = parse({"request_id": "s1", "reference_date": "2026-10-31", "organisations": "all"}, Settings())
    assert (order.all_candidates, order.organisations) == (True, ())
    assert order.payload() == {"request_id": "s1", "reference_date": "2026-10-31", "organisations": "all"}
    assert SettlementOrder.from_payload(order.payload()) == order
    with pytest.raises(InvalidInput) as caught:
        parse({"request_id": "s1", "reference_date": "2026-10-31", "organisations": "ALL"}, Settings())
    assert caught.value.field == "organisations"


def _position(**changes: object) -> Position:
    base = {"org_id": "club", "name": "Club", "account_id": 1, "minimum": 100_00, "fee_percent": None,
            "at_end": 1000_00, "settled_since": 0, "latest_settled": None}
    return Position(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(("position", "override", "expected"), [
    (_position(), None, (1000_00, 900_00, 882_00, 18_00, None)),  # SPEC 5's worked example
    (_position(fee_percent=Decimal("1.50")), None, (1000_00, 900_00, 886_50, 13_50, None)),
    (_position(settled_since=400_00), None, (600_00, 500_00, 490_00, 10_00, None)),  # a later date paid 400.00
    (_position(at_end=50_00), None, (50_00, -50_00, 0, -50_00, None)),  # below the minimum: nothing
    (_position(), 300_00, (1000_00, 300_00, 294_00, 6_00, None)),
    (_position(), 900_01, (1000_00, 900_00, 0, 900_00, "override_amount: 900.01 is more than the net 900.00")),
    (_position(latest_settled=date(2026, 10, 31)), None,
     (1000_00, 900_00, 0, 900_00, "reference_date: organisation club is settled to 2026-10-31; 2026-10-31 is not after it")),
])
def test_assess_is_the_settlement_arithmetic(position: Position, override: int | None, expected: tuple) -> None:
    a = assess(position, date(2026, 10, 31), Decimal("2.00"), override)
    assert (a.gross, a.net, a.bank, a.fee, a.refusal) == expected
    assert a.settles == (a.refusal is None and a.net > 0)
