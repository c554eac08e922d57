"""Payment requests: one row per caller-chosen request id, holding the request as received and
its outcome (CONTRACT: "GET /api/payments/{request_id} is the one place to read any request's
outcome"; DESIGN invariant 3).

`record` stores a request once (the HTTP edge, before it enqueues the task); `claim` is where a
task starts: it stores the request if it is new and takes its row lock in the same statement,
so duplicates of one request are decided one after the other and only the first does anything.
The same id with a different payload is a `Conflict`. `finish` sets the outcome and, for a
terminal outcome of a request with a route code, writes its one callback to the outbox in the
same transaction. Its reason (often an error's text) is fitted to the column, so no message,
however long, can strand a request.
`take_stale` is the redrive's side (DESIGN invariant 12): stuck requests, each
counted and backed off, ended `failed` after the last try. A payment waiting for another
top-up of its member (`result` holds `WAITING`) is not stuck: the top-up's outcome or
`waits_due` decides it, so the redrive leaves it alone.

These run on every payment, so they use prebuilt Core statements: one round trip each.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields as dataclass_fields
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import String, Table, bindparam, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import fields, healing, outbox
from shared.config import Settings
from shared.db import dialect_name
from shared.errors import Conflict, NotFound
from shared.models import CardPayment, CardPaymentStatus, PaymentRequest, RequestKind, RequestStatus, utcnow
from shared.money import format_cents

REASON_LENGTH = cast(String, PaymentRequest.__table__.c.reason.type).length or 300
SUCCESS_STATUSES = (RequestStatus.PAID, RequestStatus.COMPLETED)
# A queued payment's `result` key naming the in-flight top-up (card_payments id) it waits for.
WAITING = "waiting_for_top_up"
TERMINAL = {s.value for s in (*SUCCESS_STATUSES, RequestStatus.DECLINED, RequestStatus.FAILED)}

# The task that decides each kind of request, sent with the request's stored payload.
TASK_FOR_KIND = {
    RequestKind.PAYMENT.value: "payments.pay",
    RequestKind.TRANSFER.value: "payments.transfer",
    RequestKind.SETTLEMENT.value: "payments.settle",
    RequestKind.TOPUP.value: "payments.topup",
    RequestKind.REFUND.value: "payments.refund",
}


@dataclass
class Request:
    """A payment request row, as plain values."""

    request_id: str
    kind: str
    payload_hash: str
    payload: dict[str, Any]
    status: str
    member_id: str | None
    amount: int
    reason: str | None
    route_code: str | None
    result: dict[str, Any] | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    client: str | None  # who made it (shared/access.py); None for a request older than clients

    @property
    def queued(self) -> bool:
        return self.status == RequestStatus.QUEUED.value


_TABLE = cast(Table, PaymentRequest.__table__)
_COLUMNS = [_TABLE.c[f.name] for f in dataclass_fields(Request)]
_NEW_ROW: dict[str, Any] = {
    name: bindparam(name)
    for name in ("request_id", "kind", "payload_hash", "payload", "status", "member_id", "amount",
                 "route_code", "attempts", "created_at", "updated_at", "client")
}


def _upserts(module: Any) -> tuple[Any, Any]:
    insert = module.insert(_TABLE).values(**_NEW_ROW)
    record = insert.on_conflict_do_nothing(index_elements=["request_id"]).returning(*_COLUMNS)
    claim = insert.on_conflict_do_update(
        index_elements=["request_id"], set_={"attempts": _TABLE.c.attempts + 1}
    ).returning(*_COLUMNS)
    return record, claim


_STATEMENTS = {"postgresql": _upserts(postgresql), "sqlite": _upserts(sqlite)}
_GET = select(*_COLUMNS).where(_TABLE.c.request_id == bindparam("request_id"))
_WAITED_FOR = _TABLE.c.result[WAITING].as_integer()
_FINISH = (
    update(_TABLE)
    .where(_TABLE.c.request_id == bindparam("key"))
    .values(status=bindparam("status"), reason=bindparam("reason"), result=bindparam("result"),
            amount=bindparam("amount"), updated_at=bindparam("updated_at"))
)


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
    client: str | None = None,
) -> tuple[Request, bool]:
    """Store the request as `queued` unless its id is known; returns it and whether it is new.

    `client` is who makes it (recorded, not hashed: the same request from its maker replays);
    a request id another client made is a `Conflict`, so one client cannot read another's
    outcome by replaying its request."""
    params = _new_row(kind, request_id, payload, amount, member_id, route_code, attempts=0, client=client)
    statement = _STATEMENTS[dialect_name(session)][0]
    found = session.connection().execute(statement, params).one_or_none()
    created = found is not None
    row = Request(**found._mapping) if found else get(session, request_id)
    _same_payload(row, params["payload_hash"], client)
    return row, created


def claim(
    session: Session,
    kind: RequestKind,
    request_id: str,
    payload: dict[str, Any],
    *,
    amount: int,
    member_id: str | None = None,
    route_code: str | None = None,
    client: str | None = None,
) -> Request:
    """Store the request if new, lock its row, count the attempt; one statement.

    Concurrent duplicates wait on the row lock; each then finds the outcome of the first.
    A stored request keeps the client that made it; `client` names the maker of a new one.
    """
    params = _new_row(kind, request_id, payload, amount, member_id, route_code, attempts=1, client=client)
    statement = _STATEMENTS[dialect_name(session)][1]
    row = Request(**session.connection().execute(statement, params).one()._mapping)
    _same_payload(row, params["payload_hash"], client)
    return row


def lock_existing(session: Session, request_id: str) -> Request:
    """A stored request under its row lock (to carry it on after card money moved)."""
    found = session.connection().execute(_GET.with_for_update(), {"request_id": request_id}).one_or_none()
    if found is None:
        raise NotFound(f"request {request_id}: not known", field="request_id")
    return Request(**found._mapping)


def accepted(session: Session, kind: RequestKind, raw: dict[str, Any]) -> Request | None:
    """The stored request these task kwargs are, if they are exactly its stored normal form.

    A redriven request carries its stored payload, checked when it was accepted: the task
    rebuilds it from that form (`from_payload`) rather than check it against today's limits,
    which may have been lowered since. Anything else is new input and is checked in full."""
    request_id = raw.get("request_id")
    if not isinstance(request_id, str):
        return None
    found = session.connection().execute(_GET, {"request_id": request_id}).one_or_none()
    if found is None:
        return None
    row = Request(**found._mapping)
    try:
        digest = payload_hash(kind, raw)
    except (TypeError, ValueError):  # not JSON: not a stored payload
        return None
    return row if row.kind == kind.value and row.payload_hash == digest else None


def get(session: Session, request_id: str) -> Request:
    found = session.connection().execute(_GET, {"request_id": request_id}).one_or_none()
    if found is None:
        raise NotFound(f"request {request_id}: not known", field="request_id")
    return Request(**found._mapping)


def client_of(session: Session, request_id: str) -> str | None:
    """The client that made the request; None if it has none or is not stored (card money is
    booked all the same: the money has moved)."""
    return session.scalar(select(_TABLE.c.client).where(_TABLE.c.request_id == request_id))


def finish(
    session: Session,
    row: Request,
    status: RequestStatus,
    *,
    reason: str | None = None,
    result: dict[str, Any] | None = None,
    amount: int | None = None,
) -> None:
    """Set the outcome; a terminal outcome of a routed request queues its one callback.

    The reason is shortened to its column (an ellipsis marks the cut): the callback carries the
    same text as the status document."""
    if reason is not None:
        reason = fields.fit(reason, REASON_LENGTH)
    row.status, row.reason, row.updated_at = status.value, reason, utcnow()
    if result is not None:
        row.result = result
    if amount is not None:
        row.amount = amount
    session.connection().execute(
        _FINISH,
        {"key": row.request_id, "status": row.status, "reason": reason, "result": row.result,
         "amount": row.amount, "updated_at": row.updated_at},
    )
    if row.route_code and row.status in TERMINAL:
        kwargs = callback_kwargs(
            row.request_id, row.route_code, row.payload.get("route_payload"), status, row.amount, reason,
            member_id=row.member_id or _text(row.payload, "to_member_id"),
            organisation_id=_organisation_of(row.payload),
        )
        outbox.add_callback(session, request_id=row.request_id, kwargs=kwargs)


def callback_kwargs(
    request_id: str,
    route_code: str,
    route_payload: Any,
    status: RequestStatus,
    amount: int,
    reason: str | None,
    *,
    member_id: str | None,
    organisation_id: str | None,
) -> dict[str, Any]:
    """The CONTRACT kwargs of a request's callback task, as the outbox keeps them: `client` and
    `signature` are added when it is sent (`outbox.signer_for`)."""
    return {
        "request_id": request_id,
        "route_code": route_code,
        "route_payload": route_payload,
        "status": "success" if status in SUCCESS_STATUSES else "failure",
        "amount": format_cents(amount),
        "reason": reason,
        "member_id": member_id,
        "organisation_id": organisation_id,
    }


def _organisation_of(payload: dict[str, Any]) -> str | None:
    """The organisation a request is about: the one a payment pays, or the one a transfer is
    from (else to), if it names one."""
    for name in ("organisation_id", "from_organisation_id", "to_organisation_id"):
        if found := _text(payload, name):
            return found
    return None


def _text(payload: dict[str, Any], name: str) -> str | None:
    """A payload's field if it is a string (a malformed request sent by task name may not be)."""
    found = payload.get(name)
    return found if isinstance(found, str) else None


