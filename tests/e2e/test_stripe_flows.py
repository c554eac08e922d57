"""Card money through the real stack (SPEC 3-5): the Flask app and the real webhook server
(gunicorn), a real `payments worker` on Redis and PostgreSQL, and localstripe, which delivers
its payment_intent.* events to the webhook server. Events localstripe does not send
(setup_intent.succeeded, charge.refunded, charge.dispute.created, and replays) are signed here
with the webhook secret and POSTed to the webhook server over HTTP. The test acts as the
member's browser: it makes cards and confirms intents at localstripe with the stripe SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import stripe
from flask.testing import FlaskClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from shared import client as payments_client
from shared import messages, page_links, payments, topups
from shared.config import Settings
from shared.models import CardPayment, Member, OutboxMessage, StripeEvent
from shared.stripe_gateway import StripeGateway, sign_webhook
from tests.conftest import API_TOKEN
from tests.e2e.conftest import BROKER, PUBLISHABLE_KEY, REDIS_DB, WEBHOOK_SECRET, worker_env
from tests.e2e.processes import free_port, start, stop, wait_for
from tests.integration.helpers import add_member, add_organisation, balance_of
from tests.stripe_fixture import ROOT, STRIPE_TEST_KEY, VISA, browser_for, customer_with_card, new_card

pytestmark = pytest.mark.usefixtures("worker")

DECLINED_AT_CHARGE = "4000000000000341"
NEEDS_3DS = "4000002500003155"


@pytest.fixture
def settings(settings: Settings, stripe_api: str) -> Settings:
    return replace(settings, broker_url=BROKER, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api,
                   stripe_webhook_secret=WEBHOOK_SECRET, stripe_publishable_key=PUBLISHABLE_KEY)


@pytest.fixture(autouse=True)
def _clean(clean_db: None) -> None:
    """Every test starts with empty tables (card payments and the inbox included)."""


@pytest.fixture
def gateway(settings: Settings) -> StripeGateway:
    return StripeGateway(settings)


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions.begin() as session:
        return {"ann": add_member(session, "ann"), "club": add_organisation(session, "club")}


# Helpers --------------------------------------------------------------------------------------


def outcome(client: FlaskClient, auth: dict, request_id: str, *, timeout: float = 30) -> dict:
    """Poll the request's status until it is no longer queued."""
    def done() -> dict | None:
        body = client.get(f"/api/payments/{request_id}", headers=auth).get_json()
        return body if body.get("status") not in (None, "queued") else None
    return wait_for(done, f"request {request_id} to be decided", timeout)


def status_becomes(client: FlaskClient, auth: dict, request_id: str, wanted: str, timeout: float = 30) -> dict:
    def reached() -> dict | None:
        body = client.get(f"/api/payments/{request_id}", headers=auth).get_json()
        return body if body.get("status") == wanted else None
    return wait_for(reached, f"request {request_id} to be {wanted}", timeout)


def payment(**overrides: object) -> dict:
    return {"request_id": "r1", "member_id": "ann", "amount": "30.00", "description": "Congress entry",
            "organisation_id": "club", "payment_type": "Entry to an event", **overrides}


def adjust(client: FlaskClient, auth: dict, cents: int, key: str = "seed") -> None:
    answer = client.post("/api/adjustments", headers=auth, json={
        "request_id": key, "member_id": "ann", "amount": f"{cents / 100:.2f}", "description": "Opening balance",
        "admin_id": "adm"})
    assert answer.status_code == 201, answer.get_json()


def auto_topup_on(
    sessions: sessionmaker[Session], gateway: StripeGateway, browser: stripe.StripeClient, *,
    number: str = VISA, amount: int = 100_00, member_id: str = "ann",
) -> str:
    """A customer with a saved default card at localstripe, and the member `on` with it."""
    customer = customer_with_card(gateway, browser, member_id, number=number)
    with sessions.begin() as session:
        member = session.get(Member, member_id)
        member.stripe_customer_id, member.auto_topup_status, member.auto_topup_amount = customer, "on", amount
    return customer


def intents(browser: stripe.StripeClient, attempt_key: str, customer: str | None = None) -> list[Any]:
    """Every PaymentIntent at localstripe made for one of our attempts (of `customer`, if
    given: localstripe lives for the whole run, and attempt keys repeat from test to test)."""
    found = browser.v1.payment_intents.list({"limit": 100}).auto_paging_iter()
    return [pi for pi in found if pi.to_dict().get("metadata", {}).get("attempt_key") == attempt_key
            and customer in (None, pi.customer)]


def pay_as_browser(browser: stripe.StripeClient, payment_intent_id: str, number: str = VISA) -> Any:
    """Stripe.js confirmCardPayment: the card goes onto the PaymentIntent, which is confirmed
    (localstripe cannot take the card in the confirm call itself)."""
    browser.v1.payment_intents.update(payment_intent_id, {"payment_method": new_card(browser, number)})
    return browser.v1.payment_intents.confirm(payment_intent_id)


def statement(client: FlaskClient, auth: dict) -> list[tuple[str, str]]:
    rows = client.get("/api/members/ann/statement", headers=auth).get_json()["rows"]
    return [(row["type"], row["amount"]) for row in reversed(rows)]  # oldest first


