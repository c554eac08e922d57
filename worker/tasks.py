"""Celery tasks: thin, named `payments.*`, each one step in one transaction calling `shared`.

Every message is checked before it runs (`worker.app.PaymentsTask`, `shared.messages`): an
internal task needs the service's signature; a money task sent by name needs a client token
allowed to make that request, and records the client's name on it.

Tasks take ids or plain JSON fields, never ORM objects. Transient database, broker or Stripe
errors retry with exponential backoff and jitter; bad input is recorded as a failed request and
never retried. Kwargs that are exactly a stored request's normal form (a redrive) are rebuilt
from it without today's limits, so lowering a limit never strands an accepted request. After
commit, `carry_out` makes the card calls a step scheduled and hands the outbox rows it wrote to
`payments.dispatch_outbox`. The periodic jobs are in scheduler/jobs.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared import charges, healing, messages, outbox, payments, refunds, requests, settlements, stripe_events, topups, transfers
from shared.access import Principal
from shared.errors import Conflict, Forbidden, InvalidInput, StripeUnavailable, Unauthenticated
from shared.models import RequestKind, RequestStatus
from shared.stripe_gateway import StripeGateway
from worker.app import app, engine, gateway, headers_of, sessions, settings

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, InterfaceError, BrokerError, StripeUnavailable)
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 10,
}


@app.task(name="payments.pay", bind=True, clients=True, soft_time_limit=20, time_limit=30, **RETRY)
def pay(self: Task, **fields: Any) -> str:
    return _decide(self, RequestKind.PAYMENT, fields, payments.parse, payments.pay, at_once=payments.pay_at_once)


@app.task(name="payments.transfer", bind=True, clients=True, soft_time_limit=20, time_limit=30, **RETRY)
def transfer(self: Task, **fields: Any) -> str:
    return _decide(self, RequestKind.TRANSFER, fields, transfers.parse, transfers.transfer)


@app.task(name="payments.settle", bind=True, clients=True, soft_time_limit=120, time_limit=150, **RETRY)
def settle(self: Task, **fields: Any) -> str:
    return _decide(self, RequestKind.SETTLEMENT, fields, settlements.parse, settlements.settle)


@app.task(name="payments.topup", bind=True, clients=True, soft_time_limit=60, time_limit=90, **RETRY)
def topup(self: Task, **fields: Any) -> str:
    return _decide(self, RequestKind.TOPUP, fields, topups.parse_topup, topups.topup)


@app.task(name="payments.refund", bind=True, clients=True, soft_time_limit=60, time_limit=90, **RETRY)
def refund(self: Task, **fields: Any) -> str:
    return _decide(self, RequestKind.REFUND, fields, refunds.parse, refunds.book)


# Each kind's order rebuilt from its stored normal form, without today's limits.
FROM_PAYLOAD: dict[RequestKind, Callable[[dict[str, Any]], Any]] = {
    RequestKind.PAYMENT: payments.PaymentOrder.from_payload,
    RequestKind.TRANSFER: transfers.TransferOrder.from_payload,
    RequestKind.SETTLEMENT: settlements.SettlementOrder.from_payload,
    RequestKind.TOPUP: topups.TopupOrder.from_payload,
    RequestKind.REFUND: refunds.RefundOrder.from_payload,
}
# Each kind's `record`: a request made by a client's message is stored under its name first.
RECORD: dict[RequestKind, Callable[..., Any]] = {
    RequestKind.PAYMENT: payments.record,
    RequestKind.TRANSFER: transfers.record,
    RequestKind.SETTLEMENT: settlements.record,
    RequestKind.TOPUP: topups.record_topup,
    RequestKind.REFUND: refunds.record,
}


@app.task(name="payments.process_stripe_event", soft_time_limit=60, time_limit=90, **RETRY)
def process_stripe_event(event_id: str) -> str:
    outcome, effects = stripe_events.process(sessions(), gateway(), settings(), event_id)
    carry_out(effects)
    return outcome


@app.task(name="payments.auto_topup", soft_time_limit=60, time_limit=90, **RETRY)
def auto_topup(member_id: str, key: str) -> str:
    return _auto_topup(member_id, key)


def _auto_topup(member_id: str, key: str) -> str:
    """Top up an `on` member below the low limit: the attempt row (keyed by the caller, e.g.
    per sweep window) is committed first, then the saved card is charged."""
    with sessions().begin() as session:
        attempt_id = topups.open_auto_topup(session, member_id, key, settings())
    if attempt_id is None:
        return "nothing to do"
    carry_out(charges.Effects(charges=[attempt_id]))
    return "charged"


# A chunk stops starting members after this long and sends the rest on as a new chunk, well
# inside its time limit (a charge waits on Stripe for up to its timeout).
CHUNK_BUDGET_SECONDS = 150


@app.task(name="payments.auto_topups", soft_time_limit=240, time_limit=270, **RETRY)
def auto_topups(members: list[dict[str, str]]) -> int:
    """A sweep's chunk (up to `scheduler.jobs.SWEEP_CHUNK` members): each member as
    `payments.auto_topup` does, under its own key, on its own (DESIGN invariant 12). A member
    that raises is sent on as its own `payments.auto_topup`, which retries with backoff; the
    members after it go on. A chunk delivered twice charges no one twice: the keys find the
    attempts of the first delivery. Returns how many members it started."""
    done = healing.each(members, lambda member: _auto_topup(**member),
                        lambda member, _: auto_topup.apply_async(kwargs=member),
                        what="auto top-up chunk", budget_seconds=CHUNK_BUDGET_SECONDS)
    if done < len(members):
        auto_topups.apply_async(kwargs={"members": members[done:]})
    return done


@app.task(name="payments.dispatch_outbox", bind=True, soft_time_limit=30, time_limit=45, **RETRY)
def dispatch_outbox(self: Task, outbox_id: int) -> str:
    outcome, delay = outbox.deliver(sessions(), outbox_id, settings(), _send_task)
    if outcome == "retry":
        raise self.retry(countdown=delay, max_retries=None)
    return outcome


@app.task(name="payments.ping", soft_time_limit=5, time_limit=10)
def ping() -> str:
    """Does nothing: for checking a worker end to end, and the queue's own ceiling (bench/)."""
    return "pong"


