"""Transfers (SPEC 5): member to member (0 < amount <= the transfer maximum, not to oneself,
both members e-mailed), organisation to member and organisation to organisation (no more than
the paying organisation holds). A member paying an organisation is a payment, not a transfer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session

from shared import fields, ledger, notifications, profiles, requests
from shared.config import Settings
from shared.errors import InsufficientFunds, InvalidInput, NotFound
from shared.ledger import Entry, Line
from shared.models import EntryType, RequestKind, RequestStatus
from shared.money import format_cents, parse_cents


@dataclass(frozen=True)
class TransferOrder:
    request_id: str
    amount: int
    description: str
    from_member_id: str | None = None
    from_organisation_id: str | None = None
    to_member_id: str | None = None
    to_organisation_id: str | None = None

    def payload(self) -> dict[str, Any]:
        return {**asdict(self), "amount": format_cents(self.amount)}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> TransferOrder:
        """The order again from its stored normal form, without today's limits."""
        return cls(**{**payload, "amount": parse_cents(payload["amount"], "amount")})


def parse(body: Mapping[str, Any], settings: Settings) -> TransferOrder:
    source = fields.only_one(dict(body), "from_member_id", "from_organisation_id")
    target = fields.only_one(dict(body), "to_member_id", "to_organisation_id")
    if source == "from_member_id" and target == "to_organisation_id":
        raise InvalidInput(
            "to_organisation_id: a member pays an organisation with a payment, not a transfer",
            field="to_organisation_id",
        )
    maximum = settings.transfer_max if source == "from_member_id" else settings.max_amount
    order = TransferOrder(
        request_id=fields.identifier(body.get("request_id"), "request_id"),
        amount=parse_cents(body.get("amount"), "amount", minimum=1, maximum=maximum),
        description=fields.text(body.get("description"), "description", max_length=80),
        **{source: fields.identifier(body[source], source), target: fields.identifier(body[target], target)},
    )
    if source.removeprefix("from_") == target.removeprefix("to_") and body[source] == body[target]:
        raise InvalidInput(f"{target}: cannot transfer to the same account", field=target)
    return order


def record(session: Session, order: TransferOrder, *, client: str | None = None) -> tuple[requests.Request, bool]:
    return requests.record(
        session, RequestKind.TRANSFER, order.request_id, order.payload(), amount=order.amount,
        member_id=order.from_member_id, client=client,
    )


def transfer(session: Session, order: TransferOrder, settings: Settings) -> requests.Request:
    """Record and book the transfer in the caller's transaction; `declined` if funds are short."""
    row = requests.claim(
        session, RequestKind.TRANSFER, order.request_id, order.payload(), amount=order.amount,
        member_id=order.from_member_id,
    )
    if not row.queued:
        return row
    try:
        sender = profiles.get_member(session, order.from_member_id) if order.from_member_id else None
        recipient = profiles.get_member(session, order.to_member_id) if order.to_member_id else None
        source = sender.account_id if sender else profiles.get_organisation(session, order.from_organisation_id or "").account_id
        target = recipient.account_id if recipient else profiles.get_organisation(session, order.to_organisation_id or "").account_id
    except NotFound as exc:
        requests.finish(session, row, RequestStatus.FAILED, reason=exc.message)
        return row

    entry = Entry(
        key=f"transfer:{order.request_id}",
        type=EntryType.MEMBER_TRANSFER if sender else EntryType.ORG_TRANSFER,
        description=order.description,
        reference=order.request_id,
        lines=(Line(source, -order.amount), Line(target, order.amount)),
        client=row.client,
    )
    try:
        ledger.post(session, entry)
    except InsufficientFunds as exc:  # nothing was written
        requests.finish(session, row, RequestStatus.DECLINED, reason=exc.message)
        return row
    requests.finish(session, row, RequestStatus.PAID)
    if sender and recipient:
        notifications.transfer_emails(session, order.request_id, sender, recipient, order.amount, order.description)
    return row
