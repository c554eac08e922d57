"""Club finance (ORIGINAL 6.3) and the organisation movement report (ORIGINAL 6.7), both built
on one classification of an organisation's postings: `RULES`, read by `category_of` in Python
and by `category_sql` in SQL, so the Movement Summary, the per-session and per-event views, the
listings, the eight XLSX sheets and the federation's movement report cannot disagree.

The rule, first match wins: a Settlement; a Manual Adjustment; anything with an event id (event
entries and their refunds); anything with a session id (table money); a Club Membership; else
Other. Every posting falls in exactly one category, so opening + categories = closing. A club's
own views fold Manual Adjustments into Other (the original's Movement Summary has no column for
them); the federation's report shows them apart (its "Manual Adjustments").

The original's "Other Artificial" listing left out Club Payments without an event or session,
which then appeared in no view at all; here Other is exactly the Movement Summary's Other, so
its rows add up to that figure.

The service knows session and event ids only (another module owns their names and dates), so
per-session and per-event rows show the id, the payments' count and total, and the first and
last payment. Reads are bounded: aggregates are GROUP BY queries over the organisation's
postings in the period; listings are pages (`limit`, a posting-id cursor); the XLSX is written
from server-side cursors, a batch at a time.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Unpack
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, SQLColumnExpression, case, func, literal, or_, select, true
from sqlalchemy.orm import Session, aliased

from shared import fields, periods
from shared.errors import InvalidInput
from shared.models import Account, AccountKind, EntryType, JournalEntry, Member, Organisation, Posting
from shared.money import format_cents, to_decimal
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


_CATEGORY = category_sql(JournalEntry.type, JournalEntry.event_id, JournalEntry.session_id)


def _club_category_is(category: Category) -> ColumnElement[bool]:
    if category is Category.OTHER:
        return _CATEGORY.in_([Category.OTHER.value, Category.MANUAL_ADJUSTMENTS.value])
    return _CATEGORY == category.value


# The request ------------------------------------------------------------------------------

VIEWS = ("movement", "sessions", "events", "membership", "other", "transactions")
LISTINGS = {"membership": Category.CLUB_MEMBERSHIPS, "other": Category.OTHER, "transactions": None}
DEFAULT_PERIOD = "month_to_date"  # the original's screen opens on month to date
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


@dataclass(frozen=True)
class Query:
    view: str
    period: Period
    format: str = "json"
    limit: int = DEFAULT_LIMIT
    cursor: int | None = None  # the last posting id of the previous page
    search: str | None = None
    type: str | None = None


def parse_query(args: Mapping[str, str], today: date) -> Query:
    """The report a request asks for, every argument checked (a 400 naming the field)."""
    fmt = args.get("format", "json")
    if fmt not in ("json", "xlsx"):
        raise InvalidInput(f"format: {fields.fit(fmt, 20)!r} is not json or xlsx", field="format")
    view = args.get("view", "movement")
    if view not in VIEWS:
        raise InvalidInput(f"view: {fields.fit(view, 20)!r} is not one of {', '.join(VIEWS)}", field="view")
    period = periods.from_args(args, today, default=DEFAULT_PERIOD)
    listing = view in LISTINGS and fmt == "json"
    for name in ("limit", "cursor", "search", "type"):
        if name in args and not listing:
            raise InvalidInput(f"{name}: only the JSON of the {', '.join(LISTINGS)} views takes it", field=name)
    search = args.get("search")
    if search is not None:
        search = fields.text(search, "search", max_length=80)
    type_ = args.get("type")
    if type_ is not None and type_ not in {t.value for t in EntryType}:
        raise InvalidInput(f"type: {fields.fit(type_, 40)!r} is not a transaction type", field="type")
    return Query(view=view, period=period, format=fmt, limit=_count(args, "limit", DEFAULT_LIMIT, MAX_LIMIT),
                 cursor=_count(args, "cursor", None, 2**63 - 1), search=search, type=type_)


def _count(args: Mapping[str, str], name: str, default: int | None, most: int) -> Any:
    value = args.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= most:
        raise InvalidInput(f"{name}: {fields.fit(value, 20)!r} is not a whole number from 1 to {most}", field=name)
    return int(value)


# Lines ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One posting of the organisation, as a listing shows it."""

    id: int  # the posting id, the listings' cursor
    date: datetime  # local
    counterparty: str
    reference: str
    type: str
    description: str
    session_id: str | None
    event_id: str | None
    amount: int

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "date": self.date.isoformat(timespec="seconds"), "counterparty": self.counterparty,
                "reference": self.reference, "type": self.type, "description": self.description,
                "session_id": self.session_id, "event_id": self.event_id, "amount": format_cents(self.amount)}

    def cells(self) -> list[Any]:
        return [self.date.replace(tzinfo=None), self.counterparty, self.reference, self.id, self.type,
                self.description, self.session_id, self.event_id, to_decimal(self.amount)]


