"""Limits that must count card money still in flight, and a cancel racing an auto top-up (SPEC 4
and 5), on PostgreSQL with localstripe over HTTP. The interleavings are made exact by running
one step from inside another (a gateway that cancels while it charges), not by timing; one
test then races cancels against charges for real and checks what must hold whoever wins."""

from __future__ import annotations

import threading
import urllib.parse
import urllib.request
from typing import Any

import pytest
import stripe
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared import charges, ledger, payments, profiles, requests, topups
from shared.config import Settings
from shared.ledger import Entry, Line
from shared.models import CardPayment, EntryType, Member, OutboxMessage, SystemAccount
from shared.stripe_gateway import PaymentIntentInfo, StripeGateway
from tests.integration.helpers import add_member, at_once, balance_of, deadlocks, top_up
from tests.stripe_fixture import STRIPE_TEST_KEY, customer_with_card, new_card


@pytest.fixture
def config(database_url: str, stripe_api: str) -> Settings:
    return Settings(database_url=database_url, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api)


@pytest.fixture
def gateway(config: Settings) -> StripeGateway:
    return StripeGateway(config)


@pytest.fixture
def ann(sessions: sessionmaker[Session]) -> int:
    with sessions.begin() as session:
        return add_member(session, "ann")


def auto_topup_on(sessions: sessionmaker[Session], gateway: StripeGateway, browser: stripe.StripeClient) -> str:
    customer = customer_with_card(gateway, browser, "ann")
    with sessions.begin() as session:
        member = session.get(Member, "ann")
        member.stripe_customer_id, member.auto_topup_status, member.auto_topup_amount = customer, "on", 100_00
    return customer


def pending_top_up_for_a_payment(sessions: sessionmaker[Session], config: Settings) -> int:
    """A payment of 30.00 from 10.00 whose auto top-up attempt is committed, not yet charged."""
    order = payments.parse({"request_id": "r1", "member_id": "ann", "amount": "30.00", "description": "Entry"},
                           config)
    with sessions.begin() as session:
        payments.pay(session, order, config)
        (attempt_id,) = session.info.pop("charges")
    return attempt_id


def charged_at_stripe(browser: stripe.StripeClient, customer: str, attempt_key: str) -> list[Any]:
    found = browser.v1.payment_intents.list({"limit": 100}).auto_paging_iter()
    return [pi for pi in found if pi.customer == customer and pi.metadata.to_dict().get("attempt_key") == attempt_key]


def state(sessions: sessionmaker[Session], request_id: str = "r1") -> tuple[str, str, str | None, list[str]]:
    """(member's auto top-up state, request status, request reason, e-mail subjects)."""
    with sessions.begin() as session:
        row = requests.get(session, request_id)
        subjects = [m.payload["subject"] for m in session.scalars(
            select(OutboxMessage).where(OutboxMessage.kind == "notification").order_by(OutboxMessage.id))]
        return session.get(Member, "ann").auto_topup_status, row.status, row.reason, subjects


def attempt_of(sessions: sessionmaker[Session], attempt_id: int) -> tuple[str, str | None]:
    with sessions.begin() as session:
        attempt = session.get(CardPayment, attempt_id)
        return attempt.status, attempt.last_error


# SPEC 5: balance + amount + every top-up still in flight <= 2000.00 ---------------------------


def test_three_manual_top_ups_of_1500_opened_at_once_from_zero_let_only_one_through(
    sessions: sessionmaker[Session], config: Settings, ann: int
) -> None:
    orders = [topups.parse_topup({"request_id": f"t{n}", "member_id": "ann", "amount": "1500.00"}, config)
              for n in range(3)]
    gate = threading.Barrier(3)
    errors: list[BaseException] = []

    def top_up_by_new_card(order: topups.TopupOrder) -> None:
        gate.wait()
        try:
            with sessions.begin() as session:
                topups.topup(session, order, config)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=top_up_by_new_card, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    with sessions.begin() as session:
        opened = session.scalar(select(func.count()).select_from(CardPayment))
        outcomes = sorted((requests.get(session, o.request_id).status, requests.get(session, o.request_id).reason or "")
                          for o in orders)
    assert opened == 1
    assert [status for status, _ in outcomes] == ["failed", "failed", "queued"]  # queued: its checkout is next
    assert all("1500.00 of top-ups in flight above 2000.00" in reason for _, reason in outcomes[:2])


