"""SPEC 4.2 (the top-up amount), SPEC 5 (manual top-up limits, the card-refund fee) as pure rules."""

from decimal import Decimal

import pytest

from shared.config import Settings
from shared.errors import InvalidInput
from shared.money import parse_cents
from shared.refunds import fee
from shared.topups import auto_topup_charge, check_manual_amount, topup_amount

EXAMPLES = [  # SPEC 4.2: (U, B, A) -> (T, final balance)
    (("50", "100", "120"), ("120", "100")),
    (("50", "10", "45"), ("100", "65")),
    (("50", "0", "80"), ("100", "20")),
    (("100", "0", "100"), ("200", "100")),
    (("50", "5", "200"), ("250", "55")),
    (("100", "30", "50"), ("100", "80")),
    (("50", "19.99", "60"), ("100", "59.99")),
    (("100", "415.55", "1000"), ("1000", "415.55")),
]


@pytest.mark.parametrize(("given", "expected"), EXAMPLES, ids=[",".join(g) for g, _ in EXAMPLES])
def test_the_top_up_amount_follows_the_spec_examples(given: tuple, expected: tuple) -> None:
    auto, balance, payment = (parse_cents(v) for v in given)
    top_up, final = (parse_cents(v) for v in expected)
    assert topup_amount(auto_amount=auto, balance=balance, payment=payment, low_limit=20_00) == top_up
    assert balance + top_up - payment == final


def test_a_top_up_with_no_payment_brings_the_balance_to_the_low_limit_in_whole_auto_amounts() -> None:
    assert topup_amount(auto_amount=50_00, balance=0, payment=0, low_limit=20_00) == 50_00
    assert topup_amount(auto_amount=50_00, balance=-40_00, payment=0, low_limit=20_00) == 100_00


@pytest.mark.parametrize(
    ("amount", "balance", "problem"),
    [(49_99, 0, "below the minimum top-up 50.00"), (50_00, 1950_01, "above 2000.00")],
)
def test_manual_top_up_limits_name_the_amount(amount: int, balance: int, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem) as caught:
        check_manual_amount(amount, balance, Settings())
    assert caught.value.field == "amount"
    check_manual_amount(50_00, 1950_00, Settings())


def test_a_manual_top_up_counts_the_card_payments_still_in_flight() -> None:
    check_manual_amount(1500_00, 0, Settings(), in_flight=500_00)
    with pytest.raises(InvalidInput, match="with 1500.00 of top-ups in flight above 2000.00"):
        check_manual_amount(1500_00, 0, Settings(), in_flight=1500_00)


@pytest.mark.parametrize(
    ("balance", "payment", "charge"),
    [(20_00, 2000_00, 2000_00), (20_00, 2000_01, None), (0, 2000_00, None), (0, 1_000_000_00, None), (-5000_00, 0, None), (-1000_00, 0, 1100_00)],
)
def test_an_auto_top_up_above_the_largest_charge_is_not_made(balance: int, payment: int, charge: int | None) -> None:
    assert auto_topup_charge(auto_amount=100_00, balance=balance, payment=payment, settings=Settings()) == charge


@pytest.mark.parametrize(("amount", "charge"), [(100_00, 3_00), (10, 0), (17, 1), (33_33, 1_00)])
def test_the_member_refund_fee_is_three_percent_rounded_half_up(amount: int, charge: int) -> None:
    assert fee(amount, Decimal("3.00")) == charge
