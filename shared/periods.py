"""Date ranges of statements and reports: local dates, inclusive, as people name them.

A period from day A to day B covers local 00:00 of A up to, not including, local 00:00 of the
day after B (ORIGINAL 6.3's window, with D-36's inconsistent ends made one rule). Presets are
the original's: month to date, year to date, last month, last year, all (from 1901-01-01).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared import fields
from shared.errors import InvalidInput

EARLIEST = date(1901, 1, 1)  # the original's "All"
LATEST = date(9998, 12, 31)  # its end must still be a datetime
PRESETS = ("month_to_date", "year_to_date", "last_month", "last_year", "all")


@dataclass(frozen=True)
class Period:
    first: date  # local, inclusive
    last: date  # local, inclusive

    def start(self, zone: ZoneInfo) -> datetime:
        """The first instant of the period."""
        return datetime.combine(self.first, time(0), tzinfo=zone)

    def end(self, zone: ZoneInfo) -> datetime:
        """The first instant after the period (DST-safe)."""
        return datetime.combine(self.last + timedelta(days=1), time(0), tzinfo=zone)

    def as_json(self) -> dict[str, str]:
        return {"from": self.first.isoformat(), "to": self.last.isoformat()}


def preset(name: str, today: date) -> Period:
    """One of PRESETS, for a local `today`."""
    first_of_month = today.replace(day=1)
    if name == "month_to_date":
        return Period(first_of_month, today)
    if name == "year_to_date":
        return Period(today.replace(month=1, day=1), today)
    if name == "last_month":
        last = first_of_month - timedelta(days=1)
        return Period(last.replace(day=1), last)
    if name == "last_year":
        return Period(date(today.year - 1, 1, 1), date(today.year - 1, 12, 31))
    if name == "all":
        return Period(EARLIEST, today)
    raise InvalidInput(f"period: {name!r} is not one of {', '.join(PRESETS)}", field="period")


def from_args(args: Mapping[str, str], today: date, *, default: str = "all") -> Period:
    """The period a request asks for: `period` (a preset), or `from` and/or `to` (YYYY-MM-DD,
    inclusive; a missing `from` is the preset's first day, a missing `to` is today), never both."""
    named = args.get("period")
    if named is not None and ("from" in args or "to" in args):
        raise InvalidInput("period: give a period or from/to, not both", field="period")
    base = preset(named if named is not None else default, today)
    first = fields.local_date(args["from"], "from") if "from" in args else base.first
    last = fields.local_date(args["to"], "to") if "to" in args else base.last
    if not EARLIEST <= first <= LATEST:
        raise InvalidInput(f"from: {first} is outside {EARLIEST} to {LATEST}", field="from")
    if not EARLIEST <= last <= LATEST:
        raise InvalidInput(f"to: {last} is outside {EARLIEST} to {LATEST}", field="to")
    if first > last:
        raise InvalidInput(f"from: {first} is after to: {last}", field="from")
    return Period(first, last)
