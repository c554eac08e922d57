"""Broker and database outages during a webhook storm (fault suite, scenarios 3 and 4).

Each scenario runs the service's own processes (`payments webhook` under gunicorn, `payments
worker`, `payments beat`) against a private redis-server, and for the database outage also a
private PostgreSQL, both started here (tests/faults/services.py), so that stopping them leaves
the shared servers alone. Stripe's side is played by 32 concurrent senders delivering each of
400 real events 3 times in a seeded shuffle (the storm's `Workload`); once a quarter of the
deliveries are answered the service is stopped for 10 s while the senders keep going.

3. Redis stopped (and restarted empty, its queued tasks lost): the webhook answers every
   delivery 200, since it only stores the event (store, answer: it publishes nothing on
   PostgreSQL), and the worker's inbox consumer, which needs no broker, goes on processing
   events during the outage; after Redis returns, `payments beat` relays the callbacks, and the
   ledger is exactly the expected one.
4. PostgreSQL stopped: the webhook answers 503 and the senders retry as Stripe does; tasks
   cut off mid-way retry, events left `processing` are redriven, and after recovery every
   event is processed and booked exactly once.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import make_engine, make_sessions
from tests.e2e.conftest import WEBHOOK_SECRET
from tests.e2e.processes import private_redis, wait_for
from tests.faults.invariants import check_invariants
from tests.faults.scale import scaled
from tests.faults.services import Delivery, Stripe, private_postgres, stack
from tests.faults.test_storm import ROUTE_CODE, SEED, Workload, compare, mute_localstripe, read_ledger, settled, summary
from tests.stripe_fixture import reset_stripe

EVENTS = scaled(400, 100)
MEMBERS = 40
COPIES = 3
SENDERS = 32
OUTAGE_SECONDS = 10.0


def storm_with_outage(
    stripe_sender: Stripe, events: list[dict[str, Any]], *,
    stop_service: Callable[[], None], start_service: Callable[[], None],
) -> tuple[list[Delivery], float, float]:
    """Deliver the storm; once a quarter of it is answered, stop the service for
    OUTAGE_SECONDS while the senders go on. Returns the deliveries and the outage's bounds."""
    total = len(events) * COPIES
    with ThreadPoolExecutor(1) as background:
        storm = background.submit(stripe_sender.deliver_all, events, copies=COPIES, seed=SEED)
        wait_for(lambda: stripe_sender.answered >= total // 4 or storm.done(), "a quarter of the storm", 120)
        assert not storm.done(), "the storm was over before the outage began"
        try:
            stop_service()
            down = time.monotonic()
            time.sleep(OUTAGE_SECONDS)  # the outage itself; the senders keep sending meanwhile
        finally:
            start_service()
        up = time.monotonic()
        return storm.result(), down, up


def prepare(workload: Workload, sessions: sessionmaker[Session], engine: Engine, broker_url: str,
            stripe_api: str) -> list[dict[str, Any]]:
    workload.add_parties(sessions)
    workload.request(Settings(broker_url=broker_url))
    return workload.pay_checkouts(engine, stripe_api, timeout=120)


def reclaimed(engine: Engine) -> int:
    """Events claimed more than once (a try cut off by the outage, then redriven)."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM stripe_events WHERE attempts > 1")).scalar_one()


def processed_between(engine: Engine, start: float, end: float) -> int:
    """Events whose processing ended between two wall-clock times (seconds since the epoch)."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT count(*) FROM stripe_events WHERE status IN ('processed', 'ignored')"
            " AND updated_at BETWEEN to_timestamp(:start) AND to_timestamp(:end)"), {"start": start, "end": end}
        ).scalar_one()


# 3. Broker outage ------------------------------------------------------------------------------


