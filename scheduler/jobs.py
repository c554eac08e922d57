"""The periodic jobs (CONTRACT names), each a thin task calling `shared`; beat sends them on
the schedule in `scheduler.schedule`, and each is safe to send by hand or twice at once:
attempts and events are keyed, and rows are claimed before they are worked on. The healing
jobs (redrives, reconcile, expiry) treat each row on its own (`shared.healing`)."""

from __future__ import annotations

import time
from datetime import timedelta

from kombu.exceptions import BatchPublishError
from kombu.exceptions import OperationalError as BrokerError

from shared import charges, healing, inbox, outbox, refunds, requests, topups
from shared.models import utcnow
from worker.app import app, gateway, sessions, settings
from worker.tasks import RETRY, carry_out, dispatch


# Members per `payments.auto_topups` message: Celery's cost per message (about 0.17 ms of CPU to
# build and publish one) is paid once per chunk instead of once per member.
SWEEP_CHUNK = 100


@app.task(name="payments.sweep_auto_topups", soft_time_limit=120, time_limit=150, **RETRY)
def sweep_auto_topups() -> int:
    """SPEC 4.4: one auto top-up per `on` member below the low limit, keyed by member and sweep
    window, so two sweeps in one window (or two beats) charge a member once. The due members
    go out in chunks of `SWEEP_CHUNK`, one `payments.auto_topups` task each."""
    config = settings()
    window = int(utcnow().timestamp() // config.sweep_window_seconds)
    with sessions().begin() as session:
        due = topups.members_due_for_topup(session, config)
    members = [{"member_id": member_id, "key": f"sweep:{member_id}:{window}"} for member_id in due]
    # One broker connection for the whole sweep, its messages pipelined (Redis: one round trip per
    # 1,000 messages; other brokers publish one by one), and the queue declared once rather than
    # checked again for each message (Celery's default). A failed flush leaves unknown which
    # chunks went: the sweep is retried, and the keys make sending them again safe.
    queue = app.amqp.queues[app.conf.task_routes["payments.auto_topups"]["queue"]]
    try:
        with app.producer_or_acquire() as producer, producer.batch():
            producer.maybe_declare(queue)
            for first in range(0, len(members), SWEEP_CHUNK):
                app.send_task("payments.auto_topups", kwargs={"members": members[first:first + SWEEP_CHUNK]},
                              producer=producer, declare=[])
    except BatchPublishError as exc:
        raise BrokerError(str(exc)) from exc
    return len(due)


@app.task(name="payments.redrive_inbox", soft_time_limit=60, time_limit=90, **RETRY)
def redrive_inbox() -> int:
    """Stripe events stuck `received`, `processing` or `failed` past the timeout are enqueued
    again, each on its own and backed off (`shared.inbox.stale`)."""
    config = settings()
    with sessions().begin() as session:
        stale = inbox.stale(session, timedelta(seconds=config.redrive_after_seconds), config)
    return healing.each(stale, lambda event_id: app.send_task("payments.process_stripe_event",
                                                              kwargs={"event_id": event_id}),
                        _counted, what="redrive event", budget_seconds=45)


@app.task(name="payments.relay_outbox", soft_time_limit=60, time_limit=90, **RETRY)
def relay_outbox() -> int:
    """Send what is pending and due, in case the immediate send was lost."""
    with sessions().begin() as session:
        due = outbox.due(session)
    dispatch(due)
    return len(due)


@app.task(name="payments.redrive_requests", soft_time_limit=75, time_limit=105, **RETRY)
def redrive_requests() -> int:
    """Send again the task of each request still `queued` well after it arrived, backed off;
    one past its last try fails with its callback (`shared.requests.take_stale`). First, the
    payments waiting for another top-up longer than PAYMENTS_TOPUP_WAIT_SECONDS (or whose
    top-up ended unseen) are decided without it (`shared.charges.end_waits`): this job runs
    every minute, often enough for a wait of two."""
    config = settings()
    carry_out(charges.end_waits(sessions(), gateway(), config, budget_seconds=10))
    with sessions().begin() as session:
        stale = requests.take_stale(session, config, timedelta(seconds=config.redrive_after_seconds))
        given_up = session.info.pop("outbox", [])
    dispatch(given_up)
    return healing.each(stale, lambda redrive: app.send_task(redrive.task, kwargs=redrive.payload),
                        _counted, what="redrive request", budget_seconds=45)


@app.task(name="payments.reconcile", soft_time_limit=300, time_limit=330, **RETRY)
def reconcile() -> str:
    """Card refunds booked but not sent are sent, then card payments still open after a while
    are finished from Stripe's state, each by its kind; every row on its own
    (`shared.refunds.reconcile`, `shared.charges.reconcile`), within the task's time limit."""
    config = settings()
    older_than = timedelta(seconds=config.reconcile_after_seconds)
    sent, unsent = refunds.reconcile(sessions(), gateway(), config, older_than, budget_seconds=100, dispatch=dispatch)
    taken, effects = charges.reconcile(sessions(), gateway(), config, older_than, budget_seconds=150)
    carry_out(effects)
    return f"{taken} card attempts reconciled, {sent} card refunds sent, {unsent} not sent"


@app.task(name="payments.expire_checkouts", soft_time_limit=300, time_limit=330, **RETRY)
def expire_checkouts() -> int:
    """Checkouts unpaid after 24 h are cancelled at Stripe, then fail with their callback."""
    effects = charges.expire_checkouts(sessions(), gateway(), settings(), budget_seconds=240)
    carry_out(effects)
    return len(effects.outbox)


@app.task(name="payments.prune_event_payloads", soft_time_limit=300, time_limit=330, **RETRY)
def prune_event_payloads() -> int:
    """Stripe events processed or ignored more than PAYMENTS_EVENT_PAYLOAD_RETENTION_DAYS ago
    keep only their audit form (`shared.inbox.prune_payloads`): a batch per transaction, so
    no lock is held long, until none is left or the time budget is spent."""
    config = settings()
    pruned, started = 0, time.monotonic()
    while time.monotonic() - started < 240:
        with sessions().begin() as session:
            done = inbox.prune_payloads(session, config)
        pruned += done
        if done == 0:
            break
    return pruned


def _counted(row: object, exc: Exception) -> None:
    """A redrive that could not be sent: it was counted and backed off when it was taken."""
