"""Taking card money: the Stripe calls, each between two committed steps (DESIGN invariant 5).

1. `shared.topups` commits an attempt row (its key is the Stripe idempotency key);
2. here, with no transaction open, Stripe is called;
3. then one transaction books the outcome (`settle_intent`) and carries on with the payment
   request waiting for it, if any.

A crash between 2 and 3 leaves the attempt `pending` with `tries` > 0: the next try looks the
attempt up at Stripe by its key before charging, so a card is never charged twice even by a
Stripe stand-in that ignores idempotency keys.

Step 1 of a charge re-reads the member under their row lock: an auto top-up whose member has
cancelled (or is no longer `on`/`action_required`) is not charged; it ends failed and the
payment waiting for it goes on to a checkout or is declined. Step 3 books card money only when
Stripe's amount received and currency match the attempt; otherwise the attempt is `held` for
an admin. A declined card on a checkout (a page the member can retry with another card) is
recorded and the checkout stays open; a declined saved card ends its attempt.

The healing jobs at the end (`reconcile`, `expire_checkouts`) take each open attempt on its own
and by its kind (DESIGN invariant 12, SPEC 5): only a saved-card attempt is ever charged; a
failing attempt is counted, backed off and, after its last try, failed with its callback.
`end_waits` does the same for payments waiting for another top-up of their member.

Every function returns the ids of outbox rows it wrote, for the caller to dispatch after
commit, and follow-up card work it scheduled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from shared import db, healing, ledger, page_links, payments, profiles, requests, topups
from shared.config import Settings
from shared.errors import AuthenticationRequired, CardDeclined, NotFound, StripeRequestFailed
from shared.models import (
    AutoTopUpStatus, CardPayment, CardPaymentKind, CardPaymentStatus, Member, RequestStatus, utcnow,
)
from shared.money import format_cents
from shared.stripe_gateway import CURRENCY, PaymentIntentInfo, StripeGateway

# Stripe says the money is taken, or that it will not be (until the member acts).
SUCCEEDED = "succeeded"
NEEDS_ACTION = ("requires_action", "requires_confirmation")
DECLINED = "requires_payment_method"  # the card tried was refused (or none was tried yet)
FAILED = (DECLINED, "canceled")
CANCELLED = "auto top-up cancelled"
# Auto top-up states in which a card-saved report is awaited: set-up (or a new card) under way.
SAVING_CARD = (AutoTopUpStatus.PENDING.value, AutoTopUpStatus.ON.value)


@dataclass
class Effects:
    """What a step left for after its commit: outbox rows to send, card work to do."""

    outbox: list[int] = field(default_factory=list)
    charges: list[int] = field(default_factory=list)
    checkouts: list[int] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)  # request ids of booked card refunds

    def collect(self, session: Session) -> None:
        self.outbox += session.info.pop("outbox", [])
        self.charges += session.info.pop("charges", [])
        self.checkouts += session.info.pop("checkouts", [])
        self.refunds += session.info.pop("refunds", [])


def charge(sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, attempt_id: int) -> Effects:
    """Charge a pending top-up attempt to the member's saved card, off-session.

    One process at a time per attempt: two (a redelivered task and the reconciler, say) could
    both find no charge at Stripe and both charge. The other returns; whoever holds the attempt
    settles it, or, if it dies, the next try or the reconciler looks it up."""
    with db.exclusive(sessions, f"card-attempt:{attempt_id}") as ours:
        return _charge(sessions, gateway, settings, attempt_id) if ours else Effects()


def _charge(sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, attempt_id: int) -> Effects:
    effects = Effects()
    with sessions.begin() as session:
        attempt = topups.lock_attempt(session, attempt_id)
        if attempt.status != CardPaymentStatus.PENDING.value:
            return effects
        if not topups.charges_saved_card(session, attempt):
            return effects  # a checkout is paid in the member's browser, never charged off-session
        # Lock order attempt -> member, as `settle_intent` (via `fail_attempt`) takes them.
        cancelled = attempt.kind == CardPaymentKind.AUTO_TOP_UP.value and not topups.may_charge_auto_topup(
            session, attempt.member_id)
        customer = profiles.get_member(session, attempt.member_id).stripe_customer_id
        looked_up_first = attempt.tries > 0
        if cancelled and not looked_up_first:  # never sent to Stripe: end it here
            topups.fail_attempt(session, attempt, CANCELLED)
            payments.card_failed(session, attempt, CANCELLED, settings)
            effects.collect(session)
            return effects
        attempt.tries += 1
        key, amount, member_id, kind = attempt.attempt_key, attempt.amount, attempt.member_id, attempt.kind
    if customer is None:
        return _declined(sessions, settings, attempt_id, "no card is saved", effects)

    intent = gateway.find_payment_intent(
        customer_id=customer, attempt_key=key, belongs=lambda metadata: topups.made_for(metadata, attempt_id, member_id)
    ) if looked_up_first else None
    if intent is None and cancelled:  # an earlier try may have charged; it did not: charge no more
        return _declined(sessions, settings, attempt_id, CANCELLED, effects)
    if intent is None:
        try:
            intent = gateway.charge_saved_card(
                customer_id=customer, amount_cents=amount, idempotency_key=key,
                metadata=topups.intent_metadata(key, attempt_id, member_id, kind),
            )
        except CardDeclined as exc:
            return _declined(sessions, settings, attempt_id, exc.message, effects)
        except AuthenticationRequired as exc:
            return _declined(sessions, settings, attempt_id, exc.message, effects, action=True,
                             payment_intent_id=exc.payment_intent_id)
        except StripeRequestFailed as exc:  # refused for good (not an outage, which retries)
            return _declined(sessions, settings, attempt_id, exc.message, effects)
        if os.environ.get("PAYMENTS_TEST_CRASH_AFTER_CHARGE") == key:
            # Test hook: the worker dies between a new charge and its booking (not after a
            # look-up, so the redelivered task can heal it).
            os._exit(17)
    return settle_intent(sessions, settings, attempt_id, intent, effects)


def start_checkout(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, attempt_id: int
) -> Effects:
    """Create the PaymentIntent a browser pays with; the request waits for the card."""
    with db.exclusive(sessions, f"card-attempt:{attempt_id}") as ours:
        return _start_checkout(sessions, gateway, settings, attempt_id) if ours else Effects()


def _start_checkout(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, attempt_id: int
) -> Effects:
    effects = Effects()
    with sessions.begin() as session:
        attempt = topups.lock_attempt(session, attempt_id)
        if attempt.status != CardPaymentStatus.PENDING.value or attempt.payment_intent_id:
            return effects
        attempt.tries += 1
        key, amount, member_id = attempt.attempt_key, attempt.amount, attempt.member_id
        customer = profiles.get_member(session, member_id).stripe_customer_id
    checkout = gateway.create_checkout(
        amount_cents=amount, idempotency_key=key, customer_id=customer,
        metadata=topups.intent_metadata(key, attempt_id, member_id, CardPaymentKind.CHECKOUT.value),
    )
    with sessions.begin() as session:
        attempt = topups.lock_attempt(session, attempt_id)
        if attempt.status == CardPaymentStatus.PENDING.value and not attempt.payment_intent_id:
            attempt.status = CardPaymentStatus.AWAITING_CARD.value
            attempt.payment_intent_id = checkout.payment_intent_id
            attempt.client_secret = checkout.client_secret
            if attempt.request_id:
                payments.await_card(session, attempt, settings)
        effects.collect(session)
    return effects


def settle_intent(
    sessions: sessionmaker[Session], settings: Settings, attempt_id: int, intent: PaymentIntentInfo,
    effects: Effects | None = None,
) -> Effects:
    """Book what Stripe says happened to the attempt's PaymentIntent, once."""
    effects = effects or Effects()
    with sessions.begin() as session:
        attempt = topups.lock_attempt(session, attempt_id)
        if attempt.status == CardPaymentStatus.HELD.value:
            if intent.status == SUCCEEDED and intent.id not in _noted_intents(attempt):
                topups.note_intent(attempt, intent.id, "succeeded_while_held",
                                   f"{intent.amount_received_cents} {intent.currency} received")
            return effects  # an admin decides
        if attempt.status == CardPaymentStatus.SUCCEEDED.value or (
            attempt.status == CardPaymentStatus.FAILED.value and intent.status != SUCCEEDED
        ) or (attempt.status == CardPaymentStatus.ACTION_REQUIRED.value and intent.status in NEEDS_ACTION):
            return effects  # already settled (or still waiting for the member): a redelivery or a late event
        # A failed attempt whose PaymentIntent succeeded after all (the member paid it with
        # another card) is booked: card money taken is never left out of the ledger.
        if intent.status == SUCCEEDED:
            mismatch = _mismatch(attempt.amount, intent)
            if mismatch:
                topups.hold_attempt(session, attempt, mismatch, payment_intent_id=intent.id)
                payments.card_held(session, attempt, mismatch, settings)
            else:
                topups.book_card_money(session, attempt, payment_intent_id=intent.id, card=intent.card)
                payments.card_money_arrived(session, attempt, settings)
        elif intent.status == DECLINED and _member_can_retry(attempt):
            if attempt.status == CardPaymentStatus.AWAITING_CARD.value:
                topups.record_decline(attempt, f"PaymentIntent {intent.id}: card declined"
                                      f"{': ' + intent.last_payment_error if intent.last_payment_error else ''}",
                                      payment_intent_id=intent.id)
        elif intent.status in FAILED or (
            intent.status in NEEDS_ACTION and attempt.kind == CardPaymentKind.AUTO_TOP_UP.value
        ):
            action = intent.status in NEEDS_ACTION
            topups.fail_attempt(session, attempt, f"PaymentIntent {intent.id} is {intent.status}",
                                action_required=action, payment_intent_id=intent.id,
                                link=_authentication_link(settings, attempt) if action else None)
            payments.card_failed(session, attempt, f"card payment {intent.status}", settings)
        effects.collect(session)
    return effects