Lines = Select[Unpack[tuple[Any, ...]]]
LINE_COLUMNS = ["Date", "Counterparty", "Reference", "Id", "Type", "Description", "Session ID", "Event ID", "Amount"]


def _lines(account_id: int, period: Period, zone: ZoneInfo) -> Lines:
    return (
        select(Posting.id, Posting.amount, Posting.entry_id, JournalEntry.created_at, JournalEntry.type,
               JournalEntry.description, JournalEntry.reference, JournalEntry.event_id, JournalEntry.session_id)
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(Posting.account_id == account_id, JournalEntry.created_at >= period.start(zone),
               JournalEntry.created_at < period.end(zone))
    )


def _filtered(query: Lines, category: Category | None, search: str | None, type_: str | None) -> Lines:
    if category is not None:
        query = query.where(_club_category_is(category))
    if type_ is not None:
        query = query.where(JournalEntry.type == type_)
    if search is not None:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        other, member = aliased(Posting), aliased(Member)
        named = (
            select(literal(1)).select_from(other).join(member, member.account_id == other.account_id)
            .where(other.entry_id == JournalEntry.id,
                   (member.first_name + " " + member.last_name).ilike(pattern, escape="\\"))
        )
        query = query.where(or_(JournalEntry.description.ilike(pattern, escape="\\"), named.exists()))
    return query


def _named(query: Lines, account_id: int) -> Lines:
    """The query with who is on the other side of each line: the member or organisation (or
    system account) with the largest amount, as statements name them. A lateral join: one index
    look-up per line, in the same (streamed) query."""
    other = aliased(Posting)
    side = (
        select(Account.kind, Account.owner, Member.first_name, Member.last_name, Organisation.name)
        .select_from(other)
        .join(Account, Account.id == other.account_id)
        .outerjoin(Member, Member.account_id == Account.id)
        .outerjoin(Organisation, Organisation.account_id == Account.id)
        .where(other.entry_id == Posting.entry_id, other.account_id != account_id)
        .order_by(func.abs(other.amount).desc(), other.id)
        .limit(1)
        .lateral("other_side")
    )
    return query.outerjoin(side, true()).add_columns(*side.c)


def _as_line(row: Any, zone: ZoneInfo) -> Line:
    if row.kind == AccountKind.MEMBER.value:
        counterparty = f"{row.first_name} {row.last_name} ({row.owner})"
    elif row.kind == AccountKind.ORGANISATION.value:
        counterparty = row.name
    else:
        counterparty = (row.owner or "").capitalize()
    return Line(row.id, row.created_at.astimezone(zone), counterparty, row.reference, row.type, row.description,
                row.session_id, row.event_id, row.amount)


def _streamed_lines(session: Session, account_id: int, query: Lines, zone: ZoneInfo) -> Iterator[Line]:
    """The query's lines from a server-side cursor, 1,000 rows at a time."""
    for row in session.execute(_named(query, account_id).execution_options(yield_per=1000)):
        yield _as_line(row, zone)


# Movements: one GROUP BY for one organisation or for all ------------------------------------


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
    bucket = case((JournalEntry.created_at < start, literal("opening")), else_=_CATEGORY)
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


