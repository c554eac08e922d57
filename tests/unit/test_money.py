"""shared.money: exact cents in, two decimals out, and every refused form named."""

from decimal import Decimal

import pytest

from shared.errors import InvalidAmount
from shared.money import format_cents, parse_cents, to_decimal


@pytest.mark.parametrize(
    ("value", "cents"),
    [
        ("12.34", 1234),
        ("12.3", 1230),
        ("12", 1200),
        (" 7.05 ", 705),
        ("0.01", 1),
        ("-5.00", -500),
        ("+3", 300),
        (12, 1200),
        (0, 0),
        (Decimal("19.99"), 1999),
        (Decimal("100"), 10000),
        ("1000000.00", 100000000),
    ],
)
def test_accepted_amounts_become_exact_cents(value: object, cents: int) -> None:
    assert parse_cents(value, "amount") == cents


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (12.34, "float"),
        (0.1, "float"),
        (float("nan"), "float"),
        (float("inf"), "float"),
        (True, "bool"),
        (None, "NoneType"),
        ([1], "list"),
        ({"a": 1}, "dict"),
        (Decimal("NaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        (Decimal("-Infinity"), "finite"),
        (Decimal("1.234"), "more than two decimals"),
        (Decimal("12.340"), "more than two decimals"),
        ("12.345", "more than two decimals"),
        ("0.001", "more than two decimals"),
        ("", "empty"),
        ("   ", "empty"),
        ("abc", "not an amount"),
        ("NaN", "not an amount"),
        ("Infinity", "not an amount"),
        ("1e3", "not an amount"),
        ("1,000.00", "not an amount"),
        ("$12", "not an amount"),
        ("12.", "not an amount"),
        (".5", "not an amount"),
        ("--1", "not an amount"),
        ("1 000", "not an amount"),
        ("١٢", "not an amount"),  # non-ASCII digits
        ("9" * 30, "beyond any allowed amount"),
    ],
)
def test_refused_amounts_name_the_field_and_the_problem(value: object, problem: str) -> None:
    with pytest.raises(InvalidAmount) as caught:
        parse_cents(value, "top_up_amount")
    assert caught.value.field == "top_up_amount"
    assert caught.value.message.startswith("top_up_amount: ")
    assert problem in caught.value.message


def test_amounts_outside_the_callers_limits_are_refused_with_both_numbers() -> None:
    with pytest.raises(InvalidAmount, match=r"amount: 49.99 is below the minimum 50.00"):
        parse_cents("49.99", "amount", minimum=5000)
    with pytest.raises(InvalidAmount, match=r"amount: 2000.01 is above the maximum 2000.00"):
        parse_cents("2000.01", "amount", maximum=200000)
    assert parse_cents("50.00", "amount", minimum=5000, maximum=200000) == 5000
    assert parse_cents("2000.00", "amount", minimum=5000, maximum=200000) == 200000


@pytest.mark.parametrize(
    ("cents", "text"),
    [(0, "0.00"), (1, "0.01"), (-5, "-0.05"), (1234, "12.34"), (-100000, "-1000.00"), (10**12, "10000000000.00")],
)
def test_cents_format_with_two_decimals(cents: int, text: str) -> None:
    assert format_cents(cents) == text
    assert parse_cents(text) == cents
    assert to_decimal(cents) == Decimal(text)


def test_formatting_refuses_anything_but_whole_cents() -> None:
    for bad in (1.5, True, "12"):
        with pytest.raises(TypeError):
            format_cents(bad)  # type: ignore[arg-type]
