"""Store, answer (DESIGN invariant 7; worker/inbox.py): on PostgreSQL the webhook's INSERT
NOTIFYs and nothing is published; the inbox consumer takes `received` events on a NOTIFY, or at
its poll when a NOTIFY was lost, and processes them; a failing event goes to its task; an event
taken by a consumer killed with -9 is redriven and processed, never lost."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared import inbox, metrics, stripe_events
from shared.config import Settings
from shared.db import make_engine, one_statement
from shared.stripe_gateway import sign_webhook
from tests.e2e.processes import wait_for
from worker.inbox import InboxConsumer, _libpq_url

SECRET = "whsec_consumer_test"


def event(event_id: str, kind: str = "payment_intent.succeeded") -> dict[str, Any]:
    return {"id": event_id, "object": "event", "type": kind, "data": {"object": {"id": f"pi_{event_id}"}}}


def store(settings: Settings, event_id: str, *, notify: bool, kind: str = "payment_intent.succeeded") -> bool:
    engine = make_engine(settings.database_url)
    try:
        with one_statement(engine) as connection:
            return not inbox.accept(connection, event(event_id, kind), notify=notify).duplicate
    finally:
        engine.dispose()


def statuses(sessions: sessionmaker[Session]) -> dict[str, tuple[str, int]]:
    with sessions.begin() as session:
        rows = session.execute(text("SELECT event_id, status, attempts FROM stripe_events")).all()
    return {event_id: (status, attempts) for event_id, status, attempts in rows}


class Sent(list):  # the tasks a consumer handed over
    def __call__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.append((name, kwargs))


@pytest.fixture
def consumer(settings: Settings, clean_db: None) -> Iterator[Any]:
    """Start consumers with changed settings (`consumer(inbox_poll_seconds=60)`); stopped after."""
    started: list[InboxConsumer] = []

    def start(**changes: Any) -> InboxConsumer:
        running = InboxConsumer(dataclasses.replace(settings, **changes), Sent())
        running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
        assert running.thread is not None and not running.thread.is_alive()


def test_a_stored_event_notifies_once_and_a_duplicate_not_at_all(settings: Settings, clean_db: None) -> None:
    with psycopg.connect(_libpq_url(settings.database_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {inbox.CHANNEL}")
        assert store(settings, "evt_n1", notify=True)
        heard = [n.channel for n in listener.notifies(timeout=2, stop_after=1)]
        assert heard == [inbox.CHANNEL]
        assert not store(settings, "evt_n1", notify=True)  # a duplicate
        assert store(settings, "evt_n2", notify=False)
        assert list(listener.notifies(timeout=0.5)) == []


def test_take_claims_received_events_oldest_first_and_skips_rows_held_elsewhere(
        settings: Settings, sessions: sessionmaker[Session]) -> None:
    for event_id in ("evt_t1", "evt_t2", "evt_t3", "evt_t4"):
        store(settings, event_id, notify=False)
    with sessions.begin() as session:
        session.execute(text("UPDATE stripe_events SET status = 'processed' WHERE event_id = 'evt_t4'"))
    with sessions.begin() as holder:  # a task holding evt_t1 (claim's row lock)
        holder.execute(text("SELECT 1 FROM stripe_events WHERE event_id = 'evt_t1' FOR UPDATE"))
        with sessions.begin() as session:
            taken = inbox.take(session, 10)
    assert [t.event_id for t in taken] == ["evt_t2", "evt_t3"]
    assert taken[0].payload["type"] == "payment_intent.succeeded"
    assert statuses(sessions) == {"evt_t1": ("received", 0), "evt_t2": ("processing", 1),
                                  "evt_t3": ("processing", 1), "evt_t4": ("processed", 0)}


def test_events_stored_while_no_consumer_runs_are_processed_when_one_starts(
        settings: Settings, sessions: sessionmaker[Session], consumer: Any) -> None:
    for i in range(inbox_batch() + 5):  # more than one batch
        store(settings, f"evt_before_{i}", notify=True)
    store(settings, "evt_before_unknown_type", notify=True, kind="customer.created")
    consumer(inbox_poll_seconds=60)  # no poll in this test's time: the start takes them
    done = wait_for(lambda: all_ignored(statuses(sessions)), "every event processed", timeout=20)
    assert len(done) == inbox_batch() + 6 and {attempts for _, attempts in done.values()} == {1}


def test_a_notify_wakes_the_consumer_at_once(settings: Settings, sessions: sessionmaker[Session], consumer: Any) -> None:
    running = consumer(inbox_poll_seconds=60)
    wait_for(lambda: running.looks == 1, "the consumer listening, its first look done")
    store(settings, "evt_woken", notify=True)
    wait_for(lambda: statuses(sessions)["evt_woken"][0] == "ignored", "the event processed", timeout=10)
    assert running.looks == 2  # woken once by the NOTIFY, well before its 60 s poll


def test_an_event_whose_notify_was_lost_is_taken_at_the_next_poll(
        settings: Settings, sessions: sessionmaker[Session], consumer: Any) -> None:
    running = consumer(inbox_poll_seconds=0.3)
    wait_for(lambda: running.looks == 1, "the consumer listening, its first look done")
    store(settings, "evt_no_notify", notify=False)
    wait_for(lambda: statuses(sessions)["evt_no_notify"][0] == "ignored", "the event processed at a poll", timeout=10)


def test_a_failing_event_is_recorded_failed_and_handed_to_its_task(
        settings: Settings, sessions: sessionmaker[Session], consumer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("stripe said no")

    monkeypatch.setitem(stripe_events.HANDLERS, "charge.refunded", broken)
    timed_before = {state: handled("payments.process_stripe_event", state) for state in ("SUCCESS", "FAILURE")}
    running = consumer(inbox_poll_seconds=0.3)
    store(settings, "evt_breaks", notify=True, kind="charge.refunded")
    store(settings, "evt_fine", notify=True)
    wait_for(lambda: running.send_task, "the failed event handed over", timeout=10)
    wait_for(lambda: statuses(sessions)["evt_fine"][0] == "ignored", "the other event processed", timeout=10)
    assert running.send_task == [("payments.process_stripe_event", {"event_id": "evt_breaks"})]
    with sessions.begin() as session:
        status, error = session.execute(
            text("SELECT status, last_error FROM stripe_events WHERE event_id = 'evt_breaks'")).one()
    assert (status, error) == ("failed", "RuntimeError: stripe said no")
    # Both are timed as the task would have been, for the worker's /metrics.
    timed = {state: handled("payments.process_stripe_event", state) - timed_before[state] for state in timed_before}
    assert timed == {"SUCCESS": 1, "FAILURE": 1}


def handled(task: str, state: str) -> float:
    """How many runs `payments_task_duration_seconds` has counted for the task and state."""
    return metrics.HISTOGRAMS.get_sample_value(
        "payments_task_duration_seconds_count", {"task": task, "state": state}) or 0.0


def test_the_consumer_outlives_a_database_it_cannot_reach(
        settings: Settings, consumer: Any, caplog: pytest.LogCaptureFixture) -> None:
    running = consumer(database_url="postgresql://postgres@127.0.0.1:1/payments", inbox_poll_seconds=0.2)
    wait_for(lambda: sum("inbox consumer: error" in r.getMessage() for r in caplog.records) >= 2,
             "two failed tries to listen", timeout=20)
    assert running.thread is not None and running.thread.is_alive()


def test_the_webhook_on_postgresql_stores_and_answers_without_publishing(
        app_with, sessions, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import messages

    def no_publish(*_: Any, **__: Any) -> None:
        raise AssertionError("the webhook published on PostgreSQL")

    monkeypatch.setattr(messages, "send", no_publish)
    app = app_with(stripe_webhook_secret=SECRET)
    body = json.dumps(event("evt_no_publish")).encode()
    answer = app.test_client().post("/stripe/webhook", data=body, headers={
        "Stripe-Signature": sign_webhook(body, SECRET), "Content-Type": "application/json"})
    assert (answer.status_code, answer.get_json()) == (200, {"received": True, "duplicate": False})
    assert statuses(sessions) == {"evt_no_publish": ("received", 0)}


# A consumer in a process of its own whose handler blocks, so it can be killed mid-event.
HANGING_CONSUMER = """
import sys, threading
from shared import stripe_events
from shared.config import Settings
from worker.inbox import InboxConsumer

