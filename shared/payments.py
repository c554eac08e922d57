"""The payment request (SPEC 3): what other modules call to take money from a member.

`parse` checks a request body (HTTP or Celery kwargs, the same fields) and returns its normal
form; `PaymentOrder.from_payload` rebuilds a stored one without checking today's limits again.
A payment debits the member, so only types in that direction are accepted. `pay` decides it atomically, under the request's row lock and the member's account lock
(taken by `ledger.post`, whose funds check is the decision):

1. balance >= amount: book member -amount, counterparty +amount (nothing when
   `book_internals` is false); `paid`; then the after-payment check (a top-up for an `on`
   member below the low limit, else a low-balance warning);
2. balance < amount and auto top-up `on`: an attempt to charge the saved card for the SPEC 4.2
   amount (at most `auto_topup_max_charge`, else straight to step 3) is committed with the
   request still `queued`; once the card money is booked the payment is decided again
   (`card_money_arrived`); if the card fails, or the member cancels first, step 3.
   If another auto top-up of the member is already in flight (SPEC 4.3: at most one), the
   request stays `queued` and waits for it (`result` names it, `requests.WAITING`): when it
   ends (`top_up_ended`, from every outcome) the request is decided again from the balance
   then, without a top-up of its own: paid if it covers it, else step 3. A wait longer than
   `topup_wait_seconds` is ended the same way by the redrive job (`end_wait`);
3. `allow_checkout`: an attempt for (amount - balance) becomes a card checkout, the request
   `awaiting_card`; the card money, when Stripe reports it, pays the request. A declined card
   leaves it waiting (the member may try another); only a cancelled or expired checkout, or
   card money that does not match the attempt (`card_held`), ends it unpaid;
4. otherwise: `declined`, nothing booked.

Stripe is never called here: `shared.charges` makes the calls after commit.

On PostgreSQL the worker first tries `pay_at_once`: the plain case (new or queued request,
known parties, enough funds, still above the low limit after paying) decided in one statement
by the database function `pay_request` (migration 0006), six round trips fewer. Any other case
comes back unwritten and is decided by `pay`, which holds every rule.

A request with a route code gets exactly one callback, written with its terminal status.

An IOU's payment (`iou_id`, made by `shared.ious.pay`) is checked against its IOU under the
IOU's row lock each time it is decided, and pays the IOU in the transaction that books it; it
never takes `pay_at_once`, which knows nothing of IOUs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationInfo, WithJsonSchema, model_validator
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared import bodies, db, ious, ledger, notifications, profiles, requests, topups
from shared.config import Settings
from shared.errors import InsufficientFunds, InvalidInput, NotFound
from shared.ledger import Entry, Line
from shared.models import (
    AutoTopUpStatus,
    CardPayment,
    CardPaymentKind,
    CardPaymentStatus,
    EntryType,
    RequestKind,
    RequestStatus,
    utcnow,
)
from shared.money import format_cents, parse_cents

# Types a module may ask for. A payment moves money from the member, so only the types in
# that direction (CONTRACT, ORIGINAL 2.7): to an organisation (or, with no counterparty, the
# federation) Club Payment, Club Membership, Entry to an event, Miscellaneous, Club Top Up Rev
# and Org Transfer (a club charging a member); to another member, Member Transfer. Club Top Up
# and Refund go from an organisation to a member (a transfer), and top-ups, settlements and
# corrections are booked by this service.
PAYMENT_TYPES = {
    t.value: t
    for t in (
        EntryType.CLUB_PAYMENT,
        EntryType.CLUB_MEMBERSHIP,
        EntryType.EVENT_ENTRY,
        EntryType.MISCELLANEOUS,
        EntryType.CLUB_TOP_UP_REV,
        EntryType.ORG_TRANSFER,
    )
}
MEMBER_PAYMENT_TYPES = {EntryType.MEMBER_TRANSFER.value: EntryType.MEMBER_TRANSFER}


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
    # The IOU this payment pays (`shared.ious`); only that IOU's pay route sets it.
    iou_id: int | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON normal form: what is stored, hashed for idempotency and sent to the task.
        `iou_id` only when set, so that the stored hash of every other payment stays as it was."""
        payload = {**asdict(self), "amount": format_cents(self.amount)}
        if self.iou_id is None:
            del payload["iou_id"]
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PaymentOrder:
        """The order again from its stored normal form: it was checked when it was accepted, so
        today's limits (a lowered maximum, a shorter description) are not applied again."""
        return cls(**{**payload, "amount": parse_cents(payload["amount"], "amount")})