@dataclass(frozen=True)
class Group:
    """The payments of one session or event in the period (or all memberships: id None)."""

    id: str | None
    count: int
    total: int
    first: datetime  # local
    last: datetime

    def as_json(self, key: str) -> dict[str, Any]:
        return {key: self.id, "count": self.count, "total": format_cents(self.total),
                "first_payment": self.first.isoformat(timespec="seconds"),
                "last_payment": self.last.isoformat(timespec="seconds")}

    def cells(self) -> list[Any]:
        return [self.id, self.count, to_decimal(self.total), self.first.replace(tzinfo=None),
                self.last.replace(tzinfo=None)]


GROUP_COLUMNS = {"sessions": ["Session ID", "Payments", "Total", "First Payment", "Last Payment"],
                 "events": ["Event ID", "Payments", "Total", "First Payment", "Last Payment"]}
_GROUPED = {"sessions": (Category.CLUB_SESSIONS, JournalEntry.session_id),
            "events": (Category.EVENT_ENTRIES, JournalEntry.event_id),
            "membership": (Category.CLUB_MEMBERSHIPS, None)}


def groups(session: Session, account_id: int, view: str, period: Period, zone: ZoneInfo) -> list[Group]:
    """One row per session (or event) id with payments in the period, by first payment: the
    rows of that category of the Movement Summary, so they add up to its figure. `membership`
    gives one row, all memberships together (the Combined sheet's)."""
    category, key = _GROUPED[view]
    first = func.min(JournalEntry.created_at)
    columns = [key if key is not None else literal(None), func.count(), func.sum(Posting.amount), first,
               func.max(JournalEntry.created_at)]
    query = _lines(account_id, period, zone).with_only_columns(*columns).where(_club_category_is(category))
    if key is not None:
        query = query.group_by(key).order_by(first, key)
    rows: Sequence[Any] = session.execute(query).all()
    return [Group(row[0], row[1], int(row[2]), row[3].astimezone(zone), row[4].astimezone(zone))
            for row in rows if row[1]]


# The club report as JSON ---------------------------------------------------------------------


def report_json(session: Session, org: Organisation, query: Query, zone: ZoneInfo) -> dict[str, Any]:
    head: dict[str, Any] = {"organisation_id": org.org_id, "name": org.name, "view": query.view,
                            **query.period.as_json()}
    if query.view == "movement":
        movement = movement_summary(session, org, query.period, zone)
        return {**head, "opening_balance": format_cents(movement.opening),
                **{c.value: format_cents(cents) for c, cents in movement.for_club().items()},
                "closing_balance": format_cents(movement.closing)}
    if query.view in ("sessions", "events"):
        found = groups(session, org.account_id, query.view, query.period, zone)
        key = "session_id" if query.view == "sessions" else "event_id"
        return {**head, "rows": [group.as_json(key) for group in found], "count": len(found),
                "total": format_cents(sum(group.total for group in found))}
    matching = _filtered(_lines(org.account_id, query.period, zone), LISTINGS[query.view], query.search, query.type)
    count, total = session.execute(
        matching.with_only_columns(func.count(), func.coalesce(func.sum(Posting.amount), 0))).one()
    page = matching.order_by(Posting.id).limit(query.limit + 1)
    if query.cursor is not None:
        page = page.where(Posting.id > query.cursor)
    rows = session.execute(_named(page, org.account_id)).all()
    more = len(rows) > query.limit
    lines = [_as_line(row, zone) for row in rows[: query.limit]]
    return {**head, "search": query.search, "type": query.type, "count": count, "total": format_cents(int(total)),
            "rows": [line.as_json() for line in lines], "next_cursor": str(lines[-1].id) if more else None}


# The club report as XLSX: the original's eight sheets -----------------------------------------

SHEETS = ("Movement Summary", "Transactions", "Sessions", "Events", "Combined", "Membership", "Settlements", "Other")
_SUMMARY_LABELS = {Category.SETTLEMENTS: "Settlements", Category.EVENT_ENTRIES: "Event Entries",
                   Category.CLUB_SESSIONS: "Club Sessions", Category.CLUB_MEMBERSHIPS: "Club Memberships",
                   Category.OTHER: "Other"}


