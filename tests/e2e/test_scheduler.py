"""The scheduler's jobs against the real worker, localstripe and PostgreSQL (SPEC 3, 4.4 and 5,
DESIGN invariants 5, 7, 8 and 12): each job is sent by name, as beat sends it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import stripe
from celery.schedules import schedule
from freezegun import freeze_time
from sqlalchemy import func, select, update

from shared import inbox, messages, payments, requests, topups
from shared.config import Settings
from shared.models import (
    CardPayment,
    CardPaymentKind,
    CardPaymentStatus,
    EntryType,
    JournalEntry,
    Member,
    PaymentRequest,
    RequestStatus,
    StripeEvent,
)
from shared.stripe_gateway import StripeGateway
from tests.e2e.conftest import BROKER, HEAL_MAX_TRIES, PUBLISHABLE_KEY, WEBHOOK_SECRET
from tests.e2e.processes import idle, wait_for
from tests.integration.helpers import add_member, balance_of, top_up
from tests.stripe_fixture import STRIPE_TEST_KEY, customer_with_card, new_card

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def settings(settings: Settings, stripe_api: str) -> Settings:
    return replace(settings, broker_url=BROKER, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api,
                   stripe_webhook_secret=WEBHOOK_SECRET, stripe_publishable_key=PUBLISHABLE_KEY)


@pytest.fixture
def gateway(settings: Settings) -> StripeGateway:
    return StripeGateway(settings)


def member_on_auto_topup(sessions, gateway, browser, member_id: str = "ann") -> str:
    """A member with a saved card and auto top-up `on` (100.00); returns the Stripe customer."""
    customer = customer_with_card(gateway, browser, member_id)
    with sessions.begin() as session:
        add_member(session, member_id)
        member = session.get(Member, member_id)
        member.stripe_customer_id, member.auto_topup_status = customer, "on"
    return customer


def charges_at_stripe(browser: stripe.StripeClient, customer: str) -> list[int]:
    return sorted(pi.amount for pi in browser.v1.payment_intents.list().auto_paging_iter()
                  if pi.customer == customer and pi.status == "succeeded")


def auto_top_ups(sessions) -> int:
    with sessions.begin() as session:
        return session.scalar(select(func.count()).where(JournalEntry.type == EntryType.AUTO_TOP_UP.value))


@pytest.mark.parametrize(("every", "last_run", "now", "due"), [
    (300, "10:00:00", "10:04:59", False), (300, "10:00:00", "10:05:00", True), (3600, "10:00:00", "10:59:00", False),
])
def test_a_job_is_due_when_its_interval_has_passed(monkeypatch, every, last_run, now, due) -> None:
    from scheduler.schedule import beat_schedule

    monkeypatch.setenv("PAYMENTS_SWEEP_AUTO_TOPUPS_SECONDS", str(every))
    entry = beat_schedule()["sweep-auto-topups"]
    assert entry["schedule"] == every
    with freeze_time(f"2026-11-26 {now}"):
        sched = schedule(timedelta(seconds=entry["schedule"]), nowfun=lambda: datetime.now(UTC))
        assert sched.is_due(datetime.fromisoformat(f"2026-11-26T{last_run}+00:00")).is_due is due


def test_a_member_below_the_limit_after_an_adjustment_is_topped_up_by_the_next_sweep(
    client, auth, sessions, gateway, browser, settings
) -> None:
    customer = member_on_auto_topup(sessions, gateway, browser)
    client.post("/api/adjustments", headers=auth, json={"request_id": "a1", "member_id": "ann", "amount": "15.00",
                "description": "Correction", "admin_id": "adm"})
    messages.send("payments.sweep_auto_topups", {}, queue="topups", settings=settings)
    wait_for(lambda: auto_top_ups(sessions) == 1, "the sweep's top-up to be booked")
    with sessions.begin() as session:
        account = session.get(Member, "ann").account_id
    assert balance_of(sessions, account) == 115_00
    assert charges_at_stripe(browser, customer) == [100_00]


def test_two_sweeps_at_once_charge_the_member_once(client, auth, sessions, gateway, browser, settings) -> None:
    customer = member_on_auto_topup(sessions, gateway, browser)
    for _ in range(2):
        messages.send("payments.sweep_auto_topups", {}, queue="topups", settings=settings)
    wait_for(lambda: auto_top_ups(sessions) == 1, "one top-up to be booked")
    # A third sweep now finds the member above the limit: still one charge.
    messages.send("payments.sweep_auto_topups", {}, queue="topups", settings=settings)
    with sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(CardPayment)) == 1
    assert charges_at_stripe(browser, customer) == [100_00]


def test_a_sweep_chunk_goes_on_past_a_failing_member_and_charges_no_one_twice_when_sent_again(
    sessions, gateway, browser, settings, broker
) -> None:
    """A chunk of the sweep (`payments.auto_topups`): a member that fails (here: unknown) is
    sent on by itself and the members after it are still charged; the same chunk delivered
    again finds their attempts by key and charges no one twice."""
    customers = {member: member_on_auto_topup(sessions, gateway, browser, member) for member in ("ann", "bob")}
    chunk = [{"member_id": member, "key": f"sweep:{member}:7"} for member in ("ann", "nobody", "bob")]
    for _ in range(2):
        messages.send("payments.auto_topups", {"members": chunk}, queue="topups", settings=settings)
    wait_for(lambda: auto_top_ups(sessions) == 2, "both members' top-ups to be booked")
    # Both deliveries, and `nobody` sent on by itself (it fails: not a member), are worked off.
    wait_for(lambda: idle(broker, ("topups",)), "the topups queue to be worked off")
    assert auto_top_ups(sessions) == 2
    assert {member: charges_at_stripe(browser, customer) for member, customer in customers.items()} == {
        "ann": [100_00], "bob": [100_00]}


def test_an_event_whose_enqueue_was_lost_is_processed_after_the_redrive(sessions, settings) -> None:
    event = {"id": "evt_lost", "object": "event", "type": "customer.created", "data": {"object": {"id": "cus_x"}}}
    with sessions.begin() as session:
        inbox.accept(session, event)  # stored, as the webhook does, but never enqueued
        session.execute(update(StripeEvent).values(updated_at=datetime.now(UTC) - timedelta(minutes=5)))

    def handled() -> str | None:
        messages.send("payments.redrive_inbox", {}, queue="webhooks", settings=settings)
        with sessions.begin() as session:
            status = session.scalar(select(StripeEvent.status))
        return status if status == "ignored" else None

    assert wait_for(handled, "the redriven event to be handled") == "ignored"


def test_a_charge_whose_booking_never_happened_is_booked_by_the_reconciler(
    sessions, gateway, browser, settings
) -> None:
    customer = member_on_auto_topup(sessions, gateway, browser)
    with sessions.begin() as session:
        attempt = topups.open_attempt(session, key="lost-1", kind=CardPaymentKind.AUTO_TOP_UP, member_id="ann",
                                      amount=100_00)
        attempt.tries = 1
        attempt.updated_at = datetime.now(UTC) - timedelta(hours=1)
        made_for = topups.intent_metadata("lost-1", attempt.id, "ann", CardPaymentKind.AUTO_TOP_UP.value)
    # Charged at Stripe as the worker charges, then it died before booking it: no webhook will come.
    gateway.charge_saved_card(customer_id=customer, amount_cents=100_00, idempotency_key="lost-1", metadata=made_for)
    messages.send("payments.reconcile", {}, queue="topups", settings=settings)
    wait_for(lambda: auto_top_ups(sessions) == 1, "the reconciler to book the charge")
    assert charges_at_stripe(browser, customer) == [100_00]  # found, not charged again
    with sessions.begin() as session:  # booked by the reconciler, not by a webhook delivery
        assert session.scalar(select(func.count()).select_from(StripeEvent)) == 0


def test_an_unpaid_checkout_expires_after_a_day_with_its_failure_callback(
    client, auth, sessions, settings, received, browser
) -> None:
    with sessions.begin() as session:
        add_member(session, "bob", "Bob", "Ray")
    client.post("/api/payments", headers=auth, json={"request_id": "c1", "member_id": "bob", "amount": "30.00",
                "description": "Entry", "allow_checkout": True, "route_code": "EVT"})
    wait_for(lambda: client.get("/api/payments/c1", headers=auth).get_json()["status"] == "awaiting_card",
             "the checkout")
    intent_id = client.get("/api/payments/c1", headers=auth).get_json()["checkout"]["payment_intent_id"]
    a_day_ago(sessions)
    messages.send("payments.expire_checkouts", {}, queue="topups", settings=settings)
    callbacks = wait_for(received, "the failure callback")
    assert [(c["request_id"], c["status"]) for c in callbacks] == [("c1", "failure")]
    assert client.get("/api/payments/c1", headers=auth).get_json()["reason"] == (
        "card payment failed: checkout expired after 24 h"
    )
    # Cancelled at Stripe first: the member can no longer pay what was given up.
    assert browser.v1.payment_intents.retrieve(intent_id).status == "canceled"


# Healing row by row (DESIGN invariant 12; SPEC 5) ------------------------------------------


def a_day_ago(sessions, hours: float = 25) -> None:
    """Every card attempt opened (and last touched) `hours` ago."""
    with sessions.begin() as session:
        then = datetime.now(UTC) - timedelta(hours=hours)
        session.execute(update(CardPayment).values(created_at=then, updated_at=then))


def store_payment(sessions, settings, request_id: str, member_id: str, amount: str, **extra) -> None:
    """A payment request stored `queued`, as the HTTP edge stores it, its task never sent."""
    order = payments.parse({"request_id": request_id, "member_id": member_id, "amount": amount,
                            "description": "Entry", **extra}, settings)
    with sessions.begin() as session:
        payments.record(session, order)


def attempt_of(sessions, key: str) -> CardPayment:
    with sessions.begin() as session:
        found = session.scalar(select(CardPayment).where(CardPayment.attempt_key == key))
        session.expunge(found)
        return found


def status_of(sessions, request_id: str) -> str:
    with sessions.begin() as session:
        return requests.get(session, request_id).status


@pytest.mark.parametrize(("kind", "use_saved_card"), [
    (CardPaymentKind.CHECKOUT, False), (CardPaymentKind.MANUAL_TOP_UP, False),
])
def test_a_checkout_never_made_at_stripe_is_reopened_by_the_reconciler_not_charged_to_the_saved_card(
    sessions, gateway, browser, settings, kind, use_saved_card
) -> None:
    customer = member_on_auto_topup(sessions, gateway, browser)  # a saved card the reconciler must not use
    with sessions.begin() as session:
        session.get(Member, "ann").auto_topup_status = "failed"
    if kind == CardPaymentKind.CHECKOUT:
        store_payment(sessions, settings, "r1", "ann", "60.00", allow_checkout=True)
    else:
        with sessions.begin() as session:
            topups.record_topup(session, topups.TopupOrder("r1", "ann", 60_00, use_saved_card))
    with sessions.begin() as session:
        # The worker died (or Stripe was down) before the PaymentIntent was made.
        attempt = topups.open_attempt(session, key="lost-checkout", kind=kind, member_id="ann",
                                      amount=60_00, request_id="r1")
        attempt.tries = 1
    a_day_ago(sessions, hours=1)
    messages.send("payments.reconcile", {}, queue="topups", settings=settings)
    wait_for(lambda: attempt_of(sessions, "lost-checkout").status != "pending", "the reconciler to take the attempt")
    reopened = attempt_of(sessions, "lost-checkout")
    assert reopened.status == CardPaymentStatus.AWAITING_CARD.value  # a checkout for the browser, again
    assert browser.v1.payment_intents.retrieve(reopened.payment_intent_id).status == "requires_payment_method"
    assert charges_at_stripe(browser, customer) == []  # the saved card was never charged
    assert status_of(sessions, "r1") == RequestStatus.AWAITING_CARD.value


def test_a_manual_top_up_with_the_saved_card_is_charged_by_the_reconciler(sessions, gateway, browser, settings) -> None:
    customer = member_on_auto_topup(sessions, gateway, browser)
    with sessions.begin() as session:
        topups.record_topup(session, topups.TopupOrder("t1", "ann", 60_00, True))
        topups.open_attempt(session, key="topup:t1", kind=CardPaymentKind.MANUAL_TOP_UP, member_id="ann",
                            amount=60_00, request_id="t1")
    a_day_ago(sessions, hours=1)
    messages.send("payments.reconcile", {}, queue="topups", settings=settings)
    wait_for(lambda: status_of(sessions, "t1") == RequestStatus.PAID.value, "the saved card top-up to be paid")
    assert charges_at_stripe(browser, customer) == [60_00]


def test_an_attempt_stripe_does_not_know_does_not_stop_the_reconciler_and_fails_after_its_last_try(
    sessions, gateway, browser, settings, received
) -> None:
    customer = member_on_auto_topup(sessions, gateway, browser)
    with sessions.begin() as session:
        add_member(session, "bob", "Bob", "Ray")
    store_payment(sessions, settings, "p1", "bob", "30.00", allow_checkout=True, route_code="EVT")
    with sessions.begin() as session:
        poison = topups.open_attempt(session, key="poison", kind=CardPaymentKind.CHECKOUT, member_id="bob",
                                     amount=30_00, request_id="p1")
        poison.status, poison.payment_intent_id = CardPaymentStatus.AWAITING_CARD.value, "pi_unknown_at_stripe"
        requests.finish(session, requests.lock_existing(session, "p1"), RequestStatus.AWAITING_CARD)
        good = topups.open_attempt(session, key="lost-1", kind=CardPaymentKind.AUTO_TOP_UP, member_id="ann",
                                   amount=100_00)
        good.tries = 1
    a_day_ago(sessions, hours=1)
    with sessions.begin() as session:  # the poison row first in line
        session.execute(update(CardPayment).where(CardPayment.attempt_key == "poison")
                        .values(updated_at=datetime.now(UTC) - timedelta(hours=2)))
    gateway.charge_saved_card(customer_id=customer, amount_cents=100_00, idempotency_key="lost-1",
                              metadata={"attempt_key": "lost-1"})
    messages.send("payments.reconcile", {}, queue="topups", settings=settings)
    wait_for(lambda: auto_top_ups(sessions) == 1, "the reconciler to book the charge behind the poison row")
    tried = attempt_of(sessions, "poison")
    assert (tried.status, tried.heal_tries) == ("awaiting_card", 1)
    assert "pi_unknown_at_stripe" in tried.last_error and tried.next_heal_at > datetime.now(UTC)

    with sessions.begin() as session:  # its last try is due
        session.execute(update(CardPayment).where(CardPayment.attempt_key == "poison")
                        .values(heal_tries=HEAL_MAX_TRIES - 1, next_heal_at=None))
    messages.send("payments.reconcile", {}, queue="topups", settings=settings)
    callbacks = wait_for(received, "the failure callback of the given-up checkout")
    assert [(c["request_id"], c["status"]) for c in callbacks] == [("p1", "failure")]
    assert "not settled after 20 tries" in callbacks[0]["reason"]
    assert attempt_of(sessions, "poison").status == "failed"


def stuck_requests(sessions, settings, count: int, *, age: timedelta, route_code: str | None = None) -> None:
    """`count` queued requests whose task can never decide them: their stored payload no longer
    matches its hash, so every redrive ends in a conflict and leaves them queued."""
    then = datetime.now(UTC) - age
    payload = payments.parse({"request_id": "x", "member_id": "nobody", "amount": "1.00",
                              "description": "Stuck"}, settings).payload()
    rows = [{"request_id": f"stuck-{i:04d}", "kind": "payment", "payload_hash": "not-the-hash",
             "payload": {**payload, "request_id": f"stuck-{i:04d}", "route_code": route_code},
             "status": "queued", "member_id": "nobody", "amount": 100, "route_code": route_code,
             "attempts": 0, "created_at": then, "updated_at": then} for i in range(count)]
    with sessions.begin() as session:
        session.execute(PaymentRequest.__table__.insert(), rows)


def test_a_new_stuck_request_is_redriven_behind_a_thousand_and_one_that_stay_stuck(
    sessions, settings, broker
) -> None:
    with sessions.begin() as session:
        top_up(session, add_member(session, "ann"), 50_00, "seed")
    stuck_requests(sessions, settings, 1001, age=timedelta(hours=1))
    store_payment(sessions, settings, "fresh", "ann", "5.00")  # its task was lost
    with sessions.begin() as session:
        session.execute(update(PaymentRequest).where(PaymentRequest.request_id == "fresh")
                        .values(updated_at=datetime.now(UTC) - timedelta(minutes=2)))

    def paid() -> bool:
        if status_of(sessions, "fresh") == RequestStatus.PAID.value:
            return True
        if broker.llen("payments") == 0:  # the last redrive is worked off: the next minute's
            messages.send("payments.redrive_requests", {}, queue="payments", settings=settings)
        return False

    wait_for(paid, "the new request to be redriven and paid", timeout=120)
    worked_off(broker)


def worked_off(broker) -> None:
    """Wait until the worker has run every task still queued, so the next test's clean start
    does not race it."""
    wait_for(lambda: idle(broker), "the worker to work off the redriven tasks", timeout=120)


def test_a_request_that_stays_stuck_fails_with_its_callback_after_its_last_redrive(
    sessions, settings, received
) -> None:
    stuck_requests(sessions, settings, 1, age=timedelta(hours=1), route_code="EVT")
    with sessions.begin() as session:  # tried every time but the last
        session.execute(update(PaymentRequest).values(heal_tries=HEAL_MAX_TRIES))
    messages.send("payments.redrive_requests", {}, queue="payments", settings=settings)
    callbacks = wait_for(received, "the failure callback of the given-up request")
    assert [(c["request_id"], c["status"]) for c in callbacks] == [("stuck-0000", "failure")]
    assert status_of(sessions, "stuck-0000") == RequestStatus.FAILED.value
    assert callbacks[0]["reason"] == f"not decided after {HEAL_MAX_TRIES} redrives: the request was given up"


def test_a_checkout_paid_at_stripe_just_before_it_expires_is_booked_not_failed(
    client, auth, sessions, settings, received, browser
) -> None:
    with sessions.begin() as session:
        top_up(session, add_member(session, "bob", "Bob", "Ray"), 10_00, "seed")
    client.post("/api/payments", headers=auth, json={"request_id": "c1", "member_id": "bob", "amount": "30.00",
                "description": "Entry", "allow_checkout": True, "route_code": "EVT"})
    waiting = wait_for(lambda: (lambda d: d if d["status"] == "awaiting_card" else None)(
        client.get("/api/payments/c1", headers=auth).get_json()), "the checkout")
    intent_id = waiting["checkout"]["payment_intent_id"]
    # The member pays in the last minute; its webhook is lost.
    browser.v1.payment_intents.update(intent_id, {"payment_method": new_card(browser)})
    assert browser.v1.payment_intents.confirm(intent_id).status == "succeeded"
    a_day_ago(sessions)
    messages.send("payments.expire_checkouts", {}, queue="topups", settings=settings)
    callbacks = wait_for(received, "the callback")
    assert [(c["request_id"], c["status"]) for c in callbacks] == [("c1", "success")]
    assert status_of(sessions, "c1") == RequestStatus.PAID.value
    with sessions.begin() as session:
        account = session.get(Member, "bob").account_id
    assert balance_of(sessions, account) == 0