_PAYMENT_TYPES_SCHEMA = {
    "type": "string", "enum": [*PAYMENT_TYPES, *MEMBER_PAYMENT_TYPES],
    "description": f"to an organisation (or none): one of {', '.join(sorted(PAYMENT_TYPES))} (default "
                   f"{EntryType.MISCELLANEOUS.value}); to another member: {', '.join(MEMBER_PAYMENT_TYPES)}"}


class PaymentIn(bodies.Validating):
    """`POST /api/payments` and the `payments.pay` task (`max_amount` and `transfer_max` in
    the context)."""

    model_config = ConfigDict(json_schema_extra=bodies.required("request_id", "member_id", "amount", "description"))
    request_id: bodies.CheckedId = None  # type: ignore[assignment]
    member_id: bodies.CheckedId = None  # type: ignore[assignment]
    amount: bodies.CheckedAmount = None  # type: ignore[assignment]
    description: bodies.CheckedText80 = None  # type: ignore[assignment]
    payment_type: Annotated[str, WithJsonSchema(_PAYMENT_TYPES_SCHEMA)] = EntryType.MISCELLANEOUS.value
    organisation_id: bodies.CheckedOptionalId = Field(default=None, description="at most one counterparty")
    other_member_id: bodies.CheckedOptionalId = None
    route_code: bodies.CheckedOptionalId = None
    route_payload: bodies.CheckedRoutePayload = None
    book_internals: bodies.CheckedFlag = True
    allow_checkout: bodies.CheckedFlag = False
    event_id: bodies.CheckedOptionalId = None
    session_id: bodies.CheckedOptionalId = None
    iou_id: bodies.CheckedOptionalIouId = None

    @model_validator(mode="before")
    @classmethod
    def _counterparty_and_type(cls, body: Any) -> Any:
        """Checked before the fields, as they always were: at most one counterparty, and a type
        in the direction it names (the default is the direction's)."""
        if not isinstance(body, Mapping):
            return body  # pydantic refuses it
        if body.get("organisation_id") is not None and body.get("other_member_id") is not None:
            raise InvalidInput("organisation_id or other_member_id: at most one counterparty", field="organisation_id")
        to_member = body.get("other_member_id") is not None
        allowed = MEMBER_PAYMENT_TYPES if to_member else PAYMENT_TYPES
        payment_type = body.get("payment_type", next(iter(allowed)) if to_member else EntryType.MISCELLANEOUS.value)
        if not isinstance(payment_type, str) or payment_type not in allowed:  # a list is unhashable
            towards = "another member" if to_member else "an organisation"
            raise InvalidInput(
                f"payment_type: {payment_type!r} is not a type of payment to {towards}; "
                f"one of {', '.join(sorted(allowed))}",
                field="payment_type",
            )
        return {**body, "payment_type": payment_type}

    @model_validator(mode="after")
    def _to_another_member(self, info: ValidationInfo) -> PaymentIn:
        if self.other_member_id == self.member_id:
            raise InvalidInput("other_member_id: a member cannot pay themselves", field="other_member_id")
        transfer_max = (info.context or {}).get("transfer_max")
        if self.other_member_id is not None and transfer_max is not None and self.amount > transfer_max:
            # Every way of paying another member has the transfer cap (ORIGINAL 2.7, issue 13).
            raise InvalidInput(f"amount: a payment to another member is at most {format_cents(transfer_max)}",
                               field="amount")
        return self


def parse(body: Mapping[str, Any], settings: Settings) -> PaymentOrder:
    """Check every field of a payment request (`PaymentIn`); errors name the field. A payment
    naming an IOU that is not paying it fails when it is decided (`ious.payable`)."""
    given = bodies.validated(PaymentIn, body, max_amount=settings.max_amount, transfer_max=settings.transfer_max)
    return PaymentOrder(**bodies.declared(given))


# Raised by `pay_request` when a request is not the plain case; it has then written nothing.
NOT_PLAIN = "CB001"
_PAY_REQUEST = text(
    "SELECT entry_id, balance, outbox_id FROM pay_request(:request_id, :request_hash, CAST(:payload AS json),"
    " :member_id, :amount, :route_code, :organisation_id, :other_member_id, :type, :description, :event_id,"
    " :session_id, :now, :low_limit, CAST(:callback AS json), :client)"
)


