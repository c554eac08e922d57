"""What people see (SPEC 6; ORIGINAL 6.1, 6.2): balances with detail, statements in pages and as
streamed downloads, organisation summaries by type, and the admin summary. Reads only; times
are shown in the configured local time zone, newest line first, each with the account's
balance after it.

The balance after a line is the running sum of the account's postings in id order. A debit is
only booked under its account's lock after every earlier committed posting has been counted,
so that running sum is never below what the ledger's funds check saw.

Statements scale (issue 14): a page is found by keyset on the posting id (ix_postings_account_
id_id), and its balances come from an index-only running sum between the page and the cursor,
counted from the balance the cursor carries (or, on a first page, from one index-only sum); no
read walks an account's whole history in Python or with a window function. A download walks
the range once from a server-side cursor, a batch at a time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, and_, case, func, or_, select, true
from sqlalchemy.orm import Session, aliased

from shared import ledger
from shared.db import dialect_name, read_ahead
from shared.errors import InvalidInput
from shared.models import (
    TOP_UP_TYPES,
    Account,
    AccountBalance,
    AccountKind,
    AutoTopUpStatus,
    JournalEntry,
    Member,
    Organisation,
    Posting,
    SystemAccount,
    utcnow,
)
from shared.money import format_cents

T = TypeVar("T")
CSV_COLUMNS = ("Date", "Counterparty", "Reference", "Type", "Description", "Amount", "Balance", "Event", "Session")
SUMMARY_PERIODS = {"30": 30, "90": 90, "365": 365, "all": None}
_SYSTEM_NAMES = {s.value: s.value.capitalize() for s in SystemAccount}


class StatementRow(NamedTuple):  # a tuple: a download makes one per line
    date: datetime  # local time
    counterparty: str
    reference: str
    type: str
    description: str
    amount: int
    balance: int
    event_id: str | None = None  # the event or club session the money was for (ORIGINAL 2.7)
    session_id: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {
            "date": self.date.isoformat(timespec="seconds"),
            "counterparty": self.counterparty,
            "reference": self.reference,
            "type": self.type,
            "description": self.description,
            "amount": format_cents(self.amount),
            "balance": format_cents(self.balance),
            "event_id": self.event_id,
            "session_id": self.session_id,
        }


def end_of_local_day(day: date, zone: ZoneInfo) -> datetime:
    """The first instant after `day` ends in `zone` (DST-safe)."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)


def balance_at_end_of(session: Session, account_id: int, day: date, zone: ZoneInfo) -> int:
    return ledger.balance_at(session, account_id, end_of_local_day(day, zone))


def last_top_up(session: Session, account_id: int) -> datetime | None:
    """When the account last received card money (auto, manual or card payment), or None.

    The account's postings are walked newest first (by id, as booked) to the first top-up, so
    the read costs the postings since the last top-up, not the whole history."""
    return session.scalar(
        select(JournalEntry.created_at)
        .join(Posting, Posting.entry_id == JournalEntry.id)
        .where(
            Posting.account_id == account_id,
            Posting.amount > 0,
            JournalEntry.type.in_([t.value for t in TOP_UP_TYPES]),
        )
        # (account_id, id): the order of the account's index, which the planner then walks.
        .order_by(Posting.account_id.desc(), Posting.id.desc())
        .limit(1)
    )


def statement(
    session: Session, account_id: int, zone: ZoneInfo, *, limit: int | None = None
) -> list[StatementRow]:
    """Every line of the account (or the newest `limit`), newest first, with the balance after
    each: a short list for an e-mail, or (without `limit`) a small account's whole statement."""
    if limit is not None:
        return page(session, account_id, zone, Filters(), limit=limit).rows
    return list(lines(session, account_id, zone, Filters()))


