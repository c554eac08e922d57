"""Card refunds (SPEC 5).

By the member: the whole unrefunded remainder of one card payment, within the refund window
(12 weeks), only if their balance stays >= 0; the member is debited the remainder, the card
gets it less the fee (3 %), and the fee is booked to `fees`. By an admin: any part of the
remainder, no fee. Never more than was charged in total: the card payment's row is locked while
its refunded total is checked and raised.

The booking is committed first (the request stays `queued`, its result `booked`), then Stripe
is asked to refund, with `refund:{request_id}` as the idempotency key and in the metadata. Every
run of the request's task (a retry after a Stripe outage, a redelivery after a crash, a redrive
of the stuck request) and the reconciler (`reconcile`) send a booked refund that is not `paid`
yet; each looks for the refund at Stripe by that key before making it, so a crash between
Stripe's refund and our `paid` never refunds twice (localstripe ignores idempotency keys). If
Stripe refuses for good the booking is reversed by a new entry, so the ledger never shows a
refund the card did not get. A refund whose card amount would be 0.00 (the fee takes it all) is
declined, never booked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import bodies, db, fields, healing, ledger, notifications, profiles, requests
from shared.config import Settings
from shared.errors import InsufficientFunds, InvalidAmount, InvalidInput, StripeRequestFailed
from shared.ledger import Entry, Line
from shared.models import (
    CardPayment,
    CardPaymentStatus,
    EntryType,
    PaymentRequest,
    RequestKind,
    RequestStatus,
    SystemAccount,
    utcnow,
)
from shared.money import format_cents, parse_cents
from shared.stripe_gateway import RefundInfo, StripeGateway

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefundOrder:
    request_id: str
    payment_intent_id: str
    by: str  # "member" or "admin"
    amount: int | None = None  # admin only; None: the whole remainder
    admin_id: str | None = None

    def payload(self) -> dict[str, Any]:
        return {**asdict(self), "amount": None if self.amount is None else format_cents(self.amount)}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> RefundOrder:
        """The order again from its stored normal form, without today's limits."""
        amount = payload["amount"]
        return cls(**{**payload, "amount": None if amount is None else parse_cents(amount, "amount")})


class RefundIn(bodies.Validating):
    """`POST /api/refunds` and the `payments.refund` task (`max_amount` in the context)."""

    model_config = ConfigDict(json_schema_extra=bodies.required("request_id", "by", "payment_intent_id"))
    by: Literal["member", "admin"] = None  # type: ignore[assignment]
    payment_intent_id: bodies.CheckedText255 = None  # type: ignore[assignment]
    request_id: bodies.CheckedId = None  # type: ignore[assignment]
    amount: bodies.CheckedOptionalAmount = Field(default=None, description="admin only; a member refunds the whole remainder")
    admin_id: Annotated[str | None, WithJsonSchema({"anyOf": [bodies.ID_SCHEMA, {"type": "null"}],
                                                    "description": "required when by is admin (a member's refund ignores it)"})] = None

    @model_validator(mode="before")
    @classmethod
    def _who(cls, body: Any) -> Any:
        if not isinstance(body, Mapping):
            return body  # pydantic refuses it
        by = body.get("by")
        if by not in ("member", "admin"):
            raise InvalidInput("by: must be member or admin", field="by")
        if by == "member" and body.get("amount") is not None:
            raise InvalidInput("amount: a member refunds the whole remainder; leave amount out", field="amount")
        return body

    @field_validator("admin_id", mode="before")
    @classmethod
    def _admin(cls, value: Any, info: ValidationInfo) -> str | None:
        return fields.identifier(value, "admin_id") if info.data.get("by") == "admin" else None


def parse(body: Mapping[str, Any], settings: Settings) -> RefundOrder:
    return RefundOrder(**bodies.declared(bodies.validated(RefundIn, body, max_amount=settings.max_amount)))