def _member_can_retry(attempt: CardPayment) -> bool:
    """A checkout page (a payment's checkout, or a manual top-up with a new card): after a
    decline the member may try another card on the same PaymentIntent (SPEC 3)."""
    return attempt.kind == CardPaymentKind.CHECKOUT.value or attempt.status == CardPaymentStatus.AWAITING_CARD.value


def _mismatch(expected_cents: int, intent: PaymentIntentInfo) -> str | None:
    """What differs between the money Stripe took and the attempt (SPEC 5), or None."""
    differences = []
    if intent.amount_received_cents != expected_cents:
        differences.append(f"amount received {format_cents(intent.amount_received_cents)}, "
                           f"expected {format_cents(expected_cents)}")
    if intent.currency != CURRENCY:
        differences.append(f"currency {intent.currency or 'unknown'}, expected {CURRENCY}")
    if not differences:
        return None
    return f"PaymentIntent {intent.id}: " + "; ".join(differences)


def _noted_intents(attempt: CardPayment) -> set[str]:
    return {str(n.get("payment_intent")) for n in attempt.stripe_notes or [] if isinstance(n, dict)}


def _declined(
    sessions: sessionmaker[Session], settings: Settings, attempt_id: int, reason: str, effects: Effects,
    *, action: bool = False, payment_intent_id: str | None = None,
) -> Effects:
    with sessions.begin() as session:
        attempt = topups.lock_attempt(session, attempt_id)
        if attempt.status == CardPaymentStatus.PENDING.value:
            topups.fail_attempt(session, attempt, reason, action_required=action, payment_intent_id=payment_intent_id,
                                link=_authentication_link(settings, attempt) if action else None)
            payments.card_failed(session, attempt, reason, settings)
        effects.collect(session)
    return effects


