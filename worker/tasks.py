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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared import charges, healing, messages, metrics, outbox, payments, refunds, requests, settlements, stripe_events, topups, transfers
from shared.access import Principal
from shared.errors import Conflict, Forbidden, InvalidInput, StripeUnavailable, Unauthenticated
from shared.models import RequestKind, RequestStatus
from shared.stripe_gateway import StripeGateway
from worker.app import app, engine, gateway, headers_of, log_as_task, sessions, settings

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, InterfaceError, BrokerError, StripeUnavailable)
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 10,
}


@app.task(name="payments.pay", bind=True, clients=True, soft_time_limit=20, time_limit=30,
          Strategy="worker.batching:strategy", **RETRY)
def pay(self: Task, **fields: Any) -> str:
    """One payment; the consumer hands most of them to `pay_batch` instead (`worker.batching`)."""
    return _decide(_envelope(self), RequestKind.PAYMENT, fields, payments.parse, payments.pay,
                   at_once=payments.pay_at_once)


# A batch's answer for a payment it leaves to Celery's own path (`worker.batching`).
SINGLE = "single"


def pay_batch(items: list[dict[str, Any]]) -> list[str]:
    """A batch of `payments.pay` messages (`worker.batching`): the plain payments paid together,
    the rest left to run as tasks of their own. In three steps: admit each as `payments.pay`
    does (sender, fields, stored form; a refused, invalid or already decided one ends here);
    pay the plain ones in one statement and one transaction (`payments.pay_many_at_once`);
    send each paid one's callback. Any other payment, and any that meets an error, is
    answered `SINGLE`, having written nothing: it then runs as `payments.pay`, with its own time
    limits and retries, so card work in one payment never holds up the batch. Each payment is
    logged and timed under its own message id. Returns each message's outcome, in order."""
    started = time.perf_counter()
    steps = [_guarded(item, lambda item=item: _admit(_batch_envelope(item), RequestKind.PAYMENT, item["kwargs"],
                                                       payments.parse, record=False)) for item in items]
    plain = [n for n, step in enumerate(steps)
             if isinstance(step, Admitted) and payments.may_be_plain(engine(), step.order)]
    paid: dict[int, list[int] | None] = {}
    if plain:
        try:
            answers = payments.pay_many_at_once(engine(), [(steps[n].order, steps[n].client) for n in plain],
                                                settings())
            paid = dict(zip(plain, answers, strict=True))
        except Exception as exc:  # noqa: BLE001 (each goes on alone, as its own task)
            log.warning("a batch of %d plain payments failed (%s): each runs on its own", len(plain), exc)
    share = (time.perf_counter() - started) / len(items)
    outcomes = []
    for n, (item, step) in enumerate(zip(items, steps, strict=True)):
        if isinstance(step, Admitted):
            booked = paid.get(n)
            if booked is not None:
                dispatch(booked)  # its callback, as `_settle` sends a plain payment's
            step = SINGLE if booked is None else RequestStatus.PAID.value
        outcomes.append(str(step))
        if step != SINGLE:
            _log_as(item)
            log.info("Task payments.pay[%s] decided in a batch of %d: %r", item["id"], len(items), step)
            metrics.TASK_SECONDS.labels(pay.name, "SUCCESS").observe(share)
    return outcomes


def _batch_envelope(item: dict[str, Any]) -> Envelope:
    return Envelope(pay.name, (), item["headers"])


def _guarded(item: dict[str, Any], step: Callable[[], Any]) -> Any:
    """One payment's step of a batch, under its own log context; an error answers `SINGLE`
    (the payment then runs as its own task, whose retries and failure handling are Celery's)."""
    _log_as(item)
    try:
        return step()
    except Exception as exc:  # noqa: BLE001
        log.warning("payments.pay %s: %s in a batch: it runs on its own", item["id"], type(exc).__name__)
        return SINGLE


def _log_as(item: dict[str, Any]) -> None:
    log_as_task(task_id=item["id"], task=pay, kwargs=item["kwargs"])


