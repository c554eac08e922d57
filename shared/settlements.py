"""Settlements (SPEC 5): paying an organisation's money out to its bank, per organisation for a
reference date (default: the last day of last month, local time).

gross = the balance at the end of the reference date, less what settlements booked after that
date have already paid out of it; net = gross - the organisation's minimum balance after
settlement, or the admin's override amount, which may not exceed that net; only net > 0 is
settled; bank amount = round(net * (1 - fee/100), 2), half up; booking: organisation -net,
`bank` +bank amount, `fees` +(net - bank amount). Example: 1000.00, minimum 100.00, 2 % ->
net 900.00, bank 882.00, fee 18.00.

Money is settled once whatever the order of the dates: one organisation and reference date
settle once, whatever the request id (the entry's idempotency key is
`settlement:{org}:{date}`), and a reference date on or before the organisation's latest
settled date, or one that has not ended, is refused in that organisation's result. Every check
is made under the organisation's account lock, so two settlements of one organisation (for any
dates) are decided one after the other, the second seeing the first's booking.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import fields, ledger, profiles, requests, statements
from shared.config import Settings
from shared.errors import Conflict, InsufficientFunds, InvalidInput, NotFound
from shared.ledger import Entry, Line
from shared.models import (
    EntryType,
    JournalEntry,
    Organisation,
    Posting,
    RequestKind,
    RequestStatus,
    SystemAccount,
    utcnow,
)
from shared.money import format_cents, parse_cents

MAX_ORGANISATIONS = 1000


@dataclass(frozen=True)
class SettlementOrder:
    request_id: str
    reference_date: date
    organisations: tuple[tuple[str, int | None], ...]  # (org id, override amount in cents)

    def payload(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "reference_date": self.reference_date.isoformat(),
            "organisations": [
                {"organisation_id": org, "override_amount": None if o is None else format_cents(o)}
                for org, o in self.organisations
            ],
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SettlementOrder:
        """The order again from its stored normal form, without today's limits."""
        return cls(
            request_id=payload["request_id"],
            reference_date=date.fromisoformat(payload["reference_date"]),
            organisations=tuple(
                (item["organisation_id"], None if item["override_amount"] is None else parse_cents(item["override_amount"]))
                for item in payload["organisations"]
            ),
        )


def default_reference_date(today: date) -> date:
    """The last day of last month."""
    return today.replace(day=1) - timedelta(days=1)