def _authentication_link(settings: Settings, attempt: CardPayment) -> str | None:
    """The page where the member authenticates this charge (webhook/pages.py), for the e-mail."""
    return page_links.url(settings, page_links.AUTHENTICATE, attempt.attempt_key)


# Saved cards (SPEC 4.1) ------------------------------------------------------------------


@dataclass(frozen=True)
class SetupInfo:
    setup_intent_id: str
    client_secret: str = field(repr=False)
    publishable_key: str | None = None


def setup_auto_topup(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, member_id: str
) -> SetupInfo:
    """One Stripe customer per member, reused; a SetupIntent for the browser to save a card."""
    with sessions.begin() as session:
        member = profiles.get_member(session, member_id)
        known, email, name = member.stripe_customer_id, member.email, f"{member.first_name} {member.last_name}"
    customer = gateway.ensure_customer(member_id=member_id, email=email, name=name, customer_id=known)
    with sessions.begin() as session:
        locked = session.get(Member, member_id, with_for_update=True, populate_existing=True)
        if locked is None:
            raise NotFound(f"member {member_id}: not known to payments", field="member_id")
        # A concurrent setup may have stored its customer first: keep that one.
        customer = locked.stripe_customer_id = locked.stripe_customer_id or customer
        if locked.auto_topup_status != AutoTopUpStatus.ON.value:
            locked.auto_topup_status = AutoTopUpStatus.PENDING.value
    intent = gateway.create_setup_intent(customer_id=customer, member_id=member_id)
    return SetupInfo(intent.id, intent.client_secret, settings.stripe_publishable_key)


