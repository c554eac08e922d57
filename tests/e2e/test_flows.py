"""Payments, transfers, settlements and callbacks through the real stack: the Flask app, Redis,
a real `payments worker` on PostgreSQL, and a second Celery app consuming callbacks."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace


import pytest
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from shared import client as payments_client
from shared import access, messages, outbox, payments
from shared.config import Settings
from shared.models import OutboxMessage
from tests.conftest import API_TOKEN
from tests.e2e.conftest import BROKER, worker_env
from tests.e2e.processes import PAYMENTS, wait_for
from tests.integration.helpers import add_member, add_organisation, balance_of, top_up

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, broker_url=BROKER)


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions.begin() as session:
        ids = {
            "ann": add_member(session, "ann"),
            "bob": add_member(session, "bob", "Bob", "Ray"),
            "club": add_organisation(session, "club"),
            "other": add_organisation(session, "other", "South Club"),
        }
        top_up(session, ids["ann"], 100_00, "fund-ann")
    return ids


def outcome(client: FlaskClient, auth: dict, request_id: str, *, timeout: float = 30) -> dict:
    """Poll the request's status until it is no longer queued."""
    def done() -> dict | None:
        body = client.get(f"/api/payments/{request_id}", headers=auth).get_json()
        return body if body.get("status") not in (None, "queued") else None
    return wait_for(done, f"request {request_id} to be decided", timeout)


def payment(**overrides: object) -> dict:
    return {"request_id": "r1", "member_id": "ann", "amount": "30.00", "description": "Congress entry",
            "organisation_id": "club", "payment_type": "Entry to an event", **overrides}


def test_a_payment_posted_over_http_is_paid_by_the_worker_and_called_back(client, auth, world, sessions, received) -> None:
    answer = client.post("/api/payments", json=payment(route_code="EVT", route_payload={"entry": 12}), headers=auth)
    assert answer.status_code == 202
    assert answer.get_json()["status"] == "queued"
    assert outcome(client, auth, "r1") == {"request_id": "r1", "kind": "payment", "status": "paid", "amount": "30.00",
                                            "client": "admin"}
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["club"])) == (70_00, 30_00)
    [callback] = wait_for(received, "the callback")
    assert callback == {"request_id": "r1", "route_code": "EVT", "route_payload": {"entry": 12}, "status": "success",
                        "amount": "30.00", "reason": None, "member_id": "ann", "organisation_id": "club",
                        "client": "admin", "signature": callback["signature"]}
    assert payments_client.verify_callback(callback, payments_client.admin_callback_key(API_TOKEN))
    again = client.post("/api/payments", json=payment(route_code="EVT", route_payload={"entry": 12}), headers=auth)
    assert (again.status_code, again.get_json()["status"]) == (200, "paid")
    assert client.post("/api/payments", json=payment(amount="31.00"), headers=auth).status_code == 409


def test_a_declined_payment_books_nothing_and_calls_back_failure(client, auth, world, sessions, received) -> None:
    client.post("/api/payments", json=payment(amount="150.00", route_code="EVT"), headers=auth)
    result = outcome(client, auth, "r1")
    assert (result["status"], result["reason"]) == ("declined", "insufficient funds: balance 100.00, needs 150.00")
    assert balance_of(sessions, world["ann"]) == 100_00
    callbacks = wait_for(received, "the failure callback")
    assert [(c["status"], c["reason"]) for c in callbacks] == [("failure", result["reason"])]


def test_twenty_payments_sent_at_once_through_the_worker_pay_exactly_ten(client, auth, world, sessions, settings) -> None:
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda i: payments_client.pay(settings, token=API_TOKEN, **payment(request_id=f"c{i}", amount="10.00")),
                      range(20)))
    statuses = [outcome(client, auth, f"c{i}")["status"] for i in range(20)]
    assert sorted(statuses) == ["declined"] * 10 + ["paid"] * 10
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["club"])) == (0, 100_00)


def test_one_request_id_sent_five_times_at_once_books_once_and_calls_back_once(
    client, auth, world, sessions, settings, received
) -> None:
    with ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda _: payments_client.pay(settings, token=API_TOKEN, **payment(route_code="EVT")), range(5)))
    assert outcome(client, auth, "r1")["status"] == "paid"
    wait_for(lambda: sessions_attempts(sessions) == 5, "all five deliveries to be handled")
    assert balance_of(sessions, world["ann"]) == 70_00
    assert len(wait_for(received, "the callback")) == 1


def sessions_attempts(sessions: sessionmaker[Session]) -> int:
    with sessions.begin() as session:
        return session.scalar(text("SELECT attempts FROM payment_requests WHERE request_id = 'r1'"))


