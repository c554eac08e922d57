"""IOUs (CONTRACT "IOUs"; ORIGINAL 2.11 with D-19 fixed) over HTTP on PostgreSQL, with no worker:
a stored IOU payment is decided here with `payments.pay`, as the worker would decide it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from shared import access, callbacks as signing, ious, outbox, payments, requests
from shared.config import Settings
from shared.models import Iou, OutboxMessage, RequestKind
from tests.conftest import API_TOKEN
from tests.e2e.processes import wait_for
from tests.integration.helpers import add_member, add_organisation, balance_of, top_up
from tests.integration.test_api import assert_error

ADMIN = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Members ann (100.00) and bob (nothing), clubs club and other; clients for a club tool bound
    to club, and a member portal."""
    with sessions.begin() as session:
        ids: dict[str, Any] = {
            "ann": add_member(session, "ann"),
            "bob": add_member(session, "bob", "Bob", "Ray"),
            "club": add_organisation(session, "club"),
            "other": add_organisation(session, "other", "South Club"),
        }
        top_up(session, ids["ann"], 100_00, "fund-ann")
        ids["club-tool"] = access.add(session, "club-tool", ["clubs"], organisations=["club"])
        ids["portal"] = access.add(session, "portal", ["payments"])
    return ids


def bearer(issued: access.Issued) -> dict[str, str]:
    return {"Authorization": f"Bearer {issued.token}"}


def iou(**overrides: Any) -> dict[str, Any]:
    body = {"request_id": "iou-1", "organisation_id": "club", "member_id": "ann", "amount": "12.50",
            "description": "Table money 3 May", "session_id": "s-77", "route_code": "UPP",
            "route_payload": {"entry": 5}, **overrides}
    return {k: v for k, v in body.items() if v is not None}


def raise_iou(client: FlaskClient, headers: dict[str, str] = ADMIN, **overrides: Any) -> dict[str, Any]:
    answer = client.post("/api/ious", json=iou(**overrides), headers=headers)
    assert answer.status_code == 201, answer.get_data(as_text=True)
    return answer.get_json()  # type: ignore[no-any-return]


def decide(sessions: sessionmaker[Session], request_id: str) -> requests.Request:
    """What the worker does with the stored request."""
    with sessions.begin() as session:
        stored = requests.get(session, request_id)
        return payments.pay(session, payments.PaymentOrder.from_payload(stored.payload), Settings())


def outbox_rows(sessions: sessionmaker[Session], kind: str) -> list[OutboxMessage]:
    with sessions.begin() as session:
        found = list(session.scalars(
            select(OutboxMessage).where(OutboxMessage.kind == kind).order_by(OutboxMessage.id)))
        session.expunge_all()
        return found


def test_raising_an_iou_stores_it_books_nothing_and_emails_the_member(client, world, sessions) -> None:
    body = raise_iou(client, bearer(world["club-tool"]))
    assert body == {
        "iou_id": body["iou_id"], "request_id": "iou-1", "status": "open", "organisation_id": "club",
        "member_id": "ann", "amount": "12.50", "description": "Table money 3 May", "route_code": "UPP",
        "route_payload": {"entry": 5}, "session_id": "s-77", "event_id": None, "payment_request_id": None,
        "client": "club-tool", "created_at": body["created_at"], "updated_at": body["updated_at"],
    }
    # Its times are the stored ones, in the service's time zone, as every other answer gives them.
    with sessions.begin() as session:
        stored = session.scalar(select(Iou.created_at).where(Iou.request_id == "iou-1"))
    created = datetime.fromisoformat(body["created_at"])
    assert created.utcoffset() == stored.astimezone(Settings().time_zone).utcoffset() != timedelta(0)
    assert created == stored.replace(microsecond=0)
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["club"])) == (100_00, 0)
    [email] = [m.payload for m in outbox_rows(sessions, "notification")]
    assert (email["kind"], email["to"], email["member_id"]) == ("iou_raised", "ann@example.org", "ann")
    assert email["subject"] == "Pending Payment to North Shore Bridge Club"
    assert "you owe 12.50 for: Table money 3 May" in email["body"]
    assert "You can pay it later" in email["body"]
    assert outbox_rows(sessions, "callback") == []


