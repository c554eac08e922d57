"""Processing Stripe events from the inbox (DESIGN invariant 8; SPEC 3, 4 and 5).

One plain dict maps event type to handler; unknown types are recorded as ignored. Handlers
never trust the order events arrive in: a PaymentIntent event only names the PaymentIntent,
whose current state is then fetched from Stripe and booked as `shared.charges.settle_intent`
would, once per attempt. So the same event ten times, a failure after a success, or a second
PaymentIntent for one checkout all book exactly what Stripe says happened, once; money whose
amount received or currency differs from the attempt is held, not booked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared import charges, inbox, metrics, topups
from shared.config import Settings
from shared.models import EventStatus, utcnow
from shared.stripe_gateway import StripeGateway

Handler = Callable[[sessionmaker[Session], StripeGateway, Settings, dict[str, Any]], "charges.Effects | None"]


def on_payment_intent(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, event: dict[str, Any]
) -> charges.Effects | None:
    intent = event["data"]["object"]
    with sessions.begin() as session:
        attempt = topups.by_payment_intent(session, intent["id"], intent.get("metadata"))
        attempt_id = attempt.id if attempt is not None else None
    if attempt_id is None:
        return None  # not one of ours
    return charges.settle_intent(sessions, settings, attempt_id, gateway.retrieve_payment_intent(intent["id"]))


def on_card_saved(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, event: dict[str, Any]
) -> charges.Effects | None:
    obj = event["data"]["object"]
    customer = obj.get("customer")
    if not isinstance(customer, str):
        return None
    if event["type"] == "setup_intent.succeeded":
        return charges.card_saved(sessions, gateway, settings, customer_id=customer, setup_intent_id=obj["id"],
                                  event_id=event["id"])
    return charges.card_saved(sessions, gateway, settings, customer_id=customer, payment_method_id=obj["id"],
                              event_id=event["id"])


def on_charge_report(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, event: dict[str, Any]
) -> charges.Effects | None:
    """Refunds and disputes made outside the service are recorded against the card payment."""
    charge = event["data"]["object"]
    intent_id = charge.get("payment_intent")
    if not isinstance(intent_id, str):
        return None
    with sessions.begin() as session:
        attempt = topups.by_payment_intent(session, intent_id, None)
        if attempt is None:
            return None
        note = {"event_id": event["id"], "type": event["type"], "at": utcnow().isoformat(),
                "amount_refunded": charge.get("amount_refunded"), "amount": charge.get("amount"),
                "reason": charge.get("reason"), "status": charge.get("status")}
        attempt.stripe_notes = [*(attempt.stripe_notes or []), note]
    return charges.Effects()


HANDLERS: dict[str, Handler] = {
    "payment_intent.succeeded": on_payment_intent,
    "payment_intent.payment_failed": on_payment_intent,
    "setup_intent.succeeded": on_card_saved,
    "payment_method.attached": on_card_saved,
    "charge.refunded": on_charge_report,
    "charge.dispute.created": on_charge_report,
}


def process(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, event_id: str
) -> tuple[str, charges.Effects]:
    """Claim the stored event, run its handler, and record the outcome."""
    with sessions.begin() as session:
        event = inbox.claim(session, event_id)
        payload = event.payload if event is not None else None
        received_at = event.received_at if event is not None else None
    if payload is None:
        return "skipped", charges.Effects()
    return handle(sessions, gateway, settings, event_id, payload, received_at)


@dataclass(frozen=True)
class Outcome:
    status: EventStatus
    error: str | None
    effects: charges.Effects


def run_handler(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, payload: dict[str, Any],
) -> Outcome:
    """What the event's handler did (its own transactions committed), not recorded yet; raises
    what the handler raises."""
    handler = HANDLERS.get(payload["type"])
    if handler is None:
        return Outcome(EventStatus.IGNORED, f"no handler for {payload['type']}", charges.Effects())
    effects = handler(sessions, gateway, settings, payload)
    if effects is None:
        return Outcome(EventStatus.IGNORED, "not a payment of ours", charges.Effects())
    return Outcome(EventStatus.PROCESSED, None, effects)


def handle(
    sessions: sessionmaker[Session], gateway: StripeGateway, settings: Settings, event_id: str,
    payload: dict[str, Any], received_at: datetime | None,
) -> tuple[str, charges.Effects]:
    """Run the handler of an event claimed for processing, and record the outcome (`failed`
    with the error when the handler raises, which is raised again)."""
    try:
        outcome = run_handler(sessions, gateway, settings, payload)
    except Exception as exc:
        record_failure(sessions, event_id, exc)
        raise
    with sessions.begin() as session:
        inbox.finish(session, event_id, outcome.status, outcome.error)
    observe_delay(received_at, outcome.status)
    return outcome.status.value, outcome.effects


def record_failure(sessions: sessionmaker[Session], event_id: str, exc: Exception) -> None:
    with sessions.begin() as session:
        inbox.finish(session, event_id, EventStatus.FAILED, f"{type(exc).__name__}: {exc}")


def observe_delay(received_at: datetime | None, outcome: EventStatus) -> None:
    """Arrival to done, for `payments_inbox_delay_seconds` (the worker's /metrics)."""
    if received_at is not None:
        metrics.INBOX_DELAY_SECONDS.labels(outcome.value).observe(max(0.0, (utcnow() - received_at).total_seconds()))
