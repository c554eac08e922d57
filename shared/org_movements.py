"""The classification of an organisation's postings into the Movement Summary's categories
(ORIGINAL 6.3) and their movements over a period: one club's Movement Summary, and the
federation's organisation movement report (ORIGINAL 6.7). The one place the rule lives: `RULES`,
read by `category_of` in Python and by `category_sql` in SQL, so the club's summary, its views
and sheets (`shared.club_reports`) and the federation's report cannot disagree.

The rule, first match wins: a Settlement; a Manual Adjustment; anything with an event id (event
entries and their refunds); anything with a session id (table money); a Club Membership; else
Other. Every posting falls in exactly one category, so opening + categories = closing. A club's
own views fold Manual Adjustments into Other (the original's Movement Summary has no line for
them); the federation's report shows them apart (its "Manual Adjustments" column).

Movements are one GROUP BY over the postings before the period's end: (account, bucket), the
bucket being "opening" before the period's start, else the category. For every organisation
(2,000 clubs, 1,000,000 postings) it reads in about 0.7 s; the service keeps no Open or Closed
status, so the report lists every organisation.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, SQLColumnExpression, case, func, literal, select
from sqlalchemy.orm import Session

from shared.models import Account, AccountKind, EntryType, JournalEntry, Organisation, Posting
from shared.money import format_cents
from shared.periods import Period


class Category(enum.StrEnum):
    SETTLEMENTS = "settlements"
    MANUAL_ADJUSTMENTS = "manual_adjustments"
    EVENT_ENTRIES = "event_entries"
    CLUB_SESSIONS = "club_sessions"
    CLUB_MEMBERSHIPS = "club_memberships"
    OTHER = "other"


# The classification, in order; the first rule that holds names the category, else OTHER.
# (category, the entry's field, the type it must have; None: the field must be set)
RULES: tuple[tuple[Category, str, EntryType | None], ...] = (
    (Category.SETTLEMENTS, "type", EntryType.SETTLEMENT),
    (Category.MANUAL_ADJUSTMENTS, "type", EntryType.MANUAL_ADJUSTMENT),
    (Category.EVENT_ENTRIES, "event_id", None),
    (Category.CLUB_SESSIONS, "session_id", None),
    (Category.CLUB_MEMBERSHIPS, "type", EntryType.CLUB_MEMBERSHIP),
)
# A club's Movement Summary, in the original's order; Manual Adjustments count as Other there.
CLUB_CATEGORIES = (Category.SETTLEMENTS, Category.EVENT_ENTRIES, Category.CLUB_SESSIONS,
                   Category.CLUB_MEMBERSHIPS, Category.OTHER)
# The federation's movement report, in ORIGINAL 6.7's column order.
REPORT_CATEGORIES = (Category.EVENT_ENTRIES, Category.CLUB_SESSIONS, Category.CLUB_MEMBERSHIPS, Category.OTHER,
                     Category.MANUAL_ADJUSTMENTS, Category.SETTLEMENTS)


def category_of(type_: str, event_id: str | None, session_id: str | None) -> Category:
    facts = {"type": type_, "event_id": event_id, "session_id": session_id}
    for category, field, wanted in RULES:
        if facts[field] is not None and (wanted is None or facts[field] == wanted.value):
            return category
    return Category.OTHER


def category_sql(
    type_: SQLColumnExpression[str], event_id: SQLColumnExpression[str | None],
    session_id: SQLColumnExpression[str | None],
) -> ColumnElement[str]:
    """`category_of` as a SQL expression over an entry's columns."""
    columns: dict[str, SQLColumnExpression[Any]] = {"type": type_, "event_id": event_id, "session_id": session_id}
    return case(
        *[(columns[field] == wanted.value if wanted is not None else columns[field].is_not(None), category.value)
          for category, field, wanted in RULES],
        else_=Category.OTHER.value,
    )


def club_category(category: Category) -> Category:
    return Category.OTHER if category is Category.MANUAL_ADJUSTMENTS else category


# The category of the journal entry a query joins, as SQL.
CATEGORY = category_sql(JournalEntry.type, JournalEntry.event_id, JournalEntry.session_id)