def member_status(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as session:
        return session.get(Member, "ann").auto_topup_status


def emails(sessions: sessionmaker[Session]) -> list[dict]:
    with sessions.begin() as session:
        return [m.payload for m in session.scalars(
            select(OutboxMessage).where(OutboxMessage.kind == "notification").order_by(OutboxMessage.id))]


def stripe_event(type_: str, obj: dict, event_id: str | None = None) -> dict:
    return {"id": event_id or f"evt_test_{uuid.uuid4().hex[:16]}", "object": "event", "type": type_,
            "api_version": "2020-08-27", "created": int(time.time()), "livemode": False,
            "data": {"object": obj}}


def post_webhook(url: str, body: bytes, signature: str | None) -> tuple[int, dict]:
    """POST to the real webhook server; returns (status, JSON answer)."""
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def deliver(url: str, event: dict) -> dict:
    body = json.dumps(event).encode()
    status, answer = post_webhook(url, body, sign_webhook(body, WEBHOOK_SECRET))
    assert status == 200, answer
    return answer


def event_done(sessions: sessionmaker[Session], event_id: str, timeout: float = 30) -> StripeEvent:
    def done() -> StripeEvent | None:
        with sessions.begin() as session:
            row = session.get(StripeEvent, event_id)
            if row is not None:
                session.expunge(row)
            return row if row is not None and row.status in ("processed", "ignored") else None
    return wait_for(done, f"event {event_id} to be processed", timeout)


def attempt(sessions: sessionmaker[Session], key: str) -> CardPayment | None:
    with sessions.begin() as session:
        row = session.scalar(select(CardPayment).where(CardPayment.attempt_key == key))
        if row is not None:
            session.expunge(row)
        return row


def count(sessions: sessionmaker[Session], sql: str, **params: object) -> int:
    with sessions.begin() as session:
        return session.scalar(text(sql), params)


# 1. Auto top-up setup (SPEC 4.1) -------------------------------------------------------------


def test_saving_a_card_turns_auto_top_up_on_and_tops_up_a_balance_below_the_low_limit(
    client, auth, world, sessions, browser, webhook_url
) -> None:
    answer = client.post("/api/members/ann/auto-topup/setup", headers=auth)
    assert answer.status_code == 200, answer.get_json()
    first = answer.get_json()
    assert set(first) == {"setup_intent_id", "client_secret", "publishable_key", "url"}
    assert first["setup_intent_id"].startswith("seti_")
    assert first["client_secret"].startswith(f"{first['setup_intent_id']}_secret_")
    assert first["publishable_key"] == PUBLISHABLE_KEY
    assert member_status(sessions) == "pending"
    with sessions.begin() as session:
        customer = session.get(Member, "ann").stripe_customer_id
    assert customer is not None and customer.startswith("cus_")

    second = client.post("/api/members/ann/auto-topup/setup", headers=auth).get_json()
    assert second["setup_intent_id"] != first["setup_intent_id"]
    with sessions.begin() as session:
        assert session.get(Member, "ann").stripe_customer_id == customer  # created once, reused
    assert browser.v1.setup_intents.retrieve(second["setup_intent_id"]).customer == customer

    # The browser saves a card with the SetupIntent; Stripe reports it (signed here).
    confirmed = browser.v1.setup_intents.confirm(second["setup_intent_id"], {"payment_method": new_card(browser)})
    assert confirmed.status == "succeeded"
    event = stripe_event("setup_intent.succeeded", {"id": second["setup_intent_id"], "object": "setup_intent",
                                                    "customer": customer, "status": "succeeded"})
    assert deliver(webhook_url, event) == {"received": True, "duplicate": False}

    wait_for(lambda: member_status(sessions) == "on", "auto top-up to be on")
    wait_for(lambda: balance_of(sessions, world["ann"]) == 100_00, "the auto top-up to be booked")
    assert statement(client, auth) == [("Auto Top Up", "100.00")]
    charged = intents(browser, f"card-saved:{event['id']}")
    assert [(pi.amount, pi.status, pi.customer) for pi in charged] == [(100_00, "succeeded", customer)]
    assert browser.v1.customers.retrieve(customer).invoice_settings.default_payment_method == confirmed.payment_method
    wait_for(lambda: any(e["subject"] == "Auto top up successful" for e in emails(sessions)), "the success e-mail")


# 2. SPEC 4.2 worked examples -----------------------------------------------------------------

EXAMPLES = [
    # U, B, A -> T, final balance
    (50_00, 100_00, 120_00, 120_00, 100_00),
    (50_00, 10_00, 45_00, 100_00, 65_00),
    (50_00, 0, 80_00, 100_00, 20_00),
    (100_00, 0, 100_00, 200_00, 100_00),
    (50_00, 5_00, 200_00, 250_00, 55_00),
    (100_00, 30_00, 50_00, 100_00, 80_00),
    (50_00, 19_99, 60_00, 100_00, 59_99),
    (100_00, 415_55, 1000_00, 1000_00, 415_55),
]


@pytest.mark.parametrize(("auto", "balance", "amount", "topup", "final"), EXAMPLES,
                         ids=[f"U{u // 100}-B{b / 100:.2f}-A{a // 100}" for u, b, a, _, _ in EXAMPLES])
def test_a_payment_short_of_funds_is_topped_up_by_the_spec_amount_and_paid(
    client, auth, world, sessions, gateway, browser, auto, balance, amount, topup, final
) -> None:
    assert balance < amount  # every example goes through the top-up branch (SPEC 3 step 2)
    auto_topup_on(sessions, gateway, browser, amount=auto)
    if balance:
        adjust(client, auth, balance)
    request_id = f"spec-{uuid.uuid4().hex[:8]}"
    client.post("/api/payments", headers=auth, json=payment(request_id=request_id, amount=f"{amount / 100:.2f}"))

    assert outcome(client, auth, request_id)["status"] == "paid"
    assert balance_of(sessions, world["ann"]) == final
    assert balance_of(sessions, world["club"]) == amount
    assert [(pi.amount, pi.status) for pi in intents(browser, f"pay-topup:{request_id}")] == [(topup, "succeeded")]
    assert ("Auto Top Up", f"{topup / 100:.2f}") in statement(client, auth)


# 3. Card checkout (SPEC 3 step 3) --------------------------------------------------------------


def test_a_checkout_paid_by_card_books_card_money_then_the_payment_and_calls_back(
    client, auth, world, sessions, browser, webhook_url, received
) -> None:
    adjust(client, auth, 10_00)
    client.post("/api/payments", headers=auth, json=payment(allow_checkout=True, route_code="EVT"))

    waiting = outcome(client, auth, "r1")
    assert waiting["status"] == "awaiting_card"
    checkout = waiting["checkout"]
    assert set(checkout) == {"payment_intent_id", "client_secret", "amount", "publishable_key", "url"}
    assert (checkout["amount"], checkout["publishable_key"]) == ("20.00", PUBLISHABLE_KEY)
    assert checkout["client_secret"].startswith(f"{checkout['payment_intent_id']}_secret_")
    assert received() == []

    confirmed = pay_as_browser(browser, checkout["payment_intent_id"])
    assert (confirmed.status, confirmed.amount) == ("succeeded", 20_00)

    assert status_becomes(client, auth, "r1", "paid")["status"] == "paid"
    assert balance_of(sessions, world["ann"]) == 0
    assert balance_of(sessions, world["club"]) == 30_00
    assert statement(client, auth) == [("Manual Adjustment", "10.00"), ("CC Payment", "20.00"),
                                       ("Entry to an event", "-30.00")]
    callbacks = wait_for(received, "the callback")
    assert [(c["request_id"], c["status"], c["amount"]) for c in callbacks] == [("r1", "success", "30.00")]


# A transfer between members short of funds (ORIGINAL 2.8; issue 13 item 2) ----------------------


def transfer_to_bob(sessions: sessionmaker[Session], **overrides: object) -> dict:
    with sessions.begin() as session:
        add_member(session, "bob", "Bob", "Ray")
    return {"request_id": f"m2m-{uuid.uuid4().hex[:8]}", "from_member_id": "ann", "to_member_id": "bob",
            "amount": "80.00", "description": "Share of the car", **overrides}


def test_a_transfer_short_of_funds_is_covered_by_the_senders_auto_top_up_and_both_are_e_mailed(
    client, auth, world, sessions, gateway, browser
) -> None:
    auto_topup_on(sessions, gateway, browser, amount=50_00)
    adjust(client, auth, 10_00)
    body = transfer_to_bob(sessions)
    client.post("/api/transfers", headers=auth, json=body)
    assert outcome(client, auth, body["request_id"])["status"] == "paid"
    # SPEC 4.2: U 50, B 10, A 80 -> T = max(50, 80) = 80, 10 + 80 - 80 = 10 < 20: T = 100 -> 30.00.
    assert [(pi.amount, pi.status) for pi in intents(browser, f"pay-topup:{body['request_id']}")] == [
        (100_00, "succeeded")]
    assert statement(client, auth)[-2:] == [("Auto Top Up", "100.00"), ("Member Transfer", "-80.00")]
    assert client.get("/api/members/bob/balance", headers=auth).get_json()["balance"] == "80.00"
    assert {(m["to"], m["subject"]) for m in emails(sessions)} >= {
        ("ann@example.org", "Transfer to Bob Ray"), ("bob@example.org", "Transfer from Ann Lee")}


def test_a_transfer_short_of_funds_with_checkout_allowed_is_paid_by_card(
    client, auth, world, sessions, browser, webhook_url
) -> None:
    adjust(client, auth, 30_00)
    body = transfer_to_bob(sessions, allow_checkout=True)
    client.post("/api/transfers", headers=auth, json=body)
    waiting = outcome(client, auth, body["request_id"])
    assert (waiting["status"], waiting["checkout"]["amount"]) == ("awaiting_card", "50.00")
    assert pay_as_browser(browser, waiting["checkout"]["payment_intent_id"]).status == "succeeded"
    assert status_becomes(client, auth, body["request_id"], "paid")["kind"] == "transfer"
    assert statement(client, auth)[-2:] == [("CC Payment", "50.00"), ("Member Transfer", "-80.00")]
    assert balance_of(sessions, world["ann"]) == 0
    assert client.get("/api/members/bob/balance", headers=auth).get_json()["balance"] == "80.00"


# 4 and 5. A saved card that fails (SPEC 4.3) ----------------------------------------------------


def test_a_declined_auto_top_up_declines_the_payment_turns_auto_top_up_failed_and_emails(
    client, auth, world, sessions, gateway, browser
) -> None:
    customer = auto_topup_on(sessions, gateway, browser, number=DECLINED_AT_CHARGE)
    adjust(client, auth, 10_00)
    client.post("/api/payments", headers=auth, json=payment())

    result = outcome(client, auth, "r1")
    assert result["status"] == "declined"
    assert result["reason"].startswith("auto top-up failed")
    assert member_status(sessions) == "failed"
    assert [e["subject"] for e in emails(sessions)] == ["Auto Top Up Failure"]
    assert statement(client, auth) == [("Manual Adjustment", "10.00")]
    assert balance_of(sessions, world["club"]) == 0
    assert [pi.status for pi in intents(browser, "pay-topup:r1", customer)] == ["requires_payment_method"]


def test_a_card_needing_3d_secure_asks_the_member_to_authenticate_and_books_nothing(
    client, auth, world, sessions, gateway, browser, settings
) -> None:
    customer = auto_topup_on(sessions, gateway, browser, number=NEEDS_3DS)
    adjust(client, auth, 10_00)
    client.post("/api/payments", headers=auth, json=payment())

    assert outcome(client, auth, "r1")["status"] == "declined"
    assert member_status(sessions) == "action_required"
    (email,) = emails(sessions)
    assert email["kind"] == "auto_topup_action_required"
    link = email["body"].split("confirm it: ", 1)[1].split()[0]  # the page (tests/e2e/test_card_pages.py)
    assert page_links.read(settings, page_links.AUTHENTICATE, link.rsplit("/", 1)[1]).subject == "pay-topup:r1"
    assert statement(client, auth) == [("Manual Adjustment", "10.00")]
    assert [pi.status for pi in intents(browser, "pay-topup:r1", customer)] == ["requires_action"]
    assert attempt(sessions, "pay-topup:r1").status == "action_required"


# 6 and 7. Duplicate and out-of-order events (DESIGN invariants 3 and 8) -------------------------


def checkout_waiting(client: FlaskClient, auth: dict, request_id: str = "r1") -> str:
    """A payment of 30.00 from 10.00 waiting for a card of 20.00; returns its PaymentIntent id."""
    adjust(client, auth, 10_00, key=f"seed-{request_id}")
    client.post("/api/payments", headers=auth, json=payment(request_id=request_id, allow_checkout=True))
    waiting = outcome(client, auth, request_id)
    assert waiting["status"] == "awaiting_card", waiting
    return waiting["checkout"]["payment_intent_id"]


def intent_object(browser: stripe.StripeClient, payment_intent_id: str) -> dict:
    """The PaymentIntent as an event carries it (plain JSON)."""
    return browser.v1.payment_intents.retrieve(payment_intent_id).to_dict()


def test_one_event_delivered_ten_times_at_once_is_stored_once_and_books_once(
    client, auth, world, sessions, browser, webhook_url
) -> None:
    intent_id = checkout_waiting(client, auth)
    pay_as_browser(browser, intent_id)
    event = stripe_event("payment_intent.succeeded", intent_object(browser, intent_id))
    body = json.dumps(event).encode()
    signature = sign_webhook(body, WEBHOOK_SECRET)

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: post_webhook(webhook_url, body, signature), range(10)))

    assert [status for status, _ in answers] == [200] * 10
    assert sorted(answer["duplicate"] for _, answer in answers) == [False] + [True] * 9
    assert count(sessions, "SELECT count(*) FROM stripe_events WHERE event_id = :id", id=event["id"]) == 1
    assert event_done(sessions, event["id"]).attempts == 1
    assert status_becomes(client, auth, "r1", "paid")["status"] == "paid"
    assert [t for t, _ in statement(client, auth)].count("CC Payment") == 1
    assert balance_of(sessions, world["ann"]) == 0


