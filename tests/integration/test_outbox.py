"""shared.outbox: sending after commit, by task, by SMTP (a real local server) or to the log;
backoff, dead rows, replay, and the relay's choice of what is due."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from freezegun import freeze_time
from sqlalchemy.orm import Session, sessionmaker

from shared import access, client, outbox, requests
from shared.config import CallbackRoute, Settings
from shared.models import OutboxMessage, RequestKind, RequestStatus
from tests.conftest import API_TOKEN
from tests.e2e.processes import free_port

EMAIL = {"kind": "transfer_sent", "member_id": "ann", "to": "ann@example.org",
         "subject": "Transfer to Bob Ray", "body": "Dear Ann,\n\nYou transferred 5.00.\n"}


class Inbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


def queue_email(sessions: sessionmaker[Session], key: str = "e1") -> int:
    with sessions.begin() as session:
        outbox_id = outbox.add_notification(session, key, EMAIL)
        assert session.info["outbox"] == [outbox_id]
    return outbox_id


def row(sessions: sessionmaker[Session], outbox_id: int) -> OutboxMessage:
    with sessions.begin() as session:
        return session.get(OutboxMessage, outbox_id)


def never_called(*args: object) -> None:
    raise AssertionError(f"send_task called with {args}")


def test_an_email_is_sent_through_the_configured_smtp_server(sessions, smtp_server) -> None:
    controller, inbox = smtp_server
    outbox_id = queue_email(sessions)
    config = Settings(smtp_url=f"smtp://127.0.0.1:{controller.port}?from=payments@federation.example")
    assert outbox.deliver(sessions, outbox_id, config, never_called) == ("sent", None)
    [mail] = inbox.messages
    assert (mail.mail_from, mail.rcpt_tos) == ("payments@federation.example", ["ann@example.org"])
    text = mail.content.decode()
    assert "Subject: Transfer to Bob Ray" in text and "You transferred 5.00." in text
    assert row(sessions, outbox_id).status == "sent"
    assert outbox.deliver(sessions, outbox_id, config, never_called) == ("skipped", None)
    assert len(inbox.messages) == 1


def test_an_unreachable_smtp_server_backs_off_keeps_the_error_and_hides_the_password(sessions) -> None:
    outbox_id = queue_email(sessions)
    config = Settings(smtp_url=f"smtp://mailer:pa55word@127.0.0.1:{free_port()}", outbox_max_attempts=2)
    outcome, delay = outbox.deliver(sessions, outbox_id, config, never_called)
    assert outcome == "retry" and 1.0 <= delay <= 2.0
    message = row(sessions, outbox_id)
    assert (message.status, message.attempts) == ("pending", 1)
    assert message.last_error.startswith("DeliveryFailed: SMTP 127.0.0.1:")
    assert "pa55word" not in message.last_error
    # Not due again until the backoff has passed, then dead after the second try.
    assert outbox.deliver(sessions, outbox_id, config, never_called) == ("skipped", None)
    with freeze_time(message.next_attempt_at + timedelta(seconds=1)):
        assert outbox.deliver(sessions, outbox_id, config, never_called) == ("dead", None)
    assert row(sessions, outbox_id).status == "dead"


def test_notifications_go_to_the_notify_task_when_one_is_set(sessions) -> None:
    sent = []
    outbox_id = queue_email(sessions)
    config = Settings(notify_task=CallbackRoute("mail.send", "mail"), smtp_url="smtp://unused:1")
    outcome = outbox.deliver(sessions, outbox_id, config, lambda *args: sent.append(args))
    assert outcome == ("sent", None)
    assert sent == [("mail.send", EMAIL, "mail")]


def test_without_a_task_or_smtp_server_the_email_is_logged(sessions, caplog) -> None:
    outbox_id = queue_email(sessions)
    with caplog.at_level(logging.INFO, logger="shared.outbox"):
        assert outbox.deliver(sessions, outbox_id, Settings(), never_called) == ("sent", None)
    assert "to ann@example.org: Transfer to Bob Ray" in caplog.text


ROUTES = {"EVT": CallbackRoute("events.paid", "events")}


def test_a_callback_goes_to_its_routes_task_and_queue_signed(sessions) -> None:
    sent = []
    with sessions.begin() as session:
        outbox_id = outbox.add_callback(session, request_id="r1", kwargs={"request_id": "r1", "route_code": "EVT"})
        assert outbox.add_callback(session, request_id="r1", kwargs={"other": 1}) is None  # one per request
    config = Settings(callback_routes=ROUTES, api_token=API_TOKEN)
    assert outbox.deliver(sessions, outbox_id, config, lambda *args: sent.append(args)) == ("sent", None)
    [(task, kwargs, queue)] = sent
    assert (task, queue) == ("events.paid", "events")
    # No request recorded, so no client: signed with the bootstrap client's derived key.
    assert kwargs == {"request_id": "r1", "route_code": "EVT", "client": None, "signature": kwargs["signature"]}
    assert client.verify_callback(kwargs, client.admin_callback_key(API_TOKEN))


def _paid_callback(sessions: sessionmaker[Session], request_id: str, maker: str | None) -> int:
    """A payment request made by `maker`, finished `paid` with its callback row; the row's id."""
    with sessions.begin() as session:
        row, _ = requests.record(session, RequestKind.PAYMENT, request_id, {"route_payload": {"seat": "N3"},
                                 "organisation_id": "club"}, amount=12_50, member_id="ann", route_code="EVT",
                                 client=maker)
        requests.finish(session, row, RequestStatus.PAID)
        [outbox_id] = session.info["outbox"]
    return outbox_id


