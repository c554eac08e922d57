"""`/metrics` in Prometheus' text format, made by prometheus-client: what an operator watches
at 3 a.m.

Two kinds of figures. The money-level ones (`figures`) are read from the database (and the
broker's queue lengths and the refused webhook deliveries from Redis) when scraped, so they are
true across gunicorn processes with no counters kept in memory; they are metric families handed
to the registry by a collector (`Families`). The latencies are histograms observed where the work
happens: HTTP requests in the webhook's processes, tasks in the worker's pool processes. Each
process observes into its own copy; with several processes (gunicorn workers, the prefork pool)
prometheus-client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set by `payments webhook` and
`payments worker` before prometheus-client is imported: `payments_cli._multiprocess_metrics`)
adds them up at scrape time.
The webhook serves it on its internal listener only; the worker on its own internal address."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
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

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# This process's histograms (a registry of their own: no process or GC metrics from the
# library's default one, which multiprocess mode could not add up anyway).
HISTOGRAMS = CollectorRegistry()
# Buckets from 5 ms (a read) to 2 min (past the longest task time limit, 90 s, so every task
# that ends has a finite bucket).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TASK_SECONDS = Histogram(
    "payments_task_duration_seconds",
    "Time a worker spent running each task, by task name and final state (SUCCESS, FAILURE, RETRY...)",
    ["task", "state"], buckets=_BUCKETS, registry=HISTOGRAMS)
HTTP_SECONDS = Histogram(
    "payments_http_request_duration_seconds",
    "Time the webhook took to answer each request on the public port (API, Stripe webhook, pages), "
    "by method, route pattern and status, up to the first byte of the answer",
    ["method", "route", "status"], buckets=_BUCKETS, registry=HISTOGRAMS)
INBOX_DELAY_SECONDS = Histogram(
    "payments_inbox_delay_seconds",
    "Time from a Stripe event's arrival to the end of its processing, by outcome (processed or ignored)",
    ["outcome"], buckets=_BUCKETS, registry=HISTOGRAMS)


def histograms() -> Collector:
    """This process's histograms, or every process's in multiprocess mode."""
    path = os.environ.get(MULTIPROCESS_VARIABLE)
    return MultiProcessCollector(None, path) if path else HISTOGRAMS


class Families(Collector):
    """Metric families computed elsewhere (at scrape time, or a cached copy), for a registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def serve(host: str, port: int) -> None:
    """The worker's `/metrics` (its tasks' and events' timings), on a thread of this process:
    `start_http_server` answers any path with the histograms of every pool process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(histograms())
    start_http_server(port, host, registry=registry)


def exposition(*collectors: Collector) -> bytes:
    """The Prometheus text of these collectors (`generate_latest`)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def figures(session: Session, queue_depths: dict[str, int] | None, settings: Settings | None = None,
            rejected: dict[str, int] | None = None) -> list[Metric]:
    """The money-level figures, read now: the inbox, the outbox, card payments, requests, what
    the healing jobs are stuck on, refused webhook deliveries and the broker's queues."""
    families: list[Metric] = []

    def gauge(name: str, help_text: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> None:
        family = GaugeMetricFamily(name, help_text, labels=labels)
        for values, value in samples:
            family.add_metric(values, value)
        families.append(family)

    events = dict(session.execute(select(StripeEvent.status, func.count()).group_by(StripeEvent.status)).all())
    gauge("payments_inbox_events", "Stripe events in the inbox by status", ["status"],
          [([s.value], events.get(s.value, 0)) for s in EventStatus])
    oldest = session.scalar(
        select(func.min(StripeEvent.received_at)).where(
            StripeEvent.status.in_([EventStatus.RECEIVED.value, EventStatus.PROCESSING.value])
        )
    )
    gauge("payments_inbox_lag_seconds", "Age of the oldest event not yet processed", [],
          [([], round((utcnow() - oldest).total_seconds(), 3) if oldest else 0.0)])
    outbox = dict(session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all())
    gauge("payments_outbox_messages", "Callbacks and e-mails by status (dead: needs an operator)", ["status"],
          [([s], outbox.get(s, 0)) for s in ("pending", "sent", "dead")])
    cards = session.execute(
        select(CardPayment.kind, CardPayment.status, func.count()).group_by(CardPayment.kind, CardPayment.status)
    ).all()
    gauge("payments_card_payments", "Attempts to take card money by kind and result", ["kind", "result"],
          [([k, s], n) for k, s, n in cards])
    gauge("payments_card_payments_held",
          "Card money Stripe took that did not match its attempt, held unbooked for an admin (alert on > 0)", [],
          [([], sum(n for _, s, n in cards if s == CardPaymentStatus.HELD.value))])
    reqs = session.execute(
        select(PaymentRequest.kind, PaymentRequest.status, func.count())
        .group_by(PaymentRequest.kind, PaymentRequest.status)
    ).all()
    gauge("payments_requests", "Requests by kind and outcome", ["kind", "status"], [([k, s], n) for k, s, n in reqs])
    _stuck_rows(session, settings or Settings(), gauge)
    if rejected is not None:
        # A counter kept in Redis (shared.rejections), so it is handed over as a family too.
        counter = CounterMetricFamily(
            "payments_webhook_rejected",
            "Stripe webhook deliveries refused, by reason (bad_signature or stale_signature rising: a forger, "
            "a secret Stripe does not use, or a clock off)", labels=["reason"])
        for reason, n in sorted(rejected.items()):
            counter.add_metric([reason], n)
        families.append(counter)
    if queue_depths is not None:
        gauge("payments_queue_depth", "Messages waiting in each broker queue", ["queue"],
              [([q], n) for q, n in sorted(queue_depths.items())])
    return families


def _stuck_rows(session: Session, settings: Settings, gauge: Callable[..., None]) -> None:
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
    gauge("payments_stuck_rows",
          "Rows a healing job is working on: requests queued past the redrive threshold, card attempts "
          "open past the reconcile threshold, Stripe events not processed past the redrive threshold",
          ["kind"], [([kind], count) for kind, (count, _) in stuck.items()])
    gauge("payments_stuck_row_tries", "Healing tries spent so far on the stuck rows",
          ["kind"], [([kind], tries) for kind, (_, tries) in stuck.items()])
    gauge("payments_healing_gave_up_rows",
          "Rows a healing job ended failed after their last try (an event: waits for an operator)",
          ["kind"], [([kind], count or 0) for kind, count in gave_up.items()])