def reject(session: Session, kind: RequestKind, raw: dict[str, Any], reason: str, *, client: str | None = None
           ) -> Request:
    """Record a malformed request sent by task name as `failed`, with its failure callback.

    Raises `InvalidInput` if it has no usable request id, so it cannot be recorded at all, and
    `Conflict` if another client made it.
    """
    request_id = fields.identifier(raw.get("request_id"), "request_id")
    route_code = raw.get("route_code")
    route_code = route_code if isinstance(route_code, str) and 0 < len(route_code) <= 64 else None
    safe = json.loads(json.dumps(raw, default=str))
    row = claim(session, kind, request_id, safe, amount=0, route_code=route_code, client=client)
    if row.queued:
        finish(session, row, RequestStatus.FAILED, reason=reason)
    return row


def refuse(session: Session, kind: RequestKind, raw: dict[str, Any], reason: str, *, client: str | None = None
           ) -> Request | None:
    """Record a task message that `shared.access` refused as a `failed` request, only if its id
    is new: a stored request is never changed by a refused message (None then). No route code
    is kept, so no callback goes out. Raises `InvalidInput` without a usable request id."""
    request_id = fields.identifier(raw.get("request_id"), "request_id")
    safe = json.loads(json.dumps(raw, default=str))
    params = _new_row(kind, request_id, safe, 0, None, None, attempts=1, client=client)
    found = session.connection().execute(_STATEMENTS[dialect_name(session)][0], params).one_or_none()
    if found is None:
        return None
    row = Request(**found._mapping)
    finish(session, row, RequestStatus.FAILED, reason=reason)
    return row


