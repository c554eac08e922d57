"""`POST /stripe/webhook`: verify, store, answer (DESIGN invariant 7).

The signature is checked against the raw body (HMAC only: the SDK's full event construction
costs more than the rest of the request). The event is stored in the inbox and committed
before the answer; a duplicate does nothing. On PostgreSQL the INSERT also NOTIFYs the
workers' inbox consumers (`worker.inbox`), which take new rows themselves (and poll, in case a
NOTIFY is lost): nothing is published. On SQLite (no LISTEN/NOTIFY) the event's task is
enqueued after the commit (`inbox.hand_to_workers`), through one broker connection kept per process
(`shared.messages.Publisher`); if the broker is down the answer is still 200, because the
stored event is redriven by the scheduler. A bad
signature or body gets 400 with nothing stored; a database that is down gets 503, so Stripe
retries. There is no unsigned path. Any of the configured secrets verifies a delivery (a
rotation), and every refused delivery is counted by reason (`shared.rejections`, in /metrics):
a body over 1 MiB is refused with 413 whether it comes with a Content-Length or chunked.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import RequestEntityTooLarge

from shared import inbox
from shared.db import one_statement
from shared.errors import PaymentsError, ServiceUnavailable
from shared.rejections import reason_for
from shared.stripe_gateway import verify_webhook
from webhook import context

blueprint = Blueprint("stripe", __name__)


@blueprint.post("/stripe/webhook")
def receive() -> ResponseReturnValue:
    settings = context.settings()
    try:
        if not settings.webhook_secrets:
            raise ServiceUnavailable("Stripe webhooks are not accepted: PAYMENTS_STRIPE_WEBHOOK_SECRET is not set")
        # Read through Flask's limited stream: over MAX_CONTENT_LENGTH, declared or chunked, is a 413.
        body = request.get_data(cache=False)
        verify_webhook(body, request.headers.get("Stripe-Signature", ""), secret=settings.webhook_secrets)
        event = inbox.parse_event(body)
    except (PaymentsError, RequestEntityTooLarge) as exc:
        context.rejections().count(reason_for(exc))
        raise
    with one_statement(context.engine()) as connection:  # committed before the answer
        accepted = inbox.accept(connection, event, body=body)
    inbox.hand_to_workers(accepted, settings)
    return jsonify({"received": True, "duplicate": accepted.duplicate})