def pay_at_once(
    engine: Engine, order: PaymentOrder, settings: Settings, *, client: str | None = None
) -> list[int] | None:
    """Decide a plain payment as `paid` in one autocommitted statement (PostgreSQL only).
    `client` makes a new request, as in `requests.claim`; a recorded one keeps its maker, who
    is recorded on the journal entry.

    Returns the outbox rows written (its callback, if it has a route code), or None when the
    request is not the plain case: nothing was written, and `pay` must decide it."""
    if not may_be_plain(engine, order):
        return None
    with db.one_statement(engine) as connection:
        try:
            row = connection.execute(_PAY_REQUEST, _pay_request_arguments(order, settings, client)).one()
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == NOT_PLAIN:
                return None
            raise
    return [] if row.outbox_id is None else [row.outbox_id]


_PAY_REQUESTS = text("SELECT n, paid, outbox_id FROM pay_requests(CAST(:items AS json))")


def pay_many_at_once(
    engine: Engine, orders: list[tuple[PaymentOrder, str | None]], settings: Settings
) -> list[list[int] | None]:
    """`pay_at_once` for many payments (each with its client) in one statement and one
    transaction (`pay_requests`, migration 0017): in the same order, each one's outbox rows, or
    None for one that is not the plain case (it wrote nothing; the second of one request id
    sent twice is not). Only for orders `may_be_plain`."""
    items = [{name: value for name, value in _pay_request_arguments(order, settings, client).items()
              if value is not None} for order, client in orders]
    for item in items:
        item["now"] = item["now"].isoformat()
    with db.one_statement(engine) as connection:
        rows = connection.execute(_PAY_REQUESTS, {"items": json.dumps(items)}).all()
    answers: list[list[int] | None] = [None] * len(items)
    for row in rows:
        answers[row.n - 1] = ([] if row.outbox_id is None else [row.outbox_id]) if row.paid else None
    return answers


def may_be_plain(engine: Engine, order: PaymentOrder) -> bool:
    """Whether `pay_request` may decide it. (A payment to another member e-mails both of them,
    and an IOU's payment settles the IOU in its transaction: `pay` does both.)"""
    return (engine.dialect.name == "postgresql" and order.book_internals and order.other_member_id is None
            and order.iou_id is None)


def _pay_request_arguments(order: PaymentOrder, settings: Settings, client: str | None) -> dict[str, Any]:
    payload = order.payload()
    callback = None
    if order.route_code:
        callback = requests.callback_kwargs(
            order.request_id, order.route_code, order.route_payload, RequestStatus.PAID, order.amount, None,
            member_id=order.member_id, organisation_id=order.organisation_id,
        )
    return {
        "request_id": order.request_id,
        "request_hash": requests.payload_hash(RequestKind.PAYMENT, payload),
        "payload": json.dumps(payload),
        "member_id": order.member_id,
        "amount": order.amount,
        "route_code": order.route_code,
        "organisation_id": order.organisation_id,
        "other_member_id": order.other_member_id,
        "type": EntryType(order.payment_type).value,
        "description": order.description,
        "event_id": order.event_id,
        "session_id": order.session_id,
        "now": utcnow(),
        "low_limit": settings.auto_topup_low_limit,
        "callback": None if callback is None else json.dumps(callback),
        "client": client,
    }


def record(session: Session, order: PaymentOrder, *, client: str | None = None) -> tuple[requests.Request, bool]:
    return requests.record(session, RequestKind.PAYMENT, order.request_id, order.payload(), client=client,
                           **_request_columns(order))


def pay(session: Session, order: PaymentOrder, settings: Settings) -> requests.Request:
    """Record and decide the payment in the caller's transaction; a decided one is returned as is."""
    row = requests.claim(session, RequestKind.PAYMENT, order.request_id, order.payload(), **_request_columns(order))
    return decide_claimed(session, row, order, settings) if row.queued else row


def decide_claimed(
    session: Session, row: requests.Request, order: PaymentOrder, settings: Settings
) -> requests.Request:
    """Decide a claimed, queued request that moves money as this payment does (itself, or a
    transfer between members: ORIGINAL 2.8), with every rule of a payment, cards included.
    One waiting for a top-up (a redelivery) is left to its wait: decided as `end_wait` does,
    never with a top-up of its own. Returns the request as it now is."""
    if (row.result or {}).get(requests.WAITING) is not None:
        end_wait(session, row.request_id, settings)
        return requests.get(session, row.request_id)
    _decide(session, row, order, settings, cards=True)
    return row


