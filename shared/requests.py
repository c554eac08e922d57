"""Payment requests: one row per caller-chosen request id, holding the request as received and
its outcome (CONTRACT: "GET /api/payments/{request_id} is the one place to read any request's
outcome"; DESIGN invariant 3).

`record` stores a request once: the same id with the same payload finds the first row, with a
different payload it is a `Conflict`. `lock` takes the row's lock, so duplicates of one request
are decided one after the other and only the first does anything. `finish` sets the terminal
status and, for a request with a route code, writes its one callback to the outbox in the same
transaction.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import fields, outbox
from shared.errors import Conflict, NotFound
from shared.models import PaymentRequest, RequestKind, RequestStatus, utcnow
from shared.money import format_cents

SUCCESS_STATUSES = (RequestStatus.PAID, RequestStatus.COMPLETED)

# The task that decides each kind of request, sent with the request's stored payload.
TASK_FOR_KIND = {
    RequestKind.PAYMENT.value: "payments.pay",
    RequestKind.TRANSFER.value: "payments.transfer",
    RequestKind.SETTLEMENT.value: "payments.settle",
}


def payload_hash(kind: RequestKind, payload: dict[str, Any]) -> str:
    canonical = json.dumps({"kind": kind.value, **payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(
    session: Session,
    kind: RequestKind,
    request_id: str,
    payload: dict[str, Any],
    *,
    amount: int,
    member_id: str | None = None,
    route_code: str | None = None,
) -> tuple[PaymentRequest, bool]:
    """Store the request as `queued` unless its id is known; returns the row and whether it is new."""
    digest = payload_hash(kind, payload)
    now = utcnow()
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    inserted = session.execute(
        module.insert(PaymentRequest)
        .values(
            request_id=request_id,
            kind=kind.value,
            payload_hash=digest,
            payload=payload,
            status=RequestStatus.QUEUED.value,
            member_id=member_id,
            amount=amount,
            route_code=route_code,
            attempts=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(PaymentRequest.request_id)
    ).scalar_one_or_none()
    row = session.get(PaymentRequest, request_id, populate_existing=True)
    assert row is not None
    if inserted is None and row.payload_hash != digest:
        raise Conflict(
            f"request {request_id}: already used for a different {row.kind} request", field="request_id"
        )
    return row, inserted is not None


def get(session: Session, request_id: str) -> PaymentRequest:
    row = session.get(PaymentRequest, request_id)
    if row is None:
        raise NotFound(f"request {request_id}: not known", field="request_id")
    return row


def lock(session: Session, request_id: str) -> PaymentRequest:
    """The request row under its lock, re-read: concurrent duplicates wait here."""
    row = session.scalars(
        select(PaymentRequest)
        .where(PaymentRequest.request_id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    row.attempts += 1
    return row


def finish(
    session: Session,
    row: PaymentRequest,
    status: RequestStatus,
    *,
    reason: str | None = None,
    result: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Set the outcome; a terminal outcome of a routed request queues its one callback."""
    row.status = status.value
    row.reason = reason
    if result is not None:
        row.result = result
    row.updated_at = now or utcnow()
    if row.route_code and status in (*SUCCESS_STATUSES, RequestStatus.DECLINED, RequestStatus.FAILED):
        outbox.add_callback(
            session,
            request_id=row.request_id,
            kwargs={
                "request_id": row.request_id,
                "route_code": row.route_code,
                "route_payload": row.payload.get("route_payload"),
                "status": "success" if status in SUCCESS_STATUSES else "failure",
                "amount": format_cents(row.amount),
                "reason": reason,
            },
        )


def status_document(row: PaymentRequest) -> dict[str, Any]:
    """The CONTRACT shape of `GET /api/payments/{request_id}`."""
    document: dict[str, Any] = {
        "request_id": row.request_id,
        "kind": row.kind,
        "status": row.status,
        "amount": format_cents(row.amount),
    }
    if row.reason:
        document["reason"] = row.reason
    if row.result:
        document.update(row.result)
    return document


def reject(session: Session, kind: RequestKind, raw: dict[str, Any], reason: str) -> PaymentRequest:
    """Record a malformed request sent by task name as `failed`, with its failure callback.

    Raises `InvalidInput` if it has no usable request id, so it cannot be recorded at all.
    """
    request_id = fields.identifier(raw.get("request_id"), "request_id")
    route_code = raw.get("route_code")
    route_code = route_code if isinstance(route_code, str) and 0 < len(route_code) <= 64 else None
    safe = json.loads(json.dumps(raw, default=str))
    row, created = record(session, kind, request_id, safe, amount=0, route_code=route_code)
    row = lock(session, request_id)
    if row.status == RequestStatus.QUEUED.value:
        finish(session, row, RequestStatus.FAILED, reason=reason)
    return row


def stale_queued(session: Session, older_than: timedelta, *, limit: int = 1000) -> list[PaymentRequest]:
    """Requests still `queued` well after they arrived: their task may never have been sent."""
    return list(
        session.scalars(
            select(PaymentRequest)
            .where(
                PaymentRequest.status == RequestStatus.QUEUED.value,
                PaymentRequest.updated_at < utcnow() - older_than,
            )
            .order_by(PaymentRequest.updated_at)
            .limit(limit)
        )
    )