def test_the_card_that_paid_is_kept_and_named_on_the_statement_as_the_original_did(
    client, auth, world, sessions, browser
) -> None:
    """Issue 13 item 5 (ORIGINAL 2.6): brand, last four, expiry and receipt kept on the card
    payment; the statement reads "Payment from card **** 4242 Exp 12/34"."""
    intent_id = checkout_waiting(client, auth)
    pay_as_browser(browser, intent_id)  # VISA, expiring 12/2034 (tests/stripe_fixture.new_card)
    status_becomes(client, auth, "r1", "paid")

    paid = attempt(sessions, "checkout:r1")
    assert paid is not None
    assert (paid.card_brand, paid.card_last4, paid.card_exp_month, paid.card_exp_year) == ("visa", "4242", 12, 2034)
    rows = client.get("/api/members/ann/statement", headers=auth).get_json()["rows"]
    assert [row["description"] for row in rows if row["type"] == "CC Payment"] == ["Payment from card **** 4242 Exp 12/34"]


def test_a_failure_reported_after_the_success_changes_nothing(
    client, auth, world, sessions, browser, webhook_url
) -> None:
    intent_id = checkout_waiting(client, auth)
    pay_as_browser(browser, intent_id)
    status_becomes(client, auth, "r1", "paid")

    late = stripe_event("payment_intent.payment_failed", {**intent_object(browser, intent_id),
                                                          "status": "requires_payment_method"})
    deliver(webhook_url, late)
    event_done(sessions, late["id"])

    assert outcome(client, auth, "r1")["status"] == "paid"
    assert statement(client, auth) == [("Manual Adjustment", "10.00"), ("CC Payment", "20.00"),
                                       ("Entry to an event", "-30.00")]
    assert attempt(sessions, "checkout:r1").status == "succeeded"