def test_the_same_request_again_returns_the_iou_and_a_different_one_under_its_id_is_409(
    client, world, sessions
) -> None:
    first = raise_iou(client)
    again = client.post("/api/ious", json=iou(), headers=ADMIN)
    assert (again.status_code, again.get_json()) == (200, first)
    changed = client.post("/api/ious", json=iou(amount="12.51"), headers=ADMIN)
    error = assert_error(changed, 409, "conflict", "request_id")
    assert "already used for a different IOU" in error["message"]
    error = assert_error(client.post("/api/ious", json=iou(), headers=bearer(world["club-tool"])), 409, "conflict",
                         "request_id")
    assert "another client" in error["message"]
    assert len(outbox_rows(sessions, "notification")) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": "0.00"}, "amount"),
        ({"amount": "-5.00"}, "amount"),
        ({"amount": "1000000.01"}, "amount"),
        ({"amount": 12.5}, "amount"),
        ({"description": "  "}, "description"),
        ({"description": "x" * 81}, "description"),
        ({"member_id": None}, "member_id"),
        ({"organisation_id": "bad id"}, "organisation_id"),
        ({"request_id": None}, "request_id"),
        ({"route_code": ["UPP"]}, "route_code"),
        ({"route_payload": "x" * 2001}, "route_payload"),
        ({"session_id": ""}, "session_id"),
    ],
)
def test_a_bad_iou_is_a_400_naming_the_field_and_nothing_is_stored(client, world, sessions, change, field) -> None:
    code = "invalid_amount" if field == "amount" else "invalid_input"
    assert_error(client.post("/api/ious", json=iou(**change), headers=ADMIN), 400, code, field)
    with sessions.begin() as session:
        assert session.scalar(text("SELECT count(*) FROM ious")) == 0


@pytest.mark.parametrize(("change", "field"), [({"member_id": "ghost"}, "member_id"),
                                               ({"organisation_id": "ghost"}, "organisation_id")])
def test_an_unknown_member_or_organisation_is_a_404_naming_it(client, world, change, field) -> None:
    error = assert_error(client.post("/api/ious", json=iou(**change), headers=ADMIN), 404, "not_found", field)
    assert "ghost" in error["message"]


def test_an_iou_may_not_take_a_payment_requests_id(client, world) -> None:
    client.post("/api/payments", headers=ADMIN, json={"request_id": "iou-1", "member_id": "ann", "amount": "1.00",
                                                      "description": "x", "organisation_id": "club"})
    error = assert_error(client.post("/api/ious", json=iou(), headers=ADMIN), 409, "conflict", "request_id")
    assert "already used for a payment request" in error["message"]


def test_ious_are_listed_for_the_member_and_the_organisation_newest_first(client, world) -> None:
    first = raise_iou(client)
    second = raise_iou(client, request_id="iou-2", amount="3.00", member_id="bob")
    third = raise_iou(client, request_id="iou-3", organisation_id="other")
    client.delete(f"/api/ious/{third['iou_id']}", headers=ADMIN)

    def listed(path: str, headers: dict[str, str] = ADMIN) -> list[int]:
        answer = client.get(path, headers=headers)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return [item["iou_id"] for item in answer.get_json()["ious"]]

    assert listed("/api/members/ann/ious") == [third["iou_id"], first["iou_id"]]
    assert listed("/api/members/ann/ious?status=open") == [first["iou_id"]]
    assert listed("/api/members/ann/ious?status=cancelled", bearer(world["portal"])) == [third["iou_id"]]
    assert listed("/api/organisations/club/ious", bearer(world["club-tool"])) == [second["iou_id"], first["iou_id"]]
    assert listed("/api/organisations/other/ious?status=paid") == []
    item = client.get("/api/members/bob/ious", headers=ADMIN).get_json()["ious"][0]
    assert {k: item[k] for k in ("iou_id", "status", "amount", "description", "organisation_id", "member_id",
                                  "payment_request_id")} == {
        "iou_id": second["iou_id"], "status": "open", "amount": "3.00", "description": "Table money 3 May",
        "organisation_id": "club", "member_id": "bob", "payment_request_id": None}
    assert item["created_at"] == second["created_at"]
    assert_error(client.get("/api/members/ann/ious?status=owing", headers=ADMIN), 400, "invalid_input", "status")
    assert_error(client.get("/api/members/ghost/ious", headers=ADMIN), 404, "not_found", "member_id")
    assert_error(client.get("/api/organisations/ghost/ious", headers=ADMIN), 404, "not_found", "organisation_id")


