"""`/metrics`: the figures an operator watches, read from the database and the broker."""

from __future__ import annotations

import redis
from freezegun import freeze_time
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from shared import inbox, outbox, requests, topups
from shared.models import CardPaymentKind, OutboxMessage, PaymentRequest, RequestKind
from tests.conftest import REDIS_URL
from tests.integration.helpers import add_member


def samples(text: str) -> dict[str, float]:
    """Every sample of a scrape, as `name{label="value",...}` (labels sorted) to its value, read
    by prometheus-client's own parser: a scrape it cannot parse fails here."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def types(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


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
    kinds = types(answer.get_data(as_text=True))
    assert kinds["payments_card_payments"] == kinds["payments_stuck_rows"] == "gauge"
    assert kinds["payments_webhook_rejected"] == "counter"
    assert kinds["payments_http_request_duration_seconds"] == kinds["payments_task_duration_seconds"] == "histogram"


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


def test_the_request_histogram_counts_each_public_request_by_route_and_status(client, ops_client, auth) -> None:
    """A real request through the public app moves its route's count and sum; an unknown path
    is counted under one `unmatched` series, not one per path."""
    count = 'payments_http_request_duration_seconds_count{method="PUT",route="/api/members/<member_id>",status="201"}'
    total = 'payments_http_request_duration_seconds_sum{method="PUT",route="/api/members/<member_id>",status="201"}'
    refused = 'payments_http_request_duration_seconds_count{method="GET",route="/api/admin/summary",status="401"}'
    lost = 'payments_http_request_duration_seconds_count{method="GET",route="unmatched",status="404"}'
    before = samples(ops_client.get("/metrics").get_data(as_text=True))
    for member in ("ann", "bob"):
        assert client.put(f"/api/members/{member}", headers=auth,
                          json={"email": "a@example.org", "first_name": "A", "last_name": "L"}).status_code == 201
    assert client.get("/api/admin/summary").status_code == 401
    assert client.get("/no/such/path/1").status_code == client.get("/no/such/path/2").status_code == 404
    after = samples(ops_client.get("/metrics").get_data(as_text=True))
    assert after[count] == before.get(count, 0) + 2
    assert after[total] > before.get(total, 0)
    assert after[refused] == before.get(refused, 0) + 1
    assert after[lost] == before.get(lost, 0) + 2
    assert after['payments_http_request_duration_seconds_bucket{le="+Inf",method="PUT",'
                 'route="/api/members/<member_id>",status="201"}'] == after[count]
    assert not [name for name in after if "/no/such" in name]
    assert not [name for name in after if "route=\"/metrics\"" in name]  # the scrapes themselves are not timed


def test_the_inbox_delay_histogram_times_an_event_from_arrival_to_done(ops_client, sessions, settings) -> None:
    """`payments_inbox_delay_seconds`, observed where the event is processed (the worker; here
    in this process, which the ops app reports without multiprocess mode)."""
    from shared import stripe_events

    count, total = 'payments_inbox_delay_seconds_count{outcome="ignored"}', 'payments_inbox_delay_seconds_sum{outcome="ignored"}'
    before = samples(ops_client.get("/metrics").get_data(as_text=True))
    with freeze_time("2026-11-26 10:00:00"):
        with sessions.begin() as session:
            inbox.accept(session, {"id": "evt_late", "type": "customer.nothing_we_handle", "data": {"object": {}}})
    with freeze_time("2026-11-26 10:01:30"):
        assert stripe_events.process(sessions, None, settings, "evt_late")[0] == "ignored"  # no handler: no Stripe call
    after = samples(ops_client.get("/metrics").get_data(as_text=True))
    assert after[count] == before.get(count, 0) + 1
    assert after[total] - before.get(total, 0) == 90.0
    assert after['payments_inbox_delay_seconds_bucket{le="60.0",outcome="ignored"}'] == before.get(
        'payments_inbox_delay_seconds_bucket{le="60.0",outcome="ignored"}', 0)
