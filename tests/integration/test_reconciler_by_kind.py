"""The reconciler finishes a card attempt whose first Stripe call never went through (a Stripe
outage longer than the reconcile threshold, or a crash after the attempt's commit) by the
attempt's kind (SPEC 5): a checkout or a new-card top-up gets its PaymentIntent for the browser
and is never charged to the member's saved card. Against PostgreSQL and localstripe over HTTP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared import charges, payments, requests, topups
from shared.config import Settings
from shared.models import CardPayment, Member, utcnow
from shared.stripe_gateway import StripeGateway
from tests.integration.helpers import add_member
from tests.stripe_fixture import STRIPE_TEST_KEY, browser_for, customer_with_card


@pytest.fixture
def config(database_url: str, stripe_api: str) -> Settings:
    return Settings(database_url=database_url, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api)


@pytest.mark.parametrize("kind", ["payment", "new-card top-up"])
def test_a_checkout_whose_creation_never_reached_stripe_gets_its_checkout_from_the_reconciler_not_a_charge(
    sessions: sessionmaker[Session], config: Settings, stripe_api: str, kind: str
) -> None:
    gateway, browser = StripeGateway(config), browser_for(stripe_api)
    member_id = f"saved-{kind[:3]}-{utcnow():%H%M%S%f}"
    customer = customer_with_card(gateway, browser, member_id)  # a card is saved, but auto top-up is off
    with sessions.begin() as session:
        add_member(session, member_id)
        session.get(Member, member_id).stripe_customer_id = customer
        if kind == "payment":
            order = payments.parse({"request_id": f"r-{member_id}", "member_id": member_id, "amount": "30.00",
                                    "description": "Congress entry", "allow_checkout": True}, config)
            payments.pay(session, order, config)
        else:
            topup = topups.parse_topup({"request_id": f"r-{member_id}", "member_id": member_id, "amount": "60.00",
                                        "use_saved_card": False}, config)
            topups.topup(session, topup, config)
        [attempt_id] = session.info.pop("checkouts")
    # The checkout was never created (Stripe unreachable for longer than the threshold): the
    # attempt is still pending, tried once, when the reconciler comes by.
    with sessions.begin() as session:
        session.execute(update(CardPayment).where(CardPayment.id == attempt_id)
                        .values(tries=1, updated_at=utcnow() - timedelta(hours=1)))

    charges.reconcile(sessions, gateway, config, timedelta(minutes=10))  # it makes the card calls itself

    charged = [pi.amount for pi in browser.v1.payment_intents.list({"limit": 100}).auto_paging_iter()
               if pi.customer == customer and pi.status == "succeeded"]
    assert charged == []  # the saved card was not charged
    with sessions.begin() as session:
        attempt = session.get(CardPayment, attempt_id)
        row = requests.get(session, f"r-{member_id}")
        assert (attempt.status, row.status) == ("awaiting_card", "awaiting_card")
        intent = gateway.retrieve_payment_intent(attempt.payment_intent_id)
    assert (intent.status, intent.amount_cents) == ("requires_payment_method", 30_00 if kind == "payment" else 60_00)


def test_a_checkout_attempt_handed_to_charge_is_not_charged_to_the_saved_card(
    sessions: sessionmaker[Session], config: Settings, stripe_api: str
) -> None:
    """The charge itself checks the kind, whoever hands it an attempt (a reconciler, a redrive)."""
    gateway, browser = StripeGateway(config), browser_for(stripe_api)
    member_id = f"guard-{utcnow():%H%M%S%f}"
    customer = customer_with_card(gateway, browser, member_id)
    with sessions.begin() as session:
        add_member(session, member_id)
        session.get(Member, member_id).stripe_customer_id = customer
        order = payments.parse({"request_id": f"r-{member_id}", "member_id": member_id, "amount": "30.00",
                                "description": "Congress entry", "allow_checkout": True}, config)
        payments.pay(session, order, config)
        [attempt_id] = session.info.pop("checkouts")

    charges.charge(sessions, gateway, config, attempt_id)

    charged = [pi.amount for pi in browser.v1.payment_intents.list({"limit": 100}).auto_paging_iter()
               if pi.customer == customer]
    assert charged == []
    with sessions.begin() as session:
        assert (session.get(CardPayment, attempt_id).status, session.get(CardPayment, attempt_id).tries) == ("pending", 0)