def test_paying_an_iou_books_a_miscellaneous_payment_to_the_club_and_marks_it_paid(client, world, sessions) -> None:
    raised = raise_iou(client, bearer(world["club-tool"]))
    path = f"/api/ious/{raised['iou_id']}/pay"
    answer = client.post(path, json={"request_id": "p1"}, headers=bearer(world["portal"]))
    assert answer.status_code == 202
    assert answer.get_json() == {"request_id": "p1", "kind": "payment", "status": "queued", "amount": "12.50",
                                 "client": "portal", "iou_id": raised["iou_id"]}
    with sessions.begin() as session:
        stored = requests.get(session, "p1")
        assert stored.payload == {
            "request_id": "p1", "member_id": "ann", "amount": "12.50", "description": "Table money 3 May",
            "payment_type": "Miscellaneous", "organisation_id": "club", "other_member_id": None, "route_code": None,
            "route_payload": None, "book_internals": True, "allow_checkout": False, "event_id": None,
            "session_id": "s-77", "iou_id": raised["iou_id"]}
        assert ious.get(session, raised["iou_id"]).payment_request_id == "p1"
    # While it is being decided, another request cannot pay it; the same one replays.
    error = assert_error(client.post(path, json={"request_id": "p2"}, headers=ADMIN), 409, "conflict", "request_id")
    assert "request p1 is paying it (queued)" in error["message"]
    assert client.post(path, json={"request_id": "p1"}, headers=bearer(world["portal"])).status_code == 200
    assert_error(client.post(path, json={"request_id": "p1", "allow_checkout": True}, headers=bearer(world["portal"])),
                 409, "conflict", "request_id")

    assert decide(sessions, "p1").status == "paid"
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["club"])) == (87_50, 12_50)
    with sessions.begin() as session:
        posted = session.execute(text(
            "SELECT e.type, e.session_id, e.client, p.amount FROM journal_entries e"
            " JOIN postings p ON p.entry_id = e.id"
            " WHERE e.idempotency_key = 'payment:p1' ORDER BY p.amount")).all()
        assert ious.get(session, raised["iou_id"]).status == "paid"
    assert [tuple(r) for r in posted] == [("Miscellaneous", "s-77", "portal", -12_50),
                                          ("Miscellaneous", "s-77", "portal", 12_50)]
    [callback] = outbox_rows(sessions, "callback")
    assert callback.payload == {"request_id": "iou-1", "route_code": "UPP", "route_payload": {"entry": 5},
                                "status": "success", "amount": "12.50", "reason": None, "member_id": "ann",
                                "organisation_id": "club"}
    # Signed for the club tool that raised it, not for the portal that paid it.
    with sessions.begin() as session:
        signer = outbox.signer_for(session, session.get_one(OutboxMessage, callback.id), Settings(api_token=API_TOKEN))
    assert signer is not None and signer.client == "club-tool"
    signed = signer.sign(callback.payload)
    unsigned = {k: v for k, v in signed.items() if k != "signature"}
    assert signing.signed(unsigned, world["club-tool"].callback_key) == signed

    error = assert_error(client.post(path, json={"request_id": "p3"}, headers=ADMIN), 409, "conflict", "request_id")
    assert "already paid by request p1" in error["message"]
    assert client.post(path, json={"request_id": "p1"}, headers=bearer(world["portal"])).get_json()["status"] == "paid"
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["club"])) == (87_50, 12_50)


