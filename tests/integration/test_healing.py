"""Healing jobs row by row (DESIGN invariant 12, SPEC 5): the request and inbox redrives, the
reconciler and the checkout expiry count each row's tries, back it off, end it `failed` after
its last try, and never let one row hold up the others. PostgreSQL, localstripe over HTTP,
freezegun for the clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared import charges, inbox, outbox, payments, requests, topups
from shared.config import Settings
from shared.models import (
    CardPayment,
    CardPaymentKind,
    CardPaymentStatus,
    EventStatus,
    OutboxMessage,
    PaymentRequest,
    StripeEvent,
)
from shared.stripe_gateway import StripeGateway
from tests.e2e.processes import free_port
from tests.integration.helpers import add_member
from tests.stripe_fixture import STRIPE_TEST_KEY

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def settings(settings: Settings, stripe_api: str) -> Settings:
    return replace(settings, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api, heal_max_tries=3,
                   heal_backoff_seconds=60, heal_backoff_max_seconds=3600)


@pytest.fixture
def gateway(settings: Settings) -> StripeGateway:
    return StripeGateway(settings)


def store_payment(sessions: sessionmaker[Session], settings: Settings, request_id: str, **extra: object) -> None:
    order = payments.parse({"request_id": request_id, "member_id": "bob", "amount": "30.00", "description": "Entry",
                            "allow_checkout": True, "route_code": "EVT", **extra}, settings)
    with sessions.begin() as session:
        payments.record(session, order)


def request_row(sessions: sessionmaker[Session], request_id: str) -> PaymentRequest:
    with sessions.begin() as session:
        found = session.get(PaymentRequest, request_id)
        assert found is not None
        session.expunge(found)
        return found


def attempt_row(sessions: sessionmaker[Session], attempt_id: int) -> CardPayment:
    with sessions.begin() as session:
        found = session.get(CardPayment, attempt_id)
        assert found is not None
        session.expunge(found)
        return found


def callbacks(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions.begin() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "callback")
                               .order_by(OutboxMessage.id)).all()
        return [(r.payload["request_id"], r.payload["status"]) for r in rows]


def open_checkout(sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, key: str) -> int:
    """A payment of bob's waiting for a checkout of 30.00 at localstripe, opened at T0."""
    with freeze_time(T0):
        with sessions.begin() as session:
            add_member(session, "bob", "Bob", "Ray")
        store_payment(sessions, settings, key)
        checkout = gateway.create_checkout(amount_cents=30_00, idempotency_key=key, metadata={"attempt_key": key})
        with sessions.begin() as session:
            attempt = topups.open_attempt(session, key=key, kind=CardPaymentKind.CHECKOUT, member_id="bob",
                                          amount=30_00, request_id=key)
            assert attempt is not None
            attempt.status, attempt.payment_intent_id = CardPaymentStatus.AWAITING_CARD.value, checkout.payment_intent_id
            attempt.client_secret = checkout.client_secret
            payments.await_card(session, attempt, settings)
            return attempt.id


# Checkout expiry (defect 11) --------------------------------------------------------------


def test_an_expiring_checkout_is_left_for_a_later_run_while_stripe_is_unreachable_then_cancelled(
    sessions, gateway, settings, browser
) -> None:
    attempt_id = open_checkout(sessions, gateway, settings, "c1")
    unreachable = StripeGateway(replace(settings, stripe_api_base=f"http://127.0.0.1:{free_port()}"))
    with freeze_time(T0 + timedelta(hours=25)):
        charges.expire_checkouts(sessions, unreachable, settings)
    waiting = attempt_row(sessions, attempt_id)
    assert (waiting.status, waiting.heal_tries) == ("awaiting_card", 1)
    assert waiting.next_heal_at == T0 + timedelta(hours=25, seconds=60)
    assert "StripeUnavailable" in (waiting.last_error or "") and callbacks(sessions) == []
    with freeze_time(T0 + timedelta(hours=25, seconds=30)):  # backing off: not tried
        charges.expire_checkouts(sessions, gateway, settings)
    assert attempt_row(sessions, attempt_id).status == "awaiting_card"

    with freeze_time(T0 + timedelta(hours=25, seconds=61)):
        charges.expire_checkouts(sessions, gateway, settings)
    assert attempt_row(sessions, attempt_id).status == "failed"
    assert browser.v1.payment_intents.retrieve(waiting.payment_intent_id).status == "canceled"
    assert callbacks(sessions) == [("c1", "failure")]
    assert request_row(sessions, "c1").reason == "card payment failed: checkout expired after 24 h"


