"""`/metrics` in Prometheus' text format: what an operator watches at 3 a.m. Every figure is
read from the database (and the broker's queue lengths and the refused webhook deliveries from
Redis) when scraped, so it is true across gunicorn processes with no counters kept in memory.
The webhook serves it on its internal listener only, reusing an answer for a few seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.models import (
    CardPayment,
    CardPaymentStatus,
    EventStatus,
    OutboxMessage,
    PaymentRequest,
    RequestStatus,
    StripeEvent,
    utcnow,
)


def render(session: Session, queue_depths: dict[str, int] | None, settings: Settings | None = None,
           rejected: dict[str, int] | None = None) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")

    events = dict(session.execute(select(StripeEvent.status, func.count()).group_by(StripeEvent.status)).all())
    metric("payments_inbox_events", "gauge", "Stripe events in the inbox by status",
           [({"status": s.value}, events.get(s.value, 0)) for s in EventStatus])
    oldest = session.scalar(
        select(func.min(StripeEvent.received_at)).where(
            StripeEvent.status.in_([EventStatus.RECEIVED.value, EventStatus.PROCESSING.value])
        )
    )
    metric("payments_inbox_lag_seconds", "gauge", "Age of the oldest event not yet processed",
           [({}, round((utcnow() - oldest).total_seconds(), 3) if oldest else 0.0)])
    outbox = dict(session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all())
    metric("payments_outbox_messages", "gauge", "Callbacks and e-mails by status (dead: needs an operator)",
           [({"status": s}, outbox.get(s, 0)) for s in ("pending", "sent", "dead")])
    cards = session.execute(
        select(CardPayment.kind, CardPayment.status, func.count()).group_by(CardPayment.kind, CardPayment.status)
    ).all()
    metric("payments_card_payments", "gauge", "Attempts to take card money by kind and result",
           [({"kind": k, "result": s}, n) for k, s, n in cards])
    metric("payments_card_payments_held", "gauge",
           "Card money Stripe took that did not match its attempt, held unbooked for an admin (alert on > 0)",
           [({}, sum(n for _, s, n in cards if s == CardPaymentStatus.HELD.value))])
    reqs = session.execute(
        select(PaymentRequest.kind, PaymentRequest.status, func.count())
        .group_by(PaymentRequest.kind, PaymentRequest.status)
    ).all()
    metric("payments_requests", "gauge", "Requests by kind and outcome", [({"kind": k, "status": s}, n) for k, s, n in reqs])
    _stuck_rows(session, settings or Settings(), metric)
    if rejected is not None:
        metric("payments_webhook_rejected_total", "counter",
               "Stripe webhook deliveries refused, by reason (bad_signature or stale_signature rising: a forger, "
               "a secret Stripe does not use, or a clock off)",
               [({"reason": reason}, n) for reason, n in sorted(rejected.items())])
    if queue_depths is not None:
        metric("payments_queue_depth", "gauge", "Messages waiting in each broker queue",
               [({"queue": q}, n) for q, n in sorted(queue_depths.items())])
    return "\n".join(lines) + "\n"


def _stuck_rows(session: Session, settings: Settings, metric: Callable[..., None]) -> None:
    """DESIGN invariant 12: what the healing jobs are working on, the tries they spent on it,
    and what they gave up on (ended `failed` after the last try)."""
    now = utcnow()
    redrive_cutoff = now - timedelta(seconds=settings.redrive_after_seconds)
    open_attempt = CardPayment.status.in_([CardPaymentStatus.PENDING.value, CardPaymentStatus.AWAITING_CARD.value])
    stuck = {
        "request": session.execute(
            select(func.count(), func.coalesce(func.sum(PaymentRequest.heal_tries), 0)).where(
                PaymentRequest.status == RequestStatus.QUEUED.value, PaymentRequest.updated_at < redrive_cutoff)
        ).one(),
        "card_attempt": session.execute(
            select(func.count(), func.coalesce(func.sum(CardPayment.heal_tries), 0)).where(
                open_attempt, CardPayment.updated_at < now - timedelta(seconds=settings.reconcile_after_seconds))
        ).one(),
        "inbox_event": session.execute(
            select(func.count(), func.coalesce(func.sum(StripeEvent.heal_tries), 0)).where(
                StripeEvent.status.in_([EventStatus.RECEIVED.value, EventStatus.PROCESSING.value,
                                        EventStatus.FAILED.value]),
                StripeEvent.attempts < settings.inbox_max_attempts, StripeEvent.updated_at < redrive_cutoff)
        ).one(),
    }
    gave_up = {
        "request": session.scalar(select(func.count()).where(
            PaymentRequest.status == RequestStatus.FAILED.value, PaymentRequest.heal_tries >= settings.heal_max_tries)),
        "card_attempt": session.scalar(select(func.count()).where(
            CardPayment.status == CardPaymentStatus.FAILED.value, CardPayment.heal_tries >= settings.heal_max_tries)),
        "inbox_event": session.scalar(select(func.count()).where(
            StripeEvent.status == EventStatus.FAILED.value, StripeEvent.attempts >= settings.inbox_max_attempts)),
    }
    metric("payments_stuck_rows", "gauge",
           "Rows a healing job is working on: requests queued past the redrive threshold, card attempts "
           "open past the reconcile threshold, Stripe events not processed past the redrive threshold",
           [({"kind": kind}, count) for kind, (count, _) in stuck.items()])
    metric("payments_stuck_row_tries", "gauge", "Healing tries spent so far on the stuck rows",
           [({"kind": kind}, tries) for kind, (_, tries) in stuck.items()])
    metric("payments_healing_gave_up_rows", "gauge",
           "Rows a healing job ended failed after their last try (an event: waits for an operator)",
           [({"kind": kind}, count or 0) for kind, count in gave_up.items()])