def test_a_failure_arriving_before_the_success_is_settled_by_what_stripe_says(
    client, auth, world, sessions, browser, webhook_url
) -> None:
    intent_id = checkout_waiting(client, auth)
    pay_as_browser(browser, intent_id)
    # Before localstripe's own payment_intent.succeeded (about 1 s later): an older failure.
    early = stripe_event("payment_intent.payment_failed", {**intent_object(browser, intent_id),
                                                           "status": "requires_payment_method"})
    deliver(webhook_url, early)
    event_done(sessions, early["id"])

    assert outcome(client, auth, "r1")["status"] == "paid"  # the handler fetched the real state
    assert statement(client, auth) == [("Manual Adjustment", "10.00"), ("CC Payment", "20.00"),
                                       ("Entry to an event", "-30.00")]


def test_a_checkout_declined_by_one_card_stays_open_and_another_card_pays_the_request_with_one_callback(
    client, auth, world, sessions, browser, webhook_url, received
) -> None:
    """SPEC 3: a declined card leaves the checkout open; the member tries another card on the
    same page (the same PaymentIntent), and the request is paid. localstripe reports the
    decline itself (payment_intent.payment_failed, signed, to the webhook server)."""
    request_id = f"retry-{uuid.uuid4().hex[:8]}"
    adjust(client, auth, 10_00)
    client.post("/api/payments", headers=auth, json=payment(request_id=request_id, allow_checkout=True,
                                                            route_code="EVT"))
    intent_id = outcome(client, auth, request_id)["checkout"]["payment_intent_id"]

    with pytest.raises(stripe.CardError):
        pay_as_browser(browser, intent_id, DECLINED_AT_CHARGE)
    failed_event = wait_for(lambda: processed_event(sessions, "payment_intent.payment_failed", intent_id),
                            "the decline to be processed")

    assert failed_event.status == "processed"
    assert outcome(client, auth, request_id)["status"] == "awaiting_card"
    declined = attempt(sessions, f"checkout:{request_id}")
    assert declined.status == "awaiting_card" and "declined" in declined.last_error
    assert received() == []

    assert pay_as_browser(browser, intent_id, VISA).status == "succeeded"

    assert status_becomes(client, auth, request_id, "paid")["status"] == "paid"
    callbacks = wait_for(received, "the callback")
    assert [(c["request_id"], c["status"], c["amount"]) for c in callbacks] == [(request_id, "success", "30.00")]
    assert statement(client, auth) == [("Manual Adjustment", "10.00"), ("CC Payment", "20.00"),
                                       ("Entry to an event", "-30.00")]
    assert balance_of(sessions, world["ann"]) == 0
    assert attempt(sessions, f"checkout:{request_id}").status == "succeeded"