def test_an_auto_top_up_in_flight_counts_against_a_manual_top_up_and_a_payments_checkout_does_not(
    sessions: sessionmaker[Session], config: Settings, ann: int
) -> None:
    with sessions.begin() as session:
        member = session.get(Member, "ann")
        member.stripe_customer_id, member.auto_topup_status, member.auto_topup_amount = "cus_not_called", "on", 600_00
    with sessions.begin() as session:
        assert topups.open_auto_topup(session, "ann", "sweep:1", config) is not None  # 600.00, not yet charged
    checkout = payments.parse({"request_id": "p1", "member_id": "ann", "amount": "1900.00", "description": "Entry",
                               "allow_checkout": True}, config)
    with sessions.begin() as session:
        session.get(Member, "ann").auto_topup_status = "off"  # so the payment goes to a checkout
        payments.pay(session, checkout, config)

    def top_up(request_id: str, amount: str) -> requests.Request:
        order = topups.parse_topup({"request_id": request_id, "member_id": "ann", "amount": amount}, config)
        with sessions.begin() as session:
            return topups.topup(session, order, config)

    refused, allowed = top_up("t1", "1500.00"), top_up("t2", "1400.00")

    assert refused.status == "failed"
    assert refused.reason == ("amount: 1500.00 would take the balance 0.00 with 600.00 of top-ups in flight "
                              "above 2000.00")
    assert allowed.status == "queued"  # its attempt is open: the 1900.00 checkout was not counted


def test_the_sweep_makes_no_auto_top_up_above_the_largest_charge(
    sessions: sessionmaker[Session], config: Settings, ann: int
) -> None:
    with sessions.begin() as session:
        member = session.get(Member, "ann")
        member.stripe_customer_id, member.auto_topup_status, member.auto_topup_amount = "cus_not_called", "on", 100_00
        adjustments = profiles.system_account(session, SystemAccount.ADJUSTMENTS)
        ledger.post(session, Entry("adjustment:debt", EntryType.MANUAL_ADJUSTMENT, "Debt", (
            Line(ann, -5000_00), Line(adjustments, 5000_00)), admin_id="admin", allow_negative=True))

    with sessions.begin() as session:
        # 5100.00 would bring -5000.00 up to the low limit: above 2000.00, so nothing is charged.
        assert topups.open_auto_topup(session, "ann", "sweep:1", config) is None
        assert session.scalar(select(func.count()).select_from(CardPayment)) == 0

    with sessions.begin() as session:
        top_up(session, ann, 4000_00, "fund")
    with sessions.begin() as session:  # -1000.00 needs 1100.00: within the cap
        attempt = session.get(CardPayment, topups.open_auto_topup(session, "ann", "sweep:2", config))
        assert (attempt.kind, attempt.amount) == ("auto_topup", 1100_00)


# SPEC 4.1: cancel means no more charges, and `off` stays `off` -----------------------------------


class CancelWhileCharging(StripeGateway):
    """A gateway whose charge is sent and then, before Stripe answers (or, `after`, once Stripe
    has taken the money), the member cancels: `off` committed, cards detached at Stripe."""

    def __init__(self, config: Settings, sessions: sessionmaker[Session], *, after: bool = False) -> None:
        super().__init__(config)
        self.plain, self.sessions, self.after, self.cancelled = StripeGateway(config), sessions, after, False

    def charge_saved_card(self, **kwargs: Any) -> PaymentIntentInfo:
        if not self.after:
            self.cancel()
        intent = super().charge_saved_card(**kwargs)
        self.cancel()
        return intent

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            charges.cancel_auto_topup(self.sessions, self.plain, "ann")


def test_a_pending_auto_top_up_is_not_charged_once_the_member_has_cancelled(
    sessions: sessionmaker[Session], config: Settings, gateway: StripeGateway, browser: stripe.StripeClient, ann: int
) -> None:
    customer = auto_topup_on(sessions, gateway, browser)
    with sessions.begin() as session:
        top_up(session, ann, 10_00, "fund")
    attempt_id = pending_top_up_for_a_payment(sessions, config)

    # The cancel commits `off`; its card detach at Stripe has not happened yet when the pending
    # top-up's charge runs (a worker picks it up, or the reconciler does).
    with sessions.begin() as session:
        session.get(Member, "ann").auto_topup_status = "off"
    effects = charges.charge(sessions, gateway, config, attempt_id)
    gateway.detach_cards(customer)

    assert charged_at_stripe(browser, customer, "pay-topup:r1") == []
    assert attempt_of(sessions, attempt_id) == ("failed", "auto top-up cancelled")
    member_state, status, reason, emails = state(sessions)
    assert (member_state, status, emails) == ("off", "declined", [])
    assert reason == "auto top-up failed: auto top-up cancelled"
    assert balance_of(sessions, ann) == 10_00
    assert effects.charges == []


