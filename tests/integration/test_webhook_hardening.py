"""Webhook hardening (ISSUE 12, item 7): several signing secrets at once for a rotation, and
refused deliveries counted by reason in `/metrics`, in Redis so the count adds up across
gunicorn's processes (tests/e2e/test_webhook_server.py checks that through a real server)."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import String, select

from shared.config import Settings
from shared.models import StripeEvent
from shared.stripe_gateway import sign_webhook
from tests.e2e.processes import PrivateRedis, private_redis
from webhook import create_app, create_ops_app

OLD, NEW, REMOVED = "whsec_old_not_a_secret", "whsec_new_not_a_secret", "whsec_removed_not_a_secret"


def delivery(event_id: str, secret: str, *, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"id": event_id, "object": "event", "type": "customer.updated",
                       "data": {"object": {"id": "cus_1", "object": "customer"}}}).encode()
    return body, {"Content-Type": "application/json",
                  "Stripe-Signature": sign_webhook(body, secret, timestamp=timestamp)}


def stored(sessions) -> set[str]:
    with sessions.begin() as session:
        return set(session.scalars(select(StripeEvent.event_id)))


@pytest.fixture
def broker() -> Iterator[PrivateRedis]:
    """A Redis of the test's own: the counters start at zero and no other run adds to them."""
    with private_redis() as server:
        yield server


@pytest.fixture
def apps(settings: Settings, broker: PrivateRedis, clean_db: None) -> Iterator[tuple[Flask, Flask]]:
    changed = dataclasses.replace(settings, broker_url=broker.url, stripe_webhook_secret=f" {OLD} , {NEW} ")
    public = create_app(changed)
    yield public, create_ops_app(changed, resources=public.extensions["payments"])
    public.extensions["payments"]["engine"].dispose()
    public.extensions["payments"]["rejections"].close()


def test_during_a_rotation_a_delivery_signed_with_either_secret_is_accepted(apps, sessions) -> None:
    client = apps[0].test_client()
    for event_id, secret in (("evt_old", OLD), ("evt_new", NEW)):
        body, headers = delivery(event_id, secret)
        answer = client.post("/stripe/webhook", data=body, headers=headers)
        assert (answer.status_code, answer.get_json()) == (200, {"received": True, "duplicate": False}), event_id
    assert stored(sessions) == {"evt_old", "evt_new"}


def test_a_delivery_signed_with_a_removed_secret_is_refused(app_with, sessions) -> None:
    client = app_with(stripe_webhook_secret=NEW).test_client()  # OLD and REMOVED are gone
    for event_id, secret in (("evt_removed", REMOVED), ("evt_old", OLD)):
        body, headers = delivery(event_id, secret)
        answer = client.post("/stripe/webhook", data=body, headers=headers)
        assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "bad_signature", event_id
    body, headers = delivery("evt_new", NEW)
    assert client.post("/stripe/webhook", data=body, headers=headers).status_code == 200
    assert stored(sessions) == {"evt_new"}


def test_refused_deliveries_are_counted_by_reason_in_the_metrics(apps, sessions) -> None:
    public, ops = apps
    client = public.test_client()
    body, headers = delivery("evt_1", NEW)
    plan = {
        "missing_signature": (body, {"Content-Type": "application/json"}),
        "bad_signature": delivery("evt_2", REMOVED),
        "stale_signature": delivery("evt_3", NEW, timestamp=int(time.time()) - 3600),
        "bad_payload": (b"[]", {"Stripe-Signature": sign_webhook(b"[]", OLD)}),
        "too_large": (b"x" * (1024 * 1024 + 1), headers),
    }
    times = {"missing_signature": 3, "bad_signature": 2, "stale_signature": 1, "bad_payload": 4, "too_large": 1}
    for reason, (payload, hdrs) in plan.items():
        for _ in range(times[reason]):
            assert client.post("/stripe/webhook", data=payload, headers=hdrs).status_code in (400, 413), reason
    assert client.post("/stripe/webhook", data=body, headers=headers).status_code == 200  # not counted

    text = ops.test_client().get("/metrics").get_data(as_text=True)
    counted = {m[1]: int(float(m[2])) for m in re.finditer(r'^payments_webhook_rejected_total\{reason="(\w+)"\} (\S+)$',
                                                           text, re.M)}
    assert counted == {**times, "not_configured": 0}
    assert "# TYPE payments_webhook_rejected_total counter" in text
    assert stored(sessions) == {"evt_1"}


def test_with_redis_away_a_refused_delivery_is_still_refused_at_once(app_with) -> None:
    client = app_with(stripe_webhook_secret=NEW, broker_url="redis://127.0.0.1:1/0").test_client()
    body, headers = delivery("evt_x", REMOVED)
    started = time.monotonic()
    assert client.post("/stripe/webhook", data=body, headers=headers).status_code == 400
    assert time.monotonic() - started < 2


def test_an_event_is_stored_as_stripe_sent_it(apps, sessions) -> None:
    """On PostgreSQL the payload column keeps the body's own text (a byte-order mark aside), so
    what is kept is what Stripe signed."""
    client = apps[0].test_client()
    event = {"id": "evt_as_sent", "object": "event", "type": "customer.updated",
             "data": {"object": {"object": "customer", "id": "cus_1", "name": "Zoë"}}}
    as_sent = '{ "id":"evt_as_sent",\n  "type": "customer.updated", "object":"event",' \
              ' "data": {"object": {"object": "customer", "id": "cus_1", "name": "Zoë"}} }'
    for body in (as_sent.encode(), b"\xef\xbb\xbf" + json.dumps(dict(event, id="evt_bom")).encode()):
        headers = {"Content-Type": "application/json", "Stripe-Signature": sign_webhook(body, OLD)}
        answer = client.post("/stripe/webhook", data=body, headers=headers)
        assert (answer.status_code, answer.get_json()) == (200, {"received": True, "duplicate": False})
    with sessions.begin() as session:
        rows = dict(session.execute(select(StripeEvent.event_id, StripeEvent.payload)).all())
        text = session.scalar(select(StripeEvent.payload.cast(String)).where(StripeEvent.event_id == "evt_as_sent"))
    assert text == as_sent
    assert rows == {"evt_as_sent": event, "evt_bom": dict(event, id="evt_bom")}
