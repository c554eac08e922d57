"""DESIGN invariant 7 at the edges: a broker that is down still gets Stripe a 200 (the event is
stored, and redriven later); a database that is down gets a 503 (Stripe retries)."""

from __future__ import annotations

import json
import time

from sqlalchemy import select

from shared.models import StripeEvent
from shared.stripe_gateway import sign_webhook

SECRET = "whsec_outage_test"


def signed(event_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"id": event_id, "object": "event", "type": "payment_intent.succeeded",
                       "data": {"object": {"id": "pi_1"}}}).encode()
    return body, {"Stripe-Signature": sign_webhook(body, SECRET), "Content-Type": "application/json"}


def test_with_the_broker_down_the_event_is_stored_and_stripe_gets_200(app_with, sessions) -> None:
    app = app_with(stripe_webhook_secret=SECRET, broker_url="redis://127.0.0.1:1/0")
    body, headers = signed("evt_broker_down")
    started = time.monotonic()
    answer = app.test_client().post("/stripe/webhook", data=body, headers=headers)
    elapsed = time.monotonic() - started
    assert (answer.status_code, answer.get_json()) == (200, {"received": True, "duplicate": False})
    with sessions.begin() as session:
        assert session.scalar(select(StripeEvent.status).where(StripeEvent.event_id == "evt_broker_down")) == "received"
    assert elapsed < 10, f"the webhook waited {elapsed:.1f} s for the broker"


def test_with_the_database_down_stripe_gets_503_and_is_told_to_retry(app_with) -> None:
    app = app_with(stripe_webhook_secret=SECRET, database_url="postgresql://postgres@127.0.0.1:1/payments")
    body, headers = signed("evt_db_down")
    answer = app.test_client().post("/stripe/webhook", data=body, headers=headers)
    assert answer.status_code == 503
    assert answer.get_json()["error"]["code"] == "database_unavailable"


def test_without_a_webhook_secret_nothing_is_accepted(app_with, sessions) -> None:
    app = app_with(stripe_webhook_secret=None)
    body, headers = signed("evt_no_secret")
    answer = app.test_client().post("/stripe/webhook", data=body, headers=headers)
    assert answer.status_code == 503
    with sessions.begin() as session:
        assert session.scalar(select(StripeEvent.event_id)) is None
