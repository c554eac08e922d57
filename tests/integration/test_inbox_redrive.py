"""What the scheduler's inbox redrive takes again (scheduler/jobs.py `redrive_inbox`), and the
sending side failing at once when the broker is down (a stored request or event is redriven,
so waiting on a dead broker only slows the answer)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from freezegun import freeze_time
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared import client, inbox
from shared.models import utcnow
from tests.e2e.processes import free_port


def store(sessions: sessionmaker[Session], event_id: str, status: str, attempts: int) -> None:
    with sessions.begin() as session:
        inbox.accept(session, {"id": event_id, "type": "payment_intent.succeeded", "data": {"object": {}}})
        session.execute(text("UPDATE stripe_events SET status = :status, attempts = :attempts WHERE event_id = :id"),
                        {"status": status, "attempts": attempts, "id": event_id})


def test_events_left_received_processing_or_failed_are_redriven_until_an_operator_is_needed(sessions) -> None:
    with freeze_time(utcnow() - timedelta(minutes=10)):
        store(sessions, "evt_lost_enqueue", "received", 0)
        store(sessions, "evt_worker_died", "processing", 1)
        store(sessions, "evt_stripe_was_down", "failed", 10)
        store(sessions, "evt_failing_for_good", "failed", inbox.REDRIVE_FAILED_BELOW)
        store(sessions, "evt_done", "processed", 1)
    store(sessions, "evt_failed_just_now", "failed", 1)
    with sessions.begin() as session:
        redriven = inbox.stale(session, timedelta(minutes=1))
    assert sorted(redriven) == ["evt_lost_enqueue", "evt_stripe_was_down", "evt_worker_died"]
    with sessions.begin() as session:
        statuses = dict(session.execute(text("SELECT event_id, status FROM stripe_events")).all())
    assert statuses == {"evt_lost_enqueue": "received", "evt_worker_died": "received", "evt_stripe_was_down": "received",
                        "evt_failing_for_good": "failed", "evt_done": "processed", "evt_failed_just_now": "failed"}


def test_sending_to_a_broker_that_is_down_fails_at_once() -> None:
    sender = client.celery_for(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BrokerError):
        sender.send_task("payments.process_stripe_event", kwargs={"event_id": "evt_1"}, queue="webhooks")
    # One refused connection, no retries (they took 0.6 s a message); 5 s only guards a hang.
    assert time.monotonic() - started < 5
    assert sender.conf.task_publish_retry is False and sender.conf.broker_transport_options == {"max_retries": 0}