def _sent(sessions: sessionmaker[Session], outbox_id: int, config: Settings) -> dict:
    sent: list[dict] = []
    assert outbox.deliver(sessions, outbox_id, config, lambda _task, kwargs, _queue: sent.append(kwargs)) == (
        "sent", None)
    return sent[0]


@pytest.mark.parametrize("revoked", [False, True], ids=["live client", "revoked client"])
def test_a_callback_is_signed_with_its_clients_key_and_any_change_fails_verification(sessions, revoked) -> None:
    with sessions.begin() as session:
        key = access.add(session, "events", ["payments"]).callback_key
        other_key = access.add(session, "portal", ["payments"]).callback_key
    outbox_id = _paid_callback(sessions, "evt-1", "events")
    if revoked:  # its requests made before the revocation still get signed callbacks
        with sessions.begin() as session:
            access.revoke(session, "events")
    kwargs = _sent(sessions, outbox_id, Settings(callback_routes=ROUTES, api_token=API_TOKEN))
    assert kwargs == {"request_id": "evt-1", "route_code": "EVT", "route_payload": {"seat": "N3"},
                      "status": "success", "amount": "12.50", "reason": None, "member_id": "ann",
                      "organisation_id": "club", "client": "events", "signature": kwargs["signature"]}
    assert client.verify_callback(kwargs, key)
    assert client.verify_callback(json.loads(json.dumps(kwargs)), key)  # as a consumer receives it
    for change in ({"amount": "125.00"}, {"status": "failure"}, {"request_id": "evt-2"}, {"client": "portal"},
                   {"route_payload": {"seat": "N4"}}, {"extra": 1}):
        assert not client.verify_callback(kwargs | change, key), change
    assert not client.verify_callback(kwargs, other_key)
    assert not client.verify_callback(kwargs, client.admin_callback_key(API_TOKEN))
    for signature in (None, "", "zz" * 32, kwargs["signature"][:-1], kwargs["signature"].upper(), 7):
        assert not client.verify_callback(kwargs | {"signature": signature}, key), signature
    assert not client.verify_callback({k: v for k, v in kwargs.items() if k != "signature"}, key)


def test_a_callback_of_the_bootstrap_client_is_signed_with_the_key_derived_from_the_api_token(sessions) -> None:
    outbox_id = _paid_callback(sessions, "adm-1", access.BOOTSTRAP_NAME)
    kwargs = _sent(sessions, outbox_id, Settings(callback_routes=ROUTES, api_token=API_TOKEN))
    assert kwargs["client"] == "admin"
    assert client.verify_callback(kwargs, client.admin_callback_key(API_TOKEN))
    assert not client.verify_callback(kwargs, client.admin_callback_key(API_TOKEN + "x"))


def test_a_forged_signature_in_the_stored_kwargs_is_replaced_not_sent(sessions) -> None:
    with sessions.begin() as session:
        outbox_id = outbox.add_callback(session, request_id="r1", kwargs={
            "request_id": "r1", "route_code": "EVT", "client": "events", "signature": "00" * 32})
    kwargs = _sent(sessions, outbox_id, Settings(callback_routes=ROUTES, api_token=API_TOKEN))
    assert kwargs["client"] is None and kwargs["signature"] != "00" * 32  # the request's client, not the row's
    assert client.verify_callback(kwargs, client.admin_callback_key(API_TOKEN))


def test_a_callback_with_no_key_to_sign_it_is_not_sent_and_backs_off(sessions) -> None:
    with sessions.begin() as session:
        outbox_id = outbox.add_callback(session, request_id="r1", kwargs={"request_id": "r1", "route_code": "EVT"})
    outcome, delay = outbox.deliver(sessions, outbox_id, Settings(callback_routes=ROUTES), never_called)
    assert outcome == "retry" and delay is not None
    assert row(sessions, outbox_id).last_error == (
        "DeliveryFailed: callback not signed: PAYMENTS_API_TOKEN is not set (the admin callback key is derived from it)")


def test_the_relay_picks_pending_due_rows_only_and_replay_revives_a_dead_row(sessions) -> None:
    config = replace(Settings(), outbox_max_attempts=1)
    sent_id, dead_id, due_id = (queue_email(sessions, key) for key in ("a", "b", "c"))
    outbox.deliver(sessions, sent_id, config, never_called)
    with sessions.begin() as session:
        outbox.record_failure(session, dead_id, "boom", max_attempts=0, backoff=1)
    with sessions.begin() as session:
        assert outbox.due(session) == [due_id]
        outbox.replay(session, dead_id)
    with sessions.begin() as session:
        assert outbox.due(session) == [dead_id, due_id]
    assert (row(sessions, dead_id).status, row(sessions, dead_id).attempts) == ("pending", 0)


@pytest.mark.parametrize(("attempts", "low", "high"), [(1, 1.0, 2.0), (2, 2.0, 4.0), (5, 16.0, 32.0), (30, 300.0, 600.0)])
def test_backoff_doubles_with_jitter_and_is_capped(attempts: int, low: float, high: float) -> None:
    delays = [outbox.backoff_delay(attempts, 2.0) for _ in range(50)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 1