def member_transfer(payload: Mapping[str, Any]) -> PaymentOrder:
    """A transfer between members (its stored form), as the payment to the other member it is
    decided as: type Member Transfer, booked under the transfer's own key (`_decide` keys by the
    request's kind), its callback the request's own (`requests.finish`)."""
    return PaymentOrder(
        request_id=payload["request_id"], member_id=payload["from_member_id"],
        amount=parse_cents(payload["amount"], "amount"), description=payload["description"],
        payment_type=EntryType.MEMBER_TRANSFER.value, other_member_id=payload["to_member_id"],
        allow_checkout=payload.get("allow_checkout", False), event_id=payload.get("event_id"),
        session_id=payload.get("session_id"),
    )


def order_of(row: requests.Request) -> PaymentOrder:
    """The payment a stored request decides: its own order, or a transfer between members."""
    if row.kind == RequestKind.TRANSFER.value:
        return member_transfer(row.payload)
    return PaymentOrder.from_payload(row.payload)


def _decide(
    session: Session, row: requests.Request, order: PaymentOrder, settings: Settings, *, cards: bool,
    waited: str | None = None,
) -> None:
    """SPEC 3 under the member's lock; `cards` says whether the card branches may be tried.
    `waited` (how the top-up it waited for ended) decides a waiting request: short of funds,
    it goes to step 3 only, and a decline says why.
    An IOU's payment is checked against its IOU, under the IOU's row lock, each time it is
    decided, and the IOU is settled when it is paid."""
    iou = None
    if order.iou_id is not None:
        iou, refusal = ious.payable(session, order)
        if refusal is not None:
            requests.finish(session, row, RequestStatus.FAILED, reason=refusal)
            return
    try:
        parties = profiles.payment_parties(
            session, order.member_id, organisation_id=order.organisation_id, other_member_id=order.other_member_id
        )
    except NotFound as exc:
        requests.finish(session, row, RequestStatus.FAILED, reason=exc.message)
        return

    payer = parties.member_account
    if not order.book_internals:
        # Decide on the balance, book nothing: the caller books its own internal entries.
        ledger.lock_accounts(session, [payer])
        balance = ledger.balance(session, payer)
        if balance < order.amount:
            _short_of_funds(session, row, order, balance, settings, cards=cards, waited=waited)
            return
    else:
        try:
            booking = ledger.post(
                session,
                Entry(
                    key=f"{row.kind}:{order.request_id}",  # payment:… or transfer:… (ledger namespaces)
                    type=EntryType(order.payment_type),
                    description=order.description,
                    reference=order.request_id,
                    lines=(Line(payer, -order.amount), Line(parties.payee_account, order.amount)),
                    event_id=order.event_id,
                    session_id=order.session_id,
                    client=row.client,
                ),
            )
        except InsufficientFunds as exc:  # nothing written; the member's lock is held
            _short_of_funds(session, row, order, exc.balance, settings, cards=cards, waited=waited)
            return
        # Booked before under this key (no balance came back): read it afresh.
        after = booking.balances.get(payer)
        balance = ledger.balance(session, payer) if after is None else after
    requests.finish(session, row, RequestStatus.PAID)
    if iou is not None:
        ious.paid(session, iou)
    if order.other_member_id is not None and order.book_internals:
        # Both sides, as a transfer between members does (ORIGINAL 6.9).
        notifications.transfer_emails(session, order.request_id, profiles.get_member(session, order.member_id),
                                      profiles.get_member(session, order.other_member_id), order.amount,
                                      order.description)
    if balance < settings.auto_topup_low_limit:
        after_payment_check(session, order.member_id, balance, settings)


def _request_columns(order: PaymentOrder) -> dict[str, Any]:
    return {"amount": order.amount, "member_id": order.member_id, "route_code": order.route_code}


def _short_of_funds(
    session: Session, row: requests.Request, order: PaymentOrder, balance: int, settings: Settings, *, cards: bool,
    waited: str | None = None,
) -> None:
    if cards and card_fallback(session, row, order, balance, settings):
        return  # the request waits for the card
    if waited is not None and _open_checkout(session, order, order.amount - balance):
        return
    short = f"balance {format_cents(balance)}, needs {format_cents(row.amount)}"
    requests.finish(
        session,
        row,
        RequestStatus.DECLINED,
        reason=f"insufficient funds: {short}" if waited is None else f"{waited}; {short}",
    )