def test_a_decline_after_the_member_cancelled_leaves_auto_top_up_off_and_sends_no_failure_email(
    sessions: sessionmaker[Session], config: Settings, browser: stripe.StripeClient, ann: int
) -> None:
    cancelling = CancelWhileCharging(config, sessions)
    auto_topup_on(sessions, cancelling, browser)
    with sessions.begin() as session:
        top_up(session, ann, 10_00, "fund")
    attempt_id = pending_top_up_for_a_payment(sessions, config)

    charges.charge(sessions, cancelling, config, attempt_id)  # the card is gone: Stripe declines

    assert cancelling.cancelled
    assert attempt_of(sessions, attempt_id)[0] == "failed"
    member_state, status, _, emails = state(sessions)
    assert (member_state, status, emails) == ("off", "declined", [])
    assert balance_of(sessions, ann) == 10_00


def test_a_charge_stripe_took_before_the_cancel_landed_is_booked_and_the_member_stays_off(
    sessions: sessionmaker[Session], config: Settings, browser: stripe.StripeClient, ann: int
) -> None:
    cancelling = CancelWhileCharging(config, sessions, after=True)
    customer = auto_topup_on(sessions, cancelling, browser)
    with sessions.begin() as session:
        top_up(session, ann, 10_00, "fund")
    attempt_id = pending_top_up_for_a_payment(sessions, config)

    charges.charge(sessions, cancelling, config, attempt_id)

    assert cancelling.cancelled
    assert [pi.status for pi in charged_at_stripe(browser, customer, "pay-topup:r1")] == ["succeeded"]
    assert attempt_of(sessions, attempt_id) == ("succeeded", None)  # money taken is booked
    member_state, status, _, emails = state(sessions)
    assert (member_state, status, emails) == ("off", "paid", ["Auto top up successful"])
    assert balance_of(sessions, ann) == 80_00  # 10.00 + 100.00 - 30.00


def test_an_authentication_that_fails_after_the_member_saved_a_new_card_leaves_auto_top_up_on(
    sessions: sessionmaker[Session], config: Settings, gateway: StripeGateway, browser: stripe.StripeClient,
    stripe_api: str, ann: int,
) -> None:
    """An auto top-up asked the member to authenticate (`action_required`); they saved a new card
    instead (`on`); later the old PaymentIntent's authentication fails. That ends the old
    attempt, not the new card."""
    customer = customer_with_card(gateway, browser, "ann", number="4000002500003155")  # 3-D Secure
    with sessions.begin() as session:
        member = session.get(Member, "ann")
        member.stripe_customer_id, member.auto_topup_status, member.auto_topup_amount = customer, "on", 100_00
    with sessions.begin() as session:
        attempt_id = topups.open_auto_topup(session, "ann", "sweep:3ds", config)
    charges.charge(sessions, gateway, config, attempt_id)
    with sessions.begin() as session:
        intent_id = session.get(CardPayment, attempt_id).payment_intent_id
        assert (session.get(CardPayment, attempt_id).status, session.get(Member, "ann").auto_topup_status) == (
            "action_required", "action_required")
        session.get(Member, "ann").auto_topup_status = "on"  # a new card saved (set-up, then card_saved)
    secret = browser.v1.payment_intents.retrieve(intent_id).client_secret
    urllib.request.urlopen(urllib.request.Request(  # the bank's page: authentication failed
        f"{stripe_api}/v1/payment_intents/{intent_id}/_authenticate",
        data=urllib.parse.urlencode({"client_secret": secret, "success": "false"}).encode(),
        headers={"Authorization": f"Bearer {STRIPE_TEST_KEY}"}, method="POST"), timeout=5).close()

    charges.settle_intent(sessions, config, attempt_id, gateway.retrieve_payment_intent(intent_id))

    with sessions.begin() as session:
        member_state = session.get(Member, "ann").auto_topup_status
        emails = [m.payload["subject"] for m in session.scalars(select(OutboxMessage))]
    assert attempt_of(sessions, attempt_id)[0] == "failed"
    assert member_state == "on"
    assert "Auto Top Up Failure" not in emails


