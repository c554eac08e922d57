"""SPEC 5: a booked card refund always reaches the card. A real `payments worker` on a broker of
its own calls localstripe through a TCP proxy the test can cut (tests/e2e/proxy.py); refunds
are asked for over the HTTP API and read back from localstripe.

- Stripe unreachable when the refund is first sent: the request stays `queued` with the member
  debited, the task's retries keep trying, and once Stripe is back the refund reaches the card.
- The worker dies right after the booking's commit, or between Stripe's refund and our `paid`
  (test hooks in shared/refunds.py, first run only): the redelivered task sends the refund, or
  finds the one Stripe made, so the card is refunded exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import stripe
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared import requests, topups
from shared.config import Settings
from shared.models import CardPaymentKind
from shared.stripe_gateway import StripeGateway
from tests.e2e.conftest import worker_env
from tests.e2e.processes import private_redis, readies, start, stop, wait_for
from tests.e2e.proxy import TcpProxy
from tests.integration.helpers import add_member, balance_of
from tests.stripe_fixture import STRIPE_TEST_KEY, customer_with_card

# Request ids at which the worker's test hooks make it die (each on the task's first run only).
CRASH_AFTER_BOOKING = "refund-dies-after-booking"
CRASH_AFTER_STRIPE = "refund-dies-after-stripe"
DIED = "exited with 'exitcode 17'"  # the worker's line for a pool child killed by a hook


@pytest.fixture(scope="module")
def private_broker() -> Iterator[str]:
    """A redis-server of this module's own, so no other worker of the run takes its tasks."""
    with private_redis() as server:
        yield server.url


@pytest.fixture(scope="module")
def stripe_link(stripe_api: str) -> Iterator[TcpProxy]:
    """The worker's only way to localstripe."""
    with TcpProxy(int(stripe_api.rsplit(":", 1)[1])) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def refund_worker(
    database_url: str, private_broker: str, stripe_link: TcpProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A real `payments worker` (one pool process) reaching Stripe through `stripe_link`; its log."""
    log = tmp_path_factory.mktemp("refund-worker") / "worker.log"
    env = worker_env(database_url, PAYMENTS_BROKER_URL=private_broker, PAYMENTS_STRIPE_API_BASE=stripe_link.url,
                     PAYMENTS_TEST_CRASH_AFTER_REFUND_BOOKED=CRASH_AFTER_BOOKING,
                     PAYMENTS_TEST_CRASH_AFTER_REFUND_SENT=CRASH_AFTER_STRIPE,
                     PAYMENTS_RECONCILE_AFTER_SECONDS="1")  # for tests that send payments.reconcile
    process = start(["worker", "--concurrency", "1", "--hostname", f"refunds-{uuid.uuid4().hex[:8]}@%h"], env, log)
    wait_for(lambda: readies(log) or process.poll() is not None, "the worker to start", 60)
    assert process.poll() is None, log.read_text()[-3000:]
    yield log
    stop(process)


@pytest.fixture
def settings(settings: Settings, stripe_api: str, private_broker: str) -> Settings:
    """The Flask app (`client`) enqueues on the private broker."""
    return replace(settings, broker_url=private_broker, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api)


@pytest.fixture
def card_payment(sessions: sessionmaker[Session], settings: Settings, browser: stripe.StripeClient) -> dict[str, Any]:
    """Ann topped up 100.00 by card: charged at localstripe and booked."""
    gateway = StripeGateway(settings)
    customer = customer_with_card(gateway, browser, "ann")
    key = f"topup-{uuid.uuid4().hex[:8]}"
    intent = gateway.charge_saved_card(customer_id=customer, amount_cents=100_00, idempotency_key=key, metadata={})
    with sessions.begin() as session:
        account = add_member(session, "ann")
        attempt = topups.open_attempt(session, key=key, kind=CardPaymentKind.MANUAL_TOP_UP, member_id="ann",
                                      amount=100_00)
        assert attempt is not None
        topups.book_card_money(session, attempt, payment_intent_id=intent.id)
    return {"intent": intent.id, "ann": account}


def ask_refund(client: FlaskClient, auth: dict[str, str], request_id: str, intent: str) -> None:
    answer = client.post("/api/refunds", headers=auth,
                         json={"request_id": request_id, "payment_intent_id": intent, "by": "member"})
    assert answer.status_code == 202, answer.get_json()


def request_row(sessions: sessionmaker[Session], request_id: str) -> requests.Request:
    with sessions.begin() as session:
        return requests.get(session, request_id)


def paid(sessions: sessionmaker[Session], request_id: str, timeout: float) -> requests.Request:
    return wait_for(lambda: (row := request_row(sessions, request_id)).status == "paid" and row,
                    f"refund {request_id} to be paid", timeout)


def refunds_at_stripe(browser: stripe.StripeClient, intent: str) -> list[tuple[int, str]]:
    return [(r.amount, r.metadata["request_id"]) for r in browser.v1.refunds.list({"payment_intent": intent}).data]


def test_a_refund_booked_while_stripe_is_unreachable_reaches_the_card_once_stripe_is_back(
    client, auth, sessions, card_payment, browser, stripe_link, refund_worker
) -> None:
    refused = stripe_link.refused
    stripe_link.cut()
    try:
        ask_refund(client, auth, "rf-outage", card_payment["intent"])

        # The first send and two retries of the task all reach for Stripe and find it gone.
        def retried_during_outage() -> bool:
            row = request_row(sessions, "rf-outage")
            return bool(row.result and row.result.get("booked")) and stripe_link.refused >= refused + 3

        wait_for(retried_during_outage, "the refund's task to retry Stripe during the outage", 30)
        row = request_row(sessions, "rf-outage")
        assert (row.status, row.result["to_card"]) == ("queued", "97.00")
        assert balance_of(sessions, card_payment["ann"]) == 0  # the member is debited
        assert refunds_at_stripe(browser, card_payment["intent"]) == []  # the card has nothing yet
    finally:
        stripe_link.restore()

    row = paid(sessions, "rf-outage", 90)
    assert refunds_at_stripe(browser, card_payment["intent"]) == [(97_00, "rf-outage")]
    [made] = browser.v1.refunds.list({"payment_intent": card_payment["intent"]}).data
    assert row.result["stripe_refund_id"] == made.id
    assert balance_of(sessions, card_payment["ann"]) == 0


@pytest.mark.parametrize("request_id", [CRASH_AFTER_BOOKING, CRASH_AFTER_STRIPE])
def test_a_worker_that_dies_after_booking_a_refund_refunds_the_card_exactly_once_when_redelivered(
    client, auth, sessions, card_payment, browser, refund_worker, request_id
) -> None:
    deaths_before = refund_worker.read_text().count(DIED)
    ask_refund(client, auth, request_id, card_payment["intent"])

    row = paid(sessions, request_id, 60)
    assert refund_worker.read_text().count(DIED) == deaths_before + 1  # the pool child died once
    assert row.attempts == 2  # the task ran twice: the one that died, and its redelivery
    assert refunds_at_stripe(browser, card_payment["intent"]) == [(97_00, request_id)]
    assert balance_of(sessions, card_payment["ann"]) == 0
