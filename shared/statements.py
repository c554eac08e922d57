"""What people see (SPEC 6): balances with detail, statements as rows and CSV, organisation
summaries by type, and the admin summary. Reads only; times are shown in the configured local
time zone, newest line first, each with the account's balance after it.

The balance after a line is the running sum of the account's postings in id order. A debit is
only booked under its account's lock after every earlier committed posting has been counted,
so that running sum is never below what the ledger's funds check saw.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from shared import ledger
from shared.errors import InvalidInput
from shared.models import (
    TOP_UP_TYPES,
    Account,
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

CSV_COLUMNS = ("Date", "Counterparty", "Reference", "Type", "Description", "Amount", "Balance", "Event", "Session")
SUMMARY_PERIODS = {"30": 30, "90": 90, "365": 365, "all": None}
_SYSTEM_NAMES = {s.value: s.value.capitalize() for s in SystemAccount}


@dataclass(frozen=True)
class StatementRow:
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
    """When the account last received card money (auto, manual or card payment), or None."""
    return session.scalar(
        select(func.max(JournalEntry.created_at))
        .join(Posting, Posting.entry_id == JournalEntry.id)
        .where(
            Posting.account_id == account_id,
            Posting.amount > 0,
            JournalEntry.type.in_([t.value for t in TOP_UP_TYPES]),
        )
    )


def statement(
    session: Session, account_id: int, zone: ZoneInfo, *, limit: int | None = None
) -> list[StatementRow]:
    """Every line of the account (or the newest `limit`), newest first, with the balance after each."""
    running = func.sum(Posting.amount).over(order_by=Posting.id)
    lines = session.execute(
        select(
            Posting.id,
            Posting.amount,
            running.label("balance"),
            JournalEntry.id.label("entry_id"),
            JournalEntry.created_at,
            JournalEntry.type,
            JournalEntry.description,
            JournalEntry.reference,
            JournalEntry.event_id,
            JournalEntry.session_id,
        )
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(Posting.account_id == account_id)
        .order_by(Posting.id.desc())
        .limit(limit)
    ).all()
    names = _counterparties(session, account_id, [line.entry_id for line in lines])
    return [
        StatementRow(
            date=line.created_at.astimezone(zone),
            counterparty=names.get(line.entry_id, ""),
            reference=line.reference,
            type=line.type,
            description=line.description,
            amount=line.amount,
            balance=int(line.balance),
            event_id=line.event_id,
            session_id=line.session_id,
        )
        for line in lines
    ]


def statement_csv(rows: Sequence[StatementRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        cells = row.as_json()
        writer.writerow(
            [
                cells["date"],
                _csv_safe(row.counterparty),
                _csv_safe(row.reference),
                cells["type"],
                _csv_safe(row.description),
                cells["amount"],
                cells["balance"],
                _csv_safe(row.event_id or ""),
                _csv_safe(row.session_id or ""),
            ]
        )
    return out.getvalue()


def summary_days(value: object) -> int | None:
    """Parse the `days` of an organisation summary: 30, 90, 365 or all."""
    key = str(value).strip().lower() if value is not None else "30"
    if key not in SUMMARY_PERIODS:
        raise InvalidInput(f"days: {value!r} is not one of 30, 90, 365, all", field="days")
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
        select(Posting.account_id, func.sum(Posting.amount).label("balance"))
        .group_by(Posting.account_id)
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


def _counterparties(session: Session, account_id: int, entry_ids: list[int]) -> dict[int, str]:
    """For each entry, the name of the other side with the largest amount."""
    if not entry_ids:
        return {}
    rows = session.execute(
        select(
            Posting.entry_id,
            Posting.amount,
            Account.kind,
            Account.owner,
            Member.first_name,
            Member.last_name,
            Organisation.name,
        )
        .join(Account, Account.id == Posting.account_id)
        .outerjoin(Member, Member.account_id == Account.id)
        .outerjoin(Organisation, Organisation.account_id == Account.id)
        .where(Posting.entry_id.in_(entry_ids), Posting.account_id != account_id)
        .order_by(Posting.entry_id, case((Posting.amount < 0, -Posting.amount), else_=Posting.amount).desc())
    ).all()
    names: dict[int, str] = {}
    for row in rows:
        if row.entry_id in names:
            continue
        if row.kind == AccountKind.MEMBER.value:
            names[row.entry_id] = f"{row.first_name} {row.last_name} ({row.owner})"
        elif row.kind == AccountKind.ORGANISATION.value:
            names[row.entry_id] = row.name or row.owner
        else:
            names[row.entry_id] = _SYSTEM_NAMES.get(row.owner, row.owner)
    return names


def _csv_safe(cell: str) -> str:
    """Keep spreadsheets from running a cell as a formula (CSV injection)."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell
