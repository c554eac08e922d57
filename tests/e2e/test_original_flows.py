"""Each club, event and member flow of ORIGINAL 2.7 through the real stack (issue 13 item 1):
the request over HTTP, a real `payments worker` deciding it, and the events app receiving its
callback. Each row checks the journal entry's type, event and session ids, the posting on both
sides, and the signed callback. (Card, top-up, refund, settlement and adjustment rows have their
own e2e modules; IOUs are in test_ious.py.)"""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared import client as payments_client
from shared.config import Settings
from tests.conftest import API_TOKEN
from tests.e2e.conftest import BROKER
from tests.e2e.processes import wait_for
from tests.e2e.test_flows import outcome
from tests.integration.helpers import add_member, add_organisation, top_up

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, broker_url=BROKER)


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        ann, bob = add_member(session, "ann"), add_member(session, "bob", "Bob", "Ray")
        club, other = add_organisation(session, "club"), add_organisation(session, "other", "South Club")
        top_up(session, ann, 100_00, "fund-ann")
        top_up(session, bob, 100_00, "fund-bob")
        top_up(session, club, 100_00, "fund-club")
        top_up(session, other, 100_00, "fund-other")


CLUB_TO_MEMBER = {"from_organisation_id": "club", "to_member_id": "ann"}
MEMBER_TO_CLUB = {"member_id": "ann", "organisation_id": "club"}

# (ORIGINAL 2.7 row, path, body, type booked, event id, session id, {owner: posting})
ROWS = [
    ("Member-to-member transfer", "/api/transfers", {"from_member_id": "ann", "to_member_id": "bob"},
     "Member Transfer", None, None, {"ann": -12_00, "bob": 12_00}),
    ("Org -> member (payments app)", "/api/transfers", CLUB_TO_MEMBER,
     "Org Transfer", None, None, {"club": -12_00, "ann": 12_00}),
    ("Club pays member, membership", "/api/transfers", {**CLUB_TO_MEMBER, "payment_type": "Club Membership",
                                                        "event_id": "EV-1", "session_id": "S-1"},
     "Club Membership", "EV-1", "S-1", {"club": -12_00, "ann": 12_00}),
    ("Club misc pay", "/api/transfers", {**CLUB_TO_MEMBER, "payment_type": "Miscellaneous"},
     "Miscellaneous", None, None, {"club": -12_00, "ann": 12_00}),
    ("Club top-up at table", "/api/transfers", {**CLUB_TO_MEMBER, "payment_type": "Club Top Up", "session_id": "S-1"},
     "Club Top Up", None, "S-1", {"club": -12_00, "ann": 12_00}),
    ("Session refund", "/api/transfers", {**CLUB_TO_MEMBER, "payment_type": "Refund", "session_id": "S-1"},
     "Refund", None, "S-1", {"club": -12_00, "ann": 12_00}),
    ("Event refund", "/api/transfers", {**CLUB_TO_MEMBER, "payment_type": "Refund", "event_id": "EV-1"},
     "Refund", "EV-1", None, {"club": -12_00, "ann": 12_00}),
    ("Club -> club", "/api/transfers", {"from_organisation_id": "club", "to_organisation_id": "other"},
     "Org Transfer", None, None, {"club": -12_00, "other": 12_00}),
    ("Club top-up reversal", "/api/payments", {**MEMBER_TO_CLUB, "payment_type": "Club Top Up Rev", "session_id": "S-1"},
     "Club Top Up Rev", None, "S-1", {"ann": -12_00, "club": 12_00}),
    ("Club charges member", "/api/payments", {**MEMBER_TO_CLUB, "payment_type": "Org Transfer"},
     "Org Transfer", None, None, {"ann": -12_00, "club": 12_00}),
    ("Club misc charge", "/api/payments", {**MEMBER_TO_CLUB, "payment_type": "Miscellaneous"},
     "Miscellaneous", None, None, {"ann": -12_00, "club": 12_00}),
    ("Club membership fee paid by member", "/api/payments", {**MEMBER_TO_CLUB, "payment_type": "Club Membership"},
     "Club Membership", None, None, {"ann": -12_00, "club": 12_00}),
    ("Session table money", "/api/payments", {**MEMBER_TO_CLUB, "payment_type": "Club Payment", "session_id": "S-1"},
     "Club Payment", None, "S-1", {"ann": -12_00, "club": 12_00}),
    ("Event entry", "/api/payments", {**MEMBER_TO_CLUB, "payment_type": "Entry to an event", "event_id": "EV-1"},
     "Entry to an event", "EV-1", None, {"ann": -12_00, "club": 12_00}),
]


@pytest.mark.parametrize(("row", "path", "body", "type_", "event_id", "session_id", "sides"), ROWS,
                         ids=[row[0] for row in ROWS])
def test_each_flow_books_both_sides_with_its_type_and_ids_and_calls_back(
    client, auth, world, sessions, received, row, path, body, type_, event_id, session_id, sides
) -> None:
    request = {"request_id": "f1", "amount": "12.00", "description": row, "route_code": "EVT",
               "route_payload": {"flow": row}, **body}
    assert client.post(path, json=request, headers=auth).status_code == 202
    assert outcome(client, auth, "f1")["status"] == "paid"
    with sessions.begin() as session:
        entry = session.execute(text("SELECT id, type, event_id, session_id, client FROM journal_entries"
                                     " WHERE reference = 'f1'")).one()
        posted = dict(session.execute(text("SELECT a.owner, p.amount FROM postings p JOIN accounts a"
                                           " ON a.id = p.account_id WHERE p.entry_id = :id"), {"id": entry.id}).all())
    assert (entry.type, entry.event_id, entry.session_id, entry.client) == (type_, event_id, session_id, "admin")
    assert posted == sides
    [callback] = wait_for(received, "the callback")
    member = body.get("member_id") or body.get("from_member_id") or body.get("to_member_id")
    organisation = body.get("organisation_id") or body.get("from_organisation_id")
    assert callback == {"request_id": "f1", "route_code": "EVT", "route_payload": {"flow": row}, "status": "success",
                        "amount": "12.00", "reason": None, "member_id": member, "organisation_id": organisation,
                        "client": "admin", "signature": callback["signature"]}
    assert payments_client.verify_callback(callback, payments_client.admin_callback_key(API_TOKEN))
    for owner in sides:  # the statements of both sides show the ids
        kind = "organisations" if owner in ("club", "other") else "members"
        [line] = [r for r in client.get(f"/api/{kind}/{owner}/statement", headers=auth).get_json()["rows"]
                  if r["reference"] == "f1"]
        assert (line["type"], line["event_id"], line["session_id"]) == (type_, event_id, session_id)


def test_an_event_refund_below_zero_is_booked_when_asked_and_the_failure_is_called_back_when_not(
    client, auth, world, sessions, received
) -> None:
    refund = {"from_organisation_id": "club", "to_member_id": "ann", "amount": "150.00", "description": "Congress",
              "payment_type": "Refund", "event_id": "EV-1", "route_code": "EVT"}
    client.post("/api/transfers", json={**refund, "request_id": "f1"}, headers=auth)
    assert outcome(client, auth, "f1")["reason"] == "organisation club: balance 100.00, needs 150.00"
    [failure] = wait_for(received, "the failure callback")
    assert (failure["status"], failure["request_id"]) == ("failure", "f1")
    client.post("/api/transfers", json={**refund, "request_id": "f2", "allow_negative": True}, headers=auth)
    assert outcome(client, auth, "f2")["status"] == "paid"
    balance = client.get("/api/organisations/club/balance", headers=auth).get_json()["balance"]
    assert balance == "-50.00"
