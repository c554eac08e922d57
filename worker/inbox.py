"""The inbox consumer (DESIGN invariant 7, "store, answer"): on PostgreSQL the webhook stores a
Stripe event and answers, publishing nothing; its INSERT NOTIFYs `shared.inbox.CHANNEL`. Each
worker runs one consumer, a thread of its main process: it LISTENs, and on a NOTIFY, or every
PAYMENTS_INBOX_POLL_SECONDS without one (a NOTIFY lost, the consumer down when it was sent,
events made `received` again by the redrive), takes the `received` events in batches
(`shared.inbox.take`: FOR UPDATE SKIP LOCKED, so any number of workers share them) and
processes each as `payments.process_stripe_event` would, without a task message per event.

An event whose handler fails is `failed` and handed to `payments.process_stripe_event`, which
retries it with backoff; an event taken by a consumer that dies (kill -9) stays `processing`
and is redriven by `payments.redrive_inbox` after PAYMENTS_REDRIVE_AFTER_SECONDS. So an answered
event is never lost. SQLite has no LISTEN/NOTIFY: there the webhook still enqueues each event,
and no consumer runs. A worker whose queues leave out `webhooks` runs none either.

The consumer has its own engine, Stripe client and LISTEN connection, made in its thread: the
pool processes are forked from this process and must not inherit its connections.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
from celery import signals
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared import inbox, metrics, stripe_events
from shared.config import Settings
from shared.db import make_engine, make_sessions, normalise_url
from shared.stripe_gateway import StripeGateway

log = logging.getLogger(__name__)

# The consumer is this queue's work: it runs in the workers that consume it.
WEBHOOKS_QUEUE = "webhooks"
# The task an event's processing is timed as, and handed to when it fails.
EVENT_TASK = "payments.process_stripe_event"
# Events taken per transaction: a consumer killed mid-batch leaves at most this many for the redrive.
BATCH = 50
# After an error (the database away, say): wait this long before listening again.
RETRY_SECONDS = 1.0
# How soon a waiting consumer sees `stop`.
STOP_CHECK_SECONDS = 0.5


class InboxConsumer:
    """Takes and processes `received` events until stopped (`start`, `stop`)."""

    def __init__(self, settings: Settings, send_task: Any) -> None:
        self.settings = settings
        self.send_task = send_task  # hands a failed event to its task, which retries with backoff
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.sessions: sessionmaker[Session] | None = None
        self.gateway: StripeGateway | None = None
        self.looks = 0  # drains done: once per NOTIFY or poll (for tests and logs)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="inbox-consumer", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        # No pre-ping (a round trip per transaction, as in the pool processes): after the
        # database comes back, the first `take` on a lost connection fails having taken nothing,
        # and the consumer listens again a second later on a fresh one.
        engine = make_engine(self.settings.database_url, pool_size=1, max_overflow=1, pool_pre_ping=False)
        self.sessions = make_sessions(engine)
        self.gateway = StripeGateway(self.settings)
        log.info("inbox consumer started: LISTEN %s, polling every %.1f s", inbox.CHANNEL,
                 self.settings.inbox_poll_seconds)
        try:
            while not self.stopping.is_set():
                try:
                    self.listen()
                except Exception:
                    log.exception("inbox consumer: error; listening again in %.0f s", RETRY_SECONDS)
                    self.stopping.wait(RETRY_SECONDS)
        finally:
            engine.dispose()
            log.info("inbox consumer stopped")

    def listen(self) -> None:
        """LISTEN, then process what is there, and again at each NOTIFY or poll."""
        with psycopg.connect(_libpq_url(self.settings.database_url), autocommit=True) as connection:
            connection.execute(f"LISTEN {inbox.CHANNEL}")
            while not self.stopping.is_set():
                self.drain()
                self.looks += 1
                self.wait(connection)

    def wait(self, connection: psycopg.Connection) -> None:
        """Until a NOTIFY (those that came during the drain are waiting already, and are read
        together: one drain takes all their rows), the poll interval, or `stop`. Under load the
        batches grow with the rate: each drain takes what arrived during the one before."""
        deadline = time.monotonic() + self.settings.inbox_poll_seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            heard = list(connection.notifies(timeout=min(left, STOP_CHECK_SECONDS), stop_after=1))
            if heard:
                return

    def drain(self) -> int:
        """Process `received` events, a batch at a time, until none is left; how many."""
        assert self.sessions is not None
        done = 0
        while not self.stopping.is_set():
            with self.sessions.begin() as session:
                taken = inbox.take(session, BATCH)
            self.process(taken)
            done += len(taken)
            if len(taken) < BATCH:
                break
        return done

    def process(self, taken: list[inbox.Taken]) -> None:
        """Each event's handler (its own transactions), then the outcomes recorded together in
        one transaction, then their effects carried out; what `payments.process_stripe_event`
        does per event. An event recorded as `processing` after a crash here is handled again
        later: handlers are idempotent (DESIGN invariant 8)."""
        from worker.tasks import carry_out

        assert self.sessions is not None and self.gateway is not None
        outcomes: list[tuple[inbox.Taken, stripe_events.Outcome]] = []
        for event in taken:
            started = time.perf_counter()
            try:
                outcomes.append((event, stripe_events.run_handler(self.sessions, self.gateway, self.settings,
                                                                  event.payload)))
            except Exception as exc:
                _observe(started, "FAILURE")
                self.hand_over(event.event_id, exc)
            else:
                _observe(started, "SUCCESS")
        if not outcomes:
            return
        with self.sessions.begin() as session:
            inbox.finish_many(session, [(event.event_id, outcome.status, outcome.error) for event, outcome in outcomes])
        for event, outcome in outcomes:
            stripe_events.observe_delay(event.received_at, outcome.status)
            try:
                carry_out(outcome.effects, self.sessions, self.gateway)
            except Exception:  # as after a task's commit: the reconciler and the relay finish them
                log.exception("event %s: its effects were not all carried out", event.event_id)

    def hand_over(self, event_id: str, exc: Exception) -> None:
        """A failed event: recorded `failed`, then sent to its task, which retries it with backoff
        (if the recording or the send fails, the redrive sends it later)."""
        log.warning("event %s failed in the inbox consumer (%s: %s); handed to its task", event_id,
                    type(exc).__name__, exc)
        try:
            stripe_events.record_failure(self.sessions, event_id, exc)  # type: ignore[arg-type]
            self.send_task(EVENT_TASK, kwargs={"event_id": event_id})
        except Exception:
            log.warning("event %s not handed to its task; the redrive will send it", event_id)


def _observe(started: float, state: str) -> None:
    """An event's handler timed as the task that would have run it, in
    `payments_task_duration_seconds` (this process's histograms; the worker's /metrics adds
    them to the pool processes')."""
    metrics.TASK_SECONDS.labels(EVENT_TASK, state).observe(time.perf_counter() - started)


def _libpq_url(url: str) -> str:
    """The database URL as psycopg takes it (no SQLAlchemy driver name)."""
    return make_url(normalise_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


_consumer: InboxConsumer | None = None


@signals.worker_ready.connect
def _start(sender: Any = None, **_: object) -> None:
    """A worker on PostgreSQL that consumes the `webhooks` queue (every worker, unless its
    queues were chosen) runs a consumer, in its main process, once its pool is up."""
    global _consumer
    from worker.app import app, settings

    config = settings()
    if make_url(normalise_url(config.database_url)).get_backend_name() != "postgresql":
        return
    if WEBHOOKS_QUEUE not in app.amqp.queues.consume_from:
        return
    _consumer = InboxConsumer(config, app.send_task)
    _consumer.start()


@signals.worker_shutdown.connect
def _stop(**_: object) -> None:
    if _consumer is not None:
        _consumer.stop()