def _decide(
    task: Task,
    kind: RequestKind,
    fields: dict[str, Any],
    parse: Callable[..., Any],
    act: Callable[[Session, Any, Any], Any],
    at_once: Callable[[Engine, Any, Any], list[int] | None] | None = None,
) -> str:
    """Who sent it first (`shared.messages`): a refused message moves nothing. Then the request
    is parsed (or rebuilt from its stored form), recorded under its client, and decided."""
    config = settings()
    order, invalid = None, None
    try:
        order = parse(fields, config)
    except InvalidInput as exc:
        invalid = exc
    principal: Principal | None = None
    client: str | None = None
    stored: requests.Request | None = None
    try:
        with sessions().begin() as session:
            # A function call in this process (a command, a test) is the service's own.
            principal = None if task.request.called_directly else messages.sender(
                session, app.conf.payments_service_key, config.api_token, task.name, task.request.args or (), fields,
                headers_of(task.request))
            messages.authorise(principal, task.name, fields)
            client = None if principal is None else principal.name
            if order is not None and client is not None:
                RECORD[kind](session, order, client=client)  # who asked, before anything is decided
            if order is None:
                stored = requests.accepted(session, kind, fields)
    except (Unauthenticated, Forbidden) as refusal:
        return _refuse(kind, fields, refusal, principal)
    except Conflict as exc:
        log.warning("%s %s refused: %s", kind.value, fields.get("request_id"), exc.message)
        return "conflict"
    if order is None:
        # Accepted and stored before a limit was lowered (a redrive sends the stored form)?
        if stored is None:
            return _reject(kind, fields, invalid or InvalidInput("invalid"), client)
        if client is not None and stored.client not in (None, client):
            log.warning("%s %s refused: made by another client", kind.value, stored.request_id)
            return "conflict"
        if not stored.queued:
            return stored.status
        order = FROM_PAYLOAD[kind](stored.payload)
    if at_once is not None:
        # The plain case in one statement; None means it wrote nothing and `act` decides.
        outbox_ids = at_once(engine(), order, config)
        if outbox_ids is not None:
            dispatch(outbox_ids)
            return RequestStatus.PAID.value
    effects = charges.Effects()
    try:
        with sessions().begin() as session:
            row = act(session, order, config)
            status = row.status
            effects.collect(session)
    except Conflict as exc:
        log.warning("%s %s refused: %s", kind.value, order.request_id, exc.message)
        return "conflict"
    carry_out(effects)
    return status


def carry_out(effects: charges.Effects, db: sessionmaker[Session] | None = None,
              stripe: StripeGateway | None = None) -> None:
    """After commit: card work (which may lead to more), then the outbox rows. `db` and
    `stripe`: the caller's own (the inbox consumer's, in the worker's main process), else this
    pool process's."""
    db = db or sessions()
    stripe = stripe or gateway()
    pending = [effects]
    while pending:
        current = pending.pop()
        for attempt_id in current.charges:
            pending.append(charges.charge(db, stripe, settings(), attempt_id))
        for attempt_id in current.checkouts:
            pending.append(charges.start_checkout(db, stripe, settings(), attempt_id))
        for request_id in current.refunds:
            refunds.send_to_card(db, stripe, settings(), request_id, dispatch=dispatch)
        dispatch(current.outbox)


def _refuse(kind: RequestKind, fields: dict[str, Any], refusal: Unauthenticated | Forbidden,
            principal: Principal | None) -> str:
    """A message `shared.access` refused: nothing moves. Its request, if it names one not
    stored yet, is recorded `failed` with the refusal as its reason (`unauthenticated: ...`,
    `forbidden: ...`), under the client when one was authenticated. A stored request, whoever
    made it, is left as it is. No callback: a refused sender must not make the service send
    messages to other modules (README "Security model")."""
    reason = f"{refusal.code}: {refusal.message}"
    log.warning("%s %s refused: %s", kind.value, fields.get("request_id"), reason)
    try:
        with sessions().begin() as session:
            requests.refuse(session, kind, fields, reason, client=None if principal is None else principal.name)
    except InvalidInput as unrecordable:
        log.warning("%s message dropped: %s", kind.value, unrecordable.message)
    return refusal.code


def _reject(kind: RequestKind, fields: dict[str, Any], exc: InvalidInput, client: str | None) -> str:
    """A malformed request sent by name: fail it (with its callback) if it can be named at all,
    and is not another client's."""
    try:
        with sessions().begin() as session:
            requests.reject(session, kind, fields, exc.message, client=client)
            outbox_ids = session.info.pop("outbox", [])
    except (InvalidInput, Conflict) as unrecordable:
        log.error("%s request dropped: %s (%s)", kind.value, exc.message, unrecordable.message)
        return "invalid"
    dispatch(outbox_ids)
    return "failed"


def dispatch(outbox_ids: list[int]) -> None:
    for outbox_id in outbox_ids:
        try:
            dispatch_outbox.apply_async(args=[outbox_id], queue="outbox")
        except BrokerError:
            log.warning("outbox %s not enqueued now; the relay will send it", outbox_id)


def _send_task(name: str, kwargs: dict[str, Any], queue: str) -> None:
    app.send_task(name, kwargs=kwargs, queue=queue)