def processed_event(sessions: sessionmaker[Session], type_: str, payment_intent_id: str) -> StripeEvent | None:
    with sessions.begin() as session:
        for event in session.scalars(select(StripeEvent).where(StripeEvent.type == type_)):
            if event.payload["data"]["object"]["id"] == payment_intent_id and event.status in ("processed", "ignored"):
                session.expunge(event)
                return event
    return None


# 7b. Card money that does not match the attempt (SPEC 5) ---------------------------------------


def metric(client: FlaskClient, name: str) -> float:
    """A figure of `/metrics`, from the internal listener's app (the public one has none)."""
    from webhook import create_ops_app

    resources = client.application.extensions["payments"]
    text_body = create_ops_app(resources["settings"], resources=resources).test_client().get("/metrics").get_data(
        as_text=True)
    (value,) = [line.split()[-1] for line in text_body.splitlines() if line.startswith(f"{name} ")]
    return float(value)


@pytest.mark.parametrize(("amount", "currency", "differs"), [
    (2_00, "aud", "amount received 2.00, expected 20.00"),
    (20_00, "usd", "currency usd, expected aud"),
], ids=["amount", "currency"])
def test_card_money_that_differs_from_the_attempt_is_held_for_an_admin_unbooked_and_counted(
    client, auth, world, sessions, browser, webhook_url, amount, currency, differs
) -> None:
    request_id = f"held-{uuid.uuid4().hex[:8]}"
    key = f"checkout:{request_id}"
    intent_id = checkout_waiting(client, auth, request_id)  # 20.00 by card for a payment of 30.00
    assert metric(client, "payments_card_payments_held") == 0
    # Another PaymentIntent carrying the attempt's metadata, paid at Stripe; localstripe reports
    # it, signed, to the webhook server.
    other = browser.v1.payment_intents.create({"amount": amount, "currency": currency, "payment_method_types": ["card"],
                                               "metadata": {"attempt_key": key, "member_id": "ann", "kind": "checkout"}})
    assert pay_as_browser(browser, other.id).status == "succeeded"

    held = wait_for(lambda: (row := attempt(sessions, key)) is not None and row.status == "held" and row,
                    "the card money to be held")

    assert held.last_error == f"PaymentIntent {other.id}: {differs}"
    assert held.payment_intent_id == intent_id  # still the checkout's own
    assert [(n["type"], n["payment_intent"]) for n in held.stripe_notes] == [("held", other.id)]
    result = outcome(client, auth, request_id)
    assert result["status"] == "failed" and result["reason"].startswith("card payment held for review")
    assert statement(client, auth) == [("Manual Adjustment", "10.00")]
    assert balance_of(sessions, world["club"]) == 0
    assert metric(client, "payments_card_payments_held") == 1
    assert metric(client, 'payments_card_payments{kind="checkout",result="held"}') == 1

    # The member pays the checkout's own PaymentIntent too: noted for the admin, still not booked.
    assert pay_as_browser(browser, intent_id).status == "succeeded"
    wait_for(lambda: len(attempt(sessions, key).stripe_notes) == 2, "the second payment to be noted")
    assert attempt(sessions, key).stripe_notes[1]["type"] == "succeeded_while_held"
    assert statement(client, auth) == [("Manual Adjustment", "10.00")]
    assert attempt(sessions, key).status == "held"


# 8. Refused deliveries (DESIGN invariant 7) ----------------------------------------------------


