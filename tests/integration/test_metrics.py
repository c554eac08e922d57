"""`/metrics`: the figures an operator watches, read from the database and the broker."""

from __future__ import annotations

import re

import redis
from freezegun import freeze_time
from sqlalchemy import update

from shared import inbox, outbox, requests, topups
from shared.models import CardPaymentKind, OutboxMessage, PaymentRequest, RequestKind
from tests.conftest import REDIS_URL
from tests.integration.helpers import add_member


def samples(text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def test_metrics_show_inbox_lag_outbox_dead_rows_requests_and_queue_depth(client, ops_client, auth, sessions) -> None:
    with freeze_time("2026-11-26 10:00:00"):
        with sessions.begin() as session:
            inbox.accept(session, {"id": "evt_1", "type": "x", "data": {"object": {}}})
            outbox.add_notification(session, "a", {"to": "a@example.org"})
            dead = outbox.add_notification(session, "b", {"to": "b@example.org"})
            session.execute(update(OutboxMessage).where(OutboxMessage.id == dead).values(status="dead"))
    client.put("/api/members/ann", headers=auth, json={"email": "a@example.org", "first_name": "A", "last_name": "L"})
    client.post("/api/payments", headers=auth, json={"request_id": "r1", "member_id": "ann", "amount": "1.00",
                                                      "description": "x"})
    broker = redis.Redis.from_url(REDIS_URL)
    depth = broker.llen("payments")
    with freeze_time("2026-11-26 10:01:30"):
        answer = ops_client.get("/metrics")
    broker.close()
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    values = samples(answer.get_data(as_text=True))
    assert values['payments_inbox_events{status="received"}'] == 1
    assert values["payments_inbox_lag_seconds"] == 90.0
    assert values['payments_outbox_messages{status="pending"}'] == 1
    assert values['payments_outbox_messages{status="dead"}'] == 1
    assert values['payments_requests{kind="payment",status="queued"}'] == 1
    assert values['payments_queue_depth{queue="payments"}'] == depth >= 1
    assert "# TYPE payments_card_payments gauge" in answer.get_data(as_text=True)


def test_metrics_show_the_rows_the_healing_jobs_are_stuck_on_their_tries_and_what_they_gave_up(
    ops_client, sessions
) -> None:
    with freeze_time("2026-11-26 10:00:00"):
        with sessions.begin() as session:
            add_member(session, "ann")
            for request_id, status, tries in (("r1", "queued", 2), ("r2", "queued", 0), ("r3", "failed", 12)):
                row, _ = requests.record(session, RequestKind.PAYMENT, request_id, {"n": request_id}, amount=100)
                session.execute(update(PaymentRequest).where(PaymentRequest.request_id == request_id)
                                .values(status=status, heal_tries=tries))
            attempt = topups.open_attempt(session, key="k1", kind=CardPaymentKind.CHECKOUT, member_id="ann",
                                          amount=100)
            assert attempt is not None
            attempt.heal_tries = 4
            inbox.accept(session, {"id": "evt_1", "type": "x", "data": {"object": {}}})
    with freeze_time("2026-11-26 10:05:00"):  # past the redrive threshold (60 s), not the reconcile one (600 s)
        values = samples(ops_client.get("/metrics").get_data(as_text=True))
    assert values['payments_stuck_rows{kind="request"}'] == 2
    assert values['payments_stuck_row_tries{kind="request"}'] == 2
    assert values['payments_stuck_rows{kind="inbox_event"}'] == 1
    assert values['payments_stuck_rows{kind="card_attempt"}'] == 0
    assert values['payments_healing_gave_up_rows{kind="request"}'] == 1
    with freeze_time("2026-11-26 10:15:00"):
        values = samples(ops_client.get("/metrics").get_data(as_text=True))
    assert values['payments_stuck_rows{kind="card_attempt"}'] == 1
    assert values['payments_stuck_row_tries{kind="card_attempt"}'] == 4