def test_a_checkout_stripe_does_not_know_does_not_stop_the_expiry_of_the_next(
    sessions, gateway, settings, browser
) -> None:
    poison = open_checkout(sessions, gateway, settings, "c1")
    good = open_checkout(sessions, gateway, settings, "c2")
    with sessions.begin() as session:
        session.execute(update(CardPayment).where(CardPayment.id == poison).values(payment_intent_id="pi_not_at_stripe"))
    for run in range(3):  # each run after the poison row's backoff
        with freeze_time(T0 + timedelta(hours=25 + 2 * run)):
            charges.expire_checkouts(sessions, gateway, settings)
        assert attempt_row(sessions, good).status == "failed"
    assert callbacks(sessions) == [("c2", "failure"), ("c1", "failure")]  # the poison after its 3 tries
    given_up = attempt_row(sessions, poison)
    assert (given_up.status, given_up.heal_tries) == ("failed", 3)
    assert request_row(sessions, "c1").reason.startswith("card payment failed: not settled after 3 tries")


# The reconciler by kind (defect 4) --------------------------------------------------------


def test_a_checkout_never_made_at_stripe_fails_with_its_callback_once_older_than_a_day(
    sessions, gateway, settings, browser
) -> None:
    with freeze_time(T0):
        with sessions.begin() as session:
            add_member(session, "bob", "Bob", "Ray")
        store_payment(sessions, settings, "c1")
        with sessions.begin() as session:
            # A key of its own: localstripe lives for the whole run, and keys repeat across tests.
            topups.open_attempt(session, key="never-made-at-stripe", kind=CardPaymentKind.CHECKOUT,
                                member_id="bob", amount=30_00, request_id="c1")
    with freeze_time(T0 + timedelta(hours=24, minutes=1)):
        taken, effects = charges.reconcile(sessions, gateway, settings, timedelta(minutes=10))
    assert taken == 1 and len(effects.outbox) == 1
    assert callbacks(sessions) == [("c1", "failure")]
    assert request_row(sessions, "c1").reason == "card payment failed: checkout expired after 24 h"
    made = [pi for pi in browser.v1.payment_intents.list({"limit": 100}).auto_paging_iter()
            if pi.metadata.to_dict().get("attempt_key") == "never-made-at-stripe"]
    assert made == []  # nothing opened at Stripe for a checkout already given up


def test_a_checkout_the_member_may_still_pay_is_looked_at_again_after_the_reconcile_interval_without_a_try(
    sessions, gateway, settings
) -> None:
    attempt_id = open_checkout(sessions, gateway, settings, "c1")
    with freeze_time(T0 + timedelta(hours=1)):
        assert charges.reconcile(sessions, gateway, settings, timedelta(minutes=10))[0] == 1
    with freeze_time(T0 + timedelta(hours=1, minutes=5)):
        assert charges.reconcile(sessions, gateway, settings, timedelta(minutes=10))[0] == 0
    looked_at = attempt_row(sessions, attempt_id)
    assert (looked_at.status, looked_at.heal_tries) == ("awaiting_card", 0)
    assert looked_at.next_heal_at == T0 + timedelta(hours=1, minutes=10)


# The request redrive (defect 5) -----------------------------------------------------------


def test_each_redrive_of_a_stuck_request_is_counted_and_backed_off_and_the_last_ends_it_failed(
    sessions, settings
) -> None:
    with freeze_time(T0):
        store_payment(sessions, settings, "r1")
    minute = timedelta(minutes=1)

    def take(at: timedelta) -> list[str]:
        with freeze_time(T0 + at), sessions.begin() as session:
            return [r.request_id for r in requests.take_stale(session, settings, minute)]

    assert take(timedelta(seconds=30)) == []  # not stuck yet
    assert take(timedelta(seconds=61)) == ["r1"]  # try 1; next after 60 s
    assert take(timedelta(seconds=120)) == []
    assert take(timedelta(seconds=122)) == ["r1"]  # try 2; next after 120 s
    assert take(timedelta(seconds=241)) == []
    assert take(timedelta(seconds=243)) == ["r1"]  # try 3, the last; next after 240 s
    assert request_row(sessions, "r1").status == "queued" and callbacks(sessions) == []
    assert take(timedelta(seconds=484)) == []  # given up instead of sent again
    ended = request_row(sessions, "r1")
    assert (ended.status, ended.heal_tries) == ("failed", 3)
    assert ended.reason == "not decided after 3 redrives: the request was given up"
    assert callbacks(sessions) == [("r1", "failure")]


