"""Card money taken (issue 14 item 5; CONTRACT `GET /api/card-payments`): the card payments
that succeeded, for one member or over a period, newest first, in keyset pages.

- `refunded`: what refunds have taken so far (raised when a refund is booked, lowered if Stripe
  refuses it and the booking is reversed); `refundable`: the remainder a refund may still take,
  amount - refunded (SPEC 5: never more than was charged). An admin may refund any part of it.
- A member may refund only the whole remainder, within the refund window (12 weeks) and only
  if their balance stays >= 0, and the card gets it less the fee (3 %): `member_refund_until`
  says when the window closes, so a portal can offer the button; the balance it knows.
- `status`: `succeeded`, `partially_refunded` or `refunded` (the original's Succeeded,
  Partial refund, Refunded).
- `disputed`: Stripe reported a dispute of it (`charge.dispute.created`, kept in its notes),
  so a portal should not offer a refund of it.
- `created_at`: when the card payment was started (a checkout's money arrives within 24 h of
  it); periods select on it, as the refund window counts from it.

Served by the indexes (member_id, created_at) and (created_at) (migration 0015).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from shared import fields, profiles
from shared.config import Settings
from shared.errors import InvalidInput
from shared.keyset import Cursor
from shared.models import CardPayment, CardPaymentStatus
from shared.money import format_cents
from shared.periods import Period


@dataclass(frozen=True)
class CardPaymentsQuery:
    member_id: str | None
    period: Period | None
    refundable_only: bool = False
    limit: int = fields.PAGE_DEFAULT
    cursor: Cursor | None = None

    def __post_init__(self) -> None:
        if self.member_id is None and self.period is None:
            raise InvalidInput("member_id: give a member_id, or a period (period, or from and to)", field="member_id")


def listing(session: Session, query: CardPaymentsQuery, zone: ZoneInfo) -> tuple[list[CardPayment], Cursor | None]:
    """One page of succeeded card payments, newest first, and the next page's cursor."""
    chosen = select(CardPayment).where(CardPayment.status == CardPaymentStatus.SUCCEEDED.value)
    if query.member_id is not None:
        profiles.get_member(session, query.member_id)  # an unknown member is a 404, not an empty list
        chosen = chosen.where(CardPayment.member_id == query.member_id)
    if query.period is not None:
        chosen = chosen.where(CardPayment.created_at >= query.period.start(zone),
                              CardPayment.created_at < query.period.end(zone))
    if query.refundable_only:
        chosen = chosen.where(CardPayment.amount > CardPayment.refunded)
    if query.cursor is not None:
        chosen = chosen.where(or_(CardPayment.created_at < query.cursor.moment,
                                  and_(CardPayment.created_at == query.cursor.moment, CardPayment.id < query.cursor.row_id)))
    rows = list(session.scalars(
        chosen.order_by(CardPayment.created_at.desc(), CardPayment.id.desc()).limit(query.limit + 1)
    ))
    found = rows[: query.limit]
    following = Cursor(found[-1].created_at, found[-1].id) if len(rows) > query.limit else None
    return found, following


def as_json(card: CardPayment, settings: Settings) -> dict[str, Any]:
    zone = settings.time_zone
    remainder = card.amount - card.refunded
    status = "succeeded" if card.refunded == 0 else "refunded" if remainder <= 0 else "partially_refunded"
    window_closes = card.created_at + timedelta(days=settings.card_refund_window_days)
    return {
        "payment_intent_id": card.payment_intent_id,
        "kind": card.kind,
        "member_id": card.member_id,
        "amount": format_cents(card.amount),
        "refunded": format_cents(card.refunded),
        "refundable": format_cents(max(remainder, 0)),
        "status": status,
        "card": {"brand": card.card_brand, "last4": card.card_last4, "exp_month": card.card_exp_month,
                 "exp_year": card.card_exp_year},
        "disputed": any(isinstance(n, dict) and n.get("type") == "charge.dispute.created"
                        for n in card.stripe_notes or []),
        "created_at": card.created_at.astimezone(zone).isoformat(timespec="seconds"),
        "member_refund_until": window_closes.astimezone(zone).isoformat(timespec="seconds"),
        "request_id": card.request_id,
    }
