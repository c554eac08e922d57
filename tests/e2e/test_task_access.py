"""Trust at the broker's door (issue 12 item 3, DESIGN invariant 10), through a real worker on
Redis: a money task sent by name is decided only for a client token allowed to make it; an
internal task only for the service's own signature. A refused message moves nothing."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared import access, messages, payments, requests
from shared import client as payments_client
from shared.client import TOKEN_HEADER
from shared.config import Settings
from shared.errors import NotFound
from shared.models import CardPayment, OutboxMessage
from tests.conftest import API_TOKEN
from tests.e2e.conftest import BROKER, worker_env
from tests.e2e.processes import start, stop, wait_for
from tests.integration.helpers import add_member, add_organisation, balance_of, top_up

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, broker_url=BROKER)


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Ann (100.00) and Bob; two clubs with 50.00 each; clients with and without the rights."""
    with sessions.begin() as session:
        ids: dict[str, Any] = {
            "ann": add_member(session, "ann"),
            "bob": add_member(session, "bob", "Bob", "Ray"),
            "club": add_organisation(session, "club"),
            "other": add_organisation(session, "other", "South Club"),
        }
        top_up(session, ids["ann"], 100_00, "fund-ann")
        top_up(session, ids["club"], 50_00, "fund-club")
        top_up(session, ids["other"], 50_00, "fund-other")
        ids["tokens"] = {
            "portal": access.add(session, "portal", ["payments"], route_codes=["EVT"], request_prefix="portal-").token,
            "clubber": access.add(session, "clubber", ["clubs"], organisations=["club"]).token,
            "reporter": access.add(session, "reporter", ["reports"]).token,
            "revoked": access.add(session, "revoked", ["payments"]).token,
        }
        access.revoke(session, "revoked")
    return ids


def payment(**overrides: Any) -> dict[str, Any]:
    return {"request_id": "portal-p1", "member_id": "ann", "amount": "30.00", "description": "Congress entry",
            "organisation_id": "club", "payment_type": "Entry to an event", "route_code": "EVT", **overrides}


def send_raw(task: str, kwargs: dict[str, Any], headers: dict[str, str] | None = None, queue: str = "payments") -> None:
    """As anyone who can write to Redis: no token unless given, no signature unless copied."""
    payments_client.celery_for(BROKER).send_task(task, kwargs=kwargs, queue=queue, headers=headers or {})


def decided(sessions: sessionmaker[Session], request_id: str) -> requests.Request:
    def done() -> requests.Request | None:
        with sessions.begin() as session:
            row = requests.get(session, request_id)
        return None if row.queued else row
    return wait_for(done, f"request {request_id} to be decided", 30)


def money(sessions: sessionmaker[Session], world: dict[str, Any]) -> tuple[int, ...]:
    return tuple(balance_of(sessions, world[name]) for name in ("ann", "bob", "club", "other"))


def nothing_booked_or_sent(sessions: sessionmaker[Session], request_id: str) -> None:
    with sessions.begin() as session:
        entries = session.scalar(text("SELECT count(*) FROM journal_entries WHERE reference = :r"), {"r": request_id})
        callbacks = session.scalar(select(func.count()).select_from(OutboxMessage)
                                   .where(OutboxMessage.request_id == request_id))
    assert (entries, callbacks) == (0, 0)


def logged(log: Path, line: str) -> int:
    """How often the worker's log (shared by the session's tests) has said this."""
    return log.read_text(errors="replace").count(line)


REFUSED = [
    # (name, task, kwargs, token (a client's name, a literal, or None), reason, client recorded)
    ("no token", "payments.pay", payment(request_id="portal-none"), None, "unauthenticated", None),
    ("unknown token", "payments.pay", payment(request_id="portal-unknown"), "!not-a-token", "unauthenticated", None),
    ("revoked token", "payments.pay", payment(request_id="portal-revoked"), "revoked", "unauthenticated", None),
    ("no payments scope", "payments.pay", payment(request_id="portal-scope"), "reporter", "forbidden", "reporter"),
    ("another route code", "payments.pay", payment(request_id="portal-route", route_code="CLUBS"), "portal",
     "forbidden", "portal"),
    ("outside the request prefix", "payments.pay", payment(request_id="elsewhere-1"), "portal", "forbidden", "portal"),
    ("another organisation's money", "payments.transfer",
     {"request_id": "club-t1", "from_organisation_id": "other", "to_member_id": "bob", "amount": "10.00",
      "description": "Prize"}, "clubber", "forbidden", "clubber"),
    ("a settlement without admin", "payments.settle",
     {"request_id": "portal-s1", "organisations": "all"}, "portal", "forbidden", "portal"),
]