def club_category_is(category: Category) -> ColumnElement[bool]:
    """A SQL condition: the entry is in this category of a club's views."""
    if category is Category.OTHER:
        return CATEGORY.in_([Category.OTHER.value, Category.MANUAL_ADJUSTMENTS.value])
    return CATEGORY == category.value


# Movements: one GROUP BY for one organisation or for all ----------------------------------


@dataclass(frozen=True)
class Movement:
    opening: int
    by_category: dict[Category, int]

    @property
    def closing(self) -> int:
        return self.opening + sum(self.by_category.values())

    def for_club(self) -> dict[Category, int]:
        folded = dict.fromkeys(CLUB_CATEGORIES, 0)
        for category, cents in self.by_category.items():
            folded[club_category(category)] += cents
        return folded


def movements(session: Session, period: Period, zone: ZoneInfo, account_id: int | None = None) -> dict[int, Movement]:
    """Each organisation account's opening balance and movements by category in the period (one
    account, or every organisation): a single GROUP BY, each posting before the period's end
    counted once, in `opening` if it is before the start, else in its category."""
    start, end = period.start(zone), period.end(zone)
    bucket = case((JournalEntry.created_at < start, literal("opening")), else_=CATEGORY)
    query = (
        select(Posting.account_id, bucket.label("bucket"), func.sum(Posting.amount))
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(JournalEntry.created_at < end)
        .group_by(Posting.account_id, bucket)
    )
    if account_id is not None:
        query = query.where(Posting.account_id == account_id)
    else:
        query = query.join(Account, Account.id == Posting.account_id).where(
            Account.kind == AccountKind.ORGANISATION.value)
    found: dict[int, dict[str, int]] = {}
    for account, name, cents in session.execute(query):
        found.setdefault(account, {})[name] = int(cents)
    return {
        account: Movement(buckets.pop("opening", 0), {Category(name): cents for name, cents in buckets.items()})
        for account, buckets in found.items()
    }


def movement_summary(session: Session, org: Organisation, period: Period, zone: ZoneInfo) -> Movement:
    return movements(session, period, zone, org.account_id).get(org.account_id, Movement(0, {}))


# The federation's organisation movement report (ORIGINAL 6.7) -------------------------------

REPORT_COLUMNS = ["organisation_id", "name", "opening_balance", "event_entries", "club_sessions", "club_memberships",
                  "other", "manual_adjustments", "settlements", "closing_balance"]


def movement_report(session: Session, period: Period, zone: ZoneInfo) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One row per organisation, by org_id (every organisation: the service keeps no Open or
    Closed status), in cents, and the totals: two queries, however many organisations."""
    found = movements(session, period, zone)
    rows: list[dict[str, Any]] = []
    totals = dict.fromkeys(REPORT_COLUMNS[2:], 0)
    for org_id, name, account_id in session.execute(
        select(Organisation.org_id, Organisation.name, Organisation.account_id).order_by(Organisation.org_id)
    ):
        movement = found.get(account_id, Movement(0, {}))
        row: dict[str, Any] = {"organisation_id": org_id, "name": name, "opening_balance": movement.opening,
               **{c.value: movement.by_category.get(c, 0) for c in REPORT_CATEGORIES},
               "closing_balance": movement.closing}
        for column in totals:
            totals[column] += row[column]
        rows.append(row)
    return rows, totals


def report_row_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value if key in ("organisation_id", "name") else format_cents(value) for key, value in row.items()}


def report_table(rows: list[dict[str, Any]], totals: dict[str, int], *, money: Any) -> Iterator[list[Any]]:
    """The report as a table (CSV or a sheet): a header, a row per organisation, a Total row;
    `money` turns cents into the cell (a string for CSV, a Decimal for XLSX)."""
    yield REPORT_COLUMNS
    for row in rows:
        yield [row["organisation_id"], row["name"], *[money(row[c]) for c in REPORT_COLUMNS[2:]]]
    yield ["Total", None, *[money(totals[c]) for c in REPORT_COLUMNS[2:]]]