def cancel_auto_topup(
    sessions: sessionmaker[Session], gateway: StripeGateway, member_id: str
) -> None:
    """State `off` first (no more charges), then the cards are detached at Stripe."""
    with sessions.begin() as session:
        member = session.get(Member, member_id, with_for_update=True)
        if member is None:
            raise NotFound(f"member {member_id}: not known to payments", field="member_id")
        member.auto_topup_status = AutoTopUpStatus.OFF.value
        customer = member.stripe_customer_id
    if customer:
        gateway.detach_cards(customer)


def card_saved(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, *, customer_id: str,
    setup_intent_id: str | None = None, payment_method_id: str | None = None, event_id: str,
) -> Effects:
    """Stripe saved a card: make it the default, turn auto top-up on, top up if below the limit.

    Only while the member is setting a card up (`pending`) or replacing one (`on`): to `off`,
    `failed` or `action_required` a card-saved event is late (or replayed), from before a cancel
    or a decline, and changes nothing; saving a card again starts with a new setup."""
    effects = Effects()
    with sessions.begin() as session:
        member = session.scalar(select(Member).where(Member.stripe_customer_id == customer_id))
        if member is None or member.auto_topup_status not in SAVING_CARD:
            return effects  # not ours, or cancelled or failed since: a late event changes nothing
        member_id = member.member_id
        account_id = member.account_id
    gateway.card_saved(customer_id=customer_id, setup_intent_id=setup_intent_id, payment_method_id=payment_method_id)
    with sessions.begin() as session:
        # The account lock first, then the member's row: the order a payment takes them in.
        ledger.lock_accounts(session, [account_id])
        member = session.get(Member, member_id, with_for_update=True, populate_existing=True)
        if member is None or member.auto_topup_status not in SAVING_CARD:
            return effects
        member.auto_topup_status = AutoTopUpStatus.ON.value
        balance = ledger.balance(session, member.account_id)
        amount = topups.auto_topup_charge(auto_amount=member.auto_topup_amount, balance=balance, payment=0,
                                          settings=settings)
        if balance < settings.auto_topup_low_limit and amount is not None:
            attempt = topups.open_attempt(
                session, key=f"card-saved:{event_id}", kind=CardPaymentKind.AUTO_TOP_UP, member_id=member_id,
                amount=amount,
            )
            if attempt is not None and attempt.status == CardPaymentStatus.PENDING.value:
                effects.charges.append(attempt.id)
        effects.collect(session)
    return effects


# Healing (the scheduler; DESIGN invariant 12) ---------------------------------------------

# SPEC 3: a checkout nobody paid is given up 24 h after it was opened.
CHECKOUT_LIFETIME = timedelta(hours=24)
OPEN = topups.OPEN_STATUSES


