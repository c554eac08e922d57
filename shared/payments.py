"""The payment request (SPEC 3): what other modules call to take money from a member.

`parse` checks a request body (HTTP or Celery kwargs, the same fields) and returns its normal
form. `pay` decides it atomically, under the request's row lock and the member's account lock
(taken by `ledger.post`, whose funds check is the decision):

1. balance >= amount: book member -amount, counterparty +amount (nothing when
   `book_internals` is false); `paid`; then the after-payment check;
2. balance < amount and auto top-up `on`, or `allow_checkout`: the card branches, which go
   through `card_fallback`; until Stripe is wired in it offers nothing, so
3. otherwise: `declined`, nothing booked.

A request with a route code gets exactly one callback, written with its terminal status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session

from shared import fields, ledger, notifications, profiles, requests
from shared.config import Settings
from shared.errors import InsufficientFunds, InvalidInput, NotFound
from shared.ledger import Entry, Line
from shared.models import AutoTopUpStatus, EntryType, RequestKind, RequestStatus
from shared.money import format_cents, parse_cents

# Types a module may ask for; top-ups, settlements and corrections are booked by this service.
PAYMENT_TYPES = {
    t.value: t
    for t in (
        EntryType.CLUB_PAYMENT,
        EntryType.CLUB_MEMBERSHIP,
        EntryType.CLUB_TOP_UP,
        EntryType.EVENT_ENTRY,
        EntryType.MISCELLANEOUS,
        EntryType.REFUND,
    )
}


@dataclass(frozen=True)
class PaymentOrder:
    request_id: str
    member_id: str
    amount: int
    description: str
    payment_type: str = EntryType.MISCELLANEOUS.value
    organisation_id: str | None = None
    other_member_id: str | None = None
    route_code: str | None = None
    route_payload: Any = None
    book_internals: bool = True
    allow_checkout: bool = False
    event_id: str | None = None
    session_id: str | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON normal form: what is stored, hashed for idempotency and sent to the task."""
        return {**asdict(self), "amount": format_cents(self.amount)}


def parse(body: Mapping[str, Any], settings: Settings) -> PaymentOrder:
    """Check every field of a payment request; errors name the field."""
    optional_id = lambda name: None if body.get(name) is None else fields.identifier(body[name], name)  # noqa: E731
    if body.get("organisation_id") is not None and body.get("other_member_id") is not None:
        raise InvalidInput("organisation_id or other_member_id: at most one counterparty", field="organisation_id")
    payment_type = body.get("payment_type", EntryType.MISCELLANEOUS.value)
    if payment_type not in PAYMENT_TYPES:
        raise InvalidInput(
            f"payment_type: {payment_type!r} is not one of {', '.join(sorted(PAYMENT_TYPES))}",
            field="payment_type",
        )
    route_code = body.get("route_code")
    if route_code is not None:
        route_code = fields.identifier(route_code, "route_code")
    route_payload = body.get("route_payload")
    if route_payload is not None and len(repr(route_payload)) > 2000:
        raise InvalidInput("route_payload: larger than 2000 characters", field="route_payload")
    order = PaymentOrder(
        request_id=fields.identifier(body.get("request_id"), "request_id"),
        member_id=fields.identifier(body.get("member_id"), "member_id"),
        amount=parse_cents(body.get("amount"), "amount", minimum=1, maximum=settings.max_amount),
        description=fields.text(body.get("description"), "description", max_length=80),
        payment_type=payment_type,
        organisation_id=optional_id("organisation_id"),
        other_member_id=optional_id("other_member_id"),
        route_code=route_code,
        route_payload=route_payload,
        book_internals=fields.boolean(body.get("book_internals", True), "book_internals"),
        allow_checkout=fields.boolean(body.get("allow_checkout", False), "allow_checkout"),
        event_id=optional_id("event_id"),
        session_id=optional_id("session_id"),
    )
    if order.other_member_id == order.member_id:
        raise InvalidInput("other_member_id: a member cannot pay themselves", field="other_member_id")
    return order


def record(session: Session, order: PaymentOrder) -> tuple[requests.Request, bool]:
    return requests.record(session, RequestKind.PAYMENT, order.request_id, order.payload(), **_request_columns(order))


def pay(session: Session, order: PaymentOrder, settings: Settings) -> requests.Request:
    """Record and decide the payment in the caller's transaction; a decided one is returned as is."""
    row = requests.claim(session, RequestKind.PAYMENT, order.request_id, order.payload(), **_request_columns(order))
    if not row.queued:
        return row
    try:
        parties = profiles.payment_parties(
            session, order.member_id, organisation_id=order.organisation_id, other_member_id=order.other_member_id
        )
    except NotFound as exc:
        requests.finish(session, row, RequestStatus.FAILED, reason=exc.message)
        return row

    payer = parties.member_account
    if not order.book_internals:
        # Decide on the balance, book nothing: the caller books its own internal entries.
        ledger.lock_accounts(session, [payer])
        balance = ledger.balance(session, payer)
        if balance < order.amount:
            return _short_of_funds(session, row, order, balance, settings)
    else:
        try:
            booking = ledger.post(
                session,
                Entry(
                    key=f"payment:{order.request_id}",
                    type=PAYMENT_TYPES[order.payment_type],
                    description=order.description,
                    reference=order.request_id,
                    lines=(Line(payer, -order.amount), Line(parties.payee_account, order.amount)),
                    event_id=order.event_id,
                    session_id=order.session_id,
                ),
            )
        except InsufficientFunds as exc:  # nothing written; the member's lock is held
            return _short_of_funds(session, row, order, exc.balance, settings)
        balance = booking.balances.get(payer)
        if balance is None:  # booked before under this key: read the balance afresh
            balance = ledger.balance(session, payer)
    requests.finish(session, row, RequestStatus.PAID)
    if balance < settings.auto_topup_low_limit:
        after_payment_check(session, order.member_id, balance, settings)
    return row


def _request_columns(order: PaymentOrder) -> dict[str, Any]:
    return {"amount": order.amount, "member_id": order.member_id, "route_code": order.route_code}


def _short_of_funds(
    session: Session, row: requests.Request, order: PaymentOrder, balance: int, settings: Settings
) -> requests.Request:
    if card_fallback(session, row, order, balance, settings) is None:
        requests.finish(
            session,
            row,
            RequestStatus.DECLINED,
            reason=f"insufficient funds: balance {format_cents(balance)}, needs {format_cents(row.amount)}",
        )
    return row


def card_fallback(
    session: Session, row: requests.Request, order: PaymentOrder, balance: int, settings: Settings
) -> object | None:
    """The card branches of SPEC 3 steps 2 and 3 (auto top-up, card checkout).

    This is the seam the Stripe work fills. Until then no card can be charged, so members with
    auto top-up `on` and requests that `allow_checkout` take the declined path like everyone else.
    """
    return None


def after_payment_check(session: Session, member_id: str, balance: int, settings: Settings) -> None:
    """SPEC 3: below the low limit, an `on` member is topped up (with Stripe), others warned."""
    if balance >= settings.auto_topup_low_limit:
        return
    member = profiles.get_member(session, member_id)
    if member.auto_topup_status == AutoTopUpStatus.ON.value:
        return  # the after-payment top-up arrives with the Stripe work
    notifications.maybe_warn_low_balance(
        session,
        member,
        balance,
        zone=settings.time_zone,
        throttle_days=settings.low_balance_warning_days,
    )