def card_fallback(
    session: Session, row: requests.Request, order: PaymentOrder, balance: int, settings: Settings
) -> bool:
    """SPEC 3 steps 2 and 3: top up from the saved card, or else open a card checkout.

    Only commits an attempt row here (the request stays `queued`); the charge or checkout is
    made after commit (`shared.charges`), and its outcome carries the request on.
    """
    member = profiles.get_member(session, order.member_id)
    amount = topups.auto_topup_charge(
        auto_amount=member.auto_topup_amount, balance=balance, payment=order.amount, settings=settings
    )
    if member.auto_topup_status == AutoTopUpStatus.ON.value and member.stripe_customer_id and amount is not None:
        attempt = topups.open_attempt(
            session, key=f"pay-topup:{order.request_id}", kind=CardPaymentKind.AUTO_TOP_UP,
            member_id=order.member_id, amount=amount, request_id=order.request_id,
        )
        if attempt is not None and attempt.status == CardPaymentStatus.PENDING.value:
            session.info.setdefault("charges", []).append(attempt.id)
            return True
        busy = topups.in_flight(session, order.member_id) if attempt is None else None
        if busy is not None:  # another top-up of the member is in flight: its outcome decides
            _wait_for(session, row, busy)
            return True
        # This one already failed (or the other ended meanwhile): go on to step 3.
    # (So does a top-up above `auto_topup_max_charge`: SPEC 5.)
    return _open_checkout(session, order, order.amount - balance)


def _wait_for(session: Session, row: requests.Request, attempt: CardPayment) -> None:
    """The request stays `queued`, naming the top-up it waits for; the wait starts now
    (`updated_at`, from which its deadline counts: nothing else writes the row until it is
    decided, a redelivery included, see `pay`)."""
    requests.finish(session, row, RequestStatus.QUEUED, result={requests.WAITING: attempt.id})


def top_up_ended(session: Session, attempt: CardPayment, settings: Settings) -> None:
    """An auto top-up ended (booked, failed, cancelled, held): every payment of the member
    waiting for it is decided again, in the transaction that records the outcome. Called by
    each outcome below, after the attempt's own request, which the top-up was sized for."""
    if attempt.kind != CardPaymentKind.AUTO_TOP_UP.value:
        return
    for row in requests.waiting_for(session, attempt.member_id, attempt.id):
        _decide_waiting(session, row, settings, _how_it_ended(attempt))


def end_wait(session: Session, request_id: str, settings: Settings) -> None:
    """A payment found by `requests.waits_due`: decided now if its top-up has ended (an outcome
    that skipped it) or it has waited longer than `topup_wait_seconds`; else left waiting."""
    row = requests.lock_existing(session, request_id)
    waited_for = (row.result or {}).get(requests.WAITING)
    if not row.queued or waited_for is None:
        return  # decided meanwhile
    attempt = session.get(CardPayment, waited_for)
    if attempt is not None and attempt.status == CardPaymentStatus.PENDING.value:
        if utcnow() - row.updated_at < timedelta(seconds=settings.topup_wait_seconds):
            return
        how = f"auto top-up {waited_for} did not finish within {settings.topup_wait_seconds:g} s"
    else:
        how = f"auto top-up {waited_for} not found" if attempt is None else _how_it_ended(attempt)
    _decide_waiting(session, row, settings, how)


def _how_it_ended(attempt: CardPayment) -> str:
    if attempt.status == CardPaymentStatus.SUCCEEDED.value:
        return f"auto top-up {attempt.id} was not enough"
    return f"auto top-up {attempt.id} {attempt.status}: {attempt.last_error or 'no reason given'}"


def _decide_waiting(session: Session, row: requests.Request, settings: Settings, waited: str) -> None:
    """Decide a waiting payment from the balance now, with no top-up of its own (SPEC 3 step
    3 if still short). It stops naming the top-up first, so a checkout opened for it is not
    taken for a wait."""
    requests.finish(session, row, RequestStatus.QUEUED, result={})
    _decide(session, row, order_of(row), settings, cards=False, waited=waited)


