"""IOUs through the real stack (CONTRACT "IOUs"; ORIGINAL 2.11 with D-19 fixed): the Flask app,
Redis, a real `payments worker` on PostgreSQL as the runtime role, localstripe and the real
webhook server for checkouts, and the events app receiving callbacks. A club tool (`clubs`,
bound to club) raises and cancels IOUs; a member portal (`payments`) pays them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from shared import access
from shared import client as payments_client
from shared.config import Settings
from shared.models import OutboxMessage
from tests.conftest import API_TOKEN
from tests.e2e.conftest import BROKER, PUBLISHABLE_KEY, WEBHOOK_SECRET
from tests.e2e.processes import wait_for
from tests.e2e.test_stripe_flows import pay_as_browser, status_becomes
from tests.integration.helpers import add_member, add_organisation, balance_of, top_up
from tests.stripe_fixture import STRIPE_TEST_KEY

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def settings(settings: Settings, stripe_api: str) -> Settings:
    return replace(settings, broker_url=BROKER, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api,
                   stripe_webhook_secret=WEBHOOK_SECRET, stripe_publishable_key=PUBLISHABLE_KEY)


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """ann with 100.00, bob with 10.00, the club; the club's tool and the members' portal."""
    with sessions.begin() as session:
        ids: dict[str, Any] = {"ann": add_member(session, "ann"), "bob": add_member(session, "bob", "Bob", "Ray"),
                               "club": add_organisation(session, "club")}
        top_up(session, ids["ann"], 100_00, "fund-ann")
        top_up(session, ids["bob"], 10_00, "fund-bob")
        ids["club-tool"] = access.add(session, "club-tool", ["clubs"], organisations=["club"], route_codes=["EVT"])
        ids["portal"] = access.add(session, "portal", ["payments"])
    return ids


def bearer(issued: access.Issued) -> dict[str, str]:
    return {"Authorization": f"Bearer {issued.token}"}


def raise_iou(client: FlaskClient, world: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    body = {"request_id": "iou-1", "organisation_id": "club", "member_id": "ann", "amount": "30.00",
            "description": "Table money 3 May", "session_id": "s-9", "route_code": "EVT",
            "route_payload": {"entry": 12}, **overrides}
    answer = client.post("/api/ious", json=body, headers=bearer(world["club-tool"]))
    assert answer.status_code == 201, answer.get_data(as_text=True)
    return answer.get_json()  # type: ignore[no-any-return]


def outcome(client: FlaskClient, world: dict[str, Any], request_id: str, *, timeout: float = 30) -> dict:
    """Poll the request's status (as the portal that made it) until it is no longer queued."""
    def done() -> dict | None:
        body = client.get(f"/api/payments/{request_id}", headers=bearer(world["portal"])).get_json()
        return body if body.get("status") not in (None, "queued") else None
    return wait_for(done, f"request {request_id} to be decided", timeout)


def listed(client: FlaskClient, path: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    answer = client.get(path, headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()["ious"]  # type: ignore[no-any-return]


def iou_status(client: FlaskClient, world: dict[str, Any], member: str = "ann") -> list[tuple[str, Any]]:
    return [(i["status"], i["payment_request_id"])
            for i in listed(client, f"/api/members/{member}/ious", bearer(world["portal"]))]


def postings(sessions: sessionmaker[Session], request_id: str) -> list[tuple[Any, ...]]:
    """The payment's journal entry, one row per posting: (owner, type, session id, amount)."""
    with sessions.begin() as session:
        return [tuple(row) for row in session.execute(text(
            "SELECT a.owner, e.type, e.session_id, p.amount FROM journal_entries e"
            " JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id"
            " WHERE e.idempotency_key = :key ORDER BY p.amount"), {"key": f"payment:{request_id}"})]


def signed_for_the_raiser(callback: dict[str, Any], world: dict[str, Any]) -> bool:
    return (callback["client"] == "club-tool"
            and payments_client.verify_callback(callback, world["club-tool"].callback_key)
            and not payments_client.verify_callback(callback, world["portal"].callback_key)
            and not payments_client.verify_callback(callback, payments_client.admin_callback_key(API_TOKEN)))


def test_an_iou_is_raised_emailed_listed_and_paid_from_the_balance_with_its_own_signed_callback(
    client, world, sessions, received
) -> None:
    raised = raise_iou(client, world)
    assert (raised["status"], raised["amount"], raised["client"]) == ("open", "30.00", "club-tool")

    def email_sent() -> dict | None:
        with sessions.begin() as session:
            found = session.scalar(select(OutboxMessage).where(OutboxMessage.kind == "notification"))
            return found.payload if found is not None and found.status == "sent" else None

    email = wait_for(email_sent, "the IOU's e-mail to be sent by the worker")
    assert (email["to"], email["subject"]) == ("ann@example.org", "Pending Payment to North Shore Bridge Club")
    assert "you owe 30.00 for: Table money 3 May" in email["body"] and "pay it later" in email["body"]
    assert balance_of(sessions, world["ann"]) == 100_00  # raising books nothing

    [for_member] = listed(client, "/api/members/ann/ious", bearer(world["portal"]))
    [for_club] = listed(client, "/api/organisations/club/ious?status=open", bearer(world["club-tool"]))
    assert for_member == for_club == raised

    path = f"/api/ious/{raised['iou_id']}/pay"
    answer = client.post(path, json={"request_id": "p1"}, headers=bearer(world["portal"]))
    assert (answer.status_code, answer.get_json()["status"]) == (202, "queued")
    assert outcome(client, world, "p1")["status"] == "paid"
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["club"])) == (70_00, 30_00)
    assert postings(sessions, "p1") == [("ann", "Miscellaneous", "s-9", -30_00),
                                        ("club", "Miscellaneous", "s-9", 30_00)]
    assert iou_status(client, world) == [("paid", "p1")]
    assert listed(client, "/api/organisations/club/ious?status=open", bearer(world["club-tool"])) == []

    [callback] = wait_for(received, "the IOU's callback")
    assert callback == {"request_id": "iou-1", "route_code": "EVT", "route_payload": {"entry": 12},
                        "status": "success", "amount": "30.00", "reason": None, "member_id": "ann",
                        "organisation_id": "club", "client": "club-tool", "signature": callback["signature"]}
    assert signed_for_the_raiser(callback, world)


