"""Card money in (SPEC 3 steps 2 and 3, SPEC 4, SPEC 5 manual top-up): the rules and the
database steps, with no network call. `shared.charges` puts the Stripe calls between them.

Every attempt to take card money is a `card_payments` row committed before Stripe is called
(DESIGN invariant 5). Its `attempt_key` is the Stripe idempotency key and the key of the
booking, so card money is booked at most once per attempt however often Stripe reports it;
at most one auto top-up per member is in flight (a partial unique index).

Limits count what is in flight: a manual top-up is checked, under the member's account lock,
against the balance plus every top-up of the member (manual or auto) still `pending` or
`awaiting_card`. Every top-up attempt is opened under that same lock, so concurrent top-ups
cannot each pass alone. A payment's checkout is not a top-up (SPEC 5 "every top-up still in
flight"): its card money pays its request at once and leaves the balance no higher, so it is
not counted. An auto top-up never charges more than `auto_topup_max_charge`. A late
outcome leaves a member who cancelled `off`: a decline neither makes them `failed` nor e-mails
them (nor a member saving a new card), and a success does not turn them back on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ConfigDict
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import bodies, ledger, notifications, profiles, requests
from shared.config import Settings
from shared.stripe_gateway import CardDetails
from shared.db import dialect_insert, dialect_name
from shared.errors import InvalidInput, NotFound
from shared.ledger import Booking, Entry, Line
from shared.models import (
    AutoTopUpStatus,
    CardPayment,
    CardPaymentKind,
    CardPaymentStatus,
    EntryType,
    Member,
    RequestKind,
    RequestStatus,
    SystemAccount,
    utcnow,
)
from shared.money import format_cents, parse_cents

ENTRY_TYPE = {
    CardPaymentKind.AUTO_TOP_UP.value: EntryType.AUTO_TOP_UP,
    CardPaymentKind.MANUAL_TOP_UP.value: EntryType.MANUAL_TOP_UP,
    CardPaymentKind.CHECKOUT.value: EntryType.CC_PAYMENT,
}


def topup_amount(*, auto_amount: int, balance: int, payment: int, low_limit: int) -> int:
    """SPEC 4.2: the top-up T for a payment A from balance B, auto amount U, low limit L.

    T = max(U, A); when B < L and B + T - A would still be below L, T is instead the smallest
    multiple of U that brings the balance after the payment up to L.
    """
    amount = max(auto_amount, payment)
    if balance < low_limit and balance + amount - payment < low_limit:
        needed = low_limit - balance + payment
        amount = -(-needed // auto_amount) * auto_amount
    return amount


def auto_topup_charge(*, auto_amount: int, balance: int, payment: int, settings: Settings) -> int | None:
    """The SPEC 4.2 top-up, or None when it is above `auto_topup_max_charge` (SPEC 5): then no
    auto top-up is charged (a payment goes on to step 3)."""
    amount = topup_amount(auto_amount=auto_amount, balance=balance, payment=payment,
                          low_limit=settings.auto_topup_low_limit)
    return amount if amount <= settings.auto_topup_max_charge else None


class AutoTopupAmountIn(bodies.Validating):
    """`PUT /api/members/{member_id}/auto-topup` (`min_amount` and `max_amount` in the context)."""

    model_config = ConfigDict(json_schema_extra=bodies.required("amount"))
    amount: bodies.CheckedAmount = None  # type: ignore[assignment]


def check_auto_amount(body: Mapping[str, Any], settings: Settings) -> int:
    given = bodies.validated(AutoTopupAmountIn, body, min_amount=settings.auto_topup_min_amount,
                             max_amount=settings.auto_topup_max_amount)
    return given.amount


def set_auto_amount(session: Session, member_id: str, body: Mapping[str, Any], settings: Settings) -> Member:
    """SPEC 4.1: the member's auto top-up amount (`body`'s), only within the allowed range."""
    amount = check_auto_amount(body, settings)
    member = profiles.get_member(session, member_id)
    member.auto_topup_amount = amount
    member.updated_at = utcnow()
    return member


def check_manual_amount(amount: int, balance: int, settings: Settings, in_flight: int = 0) -> None:
    """SPEC 5: at least the minimum, and balance + amount + every top-up still in flight at
    most the maximum."""
    if amount < settings.manual_topup_min:
        raise InvalidInput(
            f"amount: {format_cents(amount)} is below the minimum top-up {format_cents(settings.manual_topup_min)}",
            field="amount",
        )
    if balance + amount + in_flight > settings.manual_topup_max_balance:
        pending = f" with {format_cents(in_flight)} of top-ups in flight" if in_flight else ""
        raise InvalidInput(
            f"amount: {format_cents(amount)} would take the balance {format_cents(balance)}{pending} above "
            f"{format_cents(settings.manual_topup_max_balance)}",
            field="amount",
        )


# An attempt in these states may still bring card money in.
OPEN_STATUSES = (CardPaymentStatus.PENDING.value, CardPaymentStatus.AWAITING_CARD.value)
TOP_UP_KINDS = (CardPaymentKind.MANUAL_TOP_UP.value, CardPaymentKind.AUTO_TOP_UP.value)


def in_flight_amount(session: Session, member_id: str) -> int:
    """Top-ups asked for the member and not yet booked or ended: every open manual or auto
    top-up attempt (an auto top-up for a payment counts whole, though the payment takes part of
    it). Read under the member's account lock, which every opener of a top-up holds, so no
    concurrent one is missed."""
    total = session.scalar(
        select(func.coalesce(func.sum(CardPayment.amount), 0)).where(
            CardPayment.member_id == member_id,
            CardPayment.status.in_(OPEN_STATUSES),
            CardPayment.kind.in_(TOP_UP_KINDS),
        )
    )
    return int(total or 0)


def open_attempt(
    session: Session,
    *,
    key: str,
    kind: CardPaymentKind,
    member_id: str,
    amount: int,
    request_id: str | None = None,
) -> CardPayment | None:
    """Commit-ready attempt row; the existing one if the key was used; None if another auto
    top-up of the member is in flight."""
    now = utcnow()
    session.execute(
        dialect_insert(session)(CardPayment)
        .values(
            attempt_key=key, kind=kind.value, status=CardPaymentStatus.PENDING.value, member_id=member_id,
            amount=amount, request_id=request_id, tries=0, refunded=0, created_at=now, updated_at=now,
        )
        .on_conflict_do_nothing()
    )
    return session.scalar(
        select(CardPayment).where(CardPayment.attempt_key == key).execution_options(populate_existing=True)
    )


def in_flight(session: Session, member_id: str) -> CardPayment | None:
    return session.scalar(
        select(CardPayment).where(
            CardPayment.member_id == member_id,
            CardPayment.kind == CardPaymentKind.AUTO_TOP_UP.value,
            CardPayment.status == CardPaymentStatus.PENDING.value,
        )
    )


def lock_attempt(session: Session, card_payment_id: int) -> CardPayment:
    attempt = session.get(CardPayment, card_payment_id, with_for_update=True, populate_existing=True)
    if attempt is None:
        raise NotFound(f"card payment {card_payment_id}: not known", field="card_payment_id")
    return attempt


def charges_saved_card(session: Session, attempt: CardPayment) -> bool:
    """Whether the attempt is charged to the saved card (an auto top-up, a manual top-up asked
    for with `use_saved_card`), rather than paid by the member in a browser (a checkout)."""
    if attempt.kind == CardPaymentKind.AUTO_TOP_UP.value:
        return True
    if attempt.kind == CardPaymentKind.MANUAL_TOP_UP.value and attempt.request_id:
        payload = requests.get(session, attempt.request_id).payload
        return bool(payload.get("use_saved_card"))
    return False


def by_payment_intent(
    session: Session, payment_intent_id: str, metadata: Mapping[str, Any] | None
) -> CardPayment | None:
    """The attempt a PaymentIntent belongs to: by its id, or else by the attempt key in its
    metadata (its id was never recorded: a crash after Stripe made it)."""
    attempt = session.scalar(
        select(CardPayment).where(CardPayment.payment_intent_id == payment_intent_id).with_for_update()
    )
    key = (metadata or {}).get("attempt_key")
    if attempt is None and isinstance(key, str):
        attempt = session.scalar(select(CardPayment).where(CardPayment.attempt_key == key).with_for_update())
        if attempt is not None and not made_for(metadata or {}, attempt.id, attempt.member_id):
            return None
    return attempt


def intent_metadata(attempt_key: str, attempt_id: int, member_id: str, kind: str) -> dict[str, str]:
    """What every PaymentIntent we create carries, so that it can be traced back to its attempt."""
    return {"attempt_key": attempt_key, "attempt_id": str(attempt_id), "member_id": member_id, "kind": kind}


def made_for(metadata: Mapping[str, Any], attempt_id: int, member_id: str) -> bool:
    """Whether a PaymentIntent found by its attempt key was made for this very attempt. The key
    alone is not enough: a PaymentIntent made under the same key by another life of the
    database (rebuilt, restored, or a test run before) must never pay this attempt. Intents
    made before `attempt_id` was added to the metadata are matched by key and member."""
    if metadata.get("member_id") != member_id:
        return False
    made_by = metadata.get("attempt_id")
    return made_by is None or made_by == str(attempt_id)


def card_description(card: CardDetails | None, otherwise: str) -> str:
    """ORIGINAL 2.6's statement text for card money: "Payment from card **** 4242 Exp 12/28"
    (the expiry only when Stripe gave it); `otherwise` when the card is not known."""
    if card is None or not card.last4:
        return otherwise
    expiry = f" Exp {card.exp_month}/{card.exp_year % 100:02d}" if card.exp_month and card.exp_year else ""
    return f"Payment from card **** {card.last4}{expiry}"


def book_card_money(
    session: Session, attempt: CardPayment, *, payment_intent_id: str, card: CardDetails | None = None
) -> Booking:
    """Stripe took the money: book it to the member (once per attempt) and e-mail an auto top-up.

    The entry records the client of the request the card paid for (a top-up, a payment's
    checkout or auto top-up); none for the sweep's auto top-ups, which no client asked for. The
    card that paid is kept on the attempt and named in the description, as the original did."""
    member = profiles.get_member(session, attempt.member_id)
    client = requests.client_of(session, attempt.request_id) if attempt.request_id else None
    stripe = profiles.system_account(session, SystemAccount.STRIPE)
    booking = ledger.post(
        session,
        Entry(
            key=f"card:{attempt.attempt_key}",
            type=ENTRY_TYPE[attempt.kind],
            description=card_description(card, "Card payment" if attempt.kind == CardPaymentKind.CHECKOUT.value
                                         else "Top up by card"),
            reference=payment_intent_id,
            lines=(Line(member.account_id, attempt.amount), Line(stripe, -attempt.amount)),
            client=client,
        ),
    )
    attempt.status = CardPaymentStatus.SUCCEEDED.value
    attempt.payment_intent_id = payment_intent_id
    attempt.entry_id = booking.entry_id
    if card is not None:
        attempt.card_brand, attempt.card_last4 = card.brand, card.last4
        attempt.card_exp_month, attempt.card_exp_year = card.exp_month, card.exp_year
        attempt.receipt_url = card.receipt_url
    attempt.last_error = None
    attempt.updated_at = utcnow()
    if attempt.kind == CardPaymentKind.AUTO_TOP_UP.value and not booking.replayed:
        # Only `action_required` is lifted: a member who cancelled (`off`) stays off.
        if member.auto_topup_status == AutoTopUpStatus.ACTION_REQUIRED.value:
            member.auto_topup_status = AutoTopUpStatus.ON.value
        notifications.auto_topup_email(session, member, attempt, "success")
    return booking


# Auto top-up states a charge's outcome may change; `off`, `pending` (a card being saved
# again) and `failed` are the member's newer word, which a late decline must not overwrite.
CHARGING = (AutoTopUpStatus.ON.value, AutoTopUpStatus.ACTION_REQUIRED.value)


def may_charge_auto_topup(session: Session, member_id: str) -> bool:
    """Whether the member still wants auto top-ups, read under the member's row lock (the lock
    `shared.charges.cancel_auto_topup` takes), so a cancel is seen before any charge."""
    member = session.get(Member, member_id, with_for_update=True, populate_existing=True)
    return member is not None and member.auto_topup_status in CHARGING


def fail_attempt(
    session: Session, attempt: CardPayment, error: str, *, action_required: bool = False,
    payment_intent_id: str | None = None, link: str | None = None,
) -> None:
    """The card was declined or needs the member (`link`: the page to authenticate on): record it; an auto top-up of a member still
    `on` (or `action_required`) changes their state (SPEC 4.3) and e-mails them. A member who
    cancelled meanwhile stays `off` and gets no e-mail. An attempt that had already asked the
    member to authenticate changes only the `action_required` it caused: a member who has
    saved a new card since (`on`) keeps it."""
    settles = CHARGING if attempt.status == CardPaymentStatus.PENDING.value else (
        AutoTopUpStatus.ACTION_REQUIRED.value,)
    attempt.status = (CardPaymentStatus.ACTION_REQUIRED if action_required else CardPaymentStatus.FAILED).value
    attempt.last_error = error[:500]
    attempt.payment_intent_id = attempt.payment_intent_id or payment_intent_id
    attempt.updated_at = utcnow()
    if attempt.kind == CardPaymentKind.AUTO_TOP_UP.value:
        member = profiles.get_member(session, attempt.member_id)
        if member.auto_topup_status not in settles:
            return
        member.auto_topup_status = (
            AutoTopUpStatus.ACTION_REQUIRED if action_required else AutoTopUpStatus.FAILED
        ).value
        member.updated_at = utcnow()
        notifications.auto_topup_email(session, member, attempt, "action_required" if action_required else "failure",
                                       link=link)


def record_decline(attempt: CardPayment, error: str, *, payment_intent_id: str) -> None:
    """A card tried on a checkout was refused: the checkout stays open for another card (SPEC 3)
    until it is paid, cancelled or expires. `updated_at` is left alone: it times the expiry."""
    attempt.last_error = error[:500]
    attempt.payment_intent_id = attempt.payment_intent_id or payment_intent_id


def hold_attempt(session: Session, attempt: CardPayment, error: str, *, payment_intent_id: str) -> None:
    """Stripe took money that does not match the attempt: book nothing, keep it for an admin
    (SPEC 5). The PaymentIntent is noted (and kept as the attempt's if it had none)."""
    attempt.status = CardPaymentStatus.HELD.value
    attempt.last_error = error[:500]
    if attempt.payment_intent_id is None and session.scalar(
        select(CardPayment.id).where(CardPayment.payment_intent_id == payment_intent_id)
    ) is None:
        attempt.payment_intent_id = payment_intent_id
    note_intent(attempt, payment_intent_id, "held", error)
    attempt.updated_at = utcnow()


def note_intent(attempt: CardPayment, payment_intent_id: str, what: str, detail: str) -> None:
    """Record for admins a PaymentIntent of the attempt that was not booked."""
    note = {"type": what, "payment_intent": payment_intent_id, "detail": detail[:300], "at": utcnow().isoformat()}
    attempt.stripe_notes = [*(attempt.stripe_notes or []), note]


# Manual top-ups (SPEC 5) -----------------------------------------------------------------


@dataclass(frozen=True)
class TopupOrder:
    request_id: str
    member_id: str
    amount: int
    use_saved_card: bool

    def payload(self) -> dict[str, Any]:
        return {**asdict(self), "amount": format_cents(self.amount)}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> TopupOrder:
        """The order again from its stored normal form, without today's limits."""
        return cls(**{**payload, "amount": parse_cents(payload["amount"], "amount")})


class TopupIn(bodies.Validating):
    """`POST /api/members/{member_id}/topups` (`member_id` from the path) and the
    `payments.topup` task (`min_amount` and `max_amount` in the context)."""

    model_config = ConfigDict(json_schema_extra=bodies.required("request_id", "amount", hidden=("member_id",)))
    request_id: bodies.CheckedId = None  # type: ignore[assignment]
    member_id: bodies.CheckedId = None  # type: ignore[assignment]
    amount: bodies.CheckedAmount = None  # type: ignore[assignment]
    use_saved_card: bodies.CheckedFlag = False


def parse_topup(body: Mapping[str, Any], settings: Settings) -> TopupOrder:
    given = bodies.validated(TopupIn, body, min_amount=settings.manual_topup_min,
                             max_amount=settings.manual_topup_max_balance)
    return TopupOrder(**bodies.declared(given))


def record_topup(session: Session, order: TopupOrder, *, client: str | None = None) -> tuple[requests.Request, bool]:
    return requests.record(session, RequestKind.TOPUP, order.request_id, order.payload(), amount=order.amount,
                           member_id=order.member_id, client=client)


def topup(session: Session, order: TopupOrder, settings: Settings) -> requests.Request:
    """Check the limits under the member's lock and open the attempt: the saved card is charged
    after commit, or a checkout is made for a new card."""
    row = requests.claim(session, RequestKind.TOPUP, order.request_id, order.payload(), amount=order.amount,
                         member_id=order.member_id)
    if not row.queued:
        return row
    try:
        member = profiles.get_member(session, order.member_id)
        ledger.lock_accounts(session, [member.account_id])
        check_manual_amount(order.amount, ledger.balance(session, member.account_id), settings,
                            in_flight=in_flight_amount(session, order.member_id))
        if order.use_saved_card and not member.stripe_customer_id:
            raise InvalidInput("use_saved_card: no card is saved", field="use_saved_card")
    except (NotFound, InvalidInput) as exc:
        requests.finish(session, row, RequestStatus.FAILED, reason=exc.message)
        return row
    attempt = open_attempt(session, key=f"topup:{order.request_id}", kind=CardPaymentKind.MANUAL_TOP_UP,
                           member_id=order.member_id, amount=order.amount, request_id=order.request_id)
    assert attempt is not None  # manual top-ups are not limited to one in flight
    if attempt.status == CardPaymentStatus.PENDING.value:
        session.info.setdefault("charges" if order.use_saved_card else "checkouts", []).append(attempt.id)
    return row


def open_auto_topup(session: Session, member_id: str, key: str, settings: Settings) -> int | None:
    """SPEC 4.4: the attempt for an `on` member below the low limit with none in flight."""
    member = profiles.get_member(session, member_id)
    if member.auto_topup_status != AutoTopUpStatus.ON.value or not member.stripe_customer_id:
        return None
    ledger.lock_accounts(session, [member.account_id])  # every attempt opens under this lock
    balance = ledger.balance(session, member.account_id)
    if balance >= settings.auto_topup_low_limit:
        return None
    amount = auto_topup_charge(auto_amount=member.auto_topup_amount, balance=balance, payment=0,
                               settings=settings)
    if amount is None:
        return None  # above the largest auto top-up charge (SPEC 5): left to the member
    attempt = open_attempt(session, key=key, kind=CardPaymentKind.AUTO_TOP_UP, member_id=member_id, amount=amount)
    if attempt is None or attempt.status != CardPaymentStatus.PENDING.value:
        return None
    return attempt.id


def members_due_for_topup(session: Session, settings: Settings) -> list[str]:
    """SPEC 4.4 in one query: `on` members with a saved card, below the low limit, with no auto
    top-up in flight.

    It reads the balance of every `on` member (its running-sum rows, by primary key); PostgreSQL's
    JIT would take longer to compile it than it takes to run (0.1 s of 0.3 s over 100,000
    members, bench/sweep.py), so it is turned off for this transaction."""
    if dialect_name(session) == "postgresql":
        session.execute(select(func.set_config("jit", "off", True)))
    balance = ledger.current_balance(Member.account_id)
    in_flight_topup = (
        select(CardPayment.id)
        .where(
            CardPayment.member_id == Member.member_id,
            CardPayment.kind == CardPaymentKind.AUTO_TOP_UP.value,
            CardPayment.status == CardPaymentStatus.PENDING.value,
        )
        .exists()
    )
    return list(
        session.scalars(
            select(Member.member_id).where(
                Member.auto_topup_status == AutoTopUpStatus.ON.value,
                Member.stripe_customer_id.is_not(None),
                balance < settings.auto_topup_low_limit,
                ~in_flight_topup,
            )
        )
    )

