"""What the pages for people show and do (CONTRACT "Pages for people"; webhook/pages.py serves
them): who pays what, and the card step, each read from the service's own rows.

A checkout page (a payment's checkout, or a manual top-up with a new card) takes the card in the
browser as a Stripe.js token; `pay_checkout` puts it on the checkout's PaymentIntent and confirms
it at Stripe with no transaction open (DESIGN invariant 5). The money is booked as for any
checkout: by Stripe's `payment_intent.succeeded` through the inbox (`charges.settle_intent`); the
page only shows the request's status as the service has it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import inbox, profiles, requests
from shared.config import Settings
from shared.errors import NotFound
from shared.models import CardPayment, CardPaymentKind, CardPaymentStatus, Member, Organisation, RequestKind, RequestStatus
from shared.money import format_cents, parse_cents
from shared.stripe_gateway import PaymentIntentInfo, StripeGateway

OPEN = RequestStatus.AWAITING_CARD.value
# Statuses a page shows as the end of the story.
FINAL = (RequestStatus.PAID.value, RequestStatus.DECLINED.value, RequestStatus.FAILED.value)


@dataclass(frozen=True)
class Checkout:
    """A checkout as its page shows it."""

    request_id: str
    status: str
    payer: str  # the member's name
    what: str  # "Congress entry, to Bridge Club" or "Top up of your Bridge Credits"
    amount: str  # the request's amount
    card_amount: str  # what the card is asked for (the request less the balance used)
    payment_intent_id: str | None
    reason: str | None = None

    @property
    def open(self) -> bool:
        return self.status == OPEN and self.payment_intent_id is not None


def _name(member: Member) -> str:
    return f"{member.first_name} {member.last_name}"


def checkout(session: Session, request_id: str) -> Checkout:
    """The checkout of request `request_id` (NotFound for a request that never had one)."""
    row = requests.get(session, request_id)
    if row.kind not in (RequestKind.PAYMENT.value, RequestKind.TOPUP.value) or row.member_id is None:
        raise NotFound(f"request {request_id}: no checkout", field="request_id")
    payer = profiles.get_member(session, row.member_id)
    payload = row.payload or {}
    if row.kind == RequestKind.TOPUP.value:
        what = "Top up of your Bridge Credits"
    else:
        what = str(payload.get("description") or "Payment")
        payee = _payee(session, payload)
        if payee:
            what = f"{what}, to {payee}"
    found = (row.result or {}).get("checkout") or {}
    card_amount = found.get("amount") or format_cents(row.amount)
    return Checkout(
        request_id=row.request_id, status=row.status, payer=_name(payer), what=what,
        amount=format_cents(row.amount), card_amount=format_cents(parse_cents(card_amount, "amount")),
        payment_intent_id=found.get("payment_intent_id"), reason=row.reason,
    )


def _payee(session: Session, payload: dict[str, object]) -> str | None:
    org_id, member_id = payload.get("organisation_id"), payload.get("other_member_id")
    if isinstance(org_id, str):
        org = session.get(Organisation, org_id)
        return org.name if org is not None else org_id
    if isinstance(member_id, str):
        member = session.get(Member, member_id)
        return _name(member) if member is not None else member_id
    return None


def pay_checkout(
    sessions: sessionmaker[Session], gateway: StripeGateway, request_id: str, card_token: str
) -> tuple[PaymentIntentInfo, str]:
    """Pay the open checkout of `request_id` with the browser's card token: the intent as Stripe
    left it, and its client secret (for the page's 3-D Secure step). Raises `CardDeclined`, or
    `NotFound` when the checkout is no longer open (paid, expired)."""
    with sessions.begin() as session:
        found = checkout(session, request_id)
        secret = ((requests.get(session, request_id).result or {}).get("checkout") or {}).get("client_secret")
    if not found.open or found.payment_intent_id is None:
        raise NotFound(f"request {request_id}: its checkout is not open", field="request_id")
    intent = gateway.pay_checkout(payment_intent_id=found.payment_intent_id, card_token=card_token)
    return intent, str(secret or "")


# Auto top-up set-up (SPEC 4.1) -------------------------------------------------------------


@dataclass(frozen=True)
class CardSetup:
    """A card set-up as its page shows it: the member, what auto top-up will charge, and the
    SetupIntent the browser confirms (Stripe.js `confirmCardSetup`)."""

    member_id: str
    payer: str
    auto_status: str
    amount: str  # the auto top-up amount
    low_limit: str
    setup_intent_id: str
    client_secret: str
    intent_status: str

    @property
    def open(self) -> bool:
        return self.intent_status in ("requires_payment_method", "requires_confirmation", "requires_action")


def setup_subject(member_id: str, setup_intent_id: str) -> str:
    """What a set-up link names: the member and their SetupIntent."""
    return f"{setup_intent_id}:{member_id}"


def card_setup(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, subject: str
) -> CardSetup:
    """The set-up a link names, its SetupIntent read from Stripe (no transaction open);
    NotFound when the SetupIntent is not the member's."""
    setup_intent_id, _, member_id = subject.partition(":")
    with sessions.begin() as session:
        member = profiles.get_member(session, member_id)
        payer, customer = _name(member), member.stripe_customer_id
        auto_status, amount = member.auto_topup_status, member.auto_topup_amount
    intent = gateway.retrieve_setup_intent(setup_intent_id)
    if customer is None or intent.customer_id != customer:
        raise NotFound(f"SetupIntent {setup_intent_id}: not member {member_id}'s", field="setup_intent_id")
    return CardSetup(member_id=member_id, payer=payer, auto_status=auto_status, amount=format_cents(amount),
                     low_limit=format_cents(settings.auto_topup_low_limit), setup_intent_id=intent.id,
                     client_secret=intent.client_secret, intent_status=intent.status)


def report_card_saved(session: Session, setup: CardSetup) -> inbox.Accepted | None:
    """The page says the browser saved the card: when Stripe says so too (`setup.intent_status`,
    read from Stripe, never the browser's word), record it in the inbox as the
    `setup_intent.succeeded` event Stripe sends (localstripe sends none), under an id of our own,
    `page_<SetupIntent id>`, once. The worker processes it as Stripe's (`charges.card_saved`:
    auto top-up `on`, and a top-up if the balance is low); Stripe's own event, if it comes too,
    finds the member `on` and tops up only a balance still low. Returns what the inbox stored,
    for `inbox.hand_to_workers` after commit, or None when the card is not saved."""
    if setup.intent_status != "succeeded":
        return None
    event = {"id": f"page_{setup.setup_intent_id}", "object": "event", "type": "setup_intent.succeeded",
             "data": {"object": {"id": setup.setup_intent_id, "object": "setup_intent",
                                 "customer": _customer(session, setup.member_id), "status": "succeeded"}}}
    return inbox.accept(session, event)


def _customer(session: Session, member_id: str) -> str | None:
    return profiles.get_member(session, member_id).stripe_customer_id


def auto_topup_status(session: Session, member_id: str) -> str:
    return profiles.get_member(session, member_id).auto_topup_status


# Card authentication of an auto top-up (SPEC 4.3) ------------------------------------------


@dataclass(frozen=True)
class Authentication:
    """An auto top-up the bank asked the member to authenticate, as its page shows it."""

    attempt_key: str
    payer: str
    amount: str
    status: str  # the attempt's: `action_required` until Stripe reports the money taken
    client_secret: str = ""
    payment_method_id: str | None = None
    intent_status: str | None = None

    @property
    def open(self) -> bool:
        return self.status == CardPaymentStatus.ACTION_REQUIRED.value and self.intent_status in (
            "requires_action", "requires_payment_method", "requires_confirmation")


def authentication(
    sessions: sessionmaker[Session], gateway: StripeGateway, attempt_key: str, *, with_stripe: bool = True
) -> Authentication:
    """The auto top-up attempt `attempt_key` (NotFound for another kind); its PaymentIntent read
    from Stripe, with no transaction open, while it waits for the member (and `with_stripe`)."""
    with sessions.begin() as session:
        attempt = session.scalar(select(CardPayment).where(CardPayment.attempt_key == attempt_key))
        if attempt is None or attempt.kind != CardPaymentKind.AUTO_TOP_UP.value or not attempt.payment_intent_id:
            raise NotFound(f"auto top-up {attempt_key}: none to authenticate", field="attempt_key")
        found = Authentication(attempt_key=attempt_key, payer=_name(profiles.get_member(session, attempt.member_id)),
                               amount=format_cents(attempt.amount), status=attempt.status)
        intent_id = attempt.payment_intent_id
    if not with_stripe or found.status != CardPaymentStatus.ACTION_REQUIRED.value:
        return found
    status, secret, method = gateway.to_authenticate(intent_id)
    return replace(found, client_secret=secret, payment_method_id=method, intent_status=status)
