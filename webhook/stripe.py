"""`POST /stripe/webhook`: verify, store, enqueue, answer (DESIGN invariant 7).

The signature is checked against the raw body (HMAC only: the SDK's full event construction
costs more than the rest of the request). The event is stored in the inbox and committed
before the answer; a duplicate does nothing. Then its processing is enqueued: if the broker is
down the answer is still 200, because the stored event is redriven by the scheduler. A bad
signature or body gets 400 with nothing stored; a database that is down gets 503, so Stripe
retries. There is no unsigned path.
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from kombu.exceptions import OperationalError as BrokerError

from shared import client, inbox
from shared.db import one_statement
from shared.errors import ServiceUnavailable
from shared.stripe_gateway import verify_webhook
from webhook import context

log = logging.getLogger(__name__)

blueprint = Blueprint("stripe", __name__)


@blueprint.post("/stripe/webhook")
def receive() -> ResponseReturnValue:
    settings = context.settings()
    if not settings.stripe_webhook_secret:
        raise ServiceUnavailable("Stripe webhooks are not accepted: PAYMENTS_STRIPE_WEBHOOK_SECRET is not set")
    body = request.get_data(cache=False)
    verify_webhook(body, request.headers.get("Stripe-Signature", ""), secret=settings.stripe_webhook_secret)
    event = inbox.parse_event(body)
    with one_statement(context.engine()) as connection:  # committed before the answer
        accepted = inbox.accept(connection, event)
    if not accepted.duplicate:
        try:
            client.send("payments.process_stripe_event", {"event_id": accepted.event_id}, queue="webhooks",
                        settings=settings)
        except BrokerError:
            log.warning("event %s stored but not enqueued; the scheduler will redrive it", accepted.event_id)
    return jsonify({"received": True, "duplicate": accepted.duplicate})
