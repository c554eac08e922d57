"""The inbox of Stripe events (DESIGN invariants 7 and 8, dj-stripe's kept event model).

The webhook stores each verified event once, keyed by Stripe's event id, and commits before it
answers 200; processing happens in a worker. An event moves received -> processing ->
processed, ignored or failed, keeping its attempts and last error; a stored event can be
processed again at any time (`payments events replay`), since every handler is idempotent.

A processed or ignored event keeps Stripe's whole payload (card details, billing addresses,
e-mail addresses, client secrets) for `event_payload_retention_days`; then `prune_payloads`
keeps only its audit form: what the handlers read and what an auditor asks (ISSUE 12, item 7).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Connection, Table, bindparam, or_, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from shared import healing, messages
from shared.config import Settings
from shared.errors import InvalidInput, NotFound
from shared.models import EventStatus, StripeEvent, utcnow

log = logging.getLogger(__name__)

_TABLE = cast(Table, StripeEvent.__table__)
# SQLite: the statement built from the model. RETURNING tells a stored event from a duplicate:
# the driver's rowcount of an INSERT is not kept by SQLAlchemy 2.1 (it reads -1), so it cannot.
_NEW: dict[str, Any] = {name: bindparam(name) for name in ("event_id", "type", "payload", "status", "attempts", "received_at", "updated_at")}
_ACCEPT_SQLITE = (sqlite.insert(_TABLE).values(**_NEW).on_conflict_do_nothing(index_elements=["event_id"])
                  .returning(_TABLE.c.event_id))
# On PostgreSQL the webhook stores and answers; the workers' inbox consumers (`worker.inbox`)
# LISTEN on this channel and take the new row. The NOTIFY is in the INSERT's own statement, sent
# only for a row stored (not for a duplicate) and delivered at its commit.
CHANNEL = "payments_inbox"
# On PostgreSQL the statement is written out and the payload bound as JSON text (the body as
# Stripe sent it, when the caller has it): the same statement built from the model took a third
# of the webhook's Python time (py-spy under bench/webhook.py), in SQLAlchemy's compiled-statement
# handling and its JSON type serialising the event again.
_STORE = ("INSERT INTO stripe_events (event_id, type, payload, status, attempts, received_at, updated_at, heal_tries)"
          " VALUES (%(event_id)s, %(type)s, %(payload)s::json, %(status)s, 0, %(now)s, %(now)s, 0)"
          " ON CONFLICT (event_id) DO NOTHING RETURNING event_id")
_STORE_AND_NOTIFY = f"WITH stored AS ({_STORE}) SELECT event_id, pg_notify('{CHANNEL}', '') FROM stored"


# A failed event is redriven until it has been tried this often (each task run is one attempt);
# `PAYMENTS_INBOX_MAX_ATTEMPTS` sets it.
REDRIVE_FAILED_BELOW = Settings.inbox_max_attempts


@dataclass(frozen=True)
class Accepted:
    event_id: str
    duplicate: bool
    # Whether its INSERT NOTIFYed the inbox consumers (a new row on PostgreSQL): then nothing
    # needs publishing (`hand_to_workers`).
    notified: bool = False


def parse_event(body: bytes) -> dict[str, Any]:
    """The event object of a (verified) webhook body; errors name what is wrong."""
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput("body: not JSON", field="body") from None
    if not isinstance(event, dict) or event.get("object") not in (None, "event"):
        raise InvalidInput("body: not a Stripe event object", field="body")
    try:  # NaN, Infinity and 1e400 parse, but the JSON column refuses them (a 503)
        json.dumps(event, allow_nan=False)
    except (ValueError, RecursionError):
        raise InvalidInput("body: NaN or Infinity is not JSON", field="body") from None
    for key in ("id", "type"):
        if not isinstance(event.get(key), str) or not event[key] or len(event[key]) > 255:
            raise InvalidInput(f"{key}: missing or not a string", field=key)
        if any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in event[key]):
            # NUL and lone surrogates cannot be stored in a text column (a 503 or a 500).
            raise InvalidInput(f"{key}: contains NUL or an unpaired surrogate", field=key)
    if not isinstance(event.get("data"), dict) or not isinstance(event["data"].get("object"), dict):
        raise InvalidInput("data.object: missing", field="data")
    return event


def accept(
    db: Session | Connection, event: dict[str, Any], *, notify: bool = True, body: bytes | None = None
) -> Accepted:
    """Store the event unless it is already stored; one statement, no lock held afterwards (the
    webhook runs it alone, in `db.one_statement`). On PostgreSQL the same statement NOTIFYs the
    inbox consumers of a new row, heard at commit (`notify=False`: a lost NOTIFY, for tests).
    `body`, the event as it came (checked by `parse_event`), is stored as it is on PostgreSQL.
    After commit, `hand_to_workers` with what it returns."""
    now = utcnow()
    connection = db.connection() if isinstance(db, Session) else db
    if connection.dialect.name != "postgresql":
        result = connection.execute(_ACCEPT_SQLITE, {
            "event_id": event["id"], "type": event["type"], "payload": event, "status": EventStatus.RECEIVED.value,
            "attempts": 0, "received_at": now, "updated_at": now})
        return Accepted(event_id=event["id"], duplicate=result.first() is None)
    result = connection.exec_driver_sql(_STORE_AND_NOTIFY if notify else _STORE, {
        "event_id": event["id"], "type": event["type"], "payload": _json_text(event, body),
        "status": EventStatus.RECEIVED.value, "now": now})
    duplicate = result.first() is None
    return Accepted(event_id=event["id"], duplicate=duplicate, notified=notify and not duplicate)


def hand_to_workers(accepted: Accepted, settings: Settings) -> None:
    """After commit: a newly stored event reaches the workers. One whose INSERT NOTIFYed is
    taken by their inbox consumers (worker/inbox.py: store, answer). Elsewhere (SQLite, no
    LISTEN/NOTIFY) its task is enqueued; a broker that is down leaves it to the scheduler's
    redrive."""
    if accepted.duplicate or accepted.notified:
        return
    try:
        messages.send("payments.process_stripe_event", {"event_id": accepted.event_id}, queue="webhooks",
                      settings=settings)
    except BrokerError:
        log.warning("event %s stored but not enqueued; the scheduler will redrive it", accepted.event_id)


def _json_text(event: dict[str, Any], body: bytes | None) -> str:
    """The body as text (UTF-8, which `verify_webhook` requires; a byte-order mark dropped, as
    `json.loads` drops it), else the parsed event written out again."""
    return body.decode("utf-8-sig") if body is not None else json.dumps(event)


@dataclass(frozen=True)
class Taken:
    event_id: str
    payload: dict[str, Any]
    received_at: Any


def take(session: Session, limit: int) -> list[Taken]:
    """Claim up to `limit` events still `received`, oldest first, for processing here (one
    attempt each, as `claim`): the inbox consumer's batch. Rows another consumer or a task
    holds are skipped; a taken event is `processing`, so if its taker dies the redrive makes
    it `received` again after PAYMENTS_REDRIVE_AFTER_SECONDS."""
    due = (
        select(StripeEvent.event_id)
        .where(StripeEvent.status == EventStatus.RECEIVED.value)
        .order_by(StripeEvent.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(StripeEvent)
        .where(StripeEvent.event_id.in_(due.scalar_subquery()))
        .values(status=EventStatus.PROCESSING.value, attempts=StripeEvent.attempts + 1, updated_at=utcnow())
        .returning(StripeEvent.event_id, StripeEvent.payload, StripeEvent.received_at)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted((Taken(*row) for row in rows), key=lambda taken: taken.received_at)


def claim(session: Session, event_id: str) -> StripeEvent | None:
    """Take a stored event for processing (one attempt); None if it is done or being processed."""
    claimed = session.execute(
        update(StripeEvent)
        .where(
            StripeEvent.event_id == event_id,
            StripeEvent.status.in_([EventStatus.RECEIVED.value, EventStatus.FAILED.value]),
        )
        .values(status=EventStatus.PROCESSING.value, attempts=StripeEvent.attempts + 1, updated_at=utcnow())
        .returning(StripeEvent.event_id)
    ).scalar_one_or_none()
    if claimed is None:
        return None
    return session.get(StripeEvent, event_id, populate_existing=True)


def finish(session: Session, event_id: str, status: EventStatus, error: str | None = None) -> None:
    session.execute(
        update(StripeEvent)
        .where(StripeEvent.event_id == event_id)
        .values(status=status.value, last_error=error[:500] if error else None, updated_at=utcnow())
    )


def finish_many(session: Session, outcomes: list[tuple[str, EventStatus, str | None]]) -> None:
    """`finish` for many events (event id, status, error): one UPDATE per status and error."""
    groups: dict[tuple[EventStatus, str | None], list[str]] = {}
    for event_id, status, error in outcomes:
        groups.setdefault((status, error), []).append(event_id)
    now = utcnow()
    for (status, error), ids in groups.items():
        session.execute(
            update(StripeEvent)
            .where(StripeEvent.event_id.in_(ids))
            .values(status=status.value, last_error=error[:500] if error else None, updated_at=now)
            .execution_options(synchronize_session=False)
        )


def replay(session: Session, event_id: str) -> None:
    """Make a stored event processable again, whatever its state."""
    event = session.get(StripeEvent, event_id, with_for_update=True)
    if event is None:
        raise NotFound(f"event {event_id}: not in the inbox", field="event_id")
    event.status = EventStatus.RECEIVED.value
    event.updated_at = utcnow()
    event.heal_tries, event.next_heal_at = 0, None


def stale(session: Session, older_than: timedelta, settings: Settings | None = None) -> list[str]:
    """Events stuck `received` (their enqueue was lost), `processing` (their worker died) or
    `failed` (their task ran out of retries, say through a long Stripe outage) for longer than
    `older_than` and due; they are made `received` again, to be enqueued by the caller.

    Row by row (DESIGN invariant 12): at most `heal_batch`, longest due first, rows another
    redrive holds skipped; each redrive is counted (`heal_tries`) and the event is not redriven
    again before a backoff that doubles, so a thousand failing events do not starve a new one.
    An event tried `inbox_max_attempts` times is left `failed` for an operator (`payments
    events replay`, which makes it due at once); one whose worker died that often (`processing`)
    is made `failed` first."""
    settings = settings or Settings()
    now = utcnow()
    cutoff = now - older_than
    last = settings.inbox_max_attempts
    session.execute(
        update(StripeEvent)
        .where(StripeEvent.status == EventStatus.PROCESSING.value, StripeEvent.attempts >= last,
               StripeEvent.updated_at < cutoff)
        .values(status=EventStatus.FAILED.value, updated_at=now,
                last_error=f"its worker stopped while processing it, {last} times: given up")
        .execution_options(synchronize_session=False)
    )
    taken = session.execute(
        select(StripeEvent.event_id, StripeEvent.heal_tries)
        .where(
            or_(
                StripeEvent.status.in_([EventStatus.RECEIVED.value, EventStatus.PROCESSING.value]),
                (StripeEvent.status == EventStatus.FAILED.value) & (StripeEvent.attempts < last),
            ),
            StripeEvent.updated_at < cutoff,
            healing.is_due(StripeEvent.next_heal_at, now),
        )
        .order_by(healing.due_order(StripeEvent.next_heal_at, StripeEvent.updated_at), StripeEvent.event_id)
        .limit(settings.heal_batch)
        .with_for_update(skip_locked=True)
    ).all()
    by_tries: dict[int, list[str]] = {}
    for event_id, tries in taken:
        by_tries.setdefault(tries + 1, []).append(event_id)
    for tries, ids in by_tries.items():
        session.execute(
            update(StripeEvent)
            .where(StripeEvent.event_id.in_(ids))
            .values(status=EventStatus.RECEIVED.value, updated_at=now, heal_tries=tries,
                    next_heal_at=healing.next_try(tries, settings, now))
            .execution_options(synchronize_session=False)
        )
    return [event_id for event_id, _ in taken]


# What the handlers (shared.stripe_events) and an audit read from an event's object; the rest
# of Stripe's payload is dropped after the retention.
AUDIT_FIELDS = ("id", "object", "status", "amount", "amount_received", "amount_refunded", "currency", "customer",
                "payment_intent", "reason", "metadata")


def audit_form(event: dict[str, Any]) -> dict[str, Any]:
    """The event as kept after its retention: id, type, created and the object's identity,
    status, amounts, currency and metadata (`"pruned": true` marks it)."""
    obj = (event.get("data") or {}).get("object") or {}
    kept: dict[str, Any] = {}
    for key in AUDIT_FIELDS:
        value = obj.get(key)
        if isinstance(value, dict) and key != "metadata":
            value = value.get("id")  # an expanded object (a customer, say): its id only
        if key in obj:
            kept[key] = value
    return {"id": event.get("id"), "object": "event", "type": event.get("type"), "created": event.get("created"),
            "livemode": event.get("livemode"), "data": {"object": kept}, "pruned": True}


def prune_payloads(session: Session, settings: Settings, *, batch: int = 500) -> int:
    """Replace the payload of up to `batch` events processed or ignored more than the retention
    ago (and not pruned yet) by their audit form; rows another pruner holds are skipped."""
    cutoff = utcnow() - timedelta(days=settings.event_payload_retention_days)
    rows = session.execute(
        select(StripeEvent.event_id, StripeEvent.payload)
        .where(StripeEvent.status.in_([EventStatus.PROCESSED.value, EventStatus.IGNORED.value]),
               StripeEvent.updated_at < cutoff, StripeEvent.payload["pruned"].as_boolean().is_(None))
        .order_by(StripeEvent.updated_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    ).all()
    for event_id, payload in rows:
        # updated_at is left alone: it says when the event was processed.
        session.execute(update(StripeEvent).where(StripeEvent.event_id == event_id)
                        .values(payload=audit_form(payload)).execution_options(synchronize_session=False))
    return len(rows)
