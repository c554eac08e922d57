"""The outbox (DESIGN invariant 6): callbacks and notifications are rows written in the same
transaction as the booking that causes them, and sent only after it commits.

Sending is at least once: one process at a time claims a row (`db.exclusive`, which a crashed
sender does not keep, so the relay sends its row again at once), sends it with no transaction
open, then marks it sent. A failed send backs off exponentially with jitter and keeps the last
error; after `max_attempts` the row is `dead` until an operator replays it. Consumers dedupe by
`request_id`.

A callback row holds its kwargs unsigned; they are signed as they are sent (`signer_for`,
`shared.callbacks`), under the callback key of the client recorded on the request.

The ids of rows added in a session are kept in `session.info["outbox"]`, so the edge that
commits can hand them to the dispatcher at once.
"""

from __future__ import annotations

import logging
import random
import smtplib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared import access, callbacks
from shared.config import Settings
from shared.db import dialect_insert, exclusive
from shared.errors import NotFound, PaymentsError
from shared.models import Client, Iou, OutboxKind, OutboxMessage, OutboxStatus, PaymentRequest, utcnow

log = logging.getLogger(__name__)

# The dedup key's prefix of an IOU's callback: its client is found on the IOU, not on a request.
IOU_CALLBACK = "iou-callback:"

# (task name, kwargs, queue): how a message leaves; the worker passes Celery's send_task.
SendTask = Callable[[str, dict[str, Any], str], None]


class DeliveryFailed(PaymentsError):
    """Raised when a message cannot be sent now (no route, broker or SMTP error)."""

    code = "delivery_failed"
    status = 503


def deliver(
    sessions: sessionmaker[Session], outbox_id: int, settings: Settings, send_task: SendTask
) -> tuple[str, float | None]:
    """Claim, send and record one message: three steps, each its own transaction, so that no
    transaction is open while the network is used. Returns ("sent" | "dead" | "skipped", None)
    or ("retry", seconds to wait)."""
    with exclusive(sessions, f"outbox:{outbox_id}") as ours:
        if not ours:
            return "skipped", None  # another process is sending it now
        return _deliver(sessions, outbox_id, settings, send_task)


def _deliver(
    sessions: sessionmaker[Session], outbox_id: int, settings: Settings, send_task: SendTask
) -> tuple[str, float | None]:
    with sessions.begin() as session:
        message = claim(session, outbox_id, max_attempts=settings.outbox_max_attempts)
        # Read with the claim, so that no transaction is open while the message is sent.
        signer = signer_for(session, message, settings) if message is not None else None
    if message is None:
        return "skipped", None
    try:
        where = send(message, settings, send_task, signer)
    except Exception as exc:
        with sessions.begin() as session:
            delay = record_failure(
                session,
                outbox_id,
                f"{type(exc).__name__}: {exc}",
                max_attempts=settings.outbox_max_attempts,
                backoff=settings.outbox_backoff_seconds,
            )
        return ("dead", None) if delay is None else ("retry", delay)
    with sessions.begin() as session:
        mark_sent(session, outbox_id)
    log.info("outbox %s sent to %s", outbox_id, where)
    return "sent", None


def add_callback(session: Session, *, request_id: str, kwargs: dict[str, Any], iou: bool = False) -> int | None:
    """Queue the one callback of a request (a second one for the same request is ignored), or,
    with `iou`, of an IOU under its own request id (`shared.ious`; IOUs keep theirs apart)."""
    return _add(session, OutboxKind.CALLBACK, f"{IOU_CALLBACK if iou else 'callback:'}{request_id}", kwargs,
                request_id)


def add_notification(
    session: Session, dedup_key: str, email: dict[str, Any], *, request_id: str | None = None
) -> int | None:
    """Queue an e-mail: `{"kind", "to", "subject", "body", "member_id"}`."""
    return _add(session, OutboxKind.NOTIFICATION, f"email:{dedup_key}", email, request_id)


def claim(
    session: Session, outbox_id: int, *, now: datetime | None = None, max_attempts: int | None = None
) -> OutboxMessage | None:
    """Take a pending, due row for sending (one attempt); None if it is not ours to send.

    A row already claimed `max_attempts` times whose sends never finished (its sender died
    each time, say a message that kills the worker) is made `dead` instead of tried again."""
    now = now or utcnow()
    claimed = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.id == outbox_id,
            OutboxMessage.status == OutboxStatus.PENDING.value,
            OutboxMessage.next_attempt_at <= now,
            OutboxMessage.attempts < (max_attempts if max_attempts is not None else 2**31 - 1),
        )
        .values(attempts=OutboxMessage.attempts + 1)
        .returning(OutboxMessage.id)
    ).scalar_one_or_none()
    if claimed is None:
        if max_attempts is not None:
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == outbox_id, OutboxMessage.status == OutboxStatus.PENDING.value,
                       OutboxMessage.attempts >= max_attempts)
                .values(status=OutboxStatus.DEAD.value,
                        last_error=f"claimed {max_attempts} times, its send never finished")
            )
        return None
    return session.get(OutboxMessage, outbox_id, populate_existing=True)


def mark_sent(session: Session, outbox_id: int) -> None:
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == outbox_id)
        .values(status=OutboxStatus.SENT.value, sent_at=utcnow(), last_error=None)
    )


def record_failure(
    session: Session, outbox_id: int, error: str, *, max_attempts: int, backoff: float
) -> float | None:
    """Keep the error; returns the delay before the next try, or None if the row is now dead."""
    message = session.get(OutboxMessage, outbox_id, with_for_update=True)
    assert message is not None
    message.last_error = error[:500]
    if message.attempts >= max_attempts:
        message.status = OutboxStatus.DEAD.value
        log.error("outbox %s dead after %s attempts: %s", outbox_id, message.attempts, error)
        return None
    delay = backoff_delay(message.attempts, backoff)
    message.next_attempt_at = utcnow() + timedelta(seconds=delay)
    return delay


