"""Reconciliation at a reference date (ORIGINAL 6.6): every account kind's total at the end of
the date, and the movements of the month before it.

Totals: members, organisations, and each system account (`stripe`, `fees`, `bank`,
`adjustments`). Every entry sums to zero, so at any instant they sum to zero: a non-zero sum
would mean a broken ledger, and the answer shows it rather than hiding it. One query over the
ledger (the balances report's), grouped by kind: under 1 s at 1,000,000 postings.

The window: from "a month earlier" (the reference date minus one calendar month, the day
clamped to the month's end: 31 March -> 28 February) to the reference date. The original took
rows after 23:59:59.999999 of the month-earlier day up to that time of the reference date;
here that is the local days after the month-earlier day, to the reference date, inclusive.

The CSV lists every posting of member and organisation accounts, and the `stripe` account's
(card money in, refunds out), in the window, sorted by date. Balance is the account's running
balance after the posting (its balance at the window's start plus the window's postings, in
time order), so a line can be checked against the member's statement; the `stripe` account's
is blank, as the original's Stripe rows were: it only counts card money ever taken, which no
one reconciles a line against.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.orm import Session, aliased

from shared import periods
from shared.balances_report import STREAM_BATCH, Kind, balances_before, stream
from shared.models import Account, AccountKind, JournalEntry, Member, Organisation, Posting, SystemAccount
from shared.money import format_cents
from shared.statements import end_of_local_day

TOTALS = ("members", "organisations", *(s.value for s in SystemAccount))
CSV_COLUMNS = ("Date", "Table", "Counterparty", "Reference", "Type", "Description", "Amount", "Balance", "Account")
MEMBER_BALANCE_COLUMNS = ("ABF Number", "First Name", "Last Name", "Balance")
ORGANISATION_BALANCE_COLUMNS = ("Organisation", "ABF Org Number", "Balance")
_TABLES = {AccountKind.MEMBER.value: "Member", AccountKind.ORGANISATION.value: "Organisation"}


def default_date(today: date) -> date:
    """The last day of the previous month."""
    return today.replace(day=1) - timedelta(days=1)


def month_earlier(day: date) -> date:
    """The same day a calendar month before, clamped to that month's last day."""
    year, month = (day.year, day.month - 1) if day.month > 1 else (day.year - 1, 12)
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def window(day: date) -> periods.Period:
    """The local days after the month-earlier day, to the reference date (inclusive)."""
    return periods.Period(month_earlier(day) + timedelta(days=1), day)


def _bucket() -> Any:
    """An account's total: `members`, `organisations`, or the system account's name."""
    return case(
        (Account.kind == AccountKind.MEMBER.value, literal("members")),
        (Account.kind == AccountKind.ORGANISATION.value, literal("organisations")),
        else_=Account.owner,
    )


@dataclass(frozen=True)
class Totals:
    amounts: dict[str, int]  # cents, by TOTALS
    counts: dict[str, int]  # accounts with a posting before the end (zero balances included)

    @property
    def sum(self) -> int:
        return sum(self.amounts.values())


def totals_at(session: Session, until: datetime) -> Totals:
    balances = balances_before(until)
    bucket = _bucket().label("bucket")
    rows = session.execute(
        select(bucket, func.sum(balances.c.balance), func.count())
        .select_from(balances)
        .join(Account, Account.id == balances.c.account_id)
        .group_by(bucket)
    ).all()
    amounts, counts = dict.fromkeys(TOTALS, 0), dict.fromkeys(TOTALS, 0)
    for name, amount, count in rows:
        amounts[name] = int(amount)
        counts[name] = int(count)
    return Totals(amounts, counts)


def movements(session: Session, start: datetime, end: datetime) -> list[dict[str, object]]:
    """The window's postings summarised by account total and entry type: at most
    len(TOTALS) x the entry types, whatever the volume."""
    bucket = _bucket().label("bucket")
    rows = session.execute(
        select(bucket, JournalEntry.type, func.count(), func.sum(Posting.amount))
        .select_from(JournalEntry)
        .join(Posting, Posting.entry_id == JournalEntry.id)
        .join(Account, Account.id == Posting.account_id)
        .where(JournalEntry.created_at >= start, JournalEntry.created_at < end)
        .group_by(bucket, JournalEntry.type)
        .order_by(bucket, JournalEntry.type)
    ).all()
    return [
        {"account": name, "type": type_, "count": count, "amount": format_cents(int(amount))}
        for name, type_, count, amount in rows
    ]


def report(session: Session, day: date, zone: ZoneInfo) -> dict[str, object]:
    span = window(day)
    totals = totals_at(session, end_of_local_day(day, zone))
    return {
        "date": day.isoformat(),
        "from": span.first.isoformat(),
        "totals": {name: format_cents(cents) for name, cents in totals.amounts.items()},
        "counts": totals.counts,
        "sum": format_cents(totals.sum),
        "movements": movements(session, span.start(zone), span.end(zone)),
    }