def test_a_malformed_task_sent_by_name_fails_its_request_with_a_failure_callback(
    client, auth, world, settings, received
) -> None:
    payments_client.pay(settings, token=API_TOKEN, **payment(amount=12.5, route_code="EVT"))
    result = outcome(client, auth, "r1")
    assert result["status"] == "failed"
    assert "amount: float 12.5 is not allowed" in result["reason"]
    assert [c["status"] for c in wait_for(received, "the failure callback")] == ["failure"]


def test_transfers_between_members_and_from_organisations(client, auth, world, sessions) -> None:
    client.post("/api/adjustments", headers=auth, json={"request_id": "seed", "organisation_id": "club",
                "amount": "500.00", "description": "Seed", "admin_id": "adm"})
    bodies = [
        {"request_id": "t1", "from_member_id": "ann", "to_member_id": "bob", "amount": "25.00", "description": "Lunch"},
        {"request_id": "t2", "from_organisation_id": "club", "to_member_id": "bob", "amount": "40.00", "description": "Prize"},
        {"request_id": "t3", "from_organisation_id": "club", "to_organisation_id": "other", "amount": "60.00", "description": "Share"},
        {"request_id": "t4", "from_organisation_id": "other", "to_organisation_id": "club", "amount": "60.01", "description": "Too much"},
    ]
    for body in bodies:
        assert client.post("/api/transfers", json=body, headers=auth).status_code == 202
    assert [outcome(client, auth, b["request_id"])["status"] for b in bodies] == ["paid", "paid", "paid", "declined"]
    balances = {name: balance_of(sessions, world[name]) for name in ("ann", "bob", "club", "other")}
    assert balances == {"ann": 75_00, "bob": 65_00, "club": 400_00, "other": 60_00}
    with sessions.begin() as session:
        emails = [m.payload for m in session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "notification"))]
    assert sorted((e["kind"], e["to"], e["subject"]) for e in emails) == [
        ("transfer_from_organisation", "bob@example.org", "Transfer from North Shore Bridge Club"),
        ("transfer_received", "bob@example.org", "Transfer from Ann Lee"),
        ("transfer_sent", "ann@example.org", "Transfer to Bob Ray"),
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "0.00"}, "amount"),
        ({"amount": "-1.00"}, "amount"),
        ({"amount": "2000.01"}, "amount"),
        ({"to_member_id": "ann"}, "to_member_id"),
        ({"to_member_id": None, "to_organisation_id": "club"}, "to_organisation_id"),
        ({"from_member_id": None}, "from_member_id"),
    ],
)
def test_a_bad_transfer_is_a_4xx_naming_the_field_and_nothing_is_stored(client, auth, world, sessions, body, field) -> None:
    full = {"request_id": "t1", "from_member_id": "ann", "to_member_id": "bob", "amount": "5.00", "description": "x", **body}
    answer = client.post("/api/transfers", json={k: v for k, v in full.items() if v is not None}, headers=auth)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["field"] == field
    assert client.get("/api/payments/t1", headers=auth).status_code == 404
    assert balance_of(sessions, world["ann"]) == 100_00


def test_settlement_pays_the_worked_example_once_per_organisation_and_date(client, auth, world, sessions) -> None:
    client.put("/api/organisations/club", headers=auth, json={"name": "North Shore Bridge Club",
               "minimum_balance_after_settlement": "100.00"})
    with freeze_time("2026-10-15 02:00:00"):
        client.post("/api/adjustments", headers=auth, json={"request_id": "seed", "organisation_id": "club",
                    "amount": "1000.00", "description": "Takings", "admin_id": "adm"})
    body = {"request_id": "s1", "reference_date": "2026-10-31",
            "organisations": [{"organisation_id": "club"}, {"organisation_id": "other"}, {"organisation_id": "ghost"}]}
    assert client.post("/api/settlements", json=body, headers=auth).status_code == 202
    result = outcome(client, auth, "s1")
    assert result["status"] == "completed"
    assert result["amount"] == "900.00"
    assert result["organisations"] == [
        {"organisation_id": "club", "status": "settled", "gross": "1000.00", "net": "900.00", "fee_percent": "2.00",
         "bank_amount": "882.00", "fee": "18.00", "entry_id": result["organisations"][0]["entry_id"]},
        {"organisation_id": "other", "status": "nothing_to_settle", "gross": "0.00", "net": "0.00"},
        {"organisation_id": "ghost", "status": "failed", "reason": "organisation ghost: not known to payments"},
    ]
    assert balance_of(sessions, world["club"]) == 100_00
    client.post("/api/settlements", json={**body, "request_id": "s2"}, headers=auth)
    again = outcome(client, auth, "s2")["organisations"][0]
    assert again == {"organisation_id": "club", "status": "already_settled",
                     "entry_id": result["organisations"][0]["entry_id"]}
    assert balance_of(sessions, world["club"]) == 100_00