def workbook(session: Session, org: Organisation, period: Period, zone: ZoneInfo) -> Iterator[tuple[str, Iterable[Any]]]:
    """The sheets of `statement.xlsx` for the whole period, in the original's order. Each sheet's
    rows are generated as the workbook is written, so listings come straight off their cursor."""
    movement = movement_summary(session, org, period, zone)
    yield "Movement Summary", [
        ["Organisation", org.name], ["From", period.first], ["To", period.last],
        ["Item", "Amount"], ["Opening Balance", to_decimal(movement.opening)],
        *[[_SUMMARY_LABELS[c], to_decimal(cents)] for c, cents in movement.for_club().items()],
        ["Closing Balance", to_decimal(movement.closing)],
    ]
    yield "Transactions", _transactions_sheet(session, org.account_id, period, zone, movement.opening)
    for view in ("sessions", "events"):
        found = groups(session, org.account_id, view, period, zone)
        rows = [group.cells() for group in found] or [["No Payments"]]
        yield view.capitalize(), [GROUP_COLUMNS[view], *rows, *_total_row(found, 2, 5)]
    yield "Combined", _combined_sheet(session, org.account_id, period, zone)
    for title, category in (("Membership", Category.CLUB_MEMBERSHIPS), ("Settlements", Category.SETTLEMENTS),
                            ("Other", Category.OTHER)):
        yield title, _listing_sheet(session, org.account_id, period, zone, category)


def _total_row(found: Sequence[Group], at: int, width: int) -> list[list[Any]]:
    if not found:
        return []
    row: list[Any] = [None] * width
    row[0], row[at] = "Total", to_decimal(sum(group.total for group in found))
    return [row]


def _transactions_sheet(session: Session, account_id: int, period: Period, zone: ZoneInfo,
                        opening: int) -> Iterator[list[Any]]:
    yield [*LINE_COLUMNS, "Balance"]
    balance = opening
    for line in _streamed_lines(session, account_id, _lines(account_id, period, zone).order_by(Posting.id), zone):
        balance += line.amount
        yield [*line.cells(), to_decimal(balance)]


def _listing_sheet(session: Session, account_id: int, period: Period, zone: ZoneInfo,
                   category: Category) -> Iterator[list[Any]]:
    yield LINE_COLUMNS
    total = 0
    query = _filtered(_lines(account_id, period, zone), category, None, None).order_by(Posting.id)
    for line in _streamed_lines(session, account_id, query, zone):
        total += line.amount
        yield line.cells()
    yield ["Total", *[None] * (len(LINE_COLUMNS) - 2), to_decimal(total)]


COMBINED_COLUMNS = ["Date", "Line", "Reference", "Description", "Amount"]


def _combined_sheet(session: Session, account_id: int, period: Period, zone: ZoneInfo) -> Iterator[list[Any]]:
    """Sessions, events and all memberships as single lines at their first payment, with every
    other line (settlements and other) as it is, by date: the lines sum to closing - opening."""
    yield COMBINED_COLUMNS
    grouped: list[tuple[datetime, list[Any]]] = []
    for view, label in (("sessions", "Session"), ("events", "Event"), ("membership", "Club Memberships")):
        for group in groups(session, account_id, view, period, zone):
            payments = f"{group.count} payment{'' if group.count == 1 else 's'}"
            grouped.append((group.first, [group.first.replace(tzinfo=None), label, group.id, payments,
                                          to_decimal(group.total)]))
    grouped.sort(key=lambda item: item[0])
    rest = (
        _lines(account_id, period, zone)
        .where(_CATEGORY.in_([Category.SETTLEMENTS.value, Category.MANUAL_ADJUSTMENTS.value, Category.OTHER.value]))
        .order_by(JournalEntry.created_at, Posting.id)
    )
    singles = ((line.date, [line.date.replace(tzinfo=None), line.type, line.reference, line.description,
                            to_decimal(line.amount)]) for line in _streamed_lines(session, account_id, rest, zone))
    total = 0
    for _, row in heapq.merge(grouped, singles, key=lambda item: item[0]):
        total += row[-1]
        yield row
    yield ["Total", None, None, None, to_decimal(0) + total]


# The federation's organisation movement report (ORIGINAL 6.7) ------------------------------

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
