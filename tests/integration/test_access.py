"""Clients over HTTP (CONTRACT "Clients and scopes"; DESIGN invariant 10), on PostgreSQL through
the Flask test client: 401 for a missing, unknown, revoked or expired token; 403 naming the
missing scope or the binding; what is refused changes no table; the request records its client.
The `payments clients` commands run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared import access
from shared.models import Client, ClientToken, utcnow
from tests.conftest import API_TOKEN
from tests.integration.test_api import API_ROUTES, assert_error

ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": f"Bearer {API_TOKEN}"}
TABLES = ("payment_requests", "journal_entries", "postings", "members", "organisations", "accounts",
          "card_payments", "outbox", "clients", "client_tokens")
COUNT_ROWS = text("SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in TABLES))

# name: (scopes, bindings)
CLIENTS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "portal": (["payments"], {"route_codes": ["EVT"], "request_prefix": "portal-"}),
    "people": (["profiles"], {}),
    "club-tool": (["clubs"], {"organisations": ["club"]}),
    "reporter": (["reports"], {}),
    "monitor": (["ops"], {}),
    "staff": (["admin"], {"organisations": ["club"]}),
}


def rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(COUNT_ROWS).one()._mapping)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def world(client: FlaskClient, sessions: sessionmaker[Session]) -> dict[str, str]:
    """Members ann and bob, organisations club and other-club, each with money; a token for each
    client of CLIENTS, and `revoked` (an admin client, revoked)."""
    for member in ("ann", "bob"):
        body = {"email": f"{member}@example.org", "first_name": member.title(), "last_name": "Lee"}
        assert client.put(f"/api/members/{member}", json=body, headers=ADMIN).status_code == 201
    for org in ("club", "other-club"):
        assert client.put(f"/api/organisations/{org}", json={"name": org}, headers=ADMIN).status_code == 201
    for n, (key, target) in enumerate([("member_id", "ann"), ("member_id", "bob"), ("organisation_id", "club"),
                                       ("organisation_id", "other-club")]):
        credit = {"request_id": f"seed-{n}", key: target, "amount": "500.00", "description": "Seed",
                  "admin_id": "a-1"}
        assert client.post("/api/adjustments", json=credit, headers=ADMIN).status_code == 201
    tokens: dict[str, str] = {}
    with sessions.begin() as session:
        for name, (scopes, bindings) in CLIENTS.items():
            tokens[name] = access.add(session, name, scopes, **bindings).token
        tokens["revoked"] = access.add(session, "revoked", ["admin"]).token
        access.revoke(session, "revoked")
    tokens["admin"] = API_TOKEN
    return tokens


PAYMENT = {"request_id": "portal-p1", "member_id": "ann", "amount": "5.00", "description": "Entry",
           "organisation_id": "other-club", "route_code": "EVT"}
EVENT_REFUND = {"request_id": "er0", "from_organisation_id": "club", "to_member_id": "ann", "amount": "5.00",
                "description": "Congress withdrawn", "payment_type": "Refund", "event_id": "EV-1",
                "allow_negative": True}
MEMBER_TRANSFER = {"request_id": "portal-t1", "from_member_id": "ann", "to_member_id": "bob", "amount": "1.00",
                   "description": "Lunch"}
CLUB_TRANSFER = {"request_id": "c-t1", "from_organisation_id": "club", "to_member_id": "ann", "amount": "1.00",
                 "description": "Prize"}
SETTLEMENT = {"request_id": "s-1", "reference_date": "2026-01-31", "organisations": [{"organisation_id": "club"}]}
ADJUSTMENT = {"request_id": "portal-a1", "member_id": "ann", "amount": "1.00", "description": "Gift", "admin_id": "x"}

# (client, method, path, body, status, a fragment of the 403's message)
CASES: list[tuple[str, str, str, dict[str, Any] | None, int, str]] = [
    # payments
    ("portal", "POST", "/api/payments", PAYMENT, 202, ""),
    ("portal", "POST", "/api/transfers", MEMBER_TRANSFER, 202, ""),
    ("portal", "POST", "/api/members/ann/topups", {"request_id": "portal-u1", "amount": "50.00"}, 202, ""),
    ("portal", "GET", "/api/members/ann/balance", None, 200, ""),
    ("portal", "PUT", "/api/members/ann/auto-topup", {"amount": "60.00"}, 200, ""),
    ("portal", "POST", "/api/adjustments", ADJUSTMENT, 403, "needs the admin scope"),
    ("portal", "POST", "/api/settlements", {**SETTLEMENT, "request_id": "portal-s1"}, 403, "clubs or admin scope"),
    ("portal", "POST", "/api/refunds", {"request_id": "portal-r1", "payment_intent_id": "pi_1", "by": "admin",
                                        "admin_id": "x"}, 403, "needs the admin scope"),
    ("portal", "PUT", "/api/organisations/club", {"name": "C", "settlement_fee_percent": "0"}, 403, "admin scope"),
    ("portal", "POST", "/api/transfers", {**CLUB_TRANSFER, "request_id": "portal-t2"}, 403, "clubs or admin"),
    ("portal", "GET", "/api/members/ann/statement", None, 403, "reports or admin scope"),
    ("portal", "GET", "/api/admin/summary", None, 403, "reports or admin scope"),
    ("portal", "PUT", "/api/members/ann", {"email": "x@example.org", "first_name": "X", "last_name": "Y"}, 403,
     "profiles or admin scope"),
    ("portal", "POST", "/api/payments", {**PAYMENT, "route_code": "CLUB"}, 403, "route_code 'CLUB'"),
    ("portal", "POST", "/api/payments", {**PAYMENT, "request_id": "p1"}, 403, "prefix 'portal-'"),
    ("portal", "POST", "/api/members/ann/topups", {"request_id": "u1", "amount": "50.00"}, 403, "prefix"),
    # profiles
    ("people", "PUT", "/api/members/ann", {"email": "a@example.org", "first_name": "A", "last_name": "L"}, 200, ""),
    ("people", "PUT", "/api/organisations/club", {"name": "Club"}, 200, ""),
    ("people", "GET", "/api/members/ann", None, 200, ""),
    ("people", "PUT", "/api/organisations/club", {"name": "Club", "settlement_fee_percent": "1.00"}, 403,
     "needs the admin scope"),
    ("people", "PUT", "/api/organisations/club", {"name": "Club", "minimum_balance_after_settlement": None}, 403,
     "needs the admin scope"),
    ("people", "POST", "/api/payments", {**PAYMENT, "request_id": "pp1"}, 403, "payments or admin scope"),
    ("people", "GET", "/api/members/ann/balance", None, 403, "payments or reports or admin scope"),
    # clubs
    ("club-tool", "POST", "/api/transfers", CLUB_TRANSFER, 202, ""),
    ("club-tool", "POST", "/api/settlements", SETTLEMENT, 202, ""),
    ("club-tool", "GET", "/api/organisations/club/balance", None, 200, ""),
    ("club-tool", "GET", "/api/organisations/club/statement", None, 200, ""),
    ("club-tool", "GET", "/api/organisations/club/summary", None, 200, ""),
    ("club-tool", "POST", "/api/transfers", {**CLUB_TRANSFER, "from_organisation_id": "other-club"}, 403,
     "covers only its organisations (club)"),
    ("club-tool", "POST", "/api/settlements", {**SETTLEMENT, "organisations": [{"organisation_id": "other-club"}]},
     403, "covers only"),
    ("club-tool", "POST", "/api/settlements", {**SETTLEMENT, "organisations": "all"}, 403, "covers only"),
    ("club-tool", "GET", "/api/organisations/other-club/balance", None, 403, "covers only"),
    ("club-tool", "POST", "/api/payments", {**PAYMENT, "request_id": "cp1"}, 403, "payments or admin scope"),
    # An event's refund below zero (issue 13): the clubs scope for that organisation, nothing less.
    ("club-tool", "POST", "/api/transfers", {**EVENT_REFUND, "request_id": "er1"}, 202, ""),
    ("club-tool", "POST", "/api/transfers", {**EVENT_REFUND, "from_organisation_id": "other-club"}, 403,
     "covers only its organisations (club)"),
    ("portal", "POST", "/api/transfers", {**EVENT_REFUND, "request_id": "portal-er"}, 403, "clubs or admin"),
    ("club-tool", "POST", "/api/transfers", {**MEMBER_TRANSFER, "request_id": "ct2"}, 403, "payments or admin"),
    # reports
    ("reporter", "GET", "/api/members/ann/statement", None, 200, ""),
    ("reporter", "GET", "/api/organisations/other-club/summary", None, 200, ""),
    ("reporter", "GET", "/api/admin/summary", None, 200, ""),
    ("reporter", "POST", "/api/payments", {**PAYMENT, "request_id": "rp1"}, 403, "payments or admin scope"),
    ("reporter", "PUT", "/api/members/ann/auto-topup", {"amount": "60.00"}, 403, "payments or admin scope"),
    ("reporter", "DELETE", "/api/members/ann/auto-topup", None, 403, "payments or admin scope"),
    ("reporter", "POST", "/api/members/ann/auto-topup/setup", None, 403, "payments or admin scope"),
    # ops
    ("monitor", "GET", "/api/admin/summary", None, 403, "reports or admin scope"),
    ("monitor", "GET", "/api/members/ann/balance", None, 403, "scope"),
    # admin bound to an organisation
    ("staff", "POST", "/api/adjustments", {**ADJUSTMENT, "member_id": None, "organisation_id": "club"}, 201, ""),
    ("staff", "POST", "/api/adjustments", {**ADJUSTMENT, "member_id": None, "organisation_id": "other-club"}, 403,
     "bound to organisations club"),
    ("staff", "POST", "/api/transfers", {**CLUB_TRANSFER, "from_organisation_id": "other-club"}, 403, "bound to"),
    ("staff", "POST", "/api/settlements", {**SETTLEMENT, "organisations": [{"organisation_id": "other-club"}]},
     403, "bound to"),
    ("staff", "GET", "/api/organisations/other-club", None, 403, "bound to"),
    # the bootstrap client
    ("admin", "POST", "/api/adjustments", {**ADJUSTMENT, "request_id": "a-9"}, 201, ""),
]


@pytest.mark.parametrize(("who", "method", "path", "body", "status", "named"), CASES,
                         ids=[f"{c[0]} {c[1]} {c[2]} {i}" for i, c in enumerate(CASES)])
def test_each_client_may_do_what_its_scopes_and_bindings_allow_and_a_403_names_what_is_missing(
    client, world, engine, who, method, path, body, status, named
) -> None:
    before = rows(engine)
    response = client.open(path, method=method, json=body, headers=bearer(world[who]))
    if status == 403:
        error = assert_error(response, 403, "forbidden")
        assert named in error["message"], error
        assert rows(engine) == before, "a refused request changed a table"
    else:
        assert response.status_code == status, response.get_data(as_text=True)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Bearer not-a-token-of-anyone"}, "revoked", "expired"],
    ids=["no token", "empty token", "unknown token", "revoked client", "expired token"],
)
@pytest.mark.parametrize(("method", "path"), [("POST", "/api/payments"), ("GET", "/api/admin/summary"),
                                              ("GET", "/api/payments/portal-p1")])
def test_a_missing_unknown_revoked_or_expired_token_is_401_and_changes_nothing(
    client, world, sessions, engine, headers, method, path
) -> None:
    if headers == "revoked":
        headers = bearer(world["revoked"])
    elif headers == "expired":
        with sessions.begin() as session:
            access.rotate(session, "reporter", timedelta(0))
        headers = bearer(world["reporter"])
    before = rows(engine)
    response = client.open(path, method=method, json=None if method == "GET" else PAYMENT, headers=headers)
    assert_error(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert rows(engine) == before


def test_a_request_records_its_client_and_only_its_client_or_reports_may_read_it(client, world) -> None:
    assert client.post("/api/payments", json=PAYMENT, headers=bearer(world["portal"])).status_code == 202
    own = client.get("/api/payments/portal-p1", headers=bearer(world["portal"]))
    assert own.status_code == 200 and own.get_json()["client"] == "portal"
    assert client.get("/api/payments/portal-p1", headers=bearer(world["reporter"])).get_json()["client"] == "portal"
    assert client.get("/api/payments/portal-p1", headers=ADMIN).status_code == 200
    error = assert_error(client.get("/api/payments/portal-p1", headers=bearer(world["club-tool"])), 403, "forbidden")
    assert "another client" in error["message"]


def test_the_client_is_not_part_of_the_payload_and_another_client_cannot_take_a_request_id(
    client, world, engine
) -> None:
    assert client.post("/api/payments", json=PAYMENT, headers=bearer(world["portal"])).status_code == 202
    again = client.post("/api/payments", json=PAYMENT, headers=bearer(world["portal"]))
    assert (again.status_code, again.get_json()["client"]) == (200, "portal")
    before = rows(engine)
    taken = client.post("/api/payments", json=PAYMENT, headers=ADMIN)
    assert "another client" in assert_error(taken, 409, "conflict")["message"]
    assert rows(engine) == before


def test_an_admin_id_in_a_body_is_only_a_note_never_the_identity(client, world) -> None:
    body = {**ADJUSTMENT, "request_id": "portal-a2", "admin_id": "admin"}
    assert_error(client.post("/api/adjustments", json=body, headers=bearer(world["portal"])), 403, "forbidden")


def test_every_api_route_declares_its_action(app) -> None:
    from webhook import openapi

    # The API's own description is public (no data, no secret); nothing else under /api is.
    assert set(openapi.PUBLIC_PATHS) == {"/api/openapi.json", "/api/docs"}
    rules = [rule for rule in app.url_map.iter_rules()
             if rule.rule.startswith("/api/") and rule.rule not in openapi.PUBLIC_PATHS]
    assert len(rules) >= len(API_ROUTES)
    for rule in rules:
        view = app.view_functions[rule.endpoint]
        assert getattr(view, "access_action", None) in access.ACTIONS, rule.rule


def test_a_rotated_token_works_through_its_grace_and_not_after(client, world, sessions) -> None:
    old = world["reporter"]
    with sessions.begin() as session:
        new = access.rotate(session, "reporter", timedelta(hours=1)).token
    assert client.get("/api/admin/summary", headers=bearer(old)).status_code == 200
    assert client.get("/api/admin/summary", headers=bearer(new)).status_code == 200
    with freeze_time(utcnow() + timedelta(hours=1, seconds=1)):
        assert_error(client.get("/api/admin/summary", headers=bearer(old)), 401, "unauthenticated")
        assert client.get("/api/admin/summary", headers=bearer(new)).status_code == 200


def test_only_a_hash_of_a_token_is_stored(world, sessions) -> None:
    with sessions.begin() as session:
        stored = session.scalars(select(ClientToken.token_hash)).all()
        keys = session.scalars(select(Client.callback_key)).all()
    assert access.token_hash(world["portal"]) in stored
    assert not {world[name] for name in CLIENTS} & set(stored)
    assert all(len(key) == 64 for key in keys)


# The command line ---------------------------------------------------------------------------


def payments(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMENTS_")}
    env["PAYMENTS_DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "payments_cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def issued(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == {"name", "token", "callback_key"}
    return last


def test_clients_add_prints_a_token_that_works_and_list_never_shows_it(client, clean_db, database_url) -> None:
    made = issued(payments(database_url, "clients", "add", "events", "--scopes", "payments,reports",
                           "--route-codes", "EVT,EVT2", "--request-prefix", "evt-", "--organisations", "club"))
    assert made["name"] == "events" and len(made["token"]) >= 43 and len(made["callback_key"]) == 64
    assert client.get("/api/admin/summary", headers=bearer(made["token"])).status_code == 200
    listed = payments(database_url, "clients", "list")
    assert listed.returncode == 0, listed.stderr
    assert made["token"] not in listed.stdout and made["callback_key"] not in listed.stdout
    assert [json.loads(line) for line in listed.stdout.splitlines()] == [{
        "name": "events", "scopes": ["payments", "reports"], "route_codes": ["EVT", "EVT2"],
        "request_prefix": "evt-", "organisations": ["club"], "created_at": json.loads(
            listed.stdout.splitlines()[0])["created_at"], "revoked_at": None, "tokens": [{"expires_at": None}]}]


@pytest.mark.parametrize(("args", "named"), [
    (["--scopes", "payments,mint"], "mint"),
    (["--scopes", ""], "scopes"),
    (["--scopes", "clubs"], "organisations"),
    (["--scopes", "payments", "--request-prefix", "../"], "request_prefix"),
])
def test_clients_add_refuses_an_unknown_scope_or_an_unbound_clubs_client(clean_db, database_url, args, named) -> None:
    result = payments(database_url, "clients", "add", "x", *args)
    assert result.returncode == 1 and named in result.stderr
    assert payments(database_url, "clients", "list").stdout == ""


def test_clients_add_refuses_the_bootstrap_name_and_a_name_taken(clean_db, database_url) -> None:
    assert "bootstrap" in payments(database_url, "clients", "add", "admin", "--scopes", "admin").stderr
    issued(payments(database_url, "clients", "add", "once", "--scopes", "ops"))
    again = payments(database_url, "clients", "add", "once", "--scopes", "ops")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_clients_rotate_keeps_the_old_token_through_the_grace_then_revoke_ends_both(
    client, clean_db, database_url
) -> None:
    first = issued(payments(database_url, "clients", "add", "desk", "--scopes", "reports"))
    second = issued(payments(database_url, "clients", "rotate", "desk"))
    assert second["token"] != first["token"] and second["callback_key"] == first["callback_key"]
    for token in (first["token"], second["token"]):
        assert client.get("/api/admin/summary", headers=bearer(token)).status_code == 200
    with freeze_time(utcnow() + timedelta(seconds=86401)):  # the default grace is a day
        assert_error(client.get("/api/admin/summary", headers=bearer(first["token"])), 401, "unauthenticated")
        assert client.get("/api/admin/summary", headers=bearer(second["token"])).status_code == 200
    third = issued(payments(database_url, "clients", "rotate", "desk", "--grace", "0"))
    assert_error(client.get("/api/admin/summary", headers=bearer(second["token"])), 401, "unauthenticated")
    assert client.get("/api/admin/summary", headers=bearer(third["token"])).status_code == 200
    revoked = payments(database_url, "clients", "revoke", "desk")
    assert revoked.returncode == 0, revoked.stderr
    assert_error(client.get("/api/admin/summary", headers=bearer(third["token"])), 401, "unauthenticated")
    assert json.loads(payments(database_url, "clients", "list").stdout)["revoked_at"] is not None
    assert "revoked" in payments(database_url, "clients", "rotate", "desk").stderr
    assert "not known" in payments(database_url, "clients", "revoke", "nobody").stderr


def test_a_weak_bootstrap_token_is_refused_by_the_command(clean_db, database_url) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMENTS_")}
    env.update(PAYMENTS_DATABASE_URL=database_url, PAYMENTS_API_TOKEN="dev-token")
    result = subprocess.run([sys.executable, "-m", "payments_cli", "clients", "list"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "PAYMENTS_API_TOKEN: shorter than 32 characters" in result.stderr
    assert "dev-token" not in result.stderr + result.stdout
