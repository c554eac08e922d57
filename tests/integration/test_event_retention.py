"""Stored Stripe events keep their full payload only for PAYMENTS_EVENT_PAYLOAD_RETENTION_DAYS
after they were processed; then only what the handlers and an audit need (ISSUE 12, item 7)."""

from __future__ import annotations

import dataclasses
from typing import Any

from freezegun import freeze_time

from shared import inbox
from shared.config import Settings
from shared.models import EventStatus, StripeEvent


def full_event(event_id: str, type_: str = "payment_intent.succeeded") -> dict[str, Any]:
    return {
        "id": event_id, "object": "event", "type": type_, "created": 1764000000, "livemode": False,
        "api_version": "2025-01-01", "request": {"id": "req_1", "idempotency_key": "k"},
        "data": {"object": {
            "id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": 2000,
            "amount_received": 2000, "currency": "aud", "client_secret": "pi_1_secret_abc",
            "customer": {"id": "cus_1", "email": "ann@example.org", "name": "Ann Lee"},
            "metadata": {"attempt_key": "checkout:r1", "member_id": "ann"},
            "receipt_email": "ann@example.org",
            "payment_method": {"id": "pm_1", "card": {"last4": "4242", "fingerprint": "fp"},
                               "billing_details": {"address": {"line1": "1 Main St"}}},
        }},
    }


AUDIT_FORM = {
    "id": "evt_old", "object": "event", "type": "payment_intent.succeeded", "created": 1764000000, "livemode": False,
    "data": {"object": {"id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": 2000,
                        "amount_received": 2000, "currency": "aud", "customer": "cus_1",
                        "metadata": {"attempt_key": "checkout:r1", "member_id": "ann"}}},
    "pruned": True,
}


def store(sessions, event_id: str, status: EventStatus | None, type_: str = "payment_intent.succeeded") -> None:
    with sessions.begin() as session:
        inbox.accept(session, full_event(event_id, type_))
        if status is not None:
            inbox.finish(session, event_id, status)


def payloads(sessions) -> dict[str, dict[str, Any]]:
    with sessions.begin() as session:
        return {e.event_id: e.payload for e in session.query(StripeEvent)}


def test_events_processed_longer_ago_than_the_retention_keep_only_their_audit_form(sessions) -> None:
    settings = Settings()  # 90 days
    with freeze_time("2026-01-01 10:00:00"):
        store(sessions, "evt_old", EventStatus.PROCESSED)
        store(sessions, "evt_old_ignored", EventStatus.IGNORED, "customer.updated")
        store(sessions, "evt_old_failed", EventStatus.FAILED)  # still to be handled: kept whole
        store(sessions, "evt_old_received", None)
    with freeze_time("2026-03-15 10:00:00"):
        store(sessions, "evt_recent", EventStatus.PROCESSED)
    with freeze_time("2026-04-01 11:00:00"):  # 90 days and an hour after the old ones
        with sessions.begin() as session:
            assert inbox.prune_payloads(session, settings) == 2
        with sessions.begin() as session:
            assert inbox.prune_payloads(session, settings) == 0  # once is enough
    after = payloads(sessions)
    assert after["evt_old"] == AUDIT_FORM
    assert after["evt_old_ignored"] == {**AUDIT_FORM, "id": "evt_old_ignored", "type": "customer.updated"}
    for kept in ("evt_old_failed", "evt_old_received", "evt_recent"):
        assert after[kept] == full_event(kept), kept
    with sessions.begin() as session:
        assert session.get(StripeEvent, "evt_old").status == "processed"  # the row itself stays


def test_the_retention_is_a_setting(sessions) -> None:
    settings = dataclasses.replace(Settings(), event_payload_retention_days=7)
    with freeze_time("2026-01-01 10:00:00"):
        store(sessions, "evt_old", EventStatus.PROCESSED)
    with freeze_time("2026-01-07 10:00:00"), sessions.begin() as session:
        assert inbox.prune_payloads(session, settings) == 0
    with freeze_time("2026-01-08 10:00:01"), sessions.begin() as session:
        assert inbox.prune_payloads(session, settings) == 1
    assert payloads(sessions)["evt_old"]["pruned"] is True
    assert Settings.from_env({"PAYMENTS_EVENT_PAYLOAD_RETENTION_DAYS": "30"}).event_payload_retention_days == 30


def test_pruning_runs_daily_from_beat_as_a_named_task() -> None:
    import scheduler.jobs  # registers the periodic tasks, as the worker's `include` does
    from scheduler.schedule import beat_schedule
    from worker.app import app

    assert scheduler.jobs.prune_event_payloads.name == "payments.prune_event_payloads"

    entry = beat_schedule()["prune-event-payloads"]
    assert (entry["task"], entry["schedule"]) == ("payments.prune_event_payloads", 86400)
    assert "payments.prune_event_payloads" in app.tasks


def test_the_periodic_task_prunes_in_batches_until_none_is_left(sessions, monkeypatch) -> None:
    import scheduler.jobs
    from shared import inbox as inbox_module

    with freeze_time("2026-01-01 10:00:00"):
        for number in range(5):
            store(sessions, f"evt_{number}", EventStatus.PROCESSED)
    real = inbox_module.prune_payloads
    monkeypatch.setattr(scheduler.jobs, "sessions", lambda: sessions)
    monkeypatch.setattr(scheduler.jobs, "settings", lambda: Settings())
    monkeypatch.setattr(inbox_module, "prune_payloads", lambda session, settings: real(session, settings, batch=2))
    with freeze_time("2026-06-01 10:00:00"):
        assert scheduler.jobs.prune_event_payloads() == 5
    assert all(payload["pruned"] for payload in payloads(sessions).values())
