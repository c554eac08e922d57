"""Money at the edges (SPEC 1, DESIGN invariant 1).

Amounts are integer cents inside the service and `Decimal` or two-decimal strings outside it.
`parse_cents` accepts `str`, `int` or `Decimal` and refuses everything else with an error that
names the field: floats (inexact by nature), bools, NaN, infinity, more than two decimals,
empty or non-numeric text, and values outside the limits the caller passes.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from shared.errors import InvalidAmount

# Beyond any real amount and well inside a 64-bit column; callers pass tighter limits.
HARD_LIMIT_CENTS = 10**13

_AMOUNT_TEXT = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def parse_cents(
    value: object,
    field: str = "amount",
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """Return `value` as integer cents, or raise `InvalidAmount` naming `field`.

    `minimum` and `maximum` are inclusive limits in cents.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidAmount(
            f"{field}: {type(value).__name__} {value!r} is not allowed; "
            'send money as a string such as "12.34"',
            field=field,
        )
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidAmount(f"{field}: empty; expected an amount such as 12.34", field=field)
        if not _AMOUNT_TEXT.fullmatch(text):
            raise InvalidAmount(
                f"{field}: {value!r} is not an amount; expected digits such as 12.34", field=field
            )
        try:
            amount = Decimal(text)
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid numbers
            raise InvalidAmount(f"{field}: {value!r} is not an amount", field=field) from None
    else:
        raise InvalidAmount(
            f"{field}: a {type(value).__name__} is not an amount; "
            'send money as a string such as "12.34"',
            field=field,
        )

    if not amount.is_finite():
        raise InvalidAmount(f"{field}: {value!r} is not a finite amount", field=field)
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # finite decimals have an integer exponent
    if exponent < -2:
        raise InvalidAmount(f"{field}: {value!r} has more than two decimals", field=field)

    cents = int(amount * 100)
    if abs(cents) > HARD_LIMIT_CENTS:
        raise InvalidAmount(f"{field}: {value!r} is beyond any allowed amount", field=field)
    if minimum is not None and cents < minimum:
        raise InvalidAmount(
            f"{field}: {format_cents(cents)} is below the minimum {format_cents(minimum)}",
            field=field,
        )
    if maximum is not None and cents > maximum:
        raise InvalidAmount(
            f"{field}: {format_cents(cents)} is above the maximum {format_cents(maximum)}",
            field=field,
        )
    return cents


def format_cents(cents: int) -> str:
    """Return integer cents as a two-decimal string: 1234 -> "12.34", -5 -> "-0.05"."""
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise TypeError(f"cents must be an int, not {type(cents).__name__}")
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def to_decimal(cents: int) -> Decimal:
    """Return integer cents as an exact `Decimal` with two places."""
    return Decimal(format_cents(cents))