# The CSVs ---------------------------------------------------------------------------------


def csv_rows(session: Session, day: date, zone: ZoneInfo, now: datetime) -> Iterator[tuple[Any, ...]]:
    """reconciliation.csv: the header rows, then every posting of the window (see the module)."""
    span = window(day)
    start, end = span.start(zone), span.end(zone)
    yield ("Generated on", now.astimezone(zone).isoformat(timespec="seconds"))
    yield ("Date range >=", span.first.isoformat())
    yield ("Date range <=", span.last.isoformat())
    yield CSV_COLUMNS
    opening = balances_before(start)
    shown = or_(
        Account.kind.in_([AccountKind.MEMBER.value, AccountKind.ORGANISATION.value]),
        and_(Account.kind == AccountKind.SYSTEM.value, Account.owner == SystemAccount.STRIPE.value),
    )
    running = func.coalesce(opening.c.balance, 0) + func.sum(Posting.amount).over(
        partition_by=Posting.account_id, order_by=(JournalEntry.created_at, Posting.id)
    )
    query = (
        select(
            JournalEntry.created_at,
            Account.kind,
            _counterparty().label("counterparty"),
            JournalEntry.reference,
            JournalEntry.type,
            JournalEntry.description,
            Posting.amount,
            running.label("balance"),
            _owner_name(Account, Member, Organisation).label("account"),
            Posting.id,
        )
        .select_from(Posting)
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .join(Account, Account.id == Posting.account_id)
        .outerjoin(Member, Member.account_id == Account.id)
        .outerjoin(Organisation, Organisation.account_id == Account.id)
        .outerjoin(opening, opening.c.account_id == Posting.account_id)
        .where(JournalEntry.created_at >= start, JournalEntry.created_at < end, shown)
    ).subquery("lines")
    ordered = select(query).order_by(query.c.created_at, query.c.id).execution_options(yield_per=STREAM_BATCH)
    for row in session.execute(ordered):
        stripe = row.kind == AccountKind.SYSTEM.value
        yield (
            row.created_at.astimezone(zone).isoformat(timespec="seconds"),
            _TABLES.get(row.kind, "Stripe"),
            row.counterparty or "",
            row.reference,
            row.type,
            row.description,
            format_cents(row.amount),
            None if stripe else format_cents(int(row.balance)),
            row.account,
        )


def balances_csv_rows(session: Session, kind: Kind, day: date, zone: ZoneInfo) -> Iterator[tuple[Any, ...]]:
    """member_balances.csv or organisation_balances.csv: the balances at the end of the date
    (zero ones left out, as the balances report), in the original's columns."""
    until = end_of_local_day(day, zone)
    yield (f"Balances prior to {until.isoformat(timespec='minutes')}",)
    if kind is Kind.MEMBER:
        yield MEMBER_BALANCE_COLUMNS
        for member_id, first, last, cents in stream(session, Kind.MEMBER, until):
            yield (member_id, first, last, format_cents(cents))
    else:
        yield ORGANISATION_BALANCE_COLUMNS
        for org_id, name, cents in stream(session, Kind.ORGANISATION, until):
            yield (name, org_id, format_cents(cents))


def _owner_name(account: Any, member: Any, organisation: Any) -> Any:
    """How statements name an account: "First Last (id)", the club's name, or "Stripe"."""
    return case(
        (account.kind == AccountKind.MEMBER.value,
         member.first_name + literal(" ") + member.last_name + literal(" (") + account.owner + literal(")")),
        (account.kind == AccountKind.ORGANISATION.value, func.coalesce(organisation.name, account.owner)),
        *((account.owner == name.value, literal(name.value.capitalize())) for name in SystemAccount),
        else_=account.owner,
    )


def _counterparty() -> Any:
    """The entry's other side with the largest amount, named as statements name it (one
    look-up by the postings' (entry_id, account_id) index per line)."""
    other = aliased(Posting)
    other_account = aliased(Account)
    other_member = aliased(Member)
    other_org = aliased(Organisation)
    return (
        select(_owner_name(other_account, other_member, other_org))
        .select_from(other)
        .join(other_account, other_account.id == other.account_id)
        .outerjoin(other_member, other_member.account_id == other_account.id)
        .outerjoin(other_org, other_org.account_id == other_account.id)
        .where(other.entry_id == Posting.entry_id, other.account_id != Posting.account_id)
        .order_by(func.abs(other.amount).desc(), other.id)
        .limit(1)
        .correlate(Posting)
        .scalar_subquery()
    )