def bank_amount(net: int, fee_percent: Decimal) -> int:
    """round(net * (1 - fee/100), 2), half up, in cents."""
    return int((Decimal(net) * (100 - fee_percent) / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def parse(body: Mapping[str, Any], settings: Settings, *, now: datetime | None = None) -> SettlementOrder:
    today = (now or utcnow()).astimezone(settings.time_zone).date()
    raw_date = body.get("reference_date")
    reference = default_reference_date(today) if raw_date is None else fields.local_date(raw_date, "reference_date")
    if reference >= today:
        raise InvalidInput(
            f"reference_date: {reference} has not ended yet (today is {today})", field="reference_date"
        )
    items = body.get("organisations")
    if not isinstance(items, list) or not items or len(items) > MAX_ORGANISATIONS:
        raise InvalidInput(
            f"organisations: expected a list of 1 to {MAX_ORGANISATIONS} organisations", field="organisations"
        )
    organisations: list[tuple[str, int | None]] = []
    for item in items:
        if not isinstance(item, dict):
            raise InvalidInput("organisations: each item must be an object", field="organisations")
        org = fields.identifier(item.get("organisation_id"), "organisation_id")
        override = item.get("override_amount")
        cents = None if override is None else parse_cents(
            override, "override_amount", minimum=1, maximum=settings.max_amount
        )
        organisations.append((org, cents))
    if len({org for org, _ in organisations}) != len(organisations):
        raise InvalidInput("organisations: an organisation is listed twice", field="organisations")
    return SettlementOrder(
        request_id=fields.identifier(body.get("request_id"), "request_id"),
        reference_date=reference,
        organisations=tuple(organisations),
    )


def record(session: Session, order: SettlementOrder, *, client: str | None = None) -> tuple[requests.Request, bool]:
    # The amount is only known once settled.
    return requests.record(session, RequestKind.SETTLEMENT, order.request_id, order.payload(), amount=0,
                           client=client)


def settle(session: Session, order: SettlementOrder, settings: Settings) -> requests.Request:
    """Settle each organisation in turn; the request lists every result."""
    row = requests.claim(session, RequestKind.SETTLEMENT, order.request_id, order.payload(), amount=0)
    if not row.queued:
        return row
    # Every organisation's account locked first, in ascending id (DESIGN's one lock order):
    # locked one by one in the order asked, [a, b] and [b, a] at once would deadlock.
    listed = [org_id for org_id, _ in order.organisations]
    ledger.lock_accounts(session, session.scalars(select(Organisation.account_id).where(Organisation.org_id.in_(listed))))
    results = []
    for org_id, override in order.organisations:
        try:  # a refusal writes nothing, so the other organisations go on
            results.append(_settle_one(session, order, org_id, override, settings, client=row.client))
        except (NotFound, InsufficientFunds) as exc:
            results.append({"organisation_id": org_id, "status": "failed", "reason": exc.message})
    requests.finish(
        session,
        row,
        RequestStatus.COMPLETED,
        result={"reference_date": order.reference_date.isoformat(), "organisations": results},
        amount=sum(parse_cents(r["net"]) for r in results if r["status"] == "settled"),
    )
    return row


def _settle_one(
    session: Session, order: SettlementOrder, org_id: str, override: int | None, settings: Settings,
    *, client: str | None,
) -> dict[str, Any]:
    """One organisation, under its account lock (taken by `settle`)."""
    key = f"settlement:{org_id}:{order.reference_date.isoformat()}"
    earlier = session.scalar(select(JournalEntry.id).where(JournalEntry.idempotency_key == key))
    if earlier is not None:
        return {"organisation_id": org_id, "status": "already_settled", "entry_id": earlier}
    org = profiles.get_organisation(session, org_id)
    end = statements.end_of_local_day(order.reference_date, settings.time_zone)
    if end > utcnow():
        return _refused(org_id, f"reference_date: {order.reference_date} has not ended yet")
    latest = latest_settled_date(session, org.account_id)
    if latest is not None and order.reference_date <= latest:
        return _refused(
            org_id,
            f"reference_date: organisation {org_id} is settled to {latest.isoformat()}; "
            f"{order.reference_date.isoformat()} is not after it",
        )
    gross = ledger.balance_at(session, org.account_id, end) - settled_since(session, org.account_id, end)
    net = gross - org.minimum_balance_after_settlement
    if override is not None:
        if override > net:
            return _refused(
                org_id, f"override_amount: {format_cents(override)} is more than the net {format_cents(max(net, 0))}"
            )
        net = override
    result: dict[str, Any] = {"organisation_id": org_id, "gross": format_cents(gross), "net": format_cents(max(net, 0))}
    if net <= 0:
        return {**result, "status": "nothing_to_settle"}
    fee_percent = org.settlement_fee_percent if org.settlement_fee_percent is not None else settings.settlement_fee_percent
    bank = bank_amount(net, fee_percent)
    lines = [Line(org.account_id, -net)]
    if bank:
        lines.append(Line(profiles.system_account(session, SystemAccount.BANK), bank))
    if net - bank:
        lines.append(Line(profiles.system_account(session, SystemAccount.FEES), net - bank))
    try:
        booking = ledger.post(
            session,
            Entry(
                key=key,
                type=EntryType.SETTLEMENT,
                description=f"Settlement to {order.reference_date.isoformat()}",
                reference=order.request_id,
                lines=tuple(lines),
                client=client,
            ),
        )
    except Conflict:  # a concurrent request settled it first
        earlier = session.scalar(select(JournalEntry.id).where(JournalEntry.idempotency_key == key))
        return {"organisation_id": org_id, "status": "already_settled", "entry_id": earlier}
    status = "already_settled" if booking.replayed else "settled"
    return {
        **result,
        "status": status,
        "fee_percent": f"{fee_percent:.2f}",
        "bank_amount": format_cents(bank),
        "fee": format_cents(net - bank),
        "entry_id": booking.entry_id,
    }


def latest_settled_date(session: Session, account_id: int) -> date | None:
    """The latest reference date the account was settled to: the date that ends each
    settlement's key `settlement:{org}:{YYYY-MM-DD}`."""
    key = JournalEntry.idempotency_key
    latest = session.scalar(
        select(func.max(func.substr(key, func.length(key) - 9)))
        .join(Posting, Posting.entry_id == JournalEntry.id)
        .where(Posting.account_id == account_id, JournalEntry.type == EntryType.SETTLEMENT.value)
    )
    return None if latest is None else date.fromisoformat(latest)


def settled_since(session: Session, account_id: int, since: datetime) -> int:
    """What settlements booked at or after `since` took out of the account, in cents (>= 0)."""
    total = session.scalar(
        select(func.coalesce(func.sum(-Posting.amount), 0))
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(
            Posting.account_id == account_id,
            JournalEntry.type == EntryType.SETTLEMENT.value,
            JournalEntry.created_at >= since,
        )
    )
    return int(total or 0)


def _refused(org_id: str, reason: str) -> dict[str, Any]:
    return {"organisation_id": org_id, "status": "failed", "reason": reason}
