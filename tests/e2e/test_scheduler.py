"""The scheduler's jobs against the real worker, localstripe and PostgreSQL (SPEC 4.4, DESIGN
invariants 5, 7 and 8): each job is sent by name, as beat sends it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import stripe
from celery.schedules import schedule
from freezegun import freeze_time
from sqlalchemy import func, select, update

from shared import client as payments_client
from shared import inbox, topups
from shared.config import Settings
from shared.models import CardPayment, CardPaymentKind, EntryType, JournalEntry, Member, StripeEvent
from shared.stripe_gateway import StripeGateway
from tests.e2e.conftest import BROKER, PUBLISHABLE_KEY, WEBHOOK_SECRET
from tests.e2e.processes import wait_for
from tests.integration.helpers import add_member, balance_of
from tests.stripe_fixture import STRIPE_TEST_KEY, browser_for, customer_with_card

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def settings(settings: Settings, stripe_api: str) -> Settings:
    return replace(settings, broker_url=BROKER, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api,
                   stripe_webhook_secret=WEBHOOK_SECRET, stripe_publishable_key=PUBLISHABLE_KEY)


@pytest.fixture
def gateway(settings: Settings) -> StripeGateway:
    return StripeGateway(settings)


@pytest.fixture
def browser(stripe_api: str) -> stripe.StripeClient:
    return browser_for(stripe_api)


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
    payments_client.send("payments.sweep_auto_topups", {}, queue="topups", settings=settings)
    wait_for(lambda: auto_top_ups(sessions) == 1, "the sweep's top-up to be booked")
    with sessions.begin() as session:
        account = session.get(Member, "ann").account_id
    assert balance_of(sessions, account) == 115_00
    assert charges_at_stripe(browser, customer) == [100_00]


def test_two_sweeps_at_once_charge_the_member_once(client, auth, sessions, gateway, browser, settings) -> None:
    customer = member_on_auto_topup(sessions, gateway, browser)
    for _ in range(2):
        payments_client.send("payments.sweep_auto_topups", {}, queue="topups", settings=settings)
    wait_for(lambda: auto_top_ups(sessions) == 1, "one top-up to be booked")
    # A third sweep now finds the member above the limit: still one charge.
    payments_client.send("payments.sweep_auto_topups", {}, queue="topups", settings=settings)
    with sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(CardPayment)) == 1
    assert charges_at_stripe(browser, customer) == [100_00]


def test_an_event_whose_enqueue_was_lost_is_processed_after_the_redrive(sessions, settings) -> None:
    event = {"id": "evt_lost", "object": "event", "type": "customer.created", "data": {"object": {"id": "cus_x"}}}
    with sessions.begin() as session:
        inbox.accept(session, event)  # stored, as the webhook does, but never enqueued
        session.execute(update(StripeEvent).values(updated_at=datetime.now(UTC) - timedelta(minutes=5)))

    def handled() -> str | None:
        payments_client.send("payments.redrive_inbox", {}, queue="webhooks", settings=settings)
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
    # Charged at Stripe, then the worker died before booking it: no webhook will come.
    gateway.charge_saved_card(customer_id=customer, amount_cents=100_00, idempotency_key="lost-1",
                              metadata={"attempt_key": "lost-1"})
    payments_client.send("payments.reconcile", {}, queue="topups", settings=settings)
    wait_for(lambda: auto_top_ups(sessions) == 1, "the reconciler to book the charge")
    assert charges_at_stripe(browser, customer) == [100_00]  # found, not charged again
    with sessions.begin() as session:  # booked by the reconciler, not by a webhook delivery
        assert session.scalar(select(func.count()).select_from(StripeEvent)) == 0


def test_an_unpaid_checkout_expires_after_a_day_with_its_failure_callback(
    client, auth, sessions, settings, received
) -> None:
    with sessions.begin() as session:
        add_member(session, "bob", "Bob", "Ray")
    client.post("/api/payments", headers=auth, json={"request_id": "c1", "member_id": "bob", "amount": "30.00",
                "description": "Entry", "allow_checkout": True, "route_code": "EVT"})
    wait_for(lambda: client.get("/api/payments/c1", headers=auth).get_json()["status"] == "awaiting_card",
             "the checkout")
    with sessions.begin() as session:
        session.execute(update(CardPayment).values(updated_at=datetime.now(UTC) - timedelta(hours=25)))
    payments_client.send("payments.expire_checkouts", {}, queue="topups", settings=settings)
    callbacks = wait_for(received, "the failure callback")
    assert [(c["request_id"], c["status"]) for c in callbacks] == [("c1", "failure")]
    assert client.get("/api/payments/c1", headers=auth).get_json()["reason"] == (
        "card payment failed: checkout expired after 24 h"
    )