def test_an_iou_paid_by_checkout_is_paid_when_the_card_money_arrives(
    client, world, sessions, browser, webhook_url, received
) -> None:
    raised = raise_iou(client, world, member_id="bob")
    path = f"/api/ious/{raised['iou_id']}/pay"
    answer = client.post(path, json={"request_id": "p1", "allow_checkout": True}, headers=bearer(world["portal"]))
    assert answer.status_code == 202
    waiting = outcome(client, world, "p1")
    assert (waiting["status"], waiting["checkout"]["amount"]) == ("awaiting_card", "20.00")
    # While the card is awaited the IOU is neither paid again nor cancelled.
    assert iou_status(client, world, "bob") == [("open", "p1")]
    assert client.post(path, json={"request_id": "p2"}, headers=bearer(world["portal"])).status_code == 409
    assert client.delete(f"/api/ious/{raised['iou_id']}", headers=bearer(world["club-tool"])).status_code == 409

    pay_as_browser(browser, waiting["checkout"]["payment_intent_id"])
    assert status_becomes(client, bearer(world["portal"]), "p1", "paid")["status"] == "paid"
    assert (balance_of(sessions, world["bob"]), balance_of(sessions, world["club"])) == (0, 30_00)
    assert postings(sessions, "p1") == [("bob", "Miscellaneous", "s-9", -30_00),
                                        ("club", "Miscellaneous", "s-9", 30_00)]
    assert iou_status(client, world, "bob") == [("paid", "p1")]
    [callback] = wait_for(received, "the IOU's callback")
    assert (callback["request_id"], callback["status"], callback["amount"]) == ("iou-1", "success", "30.00")
    assert signed_for_the_raiser(callback, world)


def test_an_iou_paid_twice_is_booked_once(client, world, sessions, settings, received) -> None:
    raised = raise_iou(client, world)
    path = f"/api/ious/{raised['iou_id']}/pay"
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(
            lambda i: client.post(path, json={"request_id": f"p{i}"}, headers=bearer(world["portal"])), range(5)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202, 409, 409, 409, 409], [a.get_json() for a in answers]
    [winner] = [a.get_json()["request_id"] for a in answers if a.status_code == 202]
    assert outcome(client, world, winner)["status"] == "paid"
    # Afterwards: the same request replays, another is refused, and a duplicate task sent by
    # name (the stored request, by the client that made it) books nothing more.
    again = client.post(path, json={"request_id": winner}, headers=bearer(world["portal"]))
    assert (again.status_code, again.get_json()["status"]) == (200, "paid")
    refused = client.post(path, json={"request_id": "late"}, headers=bearer(world["portal"]))
    assert refused.status_code == 409 and f"already paid by request {winner}" in refused.get_json()["error"]["message"]
    with sessions.begin() as session:
        stored = session.scalar(text("SELECT payload FROM payment_requests WHERE request_id = :r"), {"r": winner})
    payments_client.pay(settings, token=world["portal"].token, **stored)
    wait_for(lambda: attempts(sessions, winner) == 2, "the duplicate task to be handled")
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["club"])) == (70_00, 30_00)
    assert len(postings(sessions, winner)) == 2
    assert [c["request_id"] for c in wait_for(received, "the IOU's callback")] == ["iou-1"]


def attempts(sessions: sessionmaker[Session], request_id: str) -> int:
    with sessions.begin() as session:
        return session.scalar(text("SELECT attempts FROM payment_requests WHERE request_id = :r"), {"r": request_id})


def test_a_cancelled_iou_calls_back_failure_and_cannot_be_paid(client, world, sessions, received) -> None:
    raised = raise_iou(client, world)
    answer = client.delete(f"/api/ious/{raised['iou_id']}", headers=bearer(world["club-tool"]))
    assert (answer.status_code, answer.get_json()["status"]) == (200, "cancelled")
    [callback] = wait_for(received, "the cancelled IOU's callback")
    assert (callback["request_id"], callback["status"], callback["reason"]) == ("iou-1", "failure", "cancelled")
    assert signed_for_the_raiser(callback, world)
    path = f"/api/ious/{raised['iou_id']}/pay"
    paying = client.post(path, json={"request_id": "p1"}, headers=bearer(world["portal"]))
    assert (paying.status_code, paying.get_json()["error"]["field"]) == (409, "iou_id")
    assert client.get("/api/payments/p1", headers=bearer(world["portal"])).status_code == 404
    assert balance_of(sessions, world["ann"]) == 100_00
    assert iou_status(client, world) == [("cancelled", None)]