# Pages and downloads ----------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Which lines a statement shows: local dates (inclusive; None leaves that end open) and, on
    an organisation's statement, an event, a club session, an entry type and a search text."""

    first: date | None = None
    last: date | None = None
    event_id: str | None = None
    session_id: str | None = None
    type: str | None = None
    search: str | None = None

    def conditions(self, zone: ZoneInfo) -> list[ColumnElement[bool]]:
        """SQL conditions on the entry (JournalEntry) of a line."""
        found: list[ColumnElement[bool]] = list(self.dated(zone))
        if self.event_id is not None:
            found.append(JournalEntry.event_id == self.event_id)
        if self.session_id is not None:
            found.append(JournalEntry.session_id == self.session_id)
        if self.type is not None:
            found.append(JournalEntry.type == self.type)
        if self.search is not None:
            found.append(matches_search(self.search))
        return found

    def dated(self, zone: ZoneInfo) -> list[ColumnElement[bool]]:
        """The conditions of the date range alone."""
        found: list[ColumnElement[bool]] = []
        if self.first is not None:
            found.append(JournalEntry.created_at >= datetime.combine(self.first, time(0), tzinfo=zone))
        if self.last is not None:
            found.append(JournalEntry.created_at < end_of_local_day(self.last, zone))
        return found

    def fingerprint(self, account_id: int) -> str:
        """What a cursor is bound to: this account and these filters."""
        parts = [account_id, self.first, self.last, self.event_id, self.session_id, self.type, self.search]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Page:
    rows: list[StatementRow]
    next_cursor: str | None  # None: this is the last page
    opening_balance: int  # before the oldest row (ORIGINAL 6.2: its balance minus its amount)
    closing_balance: int  # after the newest row