def test_after_a_declined_payment_the_member_may_pay_again(client, world, sessions) -> None:
    raised = raise_iou(client, member_id="bob")
    path = f"/api/ious/{raised['iou_id']}/pay"
    client.post(path, json={"request_id": "p1"}, headers=ADMIN)
    row = decide(sessions, "p1")
    assert (row.status, row.reason) == ("declined", "insufficient funds: balance 0.00, needs 12.50")
    with sessions.begin() as session:
        assert ious.get(session, raised["iou_id"]).status == "open"
        top_up(session, world["bob"], 20_00, "fund-bob")
    assert client.post(path, json={"request_id": "p1"}, headers=ADMIN).get_json()["status"] == "declined"
    error = assert_error(client.post(path, json={"request_id": "iou-1"}, headers=ADMIN), 409, "conflict", "request_id")
    assert "already used for an IOU" in error["message"]
    assert client.post(path, json={"request_id": "p2"}, headers=ADMIN).status_code == 202
    assert decide(sessions, "p2").status == "paid"
    assert balance_of(sessions, world["bob"]) == 7_50
    with sessions.begin() as session:
        assert (ious.get(session, raised["iou_id"]).status, ious.get(session, raised["iou_id"]).payment_request_id) == (
            "paid", "p2")


def test_cancelling_an_iou_calls_back_failure_and_it_can_no_longer_be_paid(client, world, sessions) -> None:
    raised = raise_iou(client, bearer(world["club-tool"]))
    answer = client.delete(f"/api/ious/{raised['iou_id']}", headers=bearer(world["club-tool"]))
    assert (answer.status_code, answer.get_json()["status"]) == (200, "cancelled")
    again = client.delete(f"/api/ious/{raised['iou_id']}", headers=bearer(world["club-tool"]))
    assert (again.status_code, again.get_json()) == (200, answer.get_json())
    [callback] = outbox_rows(sessions, "callback")
    assert (callback.payload["status"], callback.payload["reason"], callback.payload["request_id"]) == (
        "failure", "cancelled", "iou-1")
    error = assert_error(client.post(f"/api/ious/{raised['iou_id']}/pay", json={"request_id": "p1"}, headers=ADMIN),
                         409, "conflict", "iou_id")
    assert "cancelled" in error["message"]
    with sessions.begin() as session:
        assert session.scalar(text("SELECT count(*) FROM payment_requests")) == 0


def test_an_iou_being_paid_or_paid_cannot_be_cancelled(client, world, sessions) -> None:
    raised = raise_iou(client)
    client.post(f"/api/ious/{raised['iou_id']}/pay", json={"request_id": "p1"}, headers=ADMIN)
    error = assert_error(client.delete(f"/api/ious/{raised['iou_id']}", headers=ADMIN), 409, "conflict", "iou_id")
    assert "request p1 is paying it (queued)" in error["message"]
    decide(sessions, "p1")
    error = assert_error(client.delete(f"/api/ious/{raised['iou_id']}", headers=ADMIN), 409, "conflict", "iou_id")
    assert "paid by request p1" in error["message"]


def test_a_double_submit_while_the_worker_decides_waits_for_it_and_replays_the_outcome(client, world, sessions) -> None:
    """The pay route takes the request's row before the IOU's, as the worker does: a double
    submit arriving between the worker's two locks waits for it instead of deadlocking."""
    raised = raise_iou(client)
    path = f"/api/ious/{raised['iou_id']}/pay"
    client.post(path, json={"request_id": "p1"}, headers=ADMIN)
    with ThreadPoolExecutor(1) as pool, sessions.begin() as worker:
        order = payments.PaymentOrder.from_payload(requests.get(worker, "p1").payload)
        row = requests.claim(worker, RequestKind.PAYMENT, "p1", order.payload(), amount=order.amount,
                             member_id=order.member_id)  # as `payments.pay`: the request's row first
        again = pool.submit(client.post, path, json={"request_id": "p1"}, headers=ADMIN)
        wait_for(lambda: lock_waits(sessions) or again.done(), "the double submit to wait for the request's row")
        payments._decide(worker, row, order, Settings(), cards=True)  # then the IOU's
    answer = again.result(timeout=30)
    assert (answer.status_code, answer.get_json()["status"]) == (200, "paid")
    assert balance_of(sessions, world["ann"]) == 87_50


def lock_waits(sessions: sessionmaker[Session]) -> int:
    with sessions.begin() as session:
        return session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                   " AND wait_event_type = 'Lock'"))