def test_with_redis_down_for_10_s_the_webhook_answers_200_and_every_event_is_processed_after(
    engine: Engine, sessions: sessionmaker[Session], database_url: str, stripe_api: str, tmp_path: Path,
) -> None:
    reset_stripe(stripe_api)
    workload = Workload.plan(events=EVENTS, members=MEMBERS, seed=SEED, prefix="broker", route_code=ROUTE_CODE)
    with private_redis() as broker, stack(tmp_path, database_url=database_url, broker_url=broker.url,
                                          stripe_api=stripe_api, beat=True) as running:
        url = running.url
        mute_localstripe(stripe_api, url)
        events = prepare(workload, sessions, engine, broker.url, stripe_api)
        stripe_sender = Stripe(url, WEBHOOK_SECRET, senders=SENDERS)
        began = time.monotonic()
        wall = time.time() - began  # monotonic to wall-clock, for the inbox's timestamps
        deliveries, down, up = storm_with_outage(stripe_sender, events, stop_service=broker.stop,
                                                 start_service=broker.start)
        wait_for(settled(engine, EVENTS), "every event to be processed and every callback sent after Redis returned",
                 120)
        done = time.monotonic()
        not_enqueued = (tmp_path / "webhook.log").read_text().count("stored but not enqueued")
        processed_during = processed_between(engine, wall + down, wall + up)

    lost, double, differ = compare(workload.expected(), read_ledger(engine))
    during = [d for d in deliveries if down <= d.answered_at <= up]
    print("\n" + summary("broker outage", workload, deliveries, lost, double, done - began,
                         f"; Redis down {up - down:.1f} s: {len(during)} deliveries answered 200 meanwhile, "
                         f"{not_enqueued} events stored but not enqueued, {processed_during} processed meanwhile, "
                         f"{reclaimed(engine)} re-claimed, "
                         f"settled {done - up:.1f} s after Redis returned; restarted {dict(running.restarts)}"))
    tally = check_invariants(engine, stripe_base=stripe_api)

    assert collections.Counter(d.status for d in deliveries) == {200: EVENTS * COPIES}
    assert stripe_sender.statuses == {200: EVENTS * COPIES}  # not one try refused
    assert during, "no delivery was answered while Redis was down"
    assert not_enqueued == 0, "the webhook tried to publish on PostgreSQL"
    assert processed_during > 0, "no event was processed while Redis was down: the scenario proved nothing"
    assert sum(d.duplicate is False for d in deliveries) == EVENTS
    assert (lost, double, differ) == (0, 0, {})
    assert tally["charges"] == tally["events"] == EVENTS


# 4. Database outage ----------------------------------------------------------------------------


def test_with_postgres_down_for_10_s_the_webhook_answers_503_and_every_event_is_booked_once_after(
    stripe_api: str, tmp_path: Path,
) -> None:
    reset_stripe(stripe_api)
    workload = Workload.plan(events=EVENTS, members=MEMBERS, seed=SEED + 1, prefix="db", route_code=ROUTE_CODE)
    with private_redis() as broker, private_postgres() as database:
        engine = make_engine(database.url)
        try:
            with stack(tmp_path, database_url=database.url, broker_url=broker.url, stripe_api=stripe_api,
                       beat=True) as running:
                url = running.url
                mute_localstripe(stripe_api, url)
                events = prepare(workload, make_sessions(engine), engine, broker.url, stripe_api)
                stripe_sender = Stripe(url, WEBHOOK_SECRET, senders=SENDERS)
                began = time.monotonic()
                deliveries, down, up = storm_with_outage(stripe_sender, events, stop_service=database.stop,
                                                         start_service=database.start)
                wait_for(settled(engine, EVENTS), "every event to be processed after PostgreSQL returned", 120)
                done = time.monotonic()
            # Celery logs each autoretry of a task that met the dead database.
            retries = (tmp_path / "worker.log").read_text().count("retry: Retry in")

            lost, double, differ = compare(workload.expected(), read_ledger(engine))
            with engine.connect() as conn:
                stored = conn.execute(text("SELECT count(*) FROM stripe_events")).scalar_one()
            print("\n" + summary(
                "database outage", workload, deliveries, lost, double, done - began,
                f"; PostgreSQL down {up - down:.1f} s: {stripe_sender.statuses[503]} tries answered 503, "
                f"{stripe_sender.statuses[0]} unanswered, {sum(d.refused > 0 for d in deliveries)} deliveries "
                f"retried; {retries} task retries, {reclaimed(engine)} events re-claimed, settled "
                f"{done - up:.1f} s after PostgreSQL returned; restarted {dict(running.restarts)}"))
            tally = check_invariants(engine, stripe_base=stripe_api)
        finally:
            engine.dispose()

    refused = sum(d.refused for d in deliveries)

    assert collections.Counter(d.status for d in deliveries) == {200: EVENTS * COPIES}  # all in the end
    assert set(stripe_sender.statuses) <= {200, 503, 0}, stripe_sender.statuses  # never a 500
    assert stripe_sender.statuses[503] > 0 and refused > 0, "no delivery met the outage: it proved nothing"
    assert retries > 0, "no task met the outage"
    assert stored == EVENTS  # each event stored once, however often it was retried
    assert (lost, double, differ) == (0, 0, {})
    assert tally["charges"] == tally["events"] == EVENTS
