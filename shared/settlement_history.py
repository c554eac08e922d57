"""Settlements as booked (ORIGINAL 2.9's history) and a settlement request's bank file.

The history reads the journal, not the requests: a settlement is listed whatever booked it.
Each Settlement entry is one row: its organisation's posting is -net, `bank`'s the bank amount,
`fees`' the fee; the reference date is the end of its key `settlement:{org}:{YYYY-MM-DD}`.
Newest first, in keyset pages, through the partial index of Settlement entries by time
(migration 0015).

The bank file pays what one request settled (its `settled` results; an `already_settled` one
was paid by the request that settled it): one CSV row per organisation, with the BSB and
account as the organisation has them now, so details fixed after the run are used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from shared import exports, fields, profiles
from shared.errors import Conflict, NotFound
from shared.keyset import Cursor
from shared.models import (
    Account,
    AccountKind,
    JournalEntry,
    Organisation,
    PaymentRequest,
    Posting,
    RequestKind,
    RequestStatus,
    SystemAccount,
)
from shared.money import format_cents
from shared.periods import Period
from shared.settlements import IS_SETTLEMENT

BANK_FILE_HEADER = ("BSB", "Account Number", "Account Name", "Amount", "Reference")
ACCOUNT_NAME_MAX = 32  # the account title field of an ABA (Cemtex) direct entry file
REFERENCE_MAX = 18  # its lodgement reference


@dataclass(frozen=True)
class SettlementRow:
    entry_id: int
    request_id: str
    organisation_id: str | None
    name: str | None
    reference_date: date | None
    net: int
    fee: int
    bank: int
    created_at: datetime

    def as_json(self, zone: ZoneInfo) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "organisation_id": self.organisation_id,
            "name": self.name,
            "reference_date": None if self.reference_date is None else self.reference_date.isoformat(),
            "net": format_cents(self.net),
            "fee": format_cents(self.fee),
            "bank_amount": format_cents(self.bank),
            "entry_id": self.entry_id,
            "created_at": self.created_at.astimezone(zone).isoformat(timespec="seconds"),
        }


def history(
    session: Session, period: Period, zone: ZoneInfo, *, organisation_id: str | None = None,
    limit: int = fields.PAGE_DEFAULT, cursor: Cursor | None = None,
) -> tuple[list[SettlementRow], Cursor | None]:
    """One page of the Settlement entries booked in `period`, newest first, and the cursor of
    the next page (None on the last)."""
    page = select(JournalEntry.id, JournalEntry.reference, JournalEntry.idempotency_key, JournalEntry.created_at).where(
        IS_SETTLEMENT, JournalEntry.created_at >= period.start(zone), JournalEntry.created_at < period.end(zone)
    )
    if organisation_id is not None:
        account = profiles.get_organisation(session, organisation_id).account_id
        page = page.where(exists().where(Posting.entry_id == JournalEntry.id, Posting.account_id == account))
    if cursor is not None:
        page = page.where(or_(JournalEntry.created_at < cursor.moment,
                              and_(JournalEntry.created_at == cursor.moment, JournalEntry.id < cursor.row_id)))
    chosen = page.order_by(JournalEntry.created_at.desc(), JournalEntry.id.desc()).limit(limit + 1).subquery("page")
    rows = session.execute(
        select(
            chosen.c.id, chosen.c.reference, chosen.c.idempotency_key, chosen.c.created_at,
            func.max(Organisation.org_id).label("org_id"), func.max(Organisation.name).label("name"),
            _sum_where(Account.kind == AccountKind.ORGANISATION.value, -Posting.amount).label("net"),
            _sum_where(_system(SystemAccount.BANK), Posting.amount).label("bank"),
            _sum_where(_system(SystemAccount.FEES), Posting.amount).label("fee"),
        )
        .select_from(chosen)
        .join(Posting, Posting.entry_id == chosen.c.id)
        .join(Account, Account.id == Posting.account_id)
        .outerjoin(Organisation, Organisation.account_id == Account.id)
        .group_by(chosen.c.id, chosen.c.reference, chosen.c.idempotency_key, chosen.c.created_at)
        .order_by(chosen.c.created_at.desc(), chosen.c.id.desc())
    ).all()
    found = [
        SettlementRow(r.id, r.reference, r.org_id, r.name, _reference_date(r.idempotency_key), int(r.net or 0),
                      int(r.fee or 0), int(r.bank or 0), r.created_at)
        for r in rows[:limit]
    ]
    following = Cursor(found[-1].created_at, found[-1].entry_id) if len(rows) > limit else None
    return found, following


@dataclass(frozen=True)
class BankLine:
    org_id: str
    name: str
    bsb: str | None
    account: str | None
    amount: int


def bank_file_lines(session: Session, request_id: str) -> tuple[date, list[BankLine]]:
    """What one settlement request paid to each organisation's bank, by org id. NotFound for
    an unknown request or one that is not a settlement; Conflict while it is still queued, or
    when an organisation paid has no bank details (the officer adds them, then downloads again:
    a file with a blank BSB would be refused by the bank, or worse, half paid)."""
    row = session.get(PaymentRequest, request_id)
    if row is None or row.kind != RequestKind.SETTLEMENT.value:
        raise NotFound(f"request_id: {request_id} is not a settlement request", field="request_id")
    if row.status == RequestStatus.QUEUED.value or row.result is None:
        raise Conflict(f"request_id: settlement {request_id} is still queued; its bank file comes once it is settled",
                       field="request_id")
    reference_date = date.fromisoformat(row.result["reference_date"])
    entry_ids = [r["entry_id"] for r in row.result.get("organisations", []) if r.get("status") == "settled"]
    lines: list[BankLine] = []
    if entry_ids:
        bank = profiles.system_account(session, SystemAccount.BANK)
        to_bank = aliased(Posting)
        found = session.execute(
            select(Organisation.org_id, Organisation.name, Organisation.bank_bsb, Organisation.bank_account,
                   to_bank.amount)
            .select_from(JournalEntry)
            .join(Posting, Posting.entry_id == JournalEntry.id)
            .join(Organisation, Organisation.account_id == Posting.account_id)
            .outerjoin(to_bank, and_(to_bank.entry_id == JournalEntry.id, to_bank.account_id == bank))
            .where(JournalEntry.id.in_(entry_ids), IS_SETTLEMENT)
            .order_by(Organisation.org_id)
        )
        lines = [BankLine(r.org_id, r.name, r.bank_bsb, r.bank_account, int(r.amount)) for r in found if r.amount]
    missing = [line.org_id for line in lines if line.bsb is None or line.account is None]
    if missing:
        raise Conflict(
            f"bank_bsb: organisations {', '.join(missing)} have no BSB or account number; set them with "
            "PUT /api/organisations/{id} (admin), then download the bank file again", field="bank_bsb")
    return reference_date, lines


def bank_file_csv(reference_date: date, lines: list[BankLine]) -> Iterator[str]:
    """The bank file: a header row, then BSB (123-456), account number, account name (the
    organisation's, cut to 32 characters), amount (the bank amount, 2 decimals) and reference."""
    reference = f"Settle {reference_date.isoformat()}"[:REFERENCE_MAX]
    rows: list[exports.Row] = [BANK_FILE_HEADER]
    rows.extend((profiles.show_bsb(line.bsb), line.account, line.name[:ACCOUNT_NAME_MAX], format_cents(line.amount),
                 reference) for line in lines)
    return exports.csv_lines(rows)


def _system(name: SystemAccount) -> Any:
    return and_(Account.kind == AccountKind.SYSTEM.value, Account.owner == name.value)


def _sum_where(condition: Any, value: Any) -> Any:
    return func.sum(case((condition, value), else_=0))


def _reference_date(key: str) -> date | None:
    try:
        return date.fromisoformat(key[-10:])
    except ValueError:
        return None