def backoff_delay(attempts: int, base: float) -> float:
    """Exponential backoff with full jitter in its upper half, capped at 10 minutes."""
    ceiling = min(600.0, base * 2 ** max(0, attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def replay(session: Session, outbox_id: int) -> OutboxMessage:
    """Make a sent or dead row pending again, with a fresh set of attempts."""
    message = session.get(OutboxMessage, outbox_id, with_for_update=True)
    if message is None:
        raise NotFound(f"outbox message {outbox_id}: not known", field="id")
    message.status = OutboxStatus.PENDING.value
    message.attempts = 0
    message.next_attempt_at = utcnow()
    session.info.setdefault("outbox", []).append(message.id)
    return message


def due(session: Session, *, limit: int = 500, now: datetime | None = None) -> list[int]:
    """Pending rows whose time has come (for the relay)."""
    return list(
        session.scalars(
            select(OutboxMessage.id)
            .where(
                OutboxMessage.status == OutboxStatus.PENDING.value,
                OutboxMessage.next_attempt_at <= (now or utcnow()),
            )
            .order_by(OutboxMessage.id)
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class Signer:
    """Who asked for a callback's request, and the key its callback is signed with (None when
    there is none to sign with: the callback is then not sent, never sent unsigned)."""

    client: str | None
    key: str | None = field(repr=False)
    missing: str = ""

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.key is None:
            raise DeliveryFailed(f"callback not signed: {self.missing}")
        return callbacks.signed({**payload, "client": self.client}, self.key)


def signer_for(session: Session, message: OutboxMessage, settings: Settings) -> Signer | None:
    """The signer of a callback (None for an e-mail): the client recorded on its request, so
    that every path that writes callback rows (`requests.finish`, `pay_request`) and every
    sender (dispatch, relay, replay) sign alike. A revoked client's key is still used: its
    requests made before the revocation still get their callbacks. The bootstrap client
    `admin`, and a request with no recorded client, use the key derived from
    PAYMENTS_API_TOKEN (`callbacks.bootstrap_key`). An IOU's callback is signed for the client
    that raised the IOU."""
    if message.kind != OutboxKind.CALLBACK.value:
        return None
    if message.dedup_key.startswith(IOU_CALLBACK):
        client = session.scalar(select(Iou.client).where(Iou.request_id == message.request_id))
    else:
        client = session.scalar(select(PaymentRequest.client).where(PaymentRequest.request_id == message.request_id))
    if client is None or client == access.BOOTSTRAP_NAME:
        if not settings.api_token:
            return Signer(client, None, "PAYMENTS_API_TOKEN is not set (the admin callback key is derived from it)")
        return Signer(client, callbacks.bootstrap_key(settings.api_token))
    key = session.scalar(select(Client.callback_key).where(Client.name == client))
    return Signer(client, key, f"client {client} is not known")


def send(message: OutboxMessage, settings: Settings, send_task: SendTask, signer: Signer | None = None) -> str:
    """Send one message; no database transaction may be open. Returns where it went. A callback
    is sent with its client and signature (CONTRACT "Celery") from `signer`."""
    if message.kind == OutboxKind.CALLBACK.value:
        code = message.payload["route_code"]
        route = settings.callback_routes.get(code)
        if route is None:
            raise DeliveryFailed(f"no callback route for code {code!r} in PAYMENTS_CALLBACK_ROUTES")
        if signer is None:
            raise DeliveryFailed("callback not signed: no signer given")
        send_task(route.task, signer.sign(message.payload), route.queue)
        return f"{route.task}@{route.queue}"
    if settings.notify_task is not None:
        route = settings.notify_task
        send_task(route.task, message.payload, route.queue)
        return f"{route.task}@{route.queue}"
    if settings.smtp_url:
        _send_smtp(settings.smtp_url, message.payload)
        return "smtp"
    log.info(
        "e-mail (no PAYMENTS_NOTIFY_TASK or PAYMENTS_SMTP_URL set) to %s: %s\n%s",
        message.payload.get("to"),
        message.payload.get("subject"),
        message.payload.get("body"),
    )
    return "log"


def _send_smtp(url: str, email: dict[str, Any]) -> None:
    """`smtp://[user:password@]host[:port][?from=address]`; `smtps://` for TLS."""
    parts = urlsplit(url)
    sender = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get(
        "from", "payments@localhost"
    )
    mail = EmailMessage()
    mail["From"] = unquote(sender)
    mail["To"] = email["to"]
    mail["Subject"] = email["subject"]
    mail.set_content(email["body"])
    smtp_class = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    try:
        with smtp_class(parts.hostname or "localhost", parts.port or 25, timeout=10) as smtp:
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            smtp.send_message(mail)
    except (OSError, smtplib.SMTPException) as exc:
        # The message names the server, never the credentials in the URL.
        raise DeliveryFailed(f"SMTP {parts.hostname}:{parts.port or 25}: {type(exc).__name__}: {exc}") from None


def _add(
    session: Session, kind: OutboxKind, dedup_key: str, payload: dict[str, Any], request_id: str | None
) -> int | None:
    now = utcnow()
    outbox_id = session.execute(
        dialect_insert(session)(OutboxMessage)
        .values(
            dedup_key=dedup_key,
            kind=kind.value,
            request_id=request_id,
            payload=payload,
            status=OutboxStatus.PENDING.value,
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(OutboxMessage.id)
    ).scalar_one_or_none()
    if outbox_id is not None:
        session.info.setdefault("outbox", []).append(outbox_id)
    return outbox_id