def reconcile(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, older_than: timedelta,
    *, budget_seconds: float | None = None,
) -> tuple[int, Effects]:
    """Finish card payments still open after `older_than`, as the webhook would have, each by
    its kind and on its own:

    - a checkout (`awaiting_card`) by its PaymentIntent's state at Stripe;
    - a saved-card top-up never settled by looking it up (and charging it if it never reached
      Stripe);
    - a checkout or new-card top-up whose PaymentIntent was never made goes back to
      `start_checkout`, or fails with its callback once older than the checkout lifetime.

    An attempt that raises (Stripe unreachable, a PaymentIntent Stripe does not know) is
    counted and backed off, and after `heal_max_tries` fails with its callback; the attempts
    behind it are reconciled all the same. An attempt still open for a good reason (a checkout
    the member may still pay) is looked at again after `older_than`, without a try counted.
    Returns how many attempts it took, and the outbox rows to send (follow-up card work is
    done here)."""
    effects = Effects()
    now = utcnow()
    with sessions.begin() as session:
        due = _due_attempts(session, settings, OPEN, CardPayment.updated_at < now - older_than, now)

    def heal(attempt_id: int) -> None:
        _carry_on(sessions, gateway, settings, _reconcile_one(sessions, gateway, settings, attempt_id, older_than),
                  effects)

    def failed(attempt_id: int, exc: Exception) -> None:
        _carry_on(sessions, gateway, settings, _heal_failed(sessions, settings, attempt_id, exc), effects)

    taken = healing.each(due, heal, failed, what="reconcile card attempt", budget_seconds=budget_seconds)
    return taken, effects


def _reconcile_one(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, attempt_id: int,
    older_than: timedelta,
) -> Effects:
    with sessions.begin() as session:
        attempt = topups.lock_attempt(session, attempt_id)
        if attempt.status not in OPEN:
            return Effects()
        # Not again before `older_than` unless this try fails (then the backoff decides).
        attempt.next_heal_at = utcnow() + older_than
        status, intent_id, created_at = attempt.status, attempt.payment_intent_id, attempt.created_at
        saved_card = topups.charges_saved_card(session, attempt)
        if status == CardPaymentStatus.PENDING.value and saved_card:
            attempt.tries += 1  # look it up at Stripe before any charge
    if intent_id and status == CardPaymentStatus.AWAITING_CARD.value:
        intent = gateway.retrieve_payment_intent(intent_id)
        if intent.status in (SUCCEEDED, "canceled"):  # a browser may still retry other failures
            return settle_intent(sessions, settings, attempt_id, intent)
        return Effects()
    if status != CardPaymentStatus.PENDING.value:
        return Effects()
    if saved_card:
        return charge(sessions, gateway, settings, attempt_id)
    if utcnow() - created_at > CHECKOUT_LIFETIME:
        return _end(sessions, settings, attempt_id, "checkout expired", "checkout expired after 24 h")
    return start_checkout(sessions, gateway, settings, attempt_id)


def expire_checkouts(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings,
    older_than: timedelta = CHECKOUT_LIFETIME, *, budget_seconds: float | None = None,
) -> Effects:
    """Checkouts never paid within `older_than` (24 h) are cancelled at Stripe, so they cannot
    be paid any more, and then fail with their failure callback. Each on its own: only when
    Stripe confirms the cancel (or the PaymentIntent was already canceled) does the attempt
    fail; one paid meanwhile is booked instead; Stripe unreachable leaves it for the next run,
    backed off, until its last try."""
    effects = Effects()
    now = utcnow()
    with sessions.begin() as session:
        due = _due_attempts(session, settings, (CardPaymentStatus.AWAITING_CARD.value,),
                            CardPayment.created_at < now - older_than, now)

    def heal(attempt_id: int) -> None:
        _carry_on(sessions, gateway, settings, _expire_one(sessions, gateway, settings, attempt_id), effects)

    def failed(attempt_id: int, exc: Exception) -> None:
        _carry_on(sessions, gateway, settings, _heal_failed(sessions, settings, attempt_id, exc), effects)

    healing.each(due, heal, failed, what="expire checkout", budget_seconds=budget_seconds)
    return effects


def _expire_one(sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, attempt_id: int) -> Effects:
    with sessions.begin() as session:
        attempt = topups.lock_attempt(session, attempt_id)
        if attempt.status != CardPaymentStatus.AWAITING_CARD.value or not attempt.payment_intent_id:
            return Effects()
        intent_id = attempt.payment_intent_id
    intent = gateway.retrieve_payment_intent(intent_id)
    if intent.status not in (SUCCEEDED, "canceled"):
        try:
            intent = gateway.cancel_payment_intent(intent_id)
        except StripeRequestFailed:
            intent = gateway.retrieve_payment_intent(intent_id)  # paid (or paying) meanwhile?
    if intent.status == SUCCEEDED:
        return settle_intent(sessions, settings, attempt_id, intent)  # paid just in time: book it
    if intent.status != "canceled":
        raise StripeRequestFailed(f"PaymentIntent {intent_id}: still {intent.status} after cancelling it")
    return _end(sessions, settings, attempt_id, "checkout expired", "checkout expired after 24 h")