def hang(*_):
    print("handling", flush=True)
    threading.Event().wait()

stripe_events.HANDLERS["payment_intent.succeeded"] = hang
InboxConsumer(Settings(database_url=sys.argv[1], inbox_poll_seconds=0.2), None).run()
"""


def test_an_event_whose_consumer_was_killed_mid_event_is_redriven_and_processed(
        settings: Settings, sessions: sessionmaker[Session], consumer: Any, tmp_path: Path) -> None:
    store(settings, "evt_killed", notify=True)
    out = tmp_path / "consumer.out"
    with open(out, "wb") as stdout:
        process = subprocess.Popen([sys.executable, "-c", HANGING_CONSUMER, settings.database_url], stdout=stdout,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: b"handling" in out.read_bytes(), "the consumer in its handler", timeout=30)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert statuses(sessions) == {"evt_killed": ("processing", 1)}
    # The redrive's rule (scheduler/jobs.py redrive_inbox), with its timeout passed: received again.
    with sessions.begin() as session:
        assert inbox.stale(session, timedelta(seconds=0), settings) == ["evt_killed"]
    consumer(inbox_poll_seconds=0.3)
    wait_for(lambda: statuses(sessions)["evt_killed"] == ("ignored", 2), "the event processed again", timeout=20)


def all_ignored(found: dict[str, tuple[str, int]]) -> dict[str, tuple[str, int]] | None:
    return found if all(status == "ignored" for status, _ in found.values()) else None


def inbox_batch() -> int:
    from worker.inbox import BATCH

    return BATCH
