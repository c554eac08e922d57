"""Checking the fields of a request before any rule runs: each failure names its field.

The edges hand decoded JSON to these; they return clean Python values or raise `InvalidInput`.
Text that ends up in e-mail headers, statements and CSV files carries no control or format
characters (line and paragraph separators, bidi overrides, zero-width characters), and an
e-mail address is exactly one plain address. `fit` shortens text for a bounded column.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from shared.errors import InvalidInput

_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# RFC 5322 dot-atom local part (no quoted strings, no comments, no display names), ASCII.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Joiners spell words in Persian, Indic scripts and emoji; they reorder and hide nothing.
_ALLOWED_FORMAT = {"\u200c", "\u200d"}
# Cc: C0/C1 controls (NEL U+0085 included); Cf: format (bidi overrides and isolates, zero-width
# space, BOM, soft hyphen, ...); Zl/Zp: U+2028/U+2029, which mail and JavaScript take as line
# breaks; Cs: lone surrogates, which cannot be stored as UTF-8.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


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
    for c in cleaned:
        if unicodedata.category(c) in _REFUSED_CATEGORIES and c not in _ALLOWED_FORMAT:
            raise InvalidInput(
                f"{field}: contains U+{ord(c):04X}, a control or invisible formatting character", field=field
            )
    return cleaned


def fit(value: str, max_length: int) -> str:
    """`value` shortened to a column of `max_length` characters, ending in an ellipsis if cut."""
    return value if len(value) <= max_length else value[: max_length - 1] + "\u2026"


def email(value: object, field: str = "email") -> str:
    """Exactly one address `local@domain.tld`: no display name, list, comment, quoted string or
    space; the domain has at least two labels (an internationalised one is checked in IDNA form)."""
    address = text(value, field, max_length=254)
    local, at, domain = address.rpartition("@")
    refused = InvalidInput(f"{field}: {_show(address)} is not one e-mail address", field=field)
    if not at or len(local) > 64 or not _LOCAL_PART.fullmatch(local):
        raise refused
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise refused from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise refused
    return address


def route_code(body: Mapping[str, Any]) -> str | None:
    """A request's callback route code (a payment's, a transfer's, an IOU's), if it has one."""
    found = body.get("route_code")
    return None if found is None else identifier(found, "route_code")


def route_payload(body: Mapping[str, Any]) -> Any:
    """What the callback hands back to the caller, as sent; bounded so a request stays small."""
    found = body.get("route_payload")
    if found is not None and len(repr(found)) > 2000:
        raise InvalidInput("route_payload: larger than 2000 characters", field="route_payload")
    return found


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


_WHOLE = re.compile(r"[0-9]{1,19}")
PAGE_DEFAULT, PAGE_MOST = 100, 1000  # a list's page: CONTRACT's default and most


def whole_number(value: str | None, field: str, *, most: int, default: int | None = None) -> int | None:
    """A query argument that is a whole number from 1 to `most` (ASCII digits only: "²" is a
    digit to Python but not a number), or `default` when it is absent."""
    if value is None:
        return default
    if not _WHOLE.fullmatch(value) or not 1 <= int(value) <= most:
        raise InvalidInput(f"{field}: {_show(value)} is not a whole number from 1 to {most}", field=field)
    return int(value)


def page_limit(value: str | None, *, default: int = PAGE_DEFAULT, most: int = PAGE_MOST) -> int:
    """A list's `limit`: how many rows a page holds (CONTRACT: 100 unless asked, at most 1,000)."""
    limit = whole_number(value, "limit", most=most, default=default)
    assert limit is not None
    return limit


def entry_type(value: str, field: str = "type") -> str:
    """One of the statements' transaction types (SPEC 1; `shared.models.EntryType`)."""
    from shared.models import EntryType  # the models import SQLAlchemy; the other checks need not

    if value not in {t.value for t in EntryType}:
        raise InvalidInput(f"{field}: {_show(value)} is not a transaction type", field=field)
    return value


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
