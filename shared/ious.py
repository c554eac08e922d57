"""IOUs (CONTRACT "IOUs"; ORIGINAL 2.11, with its defect D-19 fixed): what a member owes a club,
raised by the club and paid by the member later, with a payment to the club.

- `raise_iou` stores one under the raiser's request id (the same request again returns it;
  other fields under that id are a `Conflict`) and queues the member's "Pending Payment to
  {club}" e-mail in the same transaction. Nothing is booked.
- `pay` makes the IOU's payment: a payment request to the IOU's club for its amount and
  description, typed Miscellaneous as the original's, with its session and event, naming the
  IOU, which links it (`payment_request_id`). One payment at a time (D-19): while one is queued
  or waits for a card, or once the IOU is paid, another request id is a `Conflict` (the same one
  replays); after a declined or failed one the member may pay again.
- `payable` and `paid` are the payment's side (`payments._decide`): under the IOU's row lock
  the payment must still be the IOU's (open, linked to it, same member, club and amount), and
  the IOU is paid in the transaction that books the payment, so also when card money pays it
  later.
- `cancel`: the club withdraws an IOU that is open with no payment in flight.

An IOU with a route code gets one callback when it ends (paid: success; cancelled: failure with
reason "cancelled"), under its own request id, signed for the client that raised it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields as dataclass_fields
from datetime import tzinfo
from typing import Any

from pydantic import ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import bodies, fields, notifications, outbox, payments, profiles, requests
from shared.config import Settings
from shared.db import dialect_insert
from shared.errors import Conflict, InvalidInput, NotFound
from shared.models import EntryType, Iou, IouStatus, PaymentRequest, RequestStatus, utcnow
from shared.money import format_cents

# A payment in these still decides the IOU: no other may start, and the IOU cannot be cancelled.
IN_FLIGHT = (RequestStatus.QUEUED.value, RequestStatus.AWAITING_CARD.value)


@dataclass(frozen=True)
class IouOrder:
    """A club's request to raise an IOU, checked."""

    request_id: str
    organisation_id: str
    member_id: str
    amount: int
    description: str
    route_code: str | None = None
    route_payload: Any = None
    session_id: str | None = None
    event_id: str | None = None


class IouIn(bodies.Validating):
    """`POST /api/ious` (`max_amount` in the context)."""

    model_config = ConfigDict(json_schema_extra=bodies.required(
        "request_id", "organisation_id", "member_id", "amount", "description"))
    request_id: bodies.CheckedId = None  # type: ignore[assignment]
    organisation_id: bodies.CheckedId = None  # type: ignore[assignment]
    member_id: bodies.CheckedId = None  # type: ignore[assignment]
    amount: bodies.CheckedAmount = None  # type: ignore[assignment]
    description: bodies.CheckedText80 = None  # type: ignore[assignment]
    route_code: bodies.CheckedOptionalId = None
    route_payload: bodies.CheckedRoutePayload = None
    session_id: bodies.CheckedOptionalId = None
    event_id: bodies.CheckedOptionalId = None


def parse(body: Mapping[str, Any], settings: Settings) -> IouOrder:
    """Check every field of `POST /api/ious` (`IouIn`); errors name the field."""
    return IouOrder(**bodies.declared(bodies.validated(IouIn, body, max_amount=settings.max_amount)))


def iou_id(value: str) -> int:
    """An IOU id from a path: anything but a positive number is no IOU."""
    if not value.isascii() or not value.isdigit() or len(value) > 18 or int(value) == 0:
        raise NotFound(f"iou {fields.fit(value, 40)}: not known", field="iou_id")
    return int(value)


