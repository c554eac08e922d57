"""The specific-transactions report (ORIGINAL 6.7): the manual adjustments, or the settlements,
booked in a period, with a member section and an organisation section.

An organisation's settlement line shows what the bank was paid (the entry's `bank` posting),
the fee = -amount - bank amount (what the federation kept), and GST = fee / 11 rounded half up
to the cent (the fee includes GST); an adjustment has neither, so both are 0.
Example: net 900.00, bank 882.00 -> fee 18.00, GST 1.64.

Lines are in time order (booking time, then posting id), read through the index on the
entries' booking time. A JSON page holds up to `limit` lines of both sections, with a cursor
(the last line's time and posting id) for the next; the CSV streams the whole period.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from shared import periods
from shared.balances_report import STREAM_BATCH
from shared.errors import InvalidInput
from shared.models import Account, AccountKind, EntryType, JournalEntry, Member, Organisation, Posting, SystemAccount
from shared.money import format_cents

TYPES = {"adjustments": EntryType.MANUAL_ADJUSTMENT, "settlements": EntryType.SETTLEMENT}
MEMBER_COLUMNS = ("Date", "Administrator", "Client", "Transaction Type", "ABF Number", "User", "Description", "Amount")
ORGANISATION_COLUMNS = ("Date", "Administrator", "Client", "Transaction Type", "Club ID", "Organisation",
                        "Description", "Amount", "Payment", "Fee", "GST")
_CURSOR = re.compile(r"([0-9]{1,18})_([0-9]{1,18})")  # 18 digits: still a bigint
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_type(value: str | None) -> str:
    if value not in TYPES:
        raise InvalidInput(f"type: {value!r} is not adjustments or settlements", field="type")
    return value


def gst(fee_cents: int) -> int:
    """fee / 11, rounded half up to the cent."""
    return int((Decimal(fee_cents) / 11).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class Line:
    created_at: datetime
    posting_id: int
    kind: str  # member or organisation
    admin: str | None
    client: str | None
    type: str
    owner: str  # member_id or org_id
    name: str
    description: str
    amount: int
    bank: int

    @property
    def fee(self) -> int:
        return -self.amount - self.bank if self.type == EntryType.SETTLEMENT.value else 0

    def cursor(self) -> str:
        moment = self.created_at - _EPOCH
        micros = (moment.days * 86400 + moment.seconds) * 1_000_000 + moment.microseconds
        return f"{micros}_{self.posting_id}"

    def as_json(self, zone: ZoneInfo) -> dict[str, object]:
        body: dict[str, object] = {
            "date": self.created_at.astimezone(zone).isoformat(timespec="seconds"),
            "admin": self.admin,
            "client": self.client,
            "type": self.type,
        }
        if self.kind == AccountKind.MEMBER.value:
            return {**body, "member_id": self.owner, "name": self.name, "description": self.description,
                    "amount": format_cents(self.amount)}
        return {**body, "organisation_id": self.owner, "organisation": self.name, "description": self.description,
                "amount": format_cents(self.amount), "bank_amount": format_cents(self.bank),
                "fee": format_cents(self.fee), "gst": format_cents(gst(self.fee))}

    def cells(self, zone: ZoneInfo) -> tuple[Any, ...]:
        date_ = self.created_at.astimezone(zone).isoformat(timespec="seconds")
        head = (date_, self.admin or "", self.client or "", self.type, self.owner, self.name, self.description,
                format_cents(self.amount))
        if self.kind == AccountKind.MEMBER.value:
            return head
        return (*head, format_cents(self.bank), format_cents(self.fee), format_cents(gst(self.fee)))


def parse_cursor(raw: str | None) -> tuple[datetime, int] | None:
    if raw is None:
        return None
    match = _CURSOR.fullmatch(raw)
    if match is None:
        raise InvalidInput(f"cursor: {raw[:40]!r} is not a cursor this report gave", field="cursor")
    try:
        moment = _EPOCH + timedelta(microseconds=int(match[1]))
    except OverflowError:
        raise InvalidInput(f"cursor: {raw[:40]!r} is not a cursor this report gave", field="cursor") from None
    return moment, int(match[2])


def _lines(type_: str, start: datetime, end: datetime, kinds: tuple[str, ...]) -> Select[*tuple[Any, ...]]:
    bank_posting = aliased(Posting)
    bank_account = aliased(Account)
    bank = (
        select(func.coalesce(func.sum(bank_posting.amount), 0))
        .join(bank_account, bank_account.id == bank_posting.account_id)
        .where(
            bank_posting.entry_id == JournalEntry.id,
            bank_account.kind == AccountKind.SYSTEM.value,
            bank_account.owner == SystemAccount.BANK.value,
        )
        .correlate(JournalEntry)
        .scalar_subquery()
    )
    member_name = Member.first_name + " " + Member.last_name
    return (
        select(
            JournalEntry.created_at, Posting.id.label("posting_id"), Account.kind, JournalEntry.admin_id,
            JournalEntry.client, JournalEntry.type, Account.owner,
            func.coalesce(Organisation.name, member_name, Account.owner).label("name"),
            JournalEntry.description, Posting.amount, bank.label("bank"),
        )
        .select_from(JournalEntry)
        .join(Posting, Posting.entry_id == JournalEntry.id)
        .join(Account, Account.id == Posting.account_id)
        .outerjoin(Member, Member.account_id == Account.id)
        .outerjoin(Organisation, Organisation.account_id == Account.id)
        .where(
            JournalEntry.type == TYPES[type_].value,
            JournalEntry.created_at >= start,
            JournalEntry.created_at < end,
            Account.kind.in_(kinds),
        )
        .order_by(JournalEntry.created_at, Posting.id)
    )


_BOTH = (AccountKind.MEMBER.value, AccountKind.ORGANISATION.value)


def _line(row: Any) -> Line:
    return Line(row.created_at, row.posting_id, row.kind, row.admin_id, row.client, row.type, row.owner, row.name,
                row.description, int(row.amount), int(row.bank))


def page(
    session: Session, type_: str, period: periods.Period, zone: ZoneInfo, *, size: int,
    after: tuple[datetime, int] | None,
) -> dict[str, object]:
    start, end = period.start(zone), period.end(zone)
    query = _lines(type_, start, end, _BOTH).limit(size + 1)
    if after is not None:
        moment, posting_id = after
        query = query.where(or_(JournalEntry.created_at > moment,
                                and_(JournalEntry.created_at == moment, Posting.id > posting_id)))
    found = [_line(row) for row in session.execute(query)]
    shown = found[:size]
    return {
        "type": type_,
        **period.as_json(),
        "members": [line.as_json(zone) for line in shown if line.kind == AccountKind.MEMBER.value],
        "organisations": [line.as_json(zone) for line in shown if line.kind == AccountKind.ORGANISATION.value],
        "totals": _totals(session, type_, start, end),
        "next_cursor": shown[-1].cursor() if len(found) > size else None,
    }


def _totals(session: Session, type_: str, start: datetime, end: datetime) -> dict[str, dict[str, object]]:
    """Count and sums of the whole period, by section (GST is per line, so not summed here)."""
    lines = _lines(type_, start, end, _BOTH).order_by(None).subquery("lines")
    rows = session.execute(
        select(lines.c.kind, func.count(), func.coalesce(func.sum(lines.c.amount), 0),
               func.coalesce(func.sum(lines.c.bank), 0))
        .group_by(lines.c.kind)
    ).all()
    found = {kind: (count, int(amount), int(bank)) for kind, count, amount, bank in rows}
    members = found.get(AccountKind.MEMBER.value, (0, 0, 0))
    orgs = found.get(AccountKind.ORGANISATION.value, (0, 0, 0))
    org_fee = -orgs[1] - orgs[2] if type_ == "settlements" else 0
    return {
        "members": {"count": members[0], "amount": format_cents(members[1])},
        "organisations": {"count": orgs[0], "amount": format_cents(orgs[1]), "bank_amount": format_cents(orgs[2]),
                          "fee": format_cents(org_fee)},
    }


def csv_rows(session: Session, type_: str, period: periods.Period, zone: ZoneInfo) -> Iterator[tuple[Any, ...]]:
    """`{Type}.csv`: the member section, a blank line, the organisation section; each streamed."""
    start, end = period.start(zone), period.end(zone)
    for kind, title, columns in ((AccountKind.MEMBER.value, "Members", MEMBER_COLUMNS),
                                 (AccountKind.ORGANISATION.value, "Organisations", ORGANISATION_COLUMNS)):
        if kind == AccountKind.ORGANISATION.value:
            yield ()
        yield (title, f"{period.first.isoformat()} to {period.last.isoformat()}")
        yield columns
        query = _lines(type_, start, end, (kind,)).execution_options(yield_per=STREAM_BATCH)
        for row in session.execute(query):
            yield _line(row).cells(zone)