@app.task(name="payments.transfer", bind=True, clients=True, soft_time_limit=20, time_limit=30, **RETRY)
def transfer(self: Task, **fields: Any) -> str:
    return _decide(_envelope(self), RequestKind.TRANSFER, fields, transfers.parse, transfers.transfer)


@app.task(name="payments.settle", bind=True, clients=True, soft_time_limit=120, time_limit=150, **RETRY)
def settle(self: Task, **fields: Any) -> str:
    return _decide(_envelope(self), RequestKind.SETTLEMENT, fields, settlements.parse, settlements.settle)


@app.task(name="payments.topup", bind=True, clients=True, soft_time_limit=60, time_limit=90, **RETRY)
def topup(self: Task, **fields: Any) -> str:
    return _decide(_envelope(self), RequestKind.TOPUP, fields, topups.parse_topup, topups.topup)


@app.task(name="payments.refund", bind=True, clients=True, soft_time_limit=60, time_limit=90, **RETRY)
def refund(self: Task, **fields: Any) -> str:
    return _decide(_envelope(self), RequestKind.REFUND, fields, refunds.parse, refunds.book)


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


@dataclass(frozen=True)
class Envelope:
    """Who a message says sent it: the task's name, its args and trust headers
    (`shared.messages`); `direct` for a function call in this process (a command, a test),
    which is the service's own."""

    task: str
    args: tuple[Any, ...]
    headers: dict[str, Any]
    direct: bool = False


def _envelope(task: Task) -> Envelope:
    return Envelope(task.name, tuple(task.request.args or ()), headers_of(task.request),
                    bool(task.request.called_directly))


def _decide(
    envelope: Envelope,
    kind: RequestKind,
    fields: dict[str, Any],
    parse: Callable[..., Any],
    act: Callable[[Session, Any, Any], Any],
    at_once: Callable[..., list[int] | None] | None = None,
) -> str:
    """Who sent it first (`shared.messages`): a refused message moves nothing. Then the request
    is parsed (or rebuilt from its stored form), recorded under its client, and decided."""
    admitted = _admit(envelope, kind, fields, parse, record=at_once is None)
    if isinstance(admitted, str):
        return admitted
    plain = None if at_once is None else (lambda: at_once(engine(), admitted.order, settings(),
                                                          client=admitted.client))
    return _settle(kind, admitted, act, plain)


@dataclass(frozen=True)
class Admitted:
    """A request whose sender may make it: its order, its client (None: the service's own) and
    its stored row, when it was rebuilt from it."""

    order: Any
    client: str | None
    stored: requests.Request | None


def _admit(envelope: Envelope, kind: RequestKind, fields: dict[str, Any], parse: Callable[..., Any], *,
           record: bool) -> Admitted | str:
    """The request to decide, or the outcome that ends it here (refused, conflict, failed, or
    the status of a stored request already decided). `record`: record a new request under its
    client now (else `_settle` does, unless the plain case records it itself)."""
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
            principal = None if envelope.direct else messages.sender(
                session, app.conf.payments_service_key, config.api_token, envelope.task, envelope.args, fields,
                envelope.headers)
            messages.authorise(principal, envelope.task, fields)
            client = None if principal is None else principal.name
            if order is not None and client is not None and record:
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
    return Admitted(order, client, stored)


def _settle(kind: RequestKind, admitted: Admitted, act: Callable[[Session, Any, Any], Any],
            plain: Callable[[], list[int] | None] | None) -> str:
    """Decide an admitted request. `plain` first tries the plain case in one statement, which
    records a new request under its client itself (one transaction per payment, not two); its
    None means it wrote nothing: the request is recorded now, and `act` decides."""
    order, client = admitted.order, admitted.client
    if plain is not None:
        outbox_ids = plain()
        if outbox_ids is not None:
            dispatch(outbox_ids)
            return RequestStatus.PAID.value
        if admitted.stored is None and client is not None:
            try:
                with sessions().begin() as session:
                    RECORD[kind](session, order, client=client)
            except Conflict as exc:
                log.warning("%s %s refused: %s", kind.value, order.request_id, exc.message)
                return "conflict"
    effects = charges.Effects()
    try:
        with sessions().begin() as session:
            row = act(session, order, settings())
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