def _open_checkout(session: Session, order: PaymentOrder, amount: int) -> bool:
    if not order.allow_checkout:
        return False
    attempt = topups.open_attempt(
        session, key=f"checkout:{order.request_id}", kind=CardPaymentKind.CHECKOUT,
        member_id=order.member_id, amount=amount, request_id=order.request_id,
    )
    if attempt is None:
        return False
    if attempt.status == CardPaymentStatus.PENDING.value:
        session.info.setdefault("checkouts", []).append(attempt.id)
    return attempt.status in (CardPaymentStatus.PENDING.value, CardPaymentStatus.AWAITING_CARD.value)


def _waiting_for_card(session: Session, attempt: CardPayment) -> requests.Request | None:
    """The request the attempt's card money is for, locked, if it still waits for it."""
    if attempt.request_id is None:
        return None
    row = requests.lock_existing(session, attempt.request_id)
    if row.status not in (RequestStatus.QUEUED.value, RequestStatus.AWAITING_CARD.value):
        return None
    return row


def await_card(session: Session, attempt: CardPayment, settings: Settings) -> None:
    """The checkout exists: the request is `awaiting_card` with what a browser needs."""
    row = _waiting_for_card(session, attempt)
    if row is None:
        return
    checkout = {
        "payment_intent_id": attempt.payment_intent_id,
        "client_secret": attempt.client_secret,
        "amount": format_cents(attempt.amount),
        "publishable_key": settings.stripe_publishable_key,
    }
    requests.finish(session, row, RequestStatus.AWAITING_CARD, result={"checkout": checkout})


def card_money_arrived(session: Session, attempt: CardPayment, settings: Settings) -> None:
    """Card money for a request is booked: decide the request again (it can now be paid),
    then the payments waiting for this top-up."""
    row = _waiting_for_card(session, attempt)
    if row is not None and row.kind == RequestKind.TOPUP.value:
        requests.finish(session, row, RequestStatus.PAID, result={})
    elif row is not None:
        _decide(session, row, order_of(row), settings, cards=False)
    top_up_ended(session, attempt, settings)


def card_failed(session: Session, attempt: CardPayment, reason: str, settings: Settings) -> None:
    """The card did not pay: a payment goes on to a checkout if allowed (SPEC 3 step 3), else
    fails; so do the payments waiting for this top-up."""
    row = _waiting_for_card(session, attempt)
    if (row is not None and row.kind in (RequestKind.PAYMENT.value, RequestKind.TRANSFER.value)
            and attempt.kind == CardPaymentKind.AUTO_TOP_UP.value):
        order = order_of(row)
        balance = ledger.balance(session, profiles.get_member(session, order.member_id).account_id)
        if not _open_checkout(session, order, order.amount - balance):
            requests.finish(session, row, RequestStatus.DECLINED, reason=f"auto top-up failed: {reason}", result={})
    elif row is not None:
        requests.finish(session, row, RequestStatus.FAILED, reason=f"card payment failed: {reason}", result={})
    top_up_ended(session, attempt, settings)


def card_held(session: Session, attempt: CardPayment, reason: str, settings: Settings) -> None:
    """Stripe's money did not match the attempt and is held for an admin: the request it was
    for is not paid. It fails (with its one callback) rather than wait for ever; no checkout is
    opened, since card money has already moved. Payments waiting for this top-up go on."""
    row = _waiting_for_card(session, attempt)
    if row is not None:
        requests.finish(session, row, RequestStatus.FAILED, reason=f"card payment held for review: {reason}",
                        result={})
    top_up_ended(session, attempt, settings)


def after_payment_check(session: Session, member_id: str, balance: int, settings: Settings) -> None:
    """SPEC 3: below the low limit, an `on` member gets one top-up of their auto amount,
    any other member who opted in a low-balance warning."""
    member = profiles.get_member(session, member_id)
    if member.auto_topup_status == AutoTopUpStatus.ON.value and member.stripe_customer_id:
        amount = topups.auto_topup_charge(auto_amount=member.auto_topup_amount, balance=balance, payment=0,
                                          settings=settings)
        if amount is None:
            return  # above the largest auto top-up charge (SPEC 5)
        attempt = topups.open_attempt(
            session, key=f"low-{member_id}-{utcnow():%Y%m%dT%H%M%S%f}", kind=CardPaymentKind.AUTO_TOP_UP,
            member_id=member_id, amount=amount,
        )
        if attempt is not None and attempt.status == CardPaymentStatus.PENDING.value:
            session.info.setdefault("charges", []).append(attempt.id)
        return
    notifications.maybe_warn_low_balance(
        session, member, balance, zone=settings.time_zone, throttle_days=settings.low_balance_warning_days
    )