def page(
    session: Session,
    account_id: int,
    zone: ZoneInfo,
    filters: Filters,
    *,
    limit: int,
    cursor: str | None = None,
    key: bytes | None = None,
) -> Page:
    """Up to `limit` lines, newest first, older than the cursor's line (keyset pagination: a
    line booked between pages has a higher id, so it never shifts a page).

    Cost: the rows, plus one index-only pass over the account's postings between the page's
    oldest line and the cursor (all of them, not only the shown ones, so filters keep each
    line's balance the account's running balance). The balance those are counted from is, on
    a first page, one index-only sum of the account's postings before the page; on a later
    page, the one the cursor carries (the previous page's opening balance), which `key` signs:
    without a key the cursor's balance is not trusted and the sum is run again. (The carried
    balance is the one the previous page saw: a posting committed after it with a lower id, a
    transaction left open while `limit` newer postings of the account committed, would shift
    the later pages' balances by its amount until the client starts again.)

    A page without rows shows, as both balances, the balance where it would have begun: just
    before the cursor's line, else at the end of `last` (else now).
    """
    fingerprint = filters.fingerprint(account_id)
    before = None if cursor is None else read_cursor(cursor, fingerprint, key)
    query = _lines_query(account_id, filters.conditions(zone)).order_by(Posting.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(Posting.id < before.posting_id)
    with _planned_for_its_values(session):
        found = session.execute(query).all()
    shown = found[:limit]
    if not shown:
        balance = _empty_page_balance(session, account_id, before, filters, zone)
        return Page([], None, balance, balance)
    after = _balances_after(session, account_id, [line.id for line in shown], before)
    rows = [_row(line, after[line.id], zone) for line in shown]
    opening = rows[-1].balance - rows[-1].amount
    return Page(
        rows=rows,
        next_cursor=make_cursor(Position(shown[-1].id, opening), fingerprint, key) if len(found) > limit else None,
        opening_balance=opening,
        closing_balance=rows[0].balance,
    )


def lines(
    session: Session, account_id: int, zone: ZoneInfo, filters: Filters, *, batch: int = 1000
) -> Iterator[StatementRow]:
    """Every line in the range, newest first, read from a server-side cursor `batch` rows at a
    time (a download of any size holds one batch)."""
    return _walk(session, account_id, zone, filters, batch, lambda line, balance: _row(line, balance, zone))


def csv_rows(session: Session, account_id: int, zone: ZoneInfo, filters: Filters) -> Iterator[tuple[object, ...]]:
    """A CSV download's rows: the header, then each line's cells as the JSON shows them, made
    straight from the query's rows (the hot loop of a 300,000-line download makes nothing else)."""
    yield CSV_COLUMNS
    yield from _walk(session, account_id, zone, filters, 1000, lambda line, balance: (
        line.created_at.astimezone(zone).isoformat(timespec="seconds"), line.counterparty or "", line.reference,
        line.type, line.description, format_cents(line.amount), format_cents(balance), line.event_id,
        line.session_id,
    ))


def _walk(
    session: Session, account_id: int, zone: ZoneInfo, filters: Filters, batch: int,
    shape: Callable[[Any, int], T],
) -> Iterator[T]:
    """The lines of `lines`, each shaped by `shape(row, balance after it)`. The account's balance at the newest posting
    of the range is read in the same statement (one snapshot; `ledger.balance_through`); each older line's balance is
    the newer one's minus the newer one's amount, over every posting in the range, filtered or
    not, so filters never break the running balance."""
    span = _dated_span(session, account_id, filters.dated(zone))
    if span is None:
        return
    low, high = span
    in_span = [Posting.account_id == account_id]
    if low is not None:
        in_span += [Posting.id >= low, Posting.id <= high]
    opening = ledger.current_balance(account_id) if high is None else ledger.balance_through(account_id, high)
    conditions = filters.conditions(zone)
    shown = and_(*conditions) if conditions else true()
    query = (
        select(*_LINE_COLUMNS, counterparty(account_id), shown.label("shown"), opening.label("balance_after_newest"))
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(*in_span)
        .order_by(Posting.id.desc())
        .execution_options(yield_per=batch)
    )
    balance: int | None = None
    for part in read_ahead(session.connection().execute(query).partitions()):
        for line in part:
            if balance is None:
                balance = int(line.balance_after_newest)
            if line.shown:
                yield shape(line, balance)
            balance -= line.amount


# A cursor is opaque to clients: the id of the last posting shown and the balance before it,
# with a check that binds both to the account and filters it was issued for (one from another
# statement is refused, not misread) and, keyed by the service's secret, vouches for the balance.
_CURSOR = re.compile(r"([1-9][0-9]{0,17})\.(-?[0-9]{1,18})\.([0-9a-f]{32})")


@dataclass(frozen=True)
class Position:
    posting_id: int  # the next page shows older postings than this one
    balance: int | None  # the account's balance before it; None: not vouched for


def make_cursor(position: Position, fingerprint: str, key: bytes | None) -> str:
    text = f"{position.posting_id}.{position.balance or 0}"
    return base64.urlsafe_b64encode(f"{text}.{_check(text, fingerprint, key)}".encode()).decode().rstrip("=")


def read_cursor(cursor: str, fingerprint: str, key: bytes | None) -> Position:
    """Where a cursor this statement issued points; InvalidInput naming `cursor` otherwise."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii") if len(cursor) <= 100 else ""
    except (ValueError, UnicodeError):
        text = ""
    found = _CURSOR.fullmatch(text)
    if found is None:
        raise InvalidInput("cursor: not a cursor of this service; use next_cursor as given", field="cursor")
    posting_id, balance, check = found.groups()
    if not hmac.compare_digest(check, _check(f"{posting_id}.{balance}", fingerprint, key)):
        raise InvalidInput(
            "cursor: issued for another statement (account, dates or filters); start again without it",
            field="cursor",
        )
    return Position(int(posting_id), int(balance) if key is not None else None)


def _check(text: str, fingerprint: str, key: bytes | None) -> str:
    return hmac.new(key or b"unkeyed", f"{fingerprint}:{text}".encode(), hashlib.sha256).hexdigest()[:32]


def cursor_key(secret: str | None) -> bytes | None:
    """The key that signs cursors, derived from the service's secret (PAYMENTS_API_TOKEN), so a
    cursor reveals nothing of it; None without one."""
    return hmac.new(secret.encode(), b"payments statement cursor", hashlib.sha256).digest() if secret else None


def sheet_rows(lines: Iterable[StatementRow]) -> Iterator[tuple[object, ...]]:
    """An XLSX sheet's rows: the same columns; dates as local times, money as Decimal."""
    yield CSV_COLUMNS
    for row in lines:
        yield (row.date.replace(tzinfo=None), row.counterparty, row.reference, row.type, row.description,
               cents_decimal(row.amount), cents_decimal(row.balance), row.event_id, row.session_id)


def cents_decimal(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


_LINE_COLUMNS = (
    Posting.id,
    Posting.amount,
    Posting.entry_id,
    JournalEntry.created_at,
    JournalEntry.type,
    JournalEntry.description,
    JournalEntry.reference,
    JournalEntry.event_id,
    JournalEntry.session_id,
)


def _lines_query(account_id: int, conditions: list[ColumnElement[bool]]) -> Select[*tuple[Any, ...]]:
    return (
        select(*_LINE_COLUMNS, counterparty(account_id))
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(Posting.account_id == account_id, *conditions)
    )


def counterparty(account_id: int) -> Any:
    """A column naming who is on the other side of a line of this account: of the same entry,
    the account with the largest amount (a member as "First Last (id)", an organisation by
    name, a system account by its name). A correlated subquery, so a page or a streamed
    download names each line in its own query with one index look-up, on PostgreSQL and SQLite."""
    other = aliased(Posting)
    name = case(
        (Account.kind == AccountKind.MEMBER.value,
         Member.first_name + " " + Member.last_name + " (" + Account.owner + ")"),
        (Account.kind == AccountKind.ORGANISATION.value, func.coalesce(Organisation.name, Account.owner)),
        else_=case(_SYSTEM_NAMES, value=Account.owner, else_=Account.owner),
    )
    return (
        select(name)
        .select_from(other)
        .join(Account, Account.id == other.account_id)
        .outerjoin(Member, Member.account_id == Account.id)
        .outerjoin(Organisation, Organisation.account_id == Account.id)
        .where(other.entry_id == Posting.entry_id, other.account_id != account_id)
        .order_by(func.abs(other.amount).desc(), other.id)
        .limit(1)
        .scalar_subquery()
        .label("counterparty")
    )


def _row(line: Any, balance: int, zone: ZoneInfo) -> StatementRow:
    return StatementRow(line.created_at.astimezone(zone), line.counterparty or "", line.reference, line.type,
                        line.description, line.amount, balance, line.event_id, line.session_id)


def matches_search(search: str) -> ColumnElement[bool]:
    """The original's search (ORIGINAL 6.3), for statements and club reports alike: the entry's
    description, or the name ("First Last", so either part or both) of a member with a posting
    in the entry, holds `search` (any case; `%`, `_` and `\\` are plain characters)."""
    other = aliased(Posting)
    named = (
        select(other.id)
        .join(Member, Member.account_id == other.account_id)
        .where(
            other.entry_id == JournalEntry.id,
            (Member.first_name + " " + Member.last_name).icontains(search, autoescape=True),
        )
        .exists()
    )
    return or_(JournalEntry.description.icontains(search, autoescape=True), named)


def _balances_after(session: Session, account_id: int, ids: list[int], before: Position | None) -> dict[int, int]:
    """The account's balance after each of these postings, in one statement: a running sum over
    every posting of the account from the oldest of them up to the cursor (index-only), counted
    from the balance the cursor vouches for, else from the balance now less the postings after
    the oldest (`ledger.balance_through`: the cost of what came later, not of the history)."""
    low = min(ids)
    if before is not None and before.balance is not None:
        # Newest first from just below the cursor: the balance after a posting is the balance
        # before the cursor less every posting after it.
        later = func.sum(Posting.amount).over(order_by=Posting.id.desc()) - Posting.amount
        span = (
            select(Posting.id, (before.balance - later).label("after"))
            .where(Posting.account_id == account_id, Posting.id >= low, Posting.id < before.posting_id)
            .subquery()
        )
    else:
        opening = ledger.balance_through(account_id, low - 1)
        span = (
            select(Posting.id, (opening + func.sum(Posting.amount).over(order_by=Posting.id)).label("after"))
            .where(Posting.account_id == account_id, Posting.id >= low, Posting.id <= max(ids))
            .subquery()
        )
    found = session.execute(select(span.c.id, span.c.after).where(span.c.id.in_(ids)))
    return {posting_id: int(balance) for posting_id, balance in found}


def _empty_page_balance(
    session: Session, account_id: int, before: Position | None, filters: Filters, zone: ZoneInfo
) -> int:
    """Where an empty page stands: before the cursor's line, else at the end of the range."""
    if before is not None:
        if before.balance is not None:
            return before.balance
        return int(session.scalar(select(ledger.balance_through(account_id, before.posting_id - 1))) or 0)
    if filters.last is not None:
        return ledger.balance_at(session, account_id, end_of_local_day(filters.last, zone))
    return ledger.balance(session, account_id)


@contextmanager
def _planned_for_its_values(session: Session) -> Iterator[None]:
    """Run a query unprepared, so PostgreSQL plans it for its values. psycopg prepares a query
    on its fifth run, and PostgreSQL may then keep one generic plan, which cannot see that a
    cursor or a date range makes walking the account's index from the newest line cheap or
    dear (measured: 150 ms a page with a generic plan, 25 ms planned for the values)."""
    if dialect_name(session) != "postgresql":
        yield
        return
    driver: Any = session.connection().connection.driver_connection  # a psycopg Connection
    before = driver.prepare_threshold
    driver.prepare_threshold = None
    try:
        yield
    finally:
        driver.prepare_threshold = before


def _dated_span(
    session: Session, account_id: int, dated: list[ColumnElement[bool]]
) -> tuple[int | None, int | None] | None:
    """The lowest and highest posting id of the account's lines in the date range: (None, None)
    without a range, None when the range holds none. Ids follow booking times only roughly
    (concurrent bookings), so a download walks every posting between the two, in range or not."""
    if not dated:
        return None, None
    with _planned_for_its_values(session):
        low, high = session.execute(
            select(func.min(Posting.id), func.max(Posting.id))
            .join(JournalEntry, JournalEntry.id == Posting.entry_id)
            .where(Posting.account_id == account_id, *dated)
        ).one()
    return None if low is None else (low, high)


def summary_days(value: object) -> int | None:
    """Parse the `days` of an organisation summary: 30, 90, 365 or all."""
    key = str(value).strip().lower() if value is not None else "30"
    if key not in SUMMARY_PERIODS:
        raise InvalidInput(f"days: {value!r} is not one of {', '.join(SUMMARY_PERIODS)}", field="days")
    return SUMMARY_PERIODS[key]


def summary_by_type(
    session: Session, account_id: int, days: int | None, *, now: datetime | None = None
) -> dict[str, object]:
    """Amounts by entry type over the last `days` days (None: all time), with a grand total."""
    query = (
        select(JournalEntry.type, func.sum(Posting.amount), func.count())
        .join(Posting, Posting.entry_id == JournalEntry.id)
        .where(Posting.account_id == account_id)
        .group_by(JournalEntry.type)
        .order_by(JournalEntry.type)
    )
    if days is not None:
        query = query.where(JournalEntry.created_at >= (now or utcnow()) - timedelta(days=days))
    rows = session.execute(query).all()
    return {
        "days": "all" if days is None else days,
        "by_type": [
            {"type": type_, "amount": format_cents(int(total)), "count": count}
            for type_, total, count in rows
        ],
        "total": format_cents(sum(int(total) for _, total, _ in rows)),
    }


def admin_summary(session: Session, *, now: datetime | None = None) -> dict[str, object]:
    """SPEC 6: counts and sums across all members and organisations."""
    per_account = (
        select(AccountBalance.account_id, func.sum(AccountBalance.balance).label("balance"))
        .group_by(AccountBalance.account_id)
        .subquery()
    )
    totals = {
        kind: session.execute(
            select(
                func.count().filter(per_account.c.balance != 0),
                func.coalesce(func.sum(per_account.c.balance), 0),
            )
            .select_from(per_account)
            .join(Account, Account.id == per_account.c.account_id)
            .where(Account.kind == kind.value)
        ).one()
        for kind in (AccountKind.MEMBER, AccountKind.ORGANISATION)
    }
    members, members_on = session.execute(
        select(
            func.count(),
            func.count().filter(Member.auto_topup_status == AutoTopUpStatus.ON.value),
        )
    ).one()
    organisations = session.scalar(select(func.count()).select_from(Organisation))
    since = (now or utcnow()) - timedelta(days=30)
    card_in = session.scalar(
        select(func.coalesce(func.sum(-Posting.amount), 0))
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .join(Account, Account.id == Posting.account_id)
        .where(
            Account.kind == AccountKind.SYSTEM.value,
            Account.owner == SystemAccount.STRIPE.value,
            Posting.amount < 0,
            JournalEntry.created_at >= since,
        )
    )
    member_count, member_sum = totals[AccountKind.MEMBER]
    org_count, org_sum = totals[AccountKind.ORGANISATION]
    return {
        "members": members,
        "members_auto_topup_on": members_on,
        "members_with_balance": {"count": member_count, "sum": format_cents(int(member_sum))},
        "organisations": organisations,
        "organisations_with_balance": {"count": org_count, "sum": format_cents(int(org_sum))},
        "net_liability": format_cents(int(member_sum) + int(org_sum)),
        "card_money_last_30_days": format_cents(int(card_in or 0)),
    }