def fee(amount: int, percent: Decimal) -> int:
    return int((Decimal(amount) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def record(session: Session, order: RefundOrder, *, client: str | None = None) -> tuple[requests.Request, bool]:
    return requests.record(session, RequestKind.REFUND, order.request_id, order.payload(), amount=order.amount or 0,
                           client=client)


def book(session: Session, order: RefundOrder, settings: Settings) -> requests.Request:
    """Check and book the refund; the Stripe refund follows after commit (`send_to_card`).

    A refund booked by an earlier run and not yet `paid` is sent again: that run may have met
    a Stripe outage or died after its commit."""
    row = requests.claim(session, RequestKind.REFUND, order.request_id, order.payload(), amount=order.amount or 0)
    if not row.queued:
        return row
    if (row.result or {}).get("booked"):
        session.info.setdefault("refunds", []).append(order.request_id)
        return row
    card = session.scalar(
        select(CardPayment).where(CardPayment.payment_intent_id == order.payment_intent_id).with_for_update()
    )
    reason = _refusal(card, order, settings)
    if reason:
        requests.finish(session, row, RequestStatus.DECLINED, reason=reason)
        return row
    assert card is not None
    remainder = card.amount - card.refunded
    amount = remainder if order.amount is None else order.amount
    charge = fee(amount, settings.card_refund_fee_percent) if order.by == "member" else 0
    if amount - charge <= 0:
        # Stripe refunds no 0.00, and the ledger books no zero line: nothing to refund.
        requests.finish(session, row, RequestStatus.DECLINED, reason=(
            f"{order.payment_intent_id}: the {settings.card_refund_fee_percent.normalize():f} % fee on "
            f"{format_cents(amount)} leaves 0.00 for the card"))
        return row
    member = profiles.get_member(session, card.member_id)
    lines = [Line(member.account_id, -amount),
             Line(profiles.system_account(session, SystemAccount.STRIPE), amount - charge)]
    if charge:
        lines.append(Line(profiles.system_account(session, SystemAccount.FEES), charge))
    try:
        booking = ledger.post(session, Entry(
            key=f"refund:{order.request_id}", type=EntryType.CARD_REFUND,
            description=f"Refund to card of {order.payment_intent_id}", reference=order.request_id,
            lines=tuple(lines), admin_id=order.admin_id, client=row.client,
        ))
    except InsufficientFunds as exc:
        requests.finish(session, row, RequestStatus.DECLINED, reason=exc.message)
        return row
    card.refunded += amount
    card.updated_at = utcnow()
    requests.finish(session, row, RequestStatus.QUEUED, amount=amount, result={
        "booked": True, "entry_id": booking.entry_id, "member_id": card.member_id,
        "to_card": format_cents(amount - charge), "fee": format_cents(charge),
    })
    session.info.setdefault("refunds", []).append(order.request_id)
    return row


def send_to_card(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, request_id: str,
    dispatch: Callable[[list[int]], None] | None = None,
) -> str:
    """Have Stripe refund what was booked, once; reverse the booking if Stripe refuses for good.
    The outbox rows that outcome writes (the callback, the "Card Refund" e-mail) are handed to
    `dispatch` after commit, when given; else the relay sends them.

    Returns what happened: `paid`, `reversed`, `busy` (another process holds this refund) or
    `nothing to do`. Raises `StripeUnavailable` when Stripe cannot be reached: the refund stays
    booked and `queued`, for a retry or the reconciler. One process at a time per refund (see
    `charges.charge`)."""
    with db.exclusive(sessions, f"card-refund:{request_id}") as ours:
        if not ours:
            return "busy"
        outcome, outbox_ids = _send_to_card(sessions, gateway, settings, request_id)
    if dispatch is not None and outbox_ids:
        dispatch(outbox_ids)
    return outcome


def _send_to_card(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, request_id: str
) -> tuple[str, list[int]]:
    with sessions.begin() as session:
        row = requests.get(session, request_id)
        if not row.queued or not (row.result or {}).get("booked"):
            return "nothing to do", []
        order = RefundOrder.from_payload(row.payload)
        to_card = parse_cents((row.result or {})["to_card"])
        first_run = row.attempts <= 1
    if first_run and os.environ.get("PAYMENTS_TEST_CRASH_AFTER_REFUND_BOOKED") == request_id:
        os._exit(17)  # test hook: the worker dies right after the booking's commit (first run only)
    key = f"refund:{request_id}"
    try:
        refund = gateway.find_refund(payment_intent_id=order.payment_intent_id, attempt_key=key)
    except StripeRequestFailed:
        refund = None  # the refund itself will say whether Stripe refuses it
    if refund is None:
        try:
            refund = gateway.refund(payment_intent_id=order.payment_intent_id, amount_cents=to_card,
                                    idempotency_key=key, metadata={"request_id": request_id})
        except (StripeRequestFailed, InvalidAmount) as exc:
            return _refused(sessions, settings, request_id, exc.message)
        if os.environ.get("PAYMENTS_TEST_CRASH_AFTER_REFUND_SENT") == request_id:
            os._exit(17)  # test hook: the worker dies between Stripe's refund and our `paid`
    if not refund.made:
        return _refused(sessions, settings, request_id, f"refund {refund.id} is {refund.status}")
    return _paid(sessions, request_id, refund)


def _paid(sessions: sessionmaker[Session], request_id: str, refund: RefundInfo) -> tuple[str, list[int]]:
    with sessions.begin() as session:
        row = requests.lock_existing(session, request_id)
        if row.queued:
            requests.finish(session, row, RequestStatus.PAID, result={**(row.result or {}), "stripe_refund_id": refund.id})
            result = row.result or {}
            member_id = result.get("member_id") or row.member_id
            if member_id:
                notifications.card_refund_email(
                    session, request_id, profiles.get_member(session, str(member_id)),
                    to_card=str(result.get("to_card")), debited=row.amount, admin_id=(row.payload or {}).get("admin_id"))
        outbox_ids = session.info.pop("outbox", [])
    return "paid", outbox_ids


def _refused(
    sessions: sessionmaker[Session], settings: Settings, request_id: str, reason: str
) -> tuple[str, list[int]]:
    with sessions.begin() as session:
        _reverse(session, request_id, reason, settings)
        outbox_ids = session.info.pop("outbox", [])
    return "reversed", outbox_ids


def unsent(session: Session, settings: Settings, older_than: timedelta) -> list[str]:
    """Card refunds booked more than `older_than` ago and still not sent (still `queued`), due
    for a try, longest due first, at most `heal_batch` (DESIGN invariant 12: one that keeps
    failing is backed off behind the others)."""
    now = utcnow()
    return list(session.scalars(
        select(PaymentRequest.request_id)
        .where(PaymentRequest.status == RequestStatus.QUEUED.value,
               PaymentRequest.updated_at < now - older_than,
               PaymentRequest.kind == RequestKind.REFUND.value,
               PaymentRequest.result["booked"].as_boolean().is_(True),
               healing.is_due(PaymentRequest.next_heal_at, now))
        .order_by(healing.due_order(PaymentRequest.next_heal_at, PaymentRequest.updated_at))
        .limit(settings.heal_batch)
    ))


def reconcile(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, older_than: timedelta,
    *, budget_seconds: float | None = None, dispatch: Callable[[list[int]], None] | None = None,
) -> tuple[int, int]:
    """Send every card refund booked but not sent after `older_than` (SPEC 5: swept up by the
    reconciler). Each on its own: one that fails is logged, counted and backed off, left
    `queued` for a later run (never reversed without Stripe's answer, so never given up), and
    the others go on. Returns (sent, not sent)."""
    with sessions.begin() as session:
        due = unsent(session, settings, older_than)
    sent: list[str] = []
    not_sent: list[str] = []

    def send(request_id: str) -> None:
        if send_to_card(sessions, gateway, settings, request_id, dispatch) in ("paid", "reversed"):
            sent.append(request_id)

    def failed(request_id: str, exc: Exception) -> None:
        not_sent.append(request_id)
        with sessions.begin() as session:
            requests.back_off(session, request_id, settings)

    healing.each(due, send, failed, what="send card refund", budget_seconds=budget_seconds)
    return len(sent), len(not_sent)


def _refusal(card: CardPayment | None, order: RefundOrder, settings: Settings) -> str | None:
    if card is None or card.status != CardPaymentStatus.SUCCEEDED.value:
        return f"payment_intent_id: {order.payment_intent_id} is not a card payment that succeeded"
    remainder = card.amount - card.refunded
    if remainder <= 0:
        return f"{order.payment_intent_id}: already refunded in full"
    if order.amount is not None and order.amount > remainder:
        return f"amount: {format_cents(order.amount)} is more than the unrefunded {format_cents(remainder)}"
    if order.by == "member" and utcnow() - card.created_at > timedelta(days=settings.card_refund_window_days):
        return f"{order.payment_intent_id}: older than {settings.card_refund_window_days} days; ask an admin"
    return None


def _reverse(session: Session, request_id: str, reason: str, settings: Settings) -> None:
    row = requests.lock_existing(session, request_id)
    if not row.queued:
        return
    order = RefundOrder.from_payload(row.payload)
    card = session.scalar(
        select(CardPayment).where(CardPayment.payment_intent_id == order.payment_intent_id).with_for_update()
    )
    entry = ledger.entry_lines(session, f"refund:{request_id}")
    ledger.post(session, Entry(
        key=f"refund-reversal:{request_id}", type=EntryType.CARD_REFUND,
        description=f"Refund to card of {order.payment_intent_id} not made", reference=request_id,
        lines=tuple(Line(account, -amount) for account, amount in entry), allow_negative=False,
        client=row.client,
    ))
    if card is not None:
        card.refunded -= row.amount
    requests.finish(session, row, RequestStatus.FAILED, reason=f"Stripe refused the refund: {reason}")
