"""IOUs over HTTP (CONTRACT "IOUs"; the rules are `shared.ious`): a club raises, lists and
cancels its IOUs (`clubs` for that organisation), a member's portal lists and pays them
(`payments`). Paying answers 202 like `POST /api/payments`: the IOU's payment is stored, then
decided by the worker, and `GET /api/payments/{request_id}` reads its outcome.

The e-mail of a raised IOU and the callback of a cancelled one are outbox rows written with the
change; they are handed to `payments.dispatch_outbox` once it commits (the relay sends any that
miss it).
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.orm import Session

from shared import access, fields, ious, messages, requests
from shared.models import RequestKind
from webhook import auth, context, schemas
from webhook.auth import action
from webhook.movements import enqueue

log = logging.getLogger(__name__)

blueprint = Blueprint("ious", __name__)


@blueprint.post("/ious")
@action(access.IOUS_CREATE)
def post_iou() -> ResponseReturnValue:
    order = ious.parse(context.json_body(), context.settings())
    with context.transaction() as session:
        iou, created = ious.raise_iou(session, order, client=auth.principal().name)
        document = ious.document(iou, context.settings().time_zone)
        sent = _outbox_rows(session)
    _dispatch(sent)
    return jsonify(document), 201 if created else 200


@blueprint.get("/members/<member_id>/ious")
@action(access.IOUS_MEMBER_READ)
def member_ious(member_id: str) -> ResponseReturnValue:
    return _listing(member_id=fields.identifier(member_id, "member_id"))


@blueprint.get("/organisations/<org_id>/ious")
@action(access.IOUS_ORGANISATION_READ)
def organisation_ious(org_id: str) -> ResponseReturnValue:
    return _listing(organisation_id=fields.identifier(org_id, "organisation_id"))


def _listing(**whose: str) -> ResponseReturnValue:
    with context.transaction() as session:
        found = ious.listing(session, status=request.args.get("status"), **whose)
        zone = context.settings().time_zone
        return jsonify({"ious": [ious.document(iou, zone) for iou in found]})


@blueprint.post("/ious/<iou_id>/pay")
@action(access.IOUS_PAY)
def pay_iou(iou_id: str) -> ResponseReturnValue:
    number = ious.iou_id(iou_id)
    given = schemas.validated(schemas.IouPayIn, context.json_body())
    request_id, allow_checkout = given.request_id, given.allow_checkout
    with context.transaction() as session:
        order, row, created = ious.pay(session, number, request_id, allow_checkout=allow_checkout,
                                       client=auth.principal().name)
        document = {**requests.status_document(row), "iou_id": number}
    if row.queued:
        enqueue(RequestKind.PAYMENT.value, order)
    return jsonify(document), 202 if created else 200


@blueprint.delete("/ious/<iou_id>")
@action(access.IOUS_CANCEL, in_view=True)
def cancel_iou(iou_id: str) -> ResponseReturnValue:
    """Authorised here: the organisation acted on is the stored IOU's. A client that could cancel
    no IOU is refused before the look-up, so it cannot probe which IOU ids exist."""
    principal = auth.principal()
    if not principal.scopes & {access.CLUBS, access.ADMIN}:
        access.authorise(principal, access.IOUS_CANCEL, {})
    number = ious.iou_id(iou_id)
    with context.transaction() as session:
        iou = ious.get(session, number, lock=True)
        access.authorise(principal, access.IOUS_CANCEL, {"organisation_id": iou.organisation_id})
        ious.cancel(session, iou)
        document = ious.document(iou, context.settings().time_zone)
        sent = _outbox_rows(session)
    _dispatch(sent)
    return jsonify(document)


def _outbox_rows(session: Session) -> list[int]:
    return list(session.info.pop("outbox", []))


def _dispatch(outbox_ids: list[int]) -> None:
    for outbox_id in outbox_ids:
        try:
            messages.send("payments.dispatch_outbox", {"outbox_id": outbox_id}, queue="outbox",
                          settings=context.settings())
        except BrokerError:
            log.warning("outbox %s not enqueued now; the relay will send it", outbox_id)