@pytest.mark.parametrize("since", ["off", "failed", "action_required"])
def test_a_late_card_saved_report_does_not_turn_auto_top_up_back_on(
    sessions: sessionmaker[Session], config: Settings, gateway: StripeGateway, browser: stripe.StripeClient, ann: int,
    since: str,
) -> None:
    """A setup_intent.succeeded delivered late (or replayed) after the member cancelled, or after
    a decline switched auto top-up off, is not a new card: saving one starts with a new setup."""
    customer = gateway.ensure_customer(member_id="ann", email="ann@example.org", name="Ann Lee", customer_id=None)
    setup = gateway.create_setup_intent(customer_id=customer, member_id="ann")
    browser.v1.setup_intents.confirm(setup.id, {"payment_method": new_card(browser)})
    with sessions.begin() as session:
        member = session.get(Member, "ann")
        member.stripe_customer_id, member.auto_topup_status = customer, since

    effects = charges.card_saved(sessions, gateway, config, customer_id=customer, setup_intent_id=setup.id,
                                 event_id="evt_late")

    assert effects.charges == []
    with sessions.begin() as session:
        assert session.get(Member, "ann").auto_topup_status == since
        assert session.scalar(select(func.count()).select_from(CardPayment)) == 0
    assert gateway.default_payment_method(customer) is None


def test_a_card_saved_while_setting_up_turns_auto_top_up_on_and_tops_up(
    sessions: sessionmaker[Session], config: Settings, gateway: StripeGateway, browser: stripe.StripeClient, ann: int,
) -> None:
    info = charges.setup_auto_topup(sessions, gateway, config, "ann")
    browser.v1.setup_intents.confirm(info.setup_intent_id, {"payment_method": new_card(browser)})
    with sessions.begin() as session:
        customer = session.get(Member, "ann").stripe_customer_id

    effects = charges.card_saved(sessions, gateway, config, customer_id=customer,
                                 setup_intent_id=info.setup_intent_id, event_id="evt_saved")

    assert len(effects.charges) == 1
    with sessions.begin() as session:
        assert session.get(Member, "ann").auto_topup_status == "on"
        assert session.get(CardPayment, effects.charges[0]).amount == 100_00


def test_cancels_and_charges_of_pending_auto_top_ups_at_once_never_deadlock_and_never_charge_unbooked(
    sessions: sessionmaker[Session], config: Settings, gateway: StripeGateway, browser: stripe.StripeClient,
    database_url: str,
) -> None:
    """Each member cancels while the worker charges their pending top-up: either the charge
    came first (booked, the member `off` after), or the cancel did (nothing at Stripe, failed);
    never a charge left unbooked, never `failed` or a failure e-mail after the cancel."""
    before = deadlocks(database_url)
    members = [f"race-{n}" for n in range(8)]
    outcomes = []
    for member_id in members:
        customer = customer_with_card(gateway, browser, member_id)
        with sessions.begin() as session:
            add_member(session, member_id)
            member = session.get(Member, member_id)
            member.stripe_customer_id, member.auto_topup_status, member.auto_topup_amount = customer, "on", 100_00
        with sessions.begin() as session:
            attempt_id = topups.open_auto_topup(session, member_id, f"race:{member_id}", config)
        errors = at_once(lambda: charges.charge(sessions, gateway, config, attempt_id),  # noqa: B023
                         lambda: charges.cancel_auto_topup(sessions, gateway, member_id))  # noqa: B023
        assert errors == []
        at_stripe = [pi.status for pi in charged_at_stripe(browser, customer, f"race:{member_id}")]
        with sessions.begin() as session:
            attempt = session.get(CardPayment, attempt_id)
            member = session.get(Member, member_id)
            subjects = [m.payload["subject"] for m in session.scalars(select(OutboxMessage))
                        if m.payload.get("member_id") == member_id]
            outcomes.append((member_id, attempt.status, at_stripe, member.auto_topup_status, subjects))

    for member_id, status, at_stripe, state_after, subjects in outcomes:
        assert state_after == "off", member_id
        assert "Auto Top Up Failure" not in subjects, member_id
        assert (status, at_stripe) in [("succeeded", ["succeeded"]), ("failed", []), ("failed", ["requires_payment_method"])], (
            member_id, status, at_stripe)
    assert deadlocks(database_url) == before


