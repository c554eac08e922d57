"""`/metrics` in Prometheus' text format: what an operator watches at 3 a.m. Every figure is
read from the database (and the broker's queue lengths from Redis) when scraped, so it is
always true and needs no counters kept in memory across gunicorn processes."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import CardPayment, CardPaymentStatus, EventStatus, OutboxMessage, PaymentRequest, StripeEvent, utcnow


def render(session: Session, queue_depths: dict[str, int] | None) -> str:
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
    if queue_depths is not None:
        metric("payments_queue_depth", "gauge", "Messages waiting in each broker queue",
               [({"queue": q}, n) for q, n in sorted(queue_depths.items())])
    return "\n".join(lines) + "\n"
