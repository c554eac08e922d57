"""SPEC 5 card refunds: booked first, then refunded at localstripe (over HTTP); a refusal by
Stripe reverses the booking. Never more than was charged. A booked refund whose send was cut
off is sent by the next run of its request or by the reconciler, and never twice."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from decimal import Decimal

import pytest
import stripe
from freezegun import freeze_time
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from shared import profiles, refunds, requests, topups
from shared.config import Settings
from shared.errors import StripeUnavailable
from shared.models import CardPayment, CardPaymentKind, OutboxMessage, PaymentRequest, SystemAccount, utcnow
from shared.stripe_gateway import StripeGateway
from tests.e2e.processes import free_port
from tests.integration.helpers import add_member, balance_of, pay, add_organisation
from tests.integration.test_stripe_gateway import VISA, customer_with_card
from tests.stripe_fixture import STRIPE_TEST_KEY


@pytest.fixture
def config(stripe_api: str) -> Settings:
    return Settings(stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api)


@pytest.fixture
def gateway(config: Settings) -> StripeGateway:
    return StripeGateway(config)


@pytest.fixture
def card_payment(sessions: sessionmaker[Session], gateway: StripeGateway, stripe_api: str) -> dict:
    """Ann topped up 100.00 by card: charged at localstripe and booked."""
    browser = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": stripe_api}, max_network_retries=0)
    customer, _ = customer_with_card(gateway, browser, VISA)
    intent = gateway.charge_saved_card(customer_id=customer, amount_cents=100_00, idempotency_key="k1", metadata={})
    with sessions.begin() as session:
        account = add_member(session, "ann")
        club = add_organisation(session, "club")
        attempt = topups.open_attempt(session, key="k1", kind=CardPaymentKind.MANUAL_TOP_UP, member_id="ann", amount=100_00)
        topups.book_card_money(session, attempt, payment_intent_id=intent.id)
    return {"intent": intent.id, "ann": account, "club": club, "browser": browser}


def refund(sessions, gateway, config, request_id: str, **body) -> requests.Request:
    order = refunds.parse({"request_id": request_id, **body}, config)
    with sessions.begin() as session:
        refunds.book(session, order, config)
    refunds.send_to_card(sessions, gateway, config, request_id)
    with sessions.begin() as session:
        return requests.get(session, request_id)


def refunded_at_stripe(browser: stripe.StripeClient, intent: str) -> int:
    return sum(r.amount for r in browser.v1.refunds.list({"payment_intent": intent}).data)


def test_a_member_refunds_the_whole_remainder_less_three_percent(sessions, gateway, config, card_payment) -> None:
    row = refund(sessions, gateway, config, "rf1", payment_intent_id=card_payment["intent"], by="member")
    assert (row.status, row.amount, row.result["to_card"], row.result["fee"]) == ("paid", 100_00, "97.00", "3.00")
    assert balance_of(sessions, card_payment["ann"]) == 0
    with sessions.begin() as session:
        fees = profiles.system_account(session, SystemAccount.FEES)
    assert balance_of(sessions, fees) == 3_00
    assert refunded_at_stripe(card_payment["browser"], card_payment["intent"]) == 97_00
    again = refund(sessions, gateway, config, "rf2", payment_intent_id=card_payment["intent"], by="member")
    assert (again.status, again.reason) == ("declined", f"{card_payment['intent']}: already refunded in full")


def test_an_admin_refunds_part_without_a_fee_and_never_more_than_was_charged(sessions, gateway, config, card_payment) -> None:
    first = refund(sessions, gateway, config, "rf1", payment_intent_id=card_payment["intent"], by="admin",
                   admin_id="adm", amount="30.00")
    assert (first.status, first.reason) == ("paid", None)
    assert first.result["fee"] == "0.00"
    too_much = refund(sessions, gateway, config, "rf2", payment_intent_id=card_payment["intent"], by="admin",
                      admin_id="adm", amount="70.01")
    assert too_much.reason == "amount: 70.01 is more than the unrefunded 70.00"
    assert balance_of(sessions, card_payment["ann"]) == 70_00
    assert refunded_at_stripe(card_payment["browser"], card_payment["intent"]) == 30_00


def test_a_member_refund_that_would_overdraw_or_is_too_old_is_declined(sessions, gateway, config, card_payment) -> None:
    with sessions.begin() as session:
        pay(session, card_payment["ann"], card_payment["club"], 1_00, "spent")
    row = refund(sessions, gateway, config, "rf1", payment_intent_id=card_payment["intent"], by="member")
    assert (row.status, row.reason) == ("declined", "member ann: balance 99.00, needs 100.00")
    with freeze_time(timedelta(days=85)):
        old = refund(sessions, gateway, config, "rf2", payment_intent_id=card_payment["intent"], by="member")
    assert old.reason.endswith("older than 84 days; ask an admin")
    assert balance_of(sessions, card_payment["ann"]) == 99_00
    assert refunded_at_stripe(card_payment["browser"], card_payment["intent"]) == 0


def test_a_refund_stripe_refuses_is_reversed_in_the_ledger(sessions, gateway, config, card_payment) -> None:
    # A card payment Stripe does not know (say, made with another account): it refuses the refund.
    with sessions.begin() as session:
        attempt = topups.open_attempt(session, key="k2", kind=CardPaymentKind.MANUAL_TOP_UP, member_id="ann", amount=50_00)
        topups.book_card_money(session, attempt, payment_intent_id="pi_unknown_to_stripe")
    row = refund(sessions, gateway, config, "rf1", payment_intent_id="pi_unknown_to_stripe", by="admin",
                 admin_id="adm", amount="40.00")
    assert row.status == "failed" and row.reason.startswith("Stripe refused the refund")
    assert balance_of(sessions, card_payment["ann"]) == 150_00
    with sessions.begin() as session:
        refunded = session.scalar(select(CardPayment.refunded).where(CardPayment.attempt_key == "k2"))
        stripe_account = profiles.system_account(session, SystemAccount.STRIPE)
    assert refunded == 0
    assert balance_of(sessions, stripe_account) == -150_00


@pytest.mark.parametrize(
    ("body", "field"),
    [({"by": "someone"}, "by"), ({"by": "member", "amount": "5.00"}, "amount"), ({"by": "admin", "amount": "1"}, "admin_id"),
     ({"by": "admin", "admin_id": "a", "amount": 0}, "amount"), ({"by": "member", "payment_intent_id": ""}, "payment_intent_id")],
)
def test_bad_refund_requests_name_the_field(config, body: dict, field: str) -> None:
    with pytest.raises(Exception) as caught:
        refunds.parse({"request_id": "r", "payment_intent_id": "pi_1", **body}, config)
    assert caught.value.field == field


# A booked refund whose send was cut off (SPEC 5: delayed, never lost, never made twice) --------


def book_only(sessions, config, request_id: str, **body) -> list[str]:
    """One run of the refund task that commits its booking and then dies, or meets a Stripe
    outage, before the refund reaches Stripe; returns the refunds it left to send."""
    order = refunds.parse({"request_id": request_id, **body}, config)
    with sessions.begin() as session:
        refunds.book(session, order, config)
        return session.info.pop("refunds", [])


def status_of(sessions, request_id: str) -> requests.Request:
    with sessions.begin() as session:
        return requests.get(session, request_id)


def age(sessions, request_id: str, by: timedelta) -> None:
    with sessions.begin() as session:
        session.execute(update(PaymentRequest).where(PaymentRequest.request_id == request_id)
                        .values(updated_at=utcnow() - by))


def test_a_booked_refund_not_yet_sent_is_sent_when_its_request_runs_again(sessions, gateway, config, card_payment) -> None:
    book_only(sessions, config, "rf1", payment_intent_id=card_payment["intent"], by="member")
    row = status_of(sessions, "rf1")
    assert (row.status, row.result["booked"]) == ("queued", True)
    assert balance_of(sessions, card_payment["ann"]) == 0  # the member is debited ...
    assert refunded_at_stripe(card_payment["browser"], card_payment["intent"]) == 0  # ... the card has nothing yet

    # The task's retry, its redelivery or the redrive of the stuck request: the same request again.
    again = book_only(sessions, config, "rf1", payment_intent_id=card_payment["intent"], by="member")
    assert again == ["rf1"]
    assert refunds.send_to_card(sessions, gateway, config, "rf1") == "paid"
    row = status_of(sessions, "rf1")
    assert (row.status, row.result["to_card"]) == ("paid", "97.00")
    assert refunded_at_stripe(card_payment["browser"], card_payment["intent"]) == 97_00
    assert balance_of(sessions, card_payment["ann"]) == 0  # booked once


def test_a_refund_stripe_made_before_a_crash_is_found_and_not_made_twice(sessions, gateway, config, card_payment) -> None:
    book_only(sessions, config, "rf1", payment_intent_id=card_payment["intent"], by="member")
    # Stripe made the refund, then the worker died before recording it as paid.
    made = gateway.refund(payment_intent_id=card_payment["intent"], amount_cents=97_00, idempotency_key="refund:rf1",
                          metadata={"request_id": "rf1"})
    outcome = refunds.send_to_card(sessions, gateway, config, "rf1")
    assert refunded_at_stripe(card_payment["browser"], card_payment["intent"]) == 97_00  # not 194.00
    row = status_of(sessions, "rf1")
    assert (outcome, row.status, row.result["stripe_refund_id"]) == ("paid", "paid", made.id)


def test_the_reconciler_sends_booked_refunds_each_on_its_own_backs_off_a_failing_one_and_leaves_recent_ones_to_their_task(
    sessions, gateway, config, card_payment
) -> None:
    for request_id in ("rf-old", "rf-broken", "rf-new"):
        book_only(sessions, config, request_id, payment_intent_id=card_payment["intent"], by="admin",
                  admin_id="adm", amount="10.00")
    age(sessions, "rf-old", timedelta(hours=1))
    age(sessions, "rf-broken", timedelta(hours=2))  # first in line, and it fails every time
    with sessions.begin() as session:
        session.execute(text("UPDATE payment_requests SET payload = CAST(:bad AS json) WHERE request_id = 'rf-broken'"),
                        {"bad": '{"request_id": "rf-broken", "by": "nobody"}'})

    assert refunds.reconcile(sessions, gateway, config, timedelta(minutes=10)) == (1, 1)
    assert status_of(sessions, "rf-old").status == "paid"
    assert status_of(sessions, "rf-broken").status == "queued"  # logged, still booked, tried again next run
    assert status_of(sessions, "rf-new").status == "queued"  # younger than the threshold: its task sends it
    assert refunded_at_stripe(card_payment["browser"], card_payment["intent"]) == 10_00
    # Nothing is sent twice, and the broken one is counted and backed off behind the others.
    assert refunds.reconcile(sessions, gateway, config, timedelta(minutes=10)) == (0, 0)
    with sessions.begin() as session:
        tries, next_try = session.execute(text(
            "SELECT heal_tries, next_heal_at FROM payment_requests WHERE request_id = 'rf-broken'")).one()
    assert tries == 1 and next_try > utcnow()


def test_a_member_refund_whose_fee_takes_it_all_is_declined_and_books_nothing(sessions, gateway, config, card_payment) -> None:
    whole_fee = replace(config, card_refund_fee_percent=Decimal("100"))
    row = refund(sessions, gateway, whole_fee, "rf1", payment_intent_id=card_payment["intent"], by="member")
    assert (row.status, row.reason) == ("declined", f"{card_payment['intent']}: the 100 % fee on 100.00 leaves "
                                                    "0.00 for the card")
    assert balance_of(sessions, card_payment["ann"]) == 100_00
    with sessions.begin() as session:
        assert session.scalar(select(CardPayment.refunded).where(CardPayment.attempt_key == "k1")) == 0
    assert refunded_at_stripe(card_payment["browser"], card_payment["intent"]) == 0


def card_refund_emails(sessions) -> list[dict]:
    with sessions.begin() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "notification")
                               .order_by(OutboxMessage.id)).all()
        return [row.payload for row in rows if row.payload.get("kind") == "card_refund"]


def test_a_refund_that_reached_the_card_e_mails_the_member_once(sessions, gateway, config, card_payment) -> None:
    """ORIGINAL 6.9 "Card Refund" (issue 13 item 6): sent when Stripe has the refund, not before."""
    refund(sessions, gateway, config, "rf1", payment_intent_id=card_payment["intent"], by="admin",
           admin_id="adm", amount="30.00")
    refunds.send_to_card(sessions, gateway, config, "rf1")  # run again: already paid, nothing more
    refund(sessions, gateway, config, "rf2", payment_intent_id=card_payment["intent"], by="member")

    (by_admin, by_member) = card_refund_emails(sessions)
    assert (by_admin["subject"], by_admin["to"]) == ("Card Refund", "ann@example.org")
    assert "adm refunded 30.00 to your card" in by_admin["body"]
    assert "reduced by 30.00" in by_admin["body"]
    assert "We are refunding 67.90 to your card" in by_member["body"]  # 70.00 less the 3 % fee
    assert "reduced by 70.00" in by_member["body"]


def test_a_refund_stripe_refuses_sends_no_card_refund_e_mail(sessions, gateway, config, card_payment) -> None:
    order = refunds.parse({"request_id": "rf1", "payment_intent_id": card_payment["intent"], "by": "admin",
                           "admin_id": "adm", "amount": "30.00"}, config)
    with sessions.begin() as session:
        refunds.book(session, order, config)
    unreachable = StripeGateway(replace(config, stripe_api_base=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(StripeUnavailable):
        refunds.send_to_card(sessions, unreachable, config, "rf1")
    assert card_refund_emails(sessions) == []