def status_document(row: Request) -> dict[str, Any]:
    """The CONTRACT shape of `GET /api/payments/{request_id}`."""
    document: dict[str, Any] = {
        "request_id": row.request_id,
        "kind": row.kind,
        "status": row.status,
        "amount": format_cents(row.amount),
        "client": row.client,
    }
    if row.reason:
        document["reason"] = row.reason
    if row.result:
        document.update(row.result)
    return document


@dataclass(frozen=True)
class Redrive:
    """A stuck request to send again: its task and the request as stored."""

    request_id: str
    task: str
    payload: dict[str, Any]


def take_stale(session: Session, settings: Settings, older_than: timedelta) -> list[Redrive]:
    """Requests still `queued` past `older_than` (their task may never have been sent, or keeps
    failing), due, longest due first, at most `heal_batch`; rows another redrive holds are
    skipped. Each is counted a try and backed off before it is sent again (DESIGN invariant
    12), so the requests behind a thousand stuck ones are still redriven. One past its last
    try ends `failed` with its callback instead, unless card money is still moving for it (an
    open card attempt, whose reconciler ends the request, or a booked card refund)."""
    now = utcnow()
    found = session.execute(
        select(*_COLUMNS, _TABLE.c.heal_tries)
        .where(_TABLE.c.status == RequestStatus.QUEUED.value, _TABLE.c.updated_at < now - older_than,
               healing.is_due(_TABLE.c.next_heal_at, now), _WAITED_FOR.is_(None))
        .order_by(healing.due_order(_TABLE.c.next_heal_at, _TABLE.c.updated_at), _TABLE.c.request_id)
        .limit(settings.heal_batch)
        .with_for_update(skip_locked=True)
    ).all()
    redrives: list[Redrive] = []
    tried: dict[int, list[str]] = {}  # tries after this one -> request ids
    for found_row in found:
        values = dict(found_row._mapping)
        tries = values.pop("heal_tries")
        row = Request(**values)
        if tries < settings.heal_max_tries:
            tried.setdefault(tries + 1, []).append(row.request_id)
            redrives.append(Redrive(row.request_id, TASK_FOR_KIND[row.kind], row.payload))
        elif _money_moving(session, row):
            tried.setdefault(tries, []).append(row.request_id)  # not ours to end; look again later
        else:
            healing.log.error("request %s: still queued after %s redrives; it fails", row.request_id, tries)
            finish(session, row, RequestStatus.FAILED,
                   reason=f"not decided after {tries} redrives: the request was given up")
    for tries, ids in tried.items():
        session.execute(
            update(_TABLE).where(_TABLE.c.request_id.in_(ids))
            .values(heal_tries=tries, next_heal_at=healing.next_try(tries, settings, now))
        )
    return redrives