def test_a_request_whose_card_money_is_still_moving_is_not_given_up_by_the_redrive(sessions, settings) -> None:
    with freeze_time(T0):
        store_payment(sessions, settings, "r1")
        with sessions.begin() as session:
            topups.open_attempt(session, key="pay-topup:r1", kind=CardPaymentKind.AUTO_TOP_UP, member_id="bob",
                                amount=100_00, request_id="r1")
            session.execute(update(PaymentRequest).values(heal_tries=3))
    with freeze_time(T0 + timedelta(hours=1)), sessions.begin() as session:
        assert requests.take_stale(session, settings, timedelta(minutes=1)) == []
    assert request_row(sessions, "r1").status == "queued" and callbacks(sessions) == []


def test_a_thousand_stuck_requests_do_not_starve_one_stuck_after_them(sessions, settings) -> None:
    settings = replace(settings, heal_batch=400, heal_max_tries=12)
    with freeze_time(T0):
        for i in range(1001):
            store_payment(sessions, settings, f"old-{i:04d}")
    with freeze_time(T0 + timedelta(minutes=30)):
        store_payment(sessions, settings, "new")
    runs = []
    for minute in range(32, 40):  # the job, every minute
        with freeze_time(T0 + timedelta(minutes=minute)), sessions.begin() as session:
            runs.append({r.request_id for r in requests.take_stale(session, settings, timedelta(minutes=1))})
    first_with_new = next(i for i, taken in enumerate(runs) if "new" in taken)
    assert first_with_new <= 2  # behind at most the 1,001 never tried
    assert all(len(taken) <= 400 for taken in runs)


# The inbox redrive ------------------------------------------------------------------------


def store_event(sessions: sessionmaker[Session], event_id: str, status: str, attempts: int) -> None:
    with sessions.begin() as session:
        inbox.accept(session, {"id": event_id, "type": "payment_intent.succeeded", "data": {"object": {}}})
        session.execute(update(StripeEvent).where(StripeEvent.event_id == event_id)
                        .values(status=status, attempts=attempts))


def test_a_new_event_is_redriven_behind_a_thousand_failing_ones_which_back_off(sessions, settings) -> None:
    settings = replace(settings, heal_batch=600)
    with freeze_time(T0):
        for i in range(1001):
            store_event(sessions, f"evt_old_{i:04d}", "failed", 5)
    with freeze_time(T0 + timedelta(minutes=30)):
        store_event(sessions, "evt_new", "received", 0)
    taken: list[set[str]] = []
    for minute in (32, 33):
        with freeze_time(T0 + timedelta(minutes=minute)), sessions.begin() as session:
            taken.append(set(inbox.stale(session, timedelta(minutes=1), settings)))
    assert "evt_new" in taken[0] | taken[1]
    assert len(taken[0]) == 600 and taken[0].isdisjoint(taken[1])  # each backs off after its redrive
    with sessions.begin() as session:
        assert session.scalar(select(func.max(StripeEvent.heal_tries))) == 1


def test_an_event_whose_worker_died_every_time_ends_failed_after_its_last_attempt(sessions, settings) -> None:
    with freeze_time(T0):
        store_event(sessions, "evt_kills_workers", "processing", settings.inbox_max_attempts)
        store_event(sessions, "evt_worker_died_once", "processing", 1)
    with freeze_time(T0 + timedelta(minutes=5)), sessions.begin() as session:
        assert inbox.stale(session, timedelta(minutes=1), settings) == ["evt_worker_died_once"]
    with sessions.begin() as session:
        poison = session.get(StripeEvent, "evt_kills_workers")
        assert poison is not None and poison.status == EventStatus.FAILED.value
        assert "given up" in (poison.last_error or "")


# The outbox relay ---------------------------------------------------------------------------


def test_an_outbox_row_whose_sender_died_at_every_try_ends_dead(sessions) -> None:
    config = Settings(outbox_max_attempts=3)
    with sessions.begin() as session:
        outbox_id = outbox.add_notification(session, "a", {"to": "a@example.org"})
    for _ in range(3):  # claimed, then the sender dies before recording anything
        with sessions.begin() as session:
            assert outbox.claim(session, outbox_id, max_attempts=3) is not None
    assert outbox.deliver(sessions, outbox_id, config, lambda *args: None) == ("skipped", None)
    with sessions.begin() as session:
        dead = session.get(OutboxMessage, outbox_id)
        assert dead is not None and (dead.status, dead.attempts) == ("dead", 3)
        assert outbox.due(session) == []