def end_waits(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, *, budget_seconds: float | None = None,
) -> Effects:
    """Payments waiting for another auto top-up of their member that must not wait longer
    (`requests.waits_due`: the top-up ended without deciding them, or `topup_wait_seconds`
    passed) are decided without it (`payments.end_wait`), each on its own; one that raises is
    backed off and, after `heal_max_tries`, fails with its callback. The checkouts they go on
    to are started here."""
    effects = Effects()
    with sessions.begin() as session:
        due = requests.waits_due(session, settings, utcnow())

    def heal(request_id: str) -> None:
        done = Effects()
        with sessions.begin() as session:
            payments.end_wait(session, request_id, settings)
            done.collect(session)
        _carry_on(sessions, gateway, settings, done, effects)

    def failed(request_id: str, exc: Exception) -> None:
        with sessions.begin() as session:
            tries = requests.back_off(session, request_id, settings)
            row = requests.lock_existing(session, request_id)
            if tries >= settings.heal_max_tries and row.queued:
                healing.log.error("request %s: its wait not ended after %s tries; it fails", request_id, tries)
                requests.finish(session, row, RequestStatus.FAILED, result={},
                                reason=f"not decided after {tries} tries ({type(exc).__name__}: {exc})")
            effects.collect(session)

    healing.each(due, heal, failed, what="end top-up wait", budget_seconds=budget_seconds)
    return effects


def _due_attempts(
    session: Session, settings: Settings, statuses: tuple[str, ...], stale: ColumnElement[bool], now: datetime
) -> list[int]:
    return list(
        session.scalars(
            select(CardPayment.id)
            .where(CardPayment.status.in_(statuses), stale, healing.is_due(CardPayment.next_heal_at, now))
            .order_by(healing.due_order(CardPayment.next_heal_at, CardPayment.updated_at), CardPayment.id)
            .limit(settings.heal_batch)
        )
    )


def _heal_failed(sessions: sessionmaker[Session], settings: Settings, attempt_id: int, exc: Exception) -> Effects:
    """Count a failed try and back the attempt off; after the last try it fails with its
    callback (a payment request goes on to a checkout if allowed, as after a decline)."""
    error = f"{type(exc).__name__}: {exc}"[:200]
    with sessions.begin() as session:
        attempt = topups.lock_attempt(session, attempt_id)
        if attempt.status not in OPEN:
            return Effects()
        attempt.heal_tries += 1
        attempt.last_error = error
        attempt.next_heal_at = healing.next_try(attempt.heal_tries, settings)
        if attempt.heal_tries < settings.heal_max_tries:
            return Effects()
    healing.log.error("card attempt %s: failed after %s tries, the last: %s", attempt_id, settings.heal_max_tries, error)
    reason = f"not settled after {settings.heal_max_tries} tries ({error})"
    return _end(sessions, settings, attempt_id, reason, reason)


def _end(sessions: sessionmaker[Session], settings: Settings, attempt_id: int, error: str, reason: str) -> Effects:
    """An open attempt fails, with its request's callback."""
    effects = Effects()
    with sessions.begin() as session:
        attempt = topups.lock_attempt(session, attempt_id)
        if attempt.status in OPEN:
            topups.fail_attempt(session, attempt, error)
            payments.card_failed(session, attempt, reason, settings)
        effects.collect(session)
    return effects


def _carry_on(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, done: Effects, into: Effects
) -> None:
    """The card work a healed row led to (a top-up after a payment, a checkout after a failed
    top-up), each on its own: one that raises is left pending for the next reconcile."""
    into.outbox += done.outbox
    into.refunds += done.refunds
    work = [(charge, attempt_id) for attempt_id in done.charges]
    work += [(start_checkout, attempt_id) for attempt_id in done.checkouts]

    def run(item: tuple[Callable[..., Effects], int]) -> None:
        step, attempt_id = item
        _carry_on(sessions, gateway, settings, step(sessions, gateway, settings, attempt_id), into)

    healing.each(work, run, lambda item, exc: None, what="card work after healing")
