"""Club finance (ORIGINAL 6.3): an organisation's report by view (the Movement Summary, per
session, per event, membership, other, transactions) and the original's eight-sheet workbook,
all on the classification of `shared.org_movements`, so every view adds up to the summary.

The original's "Other Artificial" listing left out Club Payments without an event or session,
which then appeared in no view at all; here Other is exactly the Movement Summary's Other.

The service knows session and event ids only (another module owns their names and dates), so
per-session and per-event rows show the id, the payments' count and total, and the first and
last payment. Reads are bounded: aggregates are GROUP BY queries over the organisation's
postings in the period (one row per session or event); listings are pages (`limit`, a
posting-id cursor, oldest first, so postings that arrive meanwhile only add later pages); the
XLSX is written from server-side cursors, 1,000 rows at a time.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Unpack
from zoneinfo import ZoneInfo

from sqlalchemy import Select, func, literal, select
from sqlalchemy.orm import Session

from shared import fields, periods, statements
from shared.errors import InvalidInput
from shared.models import JournalEntry, Organisation, Posting
from shared.money import format_cents, to_decimal
from shared.org_movements import CATEGORY, Category, club_category_is, movement_summary
from shared.periods import Period


# The request ------------------------------------------------------------------------------

VIEWS = ("movement", "sessions", "events", "membership", "other", "transactions")
LISTINGS = {"membership": Category.CLUB_MEMBERSHIPS, "other": Category.OTHER, "transactions": None}
DEFAULT_PERIOD = "month_to_date"  # the original's screen opens on month to date


@dataclass(frozen=True)
class Query:
    view: str
    period: Period
    format: str = "json"
    limit: int = fields.PAGE_DEFAULT
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
    if type_ is not None:
        type_ = fields.entry_type(type_)
    return Query(view=view, period=period, format=fmt, limit=fields.page_limit(args.get("limit")),
                 cursor=fields.whole_number(args.get("cursor"), "cursor", most=2**63 - 1), search=search, type=type_)


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
        query = query.where(club_category_is(category))
    if type_ is not None:
        query = query.where(JournalEntry.type == type_)
    if search is not None:
        query = query.where(statements.matches_search(search))
    return query


def _named(query: Lines, account_id: int) -> Lines:
    """The query with who is on the other side of each line, named as statements name them."""
    return query.add_columns(statements.counterparty(account_id))


def _as_line(row: Any, zone: ZoneInfo) -> Line:
    return Line(row.id, row.created_at.astimezone(zone), row.counterparty or "", row.reference, row.type,
                row.description, row.session_id, row.event_id, row.amount)


def _streamed_lines(session: Session, account_id: int, query: Lines, zone: ZoneInfo) -> Iterator[Line]:
    """The query's lines from a server-side cursor, 1,000 rows at a time."""
    for row in session.execute(_named(query, account_id).execution_options(yield_per=1000)):
        yield _as_line(row, zone)


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
    query = _lines(account_id, period, zone).with_only_columns(*columns).where(club_category_is(category))
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

_SUMMARY_LABELS = {Category.SETTLEMENTS: "Settlements", Category.EVENT_ENTRIES: "Event Entries",
                   Category.CLUB_SESSIONS: "Club Sessions", Category.CLUB_MEMBERSHIPS: "Club Memberships",
                   Category.OTHER: "Other"}


def workbook(session: Session, org: Organisation, period: Period, zone: ZoneInfo) -> Iterator[tuple[str, Iterable[Any]]]:
    """The sheets of the original's `statement.xlsx` for the whole period, in its order: Movement
    Summary, Transactions, Sessions, Events, Combined, Membership, Settlements, Other. Each sheet's
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
        .where(CATEGORY.in_([Category.SETTLEMENTS.value, Category.MANUAL_ADJUSTMENTS.value, Category.OTHER.value]))
        .order_by(JournalEntry.created_at, Posting.id)
    )
    singles = ((line.date, [line.date.replace(tzinfo=None), line.type, line.reference, line.description,
                            to_decimal(line.amount)]) for line in _streamed_lines(session, account_id, rest, zone))
    total = to_decimal(0)
    for _, row in heapq.merge(grouped, singles, key=lambda item: item[0]):
        total += row[-1]
        yield row
    yield ["Total", None, None, None, total]