def test_a_callback_with_no_route_ends_dead_and_replays_once_the_route_is_fixed(
    client, auth, world, sessions, database_url, received
) -> None:
    client.post("/api/payments", json=payment(route_code="GONE"), headers=auth)
    assert outcome(client, auth, "r1")["status"] == "paid"

    def dead() -> OutboxMessage | None:
        with sessions.begin() as session:
            return session.scalar(select(OutboxMessage).where(OutboxMessage.status == "dead"))

    message = wait_for(dead, "the callback to be dead after 3 tries")
    assert message.attempts == 3
    assert message.last_error == "DeliveryFailed: no callback route for code 'GONE' in PAYMENTS_CALLBACK_ROUTES"
    fixed = worker_env(database_url, PAYMENTS_CALLBACK_ROUTES="GONE=events.payment_done@events")
    done = subprocess.run([PAYMENTS, "outbox", "replay", str(message.id)], env={**fixed, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"outbox {message.id}: sent"
    [replayed] = wait_for(received, "the replayed callback")
    assert replayed["route_code"] == "GONE"
    assert payments_client.verify_callback(replayed, payments_client.admin_callback_key(API_TOKEN))


def test_a_request_stored_while_its_task_was_lost_is_redriven_and_paid(world, sessions, settings) -> None:
    """The API stored the request but the broker was down, so its task never left."""
    with sessions.begin() as session:
        payments.record(session, payments.parse(payment(), settings))

    def paid_after_redrive() -> bool:
        messages.send("payments.redrive_requests", {}, queue="payments", settings=settings)
        return payments_client.status("r1", settings)["status"] == "paid"

    wait_for(paid_after_redrive, "the redriven request to be paid")
    assert balance_of(sessions, world["ann"]) == 70_00


def test_a_callback_whose_dispatch_was_lost_is_sent_by_the_relay(sessions, settings, received) -> None:
    with sessions.begin() as session:
        outbox.add_callback(session, request_id="lost", kwargs={"request_id": "lost", "route_code": "EVT",
                            "route_payload": None, "status": "success", "amount": "1.00", "reason": None})
    messages.send("payments.relay_outbox", {}, queue="outbox", settings=settings)
    [relayed] = wait_for(received, "the relayed callback")
    assert relayed["request_id"] == "lost"
    assert payments_client.verify_callback(relayed, payments_client.admin_callback_key(API_TOKEN))


def test_a_callback_for_a_stored_clients_request_verifies_with_its_key_and_not_once_changed(
    client, world, sessions, received
) -> None:
    """What a calling module does with each callback: verify it with its own callback key
    (from `payments clients add`) before trusting it."""
    with sessions.begin() as session:
        events = access.add(session, "events", ["payments"], route_codes=["EVT"])
        other = access.add(session, "portal", ["payments"])
    headers = {"Authorization": f"Bearer {events.token}"}
    assert client.post("/api/payments", json=payment(request_id="ev-1", route_code="EVT"), headers=headers).status_code == 202
    [callback] = wait_for(received, "the callback")
    assert (callback["client"], callback["member_id"], callback["organisation_id"]) == ("events", "ann", "club")
    assert payments_client.verify_callback(callback, events.callback_key)
    for forged in ({"amount": "3000.00"}, {"status": "failure"}, {"request_id": "ev-2"}):
        assert not payments_client.verify_callback(callback | forged, events.callback_key)
    assert not payments_client.verify_callback(callback, other.callback_key)
    assert not payments_client.verify_callback(callback, payments_client.admin_callback_key(API_TOKEN))
    with sessions.begin() as session:
        client_of_entry = session.scalar(text("SELECT client FROM journal_entries WHERE idempotency_key = 'payment:ev-1'"))
    assert client_of_entry == "events"


def test_the_workers_log_is_json_and_holds_no_configured_secret(client, auth, world, worker, received) -> None:
    from tests.e2e.conftest import WEBHOOK_SECRET
    from tests.stripe_fixture import STRIPE_TEST_KEY

    client.post("/api/payments", json=payment(route_code="EVT"), headers=auth)
    assert outcome(client, auth, "r1")["status"] == "paid"
    wait_for(received, "the callback")
    lines = [line for line in worker.read_text().splitlines() if line.startswith("{")]
    task_lines = [json.loads(line) for line in lines if '"task": "payments.pay"' in line]
    assert any(entry.get("request_id") == "r1" for entry in task_lines)
    for secret in (STRIPE_TEST_KEY, WEBHOOK_SECRET, API_TOKEN):
        assert secret not in worker.read_text()