def test_a_payment_naming_an_iou_it_does_not_pay_fails_and_books_nothing(client, world, sessions) -> None:
    raised = raise_iou(client)
    body = {"request_id": "sneak", "member_id": "ann", "amount": "12.50", "description": "x",
            "organisation_id": "club", "iou_id": raised["iou_id"]}
    assert client.post("/api/payments", json=body, headers=ADMIN).status_code == 202
    order = payments.parse(body, Settings())
    assert payments.pay_at_once(sessions.kw["bind"], order, Settings()) is None  # never the one-statement path
    row = decide(sessions, "sneak")
    assert (row.status, row.reason) == ("failed", f"iou {raised['iou_id']}: request sneak is not its payment "
                                                  f"(pay it with POST /api/ious/{raised['iou_id']}/pay)")
    assert balance_of(sessions, world["ann"]) == 100_00
    assert_error(client.post("/api/payments", json={**body, "request_id": "x2", "iou_id": "7"}, headers=ADMIN),
                 400, "invalid_input", "iou_id")


def test_a_changed_iou_fails_the_payment_linked_to_it(client, world, sessions) -> None:
    """The IOU is checked again under its lock when the payment is decided."""
    raised = raise_iou(client)
    client.post(f"/api/ious/{raised['iou_id']}/pay", json={"request_id": "p1"}, headers=ADMIN)
    with sessions.begin() as session:
        session.execute(text("UPDATE ious SET amount = 99 WHERE id = :id"), {"id": raised["iou_id"]})
    row = decide(sessions, "p1")
    assert row.status == "failed"
    assert "owed by ann to club, 0.99; the payment does not match it" in (row.reason or "")
    assert balance_of(sessions, world["ann"]) == 100_00


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "named"),
    [
        ("portal", "post", "/api/ious", iou(), "raising an IOU needs the clubs or admin scope"),
        ("club-tool", "post", "/api/ious", iou(organisation_id="other"), "covers only its organisations (club)"),
        ("club-tool", "get", "/api/organisations/other/ious", None, "covers only"),
        ("club-tool", "get", "/api/members/ann/ious", None, "payments or reports or admin scope"),
        ("club-tool", "post", "/api/ious/{id}/pay", {"request_id": "p1"}, "paying an IOU needs the payments"),
        ("portal", "delete", "/api/ious/{id}", None, "cancelling an IOU needs the clubs or admin scope"),
        ("portal", "delete", "/api/ious/999", None, "cancelling an IOU needs the clubs or admin scope"),
        ("other-tool", "delete", "/api/ious/{id}", None, "covers only its organisations (other)"),
    ],
)
def test_a_client_outside_its_scope_is_refused_with_a_403_naming_it(client, world, sessions, who, method, path, body,
                                                                     named) -> None:
    raised = raise_iou(client)
    with sessions.begin() as session:
        world["other-tool"] = access.add(session, "other-tool", ["clubs"], organisations=["other"])
    answer = getattr(client, method)(path.replace("{id}", str(raised["iou_id"])), json=body, headers=bearer(world[who]))
    assert named in assert_error(answer, 403, "forbidden")["message"]
    with sessions.begin() as session:
        assert session.scalar(text("SELECT count(*) FROM ious")) == 1
        assert session.scalar(text("SELECT count(*) FROM payment_requests")) == 0
        assert ious.get(session, raised["iou_id"]).status == "open"


@pytest.mark.parametrize("iou_id", ["999", "abc", "0", "1" * 30])
def test_an_unknown_iou_is_a_404_naming_iou_id(client, world, iou_id) -> None:
    assert_error(client.post(f"/api/ious/{iou_id}/pay", json={"request_id": "p1"}, headers=ADMIN), 404, "not_found",
                 "iou_id")
    assert_error(client.delete(f"/api/ious/{iou_id}", headers=ADMIN), 404, "not_found", "iou_id")


def test_the_runtime_role_may_write_ious_but_never_delete_them(runtime_sessions, world, client) -> None:
    raise_iou(client)
    with runtime_sessions.begin() as session:
        session.execute(text("UPDATE ious SET description = 'Changed'"))
        assert session.scalar(select(Iou.description)) == "Changed"
    with pytest.raises(DBAPIError, match="permission denied"), runtime_sessions.begin() as session:
        session.execute(text("DELETE FROM ious"))
