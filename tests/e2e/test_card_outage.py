"""The other card flows whose Stripe call follows a committed step, with Stripe cut off at that
call (the same real worker and TCP proxy as tests/e2e/test_refund_delivery.py): each call is
made again by the request's next run, or by the reconciler, once Stripe is back, and card money
is taken once.

- A payment short of funds that opens a checkout: the task's retries open it.
- A manual top-up with the saved card: the task's retries charge it, once.
- The top-up after a payment that left an `on` member below the low limit: the payment is
  already `paid`, so its retries have nothing to do; the reconciler charges the top-up, once.
"""

from __future__ import annotations

import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger, messages, profiles
from shared.config import Settings
from shared.ledger import Entry, Line
from shared.models import CardPayment, EntryType, Member, SystemAccount
from shared.stripe_gateway import StripeGateway
from tests.e2e.processes import wait_for
from tests.e2e.test_refund_delivery import (  # noqa: F401 - the module's worker, broker, proxy and settings
    private_broker,
    refund_worker,
    request_row,
    settings,
    stripe_link,
)
from tests.integration.helpers import add_member, add_organisation, balance_of
from tests.stripe_fixture import customer_with_card


def member_with(sessions: sessionmaker[Session], cents: int, *, customer: str | None = None) -> int:
    """Ann with `cents` (and, given a customer, auto top-up `on` at 100.00), and the club."""
    with sessions.begin() as session:
        account = add_member(session, "ann")
        add_organisation(session, "club")
        if customer:
            member = session.get(Member, "ann")
            member.stripe_customer_id, member.auto_topup_status, member.auto_topup_amount = customer, "on", 100_00
        if cents:
            adjustments = profiles.system_account(session, SystemAccount.ADJUSTMENTS)
            ledger.post(session, Entry("opening:ann", EntryType.MANUAL_ADJUSTMENT, "Opening balance",
                                       (Line(account, cents), Line(adjustments, -cents)), admin_id="adm"))
    return account


def succeeded_charges(browser: stripe.StripeClient, customer: str) -> list[tuple[int, str]]:
    return sorted((pi.amount, pi.metadata["attempt_key"]) for pi in browser.v1.payment_intents.list().auto_paging_iter()
                  if pi.customer == customer and pi.status == "succeeded")


def test_a_checkout_cut_off_by_a_stripe_outage_is_opened_by_the_tasks_retry(
    client, auth, sessions, stripe_link, refund_worker
) -> None:
    member_with(sessions, 10_00)
    refused = stripe_link.refused
    stripe_link.cut()
    try:
        answer = client.post("/api/payments", headers=auth, json={
            "request_id": "pay-out", "member_id": "ann", "amount": "30.00", "description": "Congress entry",
            "organisation_id": "club", "allow_checkout": True})
        assert answer.status_code == 202
        wait_for(lambda: stripe_link.refused >= refused + 3, "the payment's task to retry Stripe during the outage", 30)
        assert request_row(sessions, "pay-out").status == "queued"
    finally:
        stripe_link.restore()

    row = wait_for(lambda: (r := request_row(sessions, "pay-out")).status == "awaiting_card" and r,
                   "the checkout to be opened", 90)
    assert row.result["checkout"]["amount"] == "20.00"


def test_a_saved_card_top_up_cut_off_by_a_stripe_outage_is_charged_once_by_the_tasks_retry(
    client, auth, sessions, settings: Settings, browser, stripe_link, refund_worker
) -> None:
    customer = customer_with_card(StripeGateway(settings), browser, "ann")
    account = member_with(sessions, 0, customer=customer)
    refused = stripe_link.refused
    stripe_link.cut()
    try:
        answer = client.post("/api/members/ann/topups", headers=auth,
                             json={"request_id": "top-out", "amount": "60.00", "use_saved_card": True})
        assert answer.status_code == 202
        wait_for(lambda: stripe_link.refused >= refused + 3, "the top-up's task to retry Stripe during the outage", 30)
        assert request_row(sessions, "top-out").status == "queued"
    finally:
        stripe_link.restore()

    wait_for(lambda: request_row(sessions, "top-out").status == "paid", "the top-up to be paid", 90)
    assert succeeded_charges(browser, customer) == [(60_00, "topup:top-out")]
    assert balance_of(sessions, account) == 60_00


def test_the_top_up_after_a_payment_cut_off_by_a_stripe_outage_is_charged_once_by_the_reconciler(
    client, auth, sessions, settings: Settings, browser, stripe_link, refund_worker, private_broker
) -> None:
    customer = customer_with_card(StripeGateway(settings), browser, "ann")
    account = member_with(sessions, 30_00, customer=customer)
    refused = stripe_link.refused
    stripe_link.cut()
    try:
        answer = client.post("/api/payments", headers=auth, json={
            "request_id": "pay-low", "member_id": "ann", "amount": "20.00", "description": "Table money",
            "organisation_id": "club"})
        assert answer.status_code == 202
        wait_for(lambda: stripe_link.refused > refused, "the after-payment top-up to meet the outage", 30)
        assert request_row(sessions, "pay-low").status == "paid"
    finally:
        stripe_link.restore()

    def topped_up() -> bool:
        messages.send("payments.reconcile", {}, queue="topups", settings=settings)
        with sessions.begin() as session:
            return session.scalar(select(CardPayment.status)) == "succeeded"

    wait_for(topped_up, "the reconciler to charge the after-payment top-up", 60)
    [(amount, key)] = succeeded_charges(browser, customer)
    assert amount == 100_00 and key.startswith("low-ann-")
    assert balance_of(sessions, account) == 110_00
