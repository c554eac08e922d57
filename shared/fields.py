"""Checking the fields of a request before any rule runs: each failure names its field.

The edges hand decoded JSON to these; they return clean Python values or raise `InvalidInput`.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from shared.errors import InvalidInput

_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def identifier(value: object, field: str) -> str:
    """An id chosen by another module: 1 to 64 of letters, digits and `_.:-`; ints accepted."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise InvalidInput(
            f"{field}: {_show(value)} is not an id (1 to 64 letters, digits or _.:-)", field=field
        )
    return value


def text(value: object, field: str, *, max_length: int, required: bool = True) -> str:
    """A non-blank string of at most `max_length` characters, stripped."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: expected text, got {_show(value)}", field=field)
    cleaned = value.strip()
    if required and not cleaned:
        raise InvalidInput(f"{field}: must not be empty", field=field)
    if len(cleaned) > max_length:
        raise InvalidInput(f"{field}: longer than {max_length} characters", field=field)
    if any(ord(c) < 32 and c not in "\t" for c in cleaned):
        raise InvalidInput(f"{field}: contains control characters", field=field)
    if any("\ud800" <= c <= "\udfff" for c in cleaned):
        # A lone surrogate (JSON "\ud800") cannot be stored as UTF-8.
        raise InvalidInput(f"{field}: contains an unpaired surrogate", field=field)
    return cleaned


def email(value: object, field: str = "email") -> str:
    address = text(value, field, max_length=254)
    if not _EMAIL.fullmatch(address):
        raise InvalidInput(f"{field}: {_show(address)} is not an e-mail address", field=field)
    return address


def boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{field}: expected true or false, got {_show(value)}", field=field)
    return value


def local_date(value: object, field: str) -> date:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise InvalidInput(f"{field}: expected a date YYYY-MM-DD, got {_show(value)}", field=field)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field}: {_show(value)} is not a date YYYY-MM-DD", field=field) from None


def only_one(body: dict[str, Any], *fields: str) -> str:
    """The one of `fields` present in `body`; error if none or several are."""
    present = [f for f in fields if body.get(f) is not None]
    if len(present) != 1:
        names = " or ".join(fields)
        problem = "missing" if not present else "more than one given"
        raise InvalidInput(f"{names}: exactly one is required ({problem})", field=fields[0])
    return present[0]


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def percent(value: object, field: str) -> Decimal:
    """A percentage 0 to 100 with at most two decimals, as a string or integer."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f'{field}: expected a percentage such as "2.50", got {_show(value)}', field=field)
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput(f"{field}: {_show(value)} is not a percentage", field=field) from None
    exponent = number.as_tuple().exponent
    if not number.is_finite() or not isinstance(exponent, int) or exponent < -2 or not 0 <= number <= 100:
        raise InvalidInput(
            f"{field}: {_show(value)} is not a percentage 0 to 100 with two decimals", field=field
        )
    return number