def test_bad_signatures_and_bodies_are_refused_and_nothing_is_stored(world, sessions, webhook_url) -> None:
    event = stripe_event("payment_intent.succeeded", {"id": "pi_forged", "object": "payment_intent"})
    body = json.dumps(event).encode()
    garbage = b"this is not json {"
    cases = {
        "forged": (body, sign_webhook(body, "whsec_someone_else")),
        "stale": (body, sign_webhook(body, WEBHOOK_SECRET, timestamp=int(time.time()) - 301)),
        "garbage": (garbage, sign_webhook(garbage, WEBHOOK_SECRET)),
        "no event": (b'{"hello": "world"}', sign_webhook(b'{"hello": "world"}', WEBHOOK_SECRET)),
        "missing header": (body, None),
    }
    for name, (payload, signature) in cases.items():
        status, answer = post_webhook(webhook_url, payload, signature)
        assert status == 400, (name, answer)
        assert set(answer) == {"error"} and {"code", "message"} <= set(answer["error"]), (name, answer)
        assert WEBHOOK_SECRET not in json.dumps(answer)

    huge = json.dumps({**event, "padding": "x" * (1024 * 1024)}).encode()
    status, answer = post_webhook(webhook_url, huge, sign_webhook(huge, WEBHOOK_SECRET))
    assert status == 413, answer
    assert answer["error"]["code"] == "payload_too_large"
    # Only localstripe's own late deliveries for earlier tests' PaymentIntents may be stored.
    with sessions.begin() as session:
        stored = [(e.event_id, e.type, e.payload["data"]["object"]["id"]) for e in session.scalars(select(StripeEvent))]
    assert [e for e in stored if e[0].startswith("evt_test_") or not e[1].startswith("payment_intent.")
            or e[2] == "pi_forged"] == []


# 9. A worker that dies between the charge and the booking (DESIGN invariant 5) ----------------