def raise_iou(session: Session, order: IouOrder, *, client: str) -> tuple[Iou, bool]:
    """Store the IOU and queue its e-mail; returns it and whether it is new. The same request
    again (by the same client) returns the stored IOU, whatever its status now."""
    member = profiles.get_member(session, order.member_id)
    organisation = profiles.get_organisation(session, order.organisation_id)
    if session.scalar(select(PaymentRequest.request_id).where(PaymentRequest.request_id == order.request_id)):
        # Callbacks are deduplicated by request id: an IOU's must not be taken for a payment's.
        raise Conflict(f"request {order.request_id}: already used for a payment request", field="request_id")
    now = utcnow()
    new_id = session.execute(
        dialect_insert(session)(Iou)
        .values(**{f.name: getattr(order, f.name) for f in dataclass_fields(order)},
                status=IouStatus.OPEN.value, client=client, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(Iou.id)
    ).scalar_one_or_none()
    if new_id is None:
        stored = session.scalars(select(Iou).where(Iou.request_id == order.request_id)).one()
        if stored.client != client:
            raise Conflict(f"request {order.request_id}: already used by another client", field="request_id")
        if any(getattr(stored, f.name) != getattr(order, f.name) for f in dataclass_fields(order)):
            raise Conflict(f"request {order.request_id}: already used for a different IOU", field="request_id")
        return stored, False
    iou = session.get_one(Iou, new_id)
    notifications.iou_email(session, iou, member, organisation.name)
    return iou, True


def get(session: Session, iou_id: int, *, lock: bool = False) -> Iou:
    statement = select(Iou).where(Iou.id == iou_id).execution_options(populate_existing=True)
    found = session.scalars(statement.with_for_update() if lock else statement).one_or_none()
    if found is None:
        raise NotFound(f"iou {iou_id}: not known", field="iou_id")
    return found


def listing(session: Session, *, status: str | None, member_id: str | None = None,
            organisation_id: str | None = None) -> list[Iou]:
    """A member's or an organisation's IOUs, newest first; `status` filters (None: all)."""
    statement = select(Iou).order_by(Iou.created_at.desc(), Iou.id.desc())
    if member_id is not None:
        statement = statement.where(Iou.member_id == profiles.get_member(session, member_id).member_id)
    if organisation_id is not None:
        statement = statement.where(Iou.organisation_id == profiles.get_organisation(session, organisation_id).org_id)
    if status is not None:
        if status not in {s.value for s in IouStatus}:
            raise InvalidInput(f"status: {fields.fit(status, 40)!r} is not one of open, paid, cancelled",
                               field="status")
        statement = statement.where(Iou.status == status)
    return list(session.scalars(statement))


def pay(session: Session, iou_id: int, request_id: str, *, allow_checkout: bool, client: str
        ) -> tuple[payments.PaymentOrder, requests.Request, bool]:
    """Record the IOU's payment (the caller enqueues it); returns the order, its request and
    whether it is new. A request already stored replays as it is. A new one is checked under
    the IOU's row lock, so two requests cannot both start paying it; the lock is taken after
    the request's row, the order in which the worker takes them (`payments._decide`), so a
    double submit while the worker decides waits instead of deadlocking."""
    iou = get(session, iou_id)  # what the order needs never changes; the status is read locked
    order = payments.PaymentOrder(
        request_id=request_id, member_id=iou.member_id, amount=iou.amount, description=iou.description,
        payment_type=EntryType.MISCELLANEOUS.value, organisation_id=iou.organisation_id,
        allow_checkout=allow_checkout, event_id=iou.event_id, session_id=iou.session_id, iou_id=iou.id,
    )
    row, created = payments.record(session, order, client=client)
    if not created:
        return order, row, False
    iou = get(session, iou_id, lock=True)
    if iou.status == IouStatus.CANCELLED.value:
        raise Conflict(f"iou {iou.id}: cancelled; there is nothing to pay", field="iou_id")
    if iou.status == IouStatus.PAID.value:
        raise Conflict(f"iou {iou.id}: already paid by request {iou.payment_request_id}", field="request_id")
    current = in_flight(session, iou)
    if current is not None:
        raise Conflict(f"iou {iou.id}: request {current.request_id} is paying it ({current.status})",
                       field="request_id")
    if session.scalar(select(Iou.id).where(Iou.request_id == request_id)) is not None:
        raise Conflict(f"request {request_id}: already used for an IOU", field="request_id")
    iou.payment_request_id, iou.updated_at = request_id, utcnow()
    return order, row, True


def in_flight(session: Session, iou: Iou) -> requests.Request | None:
    """The payment still deciding the IOU, if one is."""
    if iou.payment_request_id is None or iou.status != IouStatus.OPEN.value:
        return None
    row = requests.get(session, iou.payment_request_id)
    return row if row.status in IN_FLIGHT else None


def payable(session: Session, order: payments.PaymentOrder) -> tuple[Iou | None, str | None]:
    """The IOU the payment pays, locked, or why the payment may not pay it (it then fails)."""
    assert order.iou_id is not None
    try:
        iou = get(session, order.iou_id, lock=True)
    except NotFound as exc:
        return None, exc.message
    if iou.payment_request_id != order.request_id:
        return None, (f"iou {iou.id}: request {order.request_id} is not its payment "
                      f"(pay it with POST /api/ious/{iou.id}/pay)")
    if iou.status != IouStatus.OPEN.value:
        return None, f"iou {iou.id}: {iou.status}"
    if (iou.member_id, iou.organisation_id, iou.amount) != (order.member_id, order.organisation_id, order.amount):
        return None, (f"iou {iou.id}: owed by {iou.member_id} to {iou.organisation_id}, {format_cents(iou.amount)}; "
                      "the payment does not match it")
    return iou, None


def paid(session: Session, iou: Iou) -> None:
    """Its payment is booked (same transaction): the IOU is paid, and its callback queued."""
    iou.status, iou.updated_at = IouStatus.PAID.value, utcnow()
    _callback(session, iou, RequestStatus.PAID, None)


def cancel(session: Session, iou: Iou) -> None:
    """Withdraw a locked IOU (`get(..., lock=True)`); cancelling a cancelled one does nothing."""
    if iou.status == IouStatus.CANCELLED.value:
        return
    if iou.status == IouStatus.PAID.value:
        raise Conflict(f"iou {iou.id}: paid by request {iou.payment_request_id}; it cannot be cancelled",
                       field="iou_id")
    current = in_flight(session, iou)
    if current is not None:
        raise Conflict(f"iou {iou.id}: request {current.request_id} is paying it ({current.status}); "
                       "it cannot be cancelled now", field="iou_id")
    iou.status, iou.updated_at = IouStatus.CANCELLED.value, utcnow()
    _callback(session, iou, RequestStatus.FAILED, "cancelled")


def document(iou: Iou, zone: tzinfo) -> dict[str, Any]:
    """The IOU as the API shows it, its times in the service's time zone as every other answer
    gives them (`PAYMENTS_TIME_ZONE`)."""
    return {
        "iou_id": iou.id,
        "request_id": iou.request_id,
        "status": iou.status,
        "organisation_id": iou.organisation_id,
        "member_id": iou.member_id,
        "amount": format_cents(iou.amount),
        "description": iou.description,
        "route_code": iou.route_code,
        "route_payload": iou.route_payload,
        "session_id": iou.session_id,
        "event_id": iou.event_id,
        "payment_request_id": iou.payment_request_id,
        "client": iou.client,
        "created_at": iou.created_at.astimezone(zone).isoformat(timespec="seconds"),
        "updated_at": iou.updated_at.astimezone(zone).isoformat(timespec="seconds"),
    }


def _callback(session: Session, iou: Iou, status: RequestStatus, reason: str | None) -> None:
    if iou.route_code:
        kwargs = requests.callback_kwargs(
            iou.request_id, iou.route_code, iou.route_payload, status, iou.amount, reason,
            member_id=iou.member_id, organisation_id=iou.organisation_id,
        )
        outbox.add_callback(session, request_id=iou.request_id, kwargs=kwargs, iou=True)
