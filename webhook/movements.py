"""Money movements over HTTP (CONTRACT): `POST /api/payments`, `/api/transfers` and
`/api/settlements` check every field (a 4xx names the bad one), store the request as `queued`,
enqueue its task and answer 202; `GET /api/payments/{request_id}` reads any request's outcome.

A request is stored before its task is sent, as the service's own signed message (the client
was authorised here; `shared.messages`). If the broker is down it stays `queued` and
`payments.redrive_requests` sends it later, so an accepted request is never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from kombu.exceptions import OperationalError as BrokerError

from shared import access, fields, messages, page_links, payments, refunds, requests, settlements, topups, transfers
from shared.client import QUEUE
from webhook import auth, context
from webhook.auth import action

log = logging.getLogger(__name__)

blueprint = Blueprint("movements", __name__)

@blueprint.post("/payments")
@action(access.PAYMENTS_CREATE)
def post_payment() -> ResponseReturnValue:
    return _accept(payments.parse, payments.record)


@blueprint.post("/transfers")
@action(access.TRANSFERS_CREATE)
def post_transfer() -> ResponseReturnValue:
    return _accept(transfers.parse, transfers.record)


@blueprint.post("/settlements")
@action(access.SETTLEMENTS_CREATE)
def post_settlement() -> ResponseReturnValue:
    return _accept(settlements.parse, settlements.record)


@blueprint.post("/refunds")
@action(access.REFUNDS_CREATE)
def post_refund() -> ResponseReturnValue:
    return _accept(refunds.parse, refunds.record)


@blueprint.post("/members/<member_id>/topups")
@action(access.TOPUPS_CREATE)
def post_topup(member_id: str) -> ResponseReturnValue:
    body = {**context.json_body(), "member_id": member_id}
    return _accept(topups.parse_topup, topups.record_topup, body)


@blueprint.get("/payments/<request_id>")
@action(access.REQUESTS_READ, in_view=True)
def get_request(request_id: str) -> ResponseReturnValue:
    with context.transaction() as session:
        row = requests.get(session, fields.identifier(request_id, "request_id"))
    access.authorise(auth.principal(), access.REQUESTS_READ, {"request_id": row.request_id, "client": row.client})
    return jsonify(page_links.with_checkout_url(context.settings(), requests.status_document(row)))


def _accept(
    parse: Callable[..., Any],
    record: Callable[..., tuple[requests.Request, bool]],
    body: dict[str, Any] | None = None,
) -> ResponseReturnValue:
    order = parse(context.json_body() if body is None else body, context.settings())
    with context.transaction() as session:
        row, created = record(session, order, client=auth.principal().name)
        document = page_links.with_checkout_url(context.settings(), requests.status_document(row))
        kind = row.kind
    if row.queued:
        enqueue(kind, order)
    return jsonify(document), 202 if created else 200


def enqueue(kind: str, order: Any) -> None:
    """Send a stored request's task, after commit; a broker that is down leaves it to the redrive."""
    try:
        messages.send(requests.TASK_FOR_KIND[kind], order.payload(), queue=QUEUE, settings=context.settings())
    except BrokerError:
        log.warning("request %s stored but not enqueued; it will be redriven", order.request_id)