@pytest.mark.parametrize(("case", "task", "kwargs", "token", "reason", "client"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_money_task_without_a_valid_token_or_outside_its_clients_rights_fails_and_moves_nothing(
    sessions, world, case, task, kwargs, token, reason, client
) -> None:
    before = money(sessions, world)
    if token is None:
        send_raw(task, kwargs)
    else:
        given = token[1:] if token.startswith("!") else world["tokens"][token]
        send_raw(task, kwargs, {TOKEN_HEADER: given})
    row = decided(sessions, kwargs["request_id"])
    assert row.status == "failed"
    assert row.reason is not None and row.reason.startswith(f"{reason}: ")
    assert row.client == client
    assert money(sessions, world) == before
    nothing_booked_or_sent(sessions, kwargs["request_id"])


def test_a_valid_client_token_pays_and_records_the_clients_name(sessions, settings, world, received) -> None:
    payments_client.pay(settings, token=world["tokens"]["portal"], **payment(request_id="portal-ok"))
    row = decided(sessions, "portal-ok")
    assert (row.status, row.client) == ("paid", "portal")
    assert money(sessions, world) == (70_00, 0, 80_00, 50_00)
    assert wait_for(received, "the callback")[0]["status"] == "success"


def test_a_refused_message_never_changes_a_request_stored_by_someone_else(sessions, world, worker) -> None:
    refused = [f"payment portal-stored refused: {reason}" for reason in ("unauthenticated", "forbidden")]
    before = [logged(worker, line) for line in refused]
    order = payments.parse(payment(request_id="portal-stored"), Settings())
    with sessions.begin() as session:
        stored, _ = payments.record(session, order, client="portal")
    for token, amount in ((None, "99.00"), (world["tokens"]["reporter"], "30.00")):
        send_raw("payments.pay", payment(request_id="portal-stored", amount=amount),
                 None if token is None else {TOKEN_HEADER: token})
    wait_for(lambda: [logged(worker, line) for line in refused] == [n + 1 for n in before],
             "both messages to be refused")
    with sessions.begin() as session:
        assert requests.get(session, "portal-stored") == stored  # still queued, same attempts, same time
    assert balance_of(sessions, world["ann"]) == 100_00


def test_an_internal_task_sent_by_hand_without_the_service_signature_does_nothing(sessions, world, worker) -> None:
    before = money(sessions, world)
    refused = [f"payments.{task}: message refused: not signed by the service" for task in ("auto_topup", "sweep_auto_topups")]
    counts = [logged(worker, line) for line in refused]
    # Even with a valid client token: internal tasks take no client.
    send_raw("payments.auto_topup", {"member_id": "ann", "key": "by-hand"}, {TOKEN_HEADER: API_TOKEN}, queue="topups")
    send_raw("payments.sweep_auto_topups", {}, queue="topups")
    wait_for(lambda: [logged(worker, line) for line in refused] == [n + 1 for n in counts], "the worker to refuse both")
    with sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(CardPayment)) == 0
    assert money(sessions, world) == before


def test_a_tampered_kwarg_under_a_copied_signature_is_refused(sessions, world, worker) -> None:
    key = messages.service_key(API_TOKEN)
    assert key is not None
    genuine = payment(request_id="portal-sig", amount="1.00")
    copied = {messages.SIGNATURE_HEADER: messages.signature(key, "payments.pay", (), genuine)}
    send_raw("payments.pay", {**genuine, "amount": "90.00"}, copied)
    row = decided(sessions, "portal-sig")
    assert (row.status, row.client) == ("failed", None)
    assert row.reason is not None and row.reason.startswith("unauthenticated: ")
    # The same signature on another task, or an internal task's kwargs changed, is refused too.
    line = "payments.auto_topup: message refused: not signed by the service"
    count = logged(worker, line)
    internal = {"member_id": "ann", "key": "k1"}
    signed = {messages.SIGNATURE_HEADER: messages.signature(key, "payments.auto_topup", (), internal)}
    send_raw("payments.auto_topup", {**internal, "member_id": "bob"}, signed, queue="topups")
    wait_for(lambda: logged(worker, line) == count + 1, "the tampered auto top-up to be refused")
    assert money(sessions, world) == (100_00, 0, 50_00, 50_00)
    nothing_booked_or_sent(sessions, "portal-sig")


def test_a_message_asking_for_linked_tasks_is_refused(sessions, world, worker) -> None:
    """The worker would publish a linked task as its own, signed: a message may not ask for one."""
    link = {"task": "payments.auto_topup", "args": [], "kwargs": {"member_id": "ann", "key": "linked"},
            "options": {"queue": "topups"}, "subtask_type": None, "immutable": True}
    line = "payments.pay: message refused: it asks for linked tasks"
    count = logged(worker, line)
    sender = payments_client.celery_for(BROKER)
    sender.send_task("payments.pay", kwargs=payment(request_id="portal-linked"), queue="payments",
                     headers={TOKEN_HEADER: world["tokens"]["portal"]}, link=link)
    wait_for(lambda: logged(worker, line) == count + 1, "the refusal")
    with sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(CardPayment)) == 0
        with pytest.raises(NotFound):
            requests.get(session, "portal-linked")
    assert money(sessions, world) == (100_00, 0, 50_00, 50_00)


def test_beats_periodic_messages_are_signed_and_run(runtime_database_url, worker, tmp_path) -> None:
    """`payments beat` signs what it sends (shared.messages.SigningAMQP), so the worker runs it."""
    refused = "payments.relay_outbox: message refused"

    def ran() -> int:  # relays the worker ran to the end (returning how many it sent)
        return len(re.findall(r"payments\.relay_outbox\[[^\]]+\] succeeded in [0-9.]+s: \d", worker.read_text()))

    before = (ran(), logged(worker, refused))
    beat = start(["beat", "--schedule", str(tmp_path / "beat-schedule")],
                 worker_env(runtime_database_url, PAYMENTS_RELAY_OUTBOX_SECONDS="0.5"), tmp_path / "beat.log")
    try:
        wait_for(lambda: ran() >= before[0] + 2 or beat.poll() is not None, "two relays from beat", 60)
        assert beat.poll() is None, (tmp_path / "beat.log").read_text()[-2000:]
    finally:
        stop(beat)
    assert logged(worker, refused) == before[1]