def waiting_for(session: Session, member_id: str, attempt_id: int) -> list[Request]:
    """The member's payments (and transfers to other members) waiting for this top-up, locked. One that another process holds
    (a redelivered task deciding it) is skipped rather than waited for: the top-up's outcome
    must not wait on a payment's lock while it holds the member's account; `waits_due` finds a
    skipped one that still waits once the top-up has ended."""
    found = session.connection().execute(
        select(*_COLUMNS)
        .where(_TABLE.c.status == RequestStatus.QUEUED.value,
               _TABLE.c.kind.in_([RequestKind.PAYMENT.value, RequestKind.TRANSFER.value]),
               _TABLE.c.member_id == member_id, _WAITED_FOR == attempt_id)
        .order_by(_TABLE.c.created_at, _TABLE.c.request_id)
        .with_for_update(skip_locked=True)
    ).all()
    return [Request(**f._mapping) for f in found]


def waits_due(session: Session, settings: Settings, now: datetime) -> list[str]:
    """Payments waiting for a top-up that must be decided now: the top-up is no longer in
    flight (its outcome skipped a payment another process held), or the wait, counted from when
    it began (`updated_at`: nothing writes a waiting request until it is decided), is longer
    than `topup_wait_seconds`. Due ones only (a failed try is backed off), at most `heal_batch`,
    the longest waiting first."""
    in_flight = exists().where(CardPayment.id == _WAITED_FOR, CardPayment.status == CardPaymentStatus.PENDING.value)
    return list(session.scalars(
        select(_TABLE.c.request_id)
        .where(_TABLE.c.status == RequestStatus.QUEUED.value, _WAITED_FOR.is_not(None),
               or_(~in_flight, _TABLE.c.updated_at < now - timedelta(seconds=settings.topup_wait_seconds)),
               healing.is_due(_TABLE.c.next_heal_at, now))
        .order_by(_TABLE.c.updated_at, _TABLE.c.request_id)
        .limit(settings.heal_batch)
    ))


def back_off(session: Session, request_id: str, settings: Settings) -> int:
    """Count a failed healing try of the request and put it back by the backoff; its tries."""
    tries = session.connection().execute(
        update(_TABLE).where(_TABLE.c.request_id == request_id)
        .values(heal_tries=_TABLE.c.heal_tries + 1).returning(_TABLE.c.heal_tries)
    ).scalar_one()
    session.connection().execute(
        update(_TABLE).where(_TABLE.c.request_id == request_id)
        .values(next_heal_at=healing.next_try(tries, settings))
    )
    return int(tries)


def _money_moving(session: Session, row: Request) -> bool:
    if (row.result or {}).get("booked"):
        return True
    return session.scalar(
        select(CardPayment.id).where(
            CardPayment.request_id == row.request_id,
            CardPayment.status.in_([CardPaymentStatus.PENDING.value, CardPaymentStatus.AWAITING_CARD.value]),
        ).limit(1)
    ) is not None


def _new_row(
    kind: RequestKind,
    request_id: str,
    payload: dict[str, Any],
    amount: int,
    member_id: str | None,
    route_code: str | None,
    *,
    attempts: int,
    client: str | None = None,
) -> dict[str, Any]:
    now = utcnow()
    return {
        "request_id": request_id, "kind": kind.value, "payload_hash": payload_hash(kind, payload),
        "payload": payload, "status": RequestStatus.QUEUED.value, "member_id": member_id,
        "amount": amount, "route_code": route_code, "attempts": attempts,
        "created_at": now, "updated_at": now, "client": client,
    }


def _same_payload(row: Request, digest: str, client: str | None = None) -> None:
    if client is not None and row.client is not None and row.client != client:
        raise Conflict(f"request {row.request_id}: already used by another client", field="request_id")
    if row.payload_hash != digest:
        raise Conflict(
            f"request {row.request_id}: already used for a different {row.kind} request", field="request_id"
        )