@pytest.fixture
def private_stripe(tmp_path: Path) -> Iterator[str]:
    """A localstripe of its own with no webhook registered, so only the worker can book what
    it charges (the session's localstripe would report the charge to the webhook server,
    which would book it before the redelivered task runs)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "localstripe.log", "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "localstripe_server", str(port)], cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: urllib.request.urlopen(f"{base}/js.stripe.com/v3/", timeout=1).status == 200,
                 "a private localstripe", 20)
        yield base
    finally:
        stop(process, timeout=10)


def test_a_worker_dying_after_the_charge_is_redelivered_and_books_the_charge_once(
    client, auth, world, sessions, settings, database_url, private_stripe, tmp_path: Path
) -> None:
    gateway = StripeGateway(replace(settings, stripe_api_base=private_stripe))
    browser = browser_for(private_stripe)
    customer = auto_topup_on(sessions, gateway, browser)
    adjust(client, auth, 10_00)
    request_id = f"crash-{uuid.uuid4().hex[:8]}"
    key = f"pay-topup:{request_id}"
    # A broker of its own, so the session's worker cannot take the task.
    broker = f"redis://127.0.0.1:6379/{1 + REDIS_DB % 14}"
    log = tmp_path / "crash-worker.log"
    env = worker_env(database_url, PAYMENTS_BROKER_URL=broker, PAYMENTS_STRIPE_API_BASE=private_stripe,
                     PAYMENTS_TEST_CRASH_AFTER_CHARGE=key)
    process = start(["worker", "--concurrency", "1", "--hostname", f"crash-{REDIS_DB}-{uuid.uuid4().hex[:6]}@%h"],
                    env, log)
    try:
        payments_client.pay(replace(settings, broker_url=broker), token=API_TOKEN, **payment(request_id=request_id))
        result = outcome(client, auth, request_id, timeout=60)
    finally:
        stop(process)

    assert result["status"] == "paid"
    assert "exited with 'exitcode 17'" in log.read_text()  # the child died after the charge
    assert [(pi.amount, pi.status) for pi in intents(browser, key, customer)] == [(100_00, "succeeded")]
    assert statement(client, auth) == [("Manual Adjustment", "10.00"), ("Auto Top Up", "100.00"),
                                       ("Entry to an event", "-30.00")]
    assert balance_of(sessions, world["ann"]) == 80_00
    row = attempt(sessions, key)
    assert (row.status, row.tries) == ("succeeded", 2)  # charged once, then looked up


# 10. Refunds and disputes made at Stripe (SPEC 5) ----------------------------------------------


def test_refunds_and_disputes_reported_by_stripe_are_recorded_against_the_card_payment(
    client, auth, world, sessions, gateway, browser, webhook_url
) -> None:
    auto_topup_on(sessions, gateway, browser)
    client.post("/api/members/ann/topups", headers=auth,
                json={"request_id": "t1", "amount": "60.00", "use_saved_card": True})
    assert outcome(client, auth, "t1")["status"] == "paid"
    intent_id = attempt(sessions, "topup:t1").payment_intent_id
    charge_id = browser.v1.payment_intents.retrieve(intent_id).latest_charge
    charge_id = charge_id if isinstance(charge_id, str) else charge_id.id

    refunded = stripe_event("charge.refunded", {
        "id": charge_id, "object": "charge", "payment_intent": intent_id, "amount": 60_00,
        "amount_refunded": 25_00, "refunded": False, "status": "succeeded"})
    disputed = stripe_event("charge.dispute.created", {
        "id": "dp_test_1", "object": "dispute", "charge": charge_id, "payment_intent": intent_id,
        "amount": 35_00, "reason": "fraudulent", "status": "needs_response"})
    for event in (refunded, disputed):
        deliver(webhook_url, event)
        assert event_done(sessions, event["id"]).status == "processed"

    notes = attempt(sessions, "topup:t1").stripe_notes
    assert [(n["event_id"], n["type"]) for n in notes] == [
        (refunded["id"], "charge.refunded"), (disputed["id"], "charge.dispute.created")]
    assert (notes[0]["amount_refunded"], notes[1]["reason"], notes[1]["amount"]) == (25_00, "fraudulent", 35_00)
    assert balance_of(sessions, world["ann"]) == 60_00  # recorded, not booked


# 11. Manual top-up (SPEC 5) --------------------------------------------------------------------


def test_a_manual_top_up_with_a_new_card_is_booked_when_stripe_reports_it(
    client, auth, world, sessions, browser, webhook_url
) -> None:
    request_id = f"t-{uuid.uuid4().hex[:8]}"
    answer = client.post("/api/members/ann/topups", headers=auth,
                         json={"request_id": request_id, "amount": "60.00", "use_saved_card": False})
    assert answer.status_code == 202, answer.get_json()
    waiting = outcome(client, auth, request_id)
    assert waiting["status"] == "awaiting_card"
    assert (waiting["checkout"]["amount"], waiting["checkout"]["publishable_key"]) == ("60.00", PUBLISHABLE_KEY)

    pay_as_browser(browser, waiting["checkout"]["payment_intent_id"])

    assert status_becomes(client, auth, request_id, "paid")["status"] == "paid"
    assert statement(client, auth) == [("Manual Top Up", "60.00")]
    assert [pi.amount for pi in intents(browser, f"topup:{request_id}")] == [60_00]


def test_a_manual_top_up_with_the_saved_card_is_paid_at_once(client, auth, world, sessions, gateway, browser) -> None:
    customer = auto_topup_on(sessions, gateway, browser)
    client.post("/api/members/ann/topups", headers=auth,
                json={"request_id": "t1", "amount": "75.50", "use_saved_card": True})

    assert outcome(client, auth, "t1")["status"] == "paid"
    assert statement(client, auth) == [("Manual Top Up", "75.50")]
    assert [pi.amount for pi in intents(browser, "topup:t1", customer)] == [75_50]


def test_three_manual_top_ups_of_1500_sent_at_once_from_zero_let_only_one_through(
    client, auth, world, sessions, browser, webhook_url
) -> None:
    """SPEC 5: balance + amount + every top-up still in flight <= 2000.00. Three checkouts of
    1500.00 each would let the member pay in 4500.00."""
    ids = [f"t{n}-{uuid.uuid4().hex[:8]}" for n in range(3)]
    for request_id in ids:
        answer = client.post("/api/members/ann/topups", headers=auth,
                             json={"request_id": request_id, "amount": "1500.00", "use_saved_card": False})
        assert answer.status_code == 202, answer.get_json()

    results = {request_id: outcome(client, auth, request_id) for request_id in ids}
    for result in results.values():  # pay every checkout the member was given
        if result["status"] == "awaiting_card":
            pay_as_browser(browser, result["checkout"]["payment_intent_id"])

    assert sorted(r["status"] for r in results.values()) == ["awaiting_card", "failed", "failed"]
    assert all("in flight above 2000.00" in r["reason"] for r in results.values() if r["status"] == "failed")
    (paid,) = [request_id for request_id, r in results.items() if r["status"] == "awaiting_card"]
    assert status_becomes(client, auth, paid, "paid")["status"] == "paid"
    assert balance_of(sessions, world["ann"]) == 1500_00
    assert statement(client, auth) == [("Manual Top Up", "1500.00")]


def test_a_payment_above_the_largest_auto_top_up_charge_is_not_charged_to_the_saved_card(
    client, auth, world, sessions, gateway, browser
) -> None:
    """SPEC 5: an auto top-up never charges more than PAYMENTS_AUTO_TOPUP_MAX_CHARGE (2000.00);
    above it the payment goes on to step 3: a checkout if allowed, else declined."""
    customer = auto_topup_on(sessions, gateway, browser)
    big, refused = f"big-{uuid.uuid4().hex[:8]}", f"big-{uuid.uuid4().hex[:8]}"
    client.post("/api/payments", headers=auth, json=payment(request_id=big, amount="1000000.00", allow_checkout=True))
    client.post("/api/payments", headers=auth, json=payment(request_id=refused, amount="1999.99"))

    waiting, declined = outcome(client, auth, big), outcome(client, auth, refused)

    assert waiting["status"] == "awaiting_card" and waiting["checkout"]["amount"] == "1000000.00"
    assert declined["status"] == "declined"  # 1999.99 from 0.00 would need a top-up of 2100.00
    of_customer = [(pi.amount, pi.status, pi.metadata.to_dict()["kind"])
                   for pi in browser.v1.payment_intents.list({"limit": 100}).auto_paging_iter()
                   if pi.customer == customer]
    # Nothing charged to the saved card: the only PaymentIntent is the checkout, still unpaid.
    assert of_customer == [(1_000_000_00, "requires_payment_method", "checkout")]
    assert attempt(sessions, f"pay-topup:{big}") is None and attempt(sessions, f"pay-topup:{refused}") is None
    assert balance_of(sessions, world["ann"]) == 0
    assert member_status(sessions) == "on"


def test_manual_top_up_limits(client, auth, world, sessions) -> None:
    small = client.post("/api/members/ann/topups", headers=auth,
                        json={"request_id": "t1", "amount": "49.99", "use_saved_card": False})
    assert small.status_code == 400
    assert small.get_json()["error"]["field"] == "amount"
    assert client.get("/api/payments/t1", headers=auth).status_code == 404

    adjust(client, auth, 1950_00)
    client.post("/api/members/ann/topups", headers=auth,
                json={"request_id": "t2", "amount": "60.00", "use_saved_card": False})
    result = outcome(client, auth, "t2")
    assert result["status"] == "failed"
    assert "2000.00" in result["reason"]
    assert balance_of(sessions, world["ann"]) == 1950_00
    assert attempt(sessions, "topup:t2") is None


# 12. Cancel (SPEC 4.1) -------------------------------------------------------------------------


def test_cancelling_auto_top_up_turns_it_off_and_detaches_the_card_at_stripe(
    client, auth, world, sessions, gateway, browser
) -> None:
    customer = auto_topup_on(sessions, gateway, browser)
    assert len(browser.v1.payment_methods.list({"customer": customer, "type": "card"}).data) == 1

    answer = client.delete("/api/members/ann/auto-topup", headers=auth)

    assert answer.status_code == 200
    assert answer.get_json() == {"member_id": "ann", "auto_topup": {"status": "off"}}
    assert member_status(sessions) == "off"
    assert browser.v1.payment_methods.list({"customer": customer, "type": "card"}).data == []
    assert gateway.default_payment_method(customer) is None


def test_cancelling_while_an_auto_top_up_waits_to_be_charged_means_it_is_never_charged(
    client, auth, world, sessions, gateway, browser, settings, received
) -> None:
    """SPEC 4.1: cancel means no more charges. The worker has committed a payment's auto top-up
    attempt but not charged it yet (its task was lost, say) when the member cancels; the
    reconciler then finds the attempt, and the real worker does not charge it."""
    customer = auto_topup_on(sessions, gateway, browser)
    adjust(client, auth, 10_00)
    request_id = f"cancel-{uuid.uuid4().hex[:8]}"
    order = payments.parse(payment(request_id=request_id, route_code="EVT"), settings)
    with sessions.begin() as session:
        payments.pay(session, order, settings)
        (attempt_id,) = session.info.pop("charges")
        session.get(CardPayment, attempt_id).updated_at = datetime.now(UTC) - timedelta(hours=1)

    assert client.delete("/api/members/ann/auto-topup", headers=auth).status_code == 200
    messages.send("payments.reconcile", {}, queue="topups", settings=settings)

    result = status_becomes(client, auth, request_id, "declined")
    assert result["reason"] == "auto top-up failed: auto top-up cancelled"
    callbacks = wait_for(received, "the failure callback")
    assert [(c["request_id"], c["status"]) for c in callbacks] == [(request_id, "failure")]
    assert intents(browser, f"pay-topup:{request_id}", customer) == []  # never charged
    assert (attempt(sessions, f"pay-topup:{request_id}").status, member_status(sessions)) == ("failed", "off")
    assert emails(sessions) == []  # no "Auto Top Up Failure" for a member who cancelled
    assert statement(client, auth) == [("Manual Adjustment", "10.00")]


# A payment waiting for the member's top-up in flight (SPEC 3 with 4.3; issue 13 item 3) ------


def waiting_for_sweep_top_up(
    client: FlaskClient, auth: dict, sessions: sessionmaker[Session], settings: Settings, request_id: str
) -> int:
    """The sweep's auto top-up of ann (10.00) is committed but not charged (its task is late);
    the worker decides a payment of 30.00 meanwhile: it waits for that top-up. Its id."""
    key = f"sweep:ann:{uuid.uuid4().hex[:8]}"
    with sessions.begin() as session:
        attempt_id = topups.open_auto_topup(session, "ann", key, settings)
        assert attempt_id is not None
        session.get(CardPayment, attempt_id).updated_at = datetime.now(UTC) - timedelta(hours=1)
    client.post("/api/payments", headers=auth, json=payment(request_id=request_id, route_code="EVT"))

    def waits() -> dict | None:
        body = client.get(f"/api/payments/{request_id}", headers=auth).get_json()
        return body if body.get("waiting_for_top_up") is not None else None
    assert wait_for(waits, f"request {request_id} to wait")["waiting_for_top_up"] == attempt_id
    assert client.get(f"/api/payments/{request_id}", headers=auth).get_json()["status"] == "queued"
    assert count(sessions, "SELECT count(*) FROM card_payments") == 1  # no top-up of its own
    return attempt_id


def test_a_payment_waiting_for_the_top_up_in_flight_is_paid_when_the_reconciler_charges_it(
    client, auth, world, sessions, gateway, browser, settings, received
) -> None:
    auto_topup_on(sessions, gateway, browser)
    adjust(client, auth, 10_00)
    request_id = f"wait-{uuid.uuid4().hex[:8]}"
    waiting_for_sweep_top_up(client, auth, sessions, settings, request_id)

    messages.send("payments.reconcile", {}, queue="topups", settings=settings)

    result = status_becomes(client, auth, request_id, "paid")
    assert "waiting_for_top_up" not in result
    assert statement(client, auth) == [("Manual Adjustment", "10.00"), ("Auto Top Up", "100.00"),
                                       ("Entry to an event", "-30.00")]
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["club"])) == (80_00, 30_00)
    callbacks = wait_for(received, "the success callback")
    assert [(c["request_id"], c["status"]) for c in callbacks] == [(request_id, "success")]


def test_a_payment_waiting_for_the_top_up_in_flight_is_declined_when_its_card_is_declined(
    client, auth, world, sessions, gateway, browser, settings, received
) -> None:
    auto_topup_on(sessions, gateway, browser, number=DECLINED_AT_CHARGE)
    adjust(client, auth, 10_00)
    request_id = f"wait-{uuid.uuid4().hex[:8]}"
    attempt_id = waiting_for_sweep_top_up(client, auth, sessions, settings, request_id)

    messages.send("payments.reconcile", {}, queue="topups", settings=settings)

    result = status_becomes(client, auth, request_id, "declined")
    assert result["reason"].startswith(f"auto top-up {attempt_id} failed: ")
    assert result["reason"].endswith("; balance 10.00, needs 30.00")
    assert member_status(sessions) == "failed"
    assert statement(client, auth) == [("Manual Adjustment", "10.00")]
    callbacks = wait_for(received, "the failure callback")
    assert [(c["request_id"], c["status"]) for c in callbacks] == [(request_id, "failure")]
