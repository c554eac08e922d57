"""Report periods: the original's presets, from/to, and the errors that name the field."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from shared import periods
from shared.errors import InvalidInput
from shared.periods import Period

TODAY = date(2026, 3, 15)


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("month_to_date", date(2026, 3, 1), TODAY),
        ("year_to_date", date(2026, 1, 1), TODAY),
        ("last_month", date(2026, 2, 1), date(2026, 2, 28)),
        ("last_year", date(2025, 1, 1), date(2025, 12, 31)),
        ("all", date(1901, 1, 1), TODAY),
    ],
)
def test_presets_are_the_originals(name: str, first: date, last: date) -> None:
    assert periods.preset(name, TODAY) == Period(first, last)


def test_last_month_in_january_is_last_december() -> None:
    assert periods.preset("last_month", date(2027, 1, 10)) == Period(date(2026, 12, 1), date(2026, 12, 31))


def test_from_and_to_are_inclusive_local_days() -> None:
    period = periods.from_args({"from": "2026-04-05", "to": "2026-04-05"}, TODAY)
    sydney = ZoneInfo("Australia/Sydney")
    # 5 April 2026 is the day Sydney leaves daylight saving: 25 hours long.
    assert period.start(sydney) == datetime(2026, 4, 4, 13, 0, tzinfo=UTC)
    assert period.end(sydney) == datetime(2026, 4, 5, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"period": "fortnight"}, "period"),
        ({"period": "all", "from": "2026-01-01"}, "period"),
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "from"),
        ({"from": "1800-01-01"}, "from"),
    ],
)
def test_a_bad_period_names_its_field(args: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        periods.from_args(args, TODAY)
    assert caught.value.field == field
