"""The `/api/*` and health endpoints through the Flask test client, on PostgreSQL: status codes,
CONTRACT's error shape naming the field, idempotent adjustments, and never a 500 for bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from shared import ledger, payments, profiles, settlements, topups
from shared.config import Settings
from shared.ledger import Entry, Line
from shared.models import AutoTopUpStatus, CardPaymentKind, EntryType, JournalEntry, Member, SystemAccount
from tests.conftest import API_TOKEN
from tests.integration.helpers import top_up

# Every route of webhook/api.py, with a path that exists once `existing` has run.
API_ROUTES = [
    ("PUT", "/api/members/ann"),
    ("GET", "/api/members/ann"),
    ("GET", "/api/members/ann/balance"),
    ("GET", "/api/members/ann/statement"),
    ("PUT", "/api/organisations/club"),
    ("GET", "/api/organisations/club"),
    ("GET", "/api/organisations/club/balance"),
    ("GET", "/api/organisations/club/statement"),
    ("GET", "/api/organisations/club/summary"),
    ("POST", "/api/adjustments"),
    ("GET", "/api/admin/summary"),
]


# Helpers ----------------------------------------------------------------------------------


def assert_error(response: TestResponse, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The response is CONTRACT's error JSON with this status, code and (if given) field."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) <= {"code", "message", "field"}
    if field is not None:
        assert error["field"] == field
    return error


def put_member(client: FlaskClient, auth: dict[str, str], member_id: str, **body: Any) -> TestResponse:
    body = {"email": f"{member_id}@example.org", "first_name": "Ann", "last_name": "Lee", **body}
    return client.put(f"/api/members/{member_id}", json=body, headers=auth)


def put_organisation(client: FlaskClient, auth: dict[str, str], org_id: str, **body: Any) -> TestResponse:
    return client.put(f"/api/organisations/{org_id}", json={"name": "North Shore Bridge Club", **body}, headers=auth)


def adjust(client: FlaskClient, auth: dict[str, str], **fields: Any) -> TestResponse:
    body = {
        "request_id": "adj-1",
        "member_id": "ann",
        "amount": "10.00",
        "description": "Goodwill credit",
        "admin_id": "admin-7",
        **fields,
    }
    body = {key: value for key, value in body.items() if value is not _OMIT}
    return client.post("/api/adjustments", json=body, headers=auth)


_OMIT = object()


def balance(client: FlaskClient, auth: dict[str, str], member_id: str = "ann") -> str:
    response = client.get(f"/api/members/{member_id}/balance", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["balance"]


def entry_count(sessions: sessionmaker[Session]) -> int:
    with sessions.begin() as session:
        return session.scalar(select(func.count()).select_from(JournalEntry))


@pytest.fixture
def existing(client: FlaskClient, auth: dict[str, str]) -> None:
    """Member `ann` and organisation `club`, both with a zero balance."""
    assert put_member(client, auth, "ann").status_code == 201
    assert put_organisation(client, auth, "club").status_code == 201


# Health -----------------------------------------------------------------------------------


def test_healthz_says_the_process_is_up(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_is_ready_when_the_database_and_broker_answer(client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "checks": {"database": True, "broker": True}}


def test_readyz_is_503_when_the_broker_port_is_closed(app_with) -> None:
    app = app_with(broker_url="redis://127.0.0.1:1/0")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "not_ready", "checks": {"database": True, "broker": False}}


def test_health_endpoints_need_no_token(app_with) -> None:
    client = app_with(api_token=None).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


# Authentication ---------------------------------------------------------------------------


def test_the_route_list_of_these_tests_covers_every_route_of_webhook_api(app) -> None:
    served = {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.rpartition(".")[0] == "api"  # api.py's own views, not nested blueprints
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    covered = {
        (method, path.replace("/ann", "/<member_id>").replace("/club", "/<org_id>"))
        for method, path in API_ROUTES
    }
    assert served == covered


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token",
        "Bearer ",
        "Bearer",
        f"Basic {API_TOKEN}",
        f"Token {API_TOKEN}",
        API_TOKEN,
        f"Bearer {API_TOKEN}-and-more",
    ],
    ids=["missing", "wrong", "empty", "scheme-only", "basic", "token-scheme", "no-scheme", "longer"],
)
@pytest.mark.parametrize(("method", "path"), API_ROUTES, ids=[f"{m} {p}" for m, p in API_ROUTES])
def test_every_api_route_answers_401_without_the_right_bearer_token(
    client, sessions, existing, method, path, authorization
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    before = entry_count(sessions)
    response = client.open(
        path, method=method, headers=headers, json=None if method == "GET" else {"name": "x"}
    )
    assert_error(response, 401, "unauthenticated")
    assert entry_count(sessions) == before


def test_the_bearer_scheme_is_case_insensitive(client, existing) -> None:
    response = client.get("/api/admin/summary", headers={"Authorization": f"bearer {API_TOKEN}"})
    assert response.status_code == 200


@pytest.mark.parametrize(("method", "path"), API_ROUTES, ids=[f"{m} {p}" for m, p in API_ROUTES])
def test_without_a_bootstrap_token_configured_its_old_value_is_401_on_every_route(
    app_with, auth, method, path
) -> None:
    client = app_with(api_token=None).test_client()
    response = client.open(path, method=method, headers=auth, json=None if method == "GET" else {})
    assert_error(response, 401, "unauthenticated")


def test_an_unknown_api_route_is_a_404_with_the_error_shape(client, auth) -> None:
    assert_error(client.get("/api/nothing-here", headers=auth), 404, "not_found")
    assert_error(client.get("/api/members/ann/history", headers=auth), 404, "not_found")


def test_a_wrong_method_is_a_405_with_the_error_shape(client, auth, existing) -> None:
    assert_error(client.delete("/api/members/ann", headers=auth), 405, "method_not_allowed")
    assert_error(client.get("/api/adjustments", headers=auth), 405, "method_not_allowed")


# Members and organisations ----------------------------------------------------------------


def test_put_member_creates_the_profile_then_updates_it(client, auth) -> None:
    created = put_member(client, auth, "ann", low_balance_emails=True)
    assert created.status_code == 201
    assert created.get_json() == {
        "member_id": "ann",
        "email": "ann@example.org",
        "first_name": "Ann",
        "last_name": "Lee",
        "low_balance_emails": True,
        "auto_topup": {"status": "off", "amount": "100.00"},
    }
    updated = put_member(client, auth, "ann", email="ann.lee@example.org", first_name=" Annie ", last_name="Lee-Smith")
    assert updated.status_code == 200
    expected = {
        "member_id": "ann",
        "email": "ann.lee@example.org",
        "first_name": "Annie",
        "last_name": "Lee-Smith",
        "low_balance_emails": True,  # kept when not sent
        "auto_topup": {"status": "off", "amount": "100.00"},
    }
    assert updated.get_json() == expected
    fetched = client.get("/api/members/ann", headers=auth)
    assert fetched.status_code == 200
    assert fetched.get_json() == expected


def test_a_new_member_has_low_balance_emails_off_by_default(client, auth) -> None:
    assert put_member(client, auth, "ann").get_json()["low_balance_emails"] is False


def test_put_organisation_stores_the_fee_percent_and_minimum_balance(client, auth) -> None:
    created = put_organisation(
        client, auth, "club", settlement_fee_percent="2.5", minimum_balance_after_settlement="100.00"
    )
    assert created.status_code == 201
    assert created.get_json() == {
        "organisation_id": "club",
        "name": "North Shore Bridge Club",
        "settlement_fee_percent": "2.50",
        "minimum_balance_after_settlement": "100.00",
        "bank_bsb": None,
        "bank_account": None,
    }
    updated = put_organisation(client, auth, "club", name="North Shore BC", settlement_fee_percent=3)
    assert updated.status_code == 200
    expected = {
        "organisation_id": "club",
        "name": "North Shore BC",
        "settlement_fee_percent": "3.00",
        "minimum_balance_after_settlement": "100.00",  # kept when not sent
        "bank_bsb": None,
        "bank_account": None,
    }
    assert updated.get_json() == expected
    assert client.get("/api/organisations/club", headers=auth).get_json() == expected


def test_an_organisation_without_a_fee_uses_the_default(client, auth) -> None:
    body = put_organisation(client, auth, "club").get_json()
    assert body["settlement_fee_percent"] is None
    assert body["minimum_balance_after_settlement"] == "0.00"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": "ann@example"}, "email"),
        ({"email": ""}, "email"),
        ({"email": None}, "email"),
        ({"first_name": None}, "first_name"),
        ({"first_name": "   "}, "first_name"),
        ({"last_name": None}, "last_name"),
        ({"last_name": "x" * 101}, "last_name"),
        ({"first_name": "Ann\x00"}, "first_name"),
        ({"first_name": "\ud800"}, "first_name"),
        ({"low_balance_emails": "yes"}, "low_balance_emails"),
        ({"low_balance_emails": 1}, "low_balance_emails"),
    ],
)
def test_put_member_refuses_a_bad_field_and_names_it(client, auth, changes, field) -> None:
    assert_error(put_member(client, auth, "ann", **changes), 400, "invalid_input", field)
    assert_error(client.get("/api/members/ann", headers=auth), 404, "not_found")


def test_put_member_refuses_missing_names(client, auth) -> None:
    response = client.put("/api/members/ann", json={"email": "ann@example.org"}, headers=auth)
    assert_error(response, 400, "invalid_input", "first_name")
    response = client.put("/api/members/ann", json={"email": "ann@example.org", "first_name": "Ann"}, headers=auth)
    assert_error(response, 400, "invalid_input", "last_name")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/members/%20bad", "member_id"),
        ("/api/members/-ann", "member_id"),
        ("/api/members/ann%20lee", "member_id"),
        ("/api/members/" + "a" * 65, "member_id"),
        ("/api/organisations/%20bad", "organisation_id"),
        ("/api/organisations/club%24", "organisation_id"),
    ],
)
def test_a_bad_id_in_the_path_is_a_400_naming_it(client, auth, path, field) -> None:
    body = {"email": "a@example.org", "first_name": "A", "last_name": "B", "name": "Club"}
    assert_error(client.put(path, json=body, headers=auth), 400, "invalid_input", field)


def test_a_64_character_id_is_accepted(client, auth) -> None:
    assert put_member(client, auth, "a" * 64).status_code == 201


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"settlement_fee_percent": "101"}, "invalid_input", "settlement_fee_percent"),
        ({"settlement_fee_percent": "-1"}, "invalid_input", "settlement_fee_percent"),
        ({"settlement_fee_percent": 2.5}, "invalid_input", "settlement_fee_percent"),
        ({"settlement_fee_percent": "2.505"}, "invalid_input", "settlement_fee_percent"),
        ({"settlement_fee_percent": "NaN"}, "invalid_input", "settlement_fee_percent"),
        ({"settlement_fee_percent": "two"}, "invalid_input", "settlement_fee_percent"),
        ({"settlement_fee_percent": True}, "invalid_input", "settlement_fee_percent"),
        ({"minimum_balance_after_settlement": 100.0}, "invalid_amount", "minimum_balance_after_settlement"),
        ({"minimum_balance_after_settlement": "-0.01"}, "invalid_amount", "minimum_balance_after_settlement"),
        ({"minimum_balance_after_settlement": "1.001"}, "invalid_amount", "minimum_balance_after_settlement"),
        ({"name": ""}, "invalid_input", "name"),
        ({"name": None}, "invalid_input", "name"),
        ({"name": "x" * 201}, "invalid_input", "name"),
    ],
)
def test_put_organisation_refuses_a_bad_field_and_names_it(client, auth, changes, code, field) -> None:
    assert_error(put_organisation(client, auth, "club", **changes), 400, code, field)
    assert_error(client.get("/api/organisations/club", headers=auth), 404, "not_found")


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ("not json", "application/json"),
        ("[]", "application/json"),
        ('[{"email": "a@example.org"}]', "application/json"),
        ('"text"', "application/json"),
        ("null", "application/json"),
        ('{"email": "a@example.org", "first_name": "A", "last_name": "B"}', "text/plain"),
        ("", "application/json"),
    ],
    ids=["not-json", "empty-array", "array", "string", "null", "wrong-content-type", "empty"],
)
@pytest.mark.parametrize("path", ["/api/members/ann", "/api/organisations/club"])
def test_a_body_that_is_not_a_json_object_is_a_400_naming_the_body(client, auth, path, data, content_type) -> None:
    response = client.put(path, data=data, content_type=content_type, headers=auth)
    assert_error(response, 400, "invalid_input", "body")


def test_an_adjustment_body_that_is_not_a_json_object_is_a_400_naming_the_body(client, auth) -> None:
    response = client.post("/api/adjustments", data="[1, 2]", content_type="application/json", headers=auth)
    assert_error(response, 400, "invalid_input", "body")


# Unknown members and organisations --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/members/nobody", "member_id"),
        ("/api/members/nobody/balance", "member_id"),
        ("/api/members/nobody/balance?date=2026-03-10", "member_id"),
        ("/api/members/nobody/statement", "member_id"),
        ("/api/members/nobody/statement?format=csv", "member_id"),
        ("/api/organisations/nobody", "organisation_id"),
        ("/api/organisations/nobody/balance", "organisation_id"),
        ("/api/organisations/nobody/statement", "organisation_id"),
        ("/api/organisations/nobody/summary", "organisation_id"),
        ("/api/organisations/nobody/summary?days=all", "organisation_id"),
    ],
)
def test_an_unknown_member_or_organisation_is_a_404(client, auth, existing, path, field) -> None:
    error = assert_error(client.get(path, headers=auth), 404, "not_found", field)
    assert "nobody: not known to payments" in error["message"]


@pytest.mark.parametrize("target", ["member_id", "organisation_id"])
def test_an_adjustment_for_an_unknown_account_is_a_404_and_books_nothing(
    client, auth, sessions, existing, target
) -> None:
    response = adjust(client, auth, **{"member_id": _OMIT, target: "nobody"})
    assert_error(response, 404, "not_found", target)
    assert entry_count(sessions) == 0


def test_a_member_id_is_not_an_organisation_id(client, auth, existing) -> None:
    assert_error(client.get("/api/organisations/ann/balance", headers=auth), 404, "not_found")
    assert_error(client.get("/api/members/club/balance", headers=auth), 404, "not_found")


# Adjustments ------------------------------------------------------------------------------


def test_an_adjustment_credits_a_member(client, auth, existing) -> None:
    response = adjust(client, auth, amount="12.34")
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"request_id", "status", "entry_id", "amount", "created_at", "replayed"}
    assert body["request_id"] == "adj-1"
    assert body["status"] == "booked"
    assert body["amount"] == "12.34"
    assert body["replayed"] is False
    assert isinstance(body["entry_id"], int)
    assert body["created_at"].endswith("+00:00")
    assert balance(client, auth) == "12.34"


def test_an_adjustment_credits_an_organisation(client, auth, existing) -> None:
    response = adjust(client, auth, member_id=_OMIT, organisation_id="club", amount="250")
    assert response.status_code == 201
    assert response.get_json()["amount"] == "250.00"
    org = client.get("/api/organisations/club/balance", headers=auth)
    assert org.get_json() == {"organisation_id": "club", "balance": "250.00"}
    assert balance(client, auth) == "0.00"


def test_replaying_an_adjustment_returns_the_first_booking_and_books_nothing(client, auth, sessions, existing) -> None:
    first = adjust(client, auth, amount="12.34")
    again = adjust(client, auth, amount="12.34")
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.get_json() == {**first.get_json(), "replayed": True}
    assert balance(client, auth) == "12.34"
    assert entry_count(sessions) == 1


def test_replaying_an_adjustment_with_an_integer_amount_of_the_same_value_is_the_same_request(
    client, auth, existing
) -> None:
    assert adjust(client, auth, amount="12.00").status_code == 201
    again = adjust(client, auth, amount=12)
    assert again.status_code == 200
    assert again.get_json()["replayed"] is True


@pytest.mark.parametrize(
    "changes",
    [
        {"amount": "12.35"},
        {"description": "Another reason"},
        {"admin_id": "admin-8"},
        {"member_id": _OMIT, "organisation_id": "club"},
    ],
    ids=["amount", "description", "admin", "target"],
)
def test_the_same_request_id_with_a_different_payload_is_a_409(client, auth, sessions, existing, changes) -> None:
    assert adjust(client, auth, amount="12.34").status_code == 201
    error = assert_error(adjust(client, auth, **{"amount": "12.34", **changes}), 409, "conflict", "request_id")
    assert "adj-1" in error["message"]
    assert balance(client, auth) == "12.34"
    assert entry_count(sessions) == 1


def test_a_debit_beyond_the_balance_is_422_and_books_nothing(client, auth, sessions, existing) -> None:
    assert adjust(client, auth, request_id="credit", amount="10.00").status_code == 201
    error = assert_error(adjust(client, auth, request_id="debit", amount="-10.01"), 422, "insufficient_funds")
    assert error["message"] == "member ann: balance 10.00, needs 10.01"
    assert balance(client, auth) == "10.00"
    assert entry_count(sessions) == 1


def test_a_refused_debit_leaves_its_request_id_free_for_a_corrected_request(client, auth, existing) -> None:
    assert_error(adjust(client, auth, amount="-5.00"), 422, "insufficient_funds")
    retried = adjust(client, auth, amount="-5.00", allow_negative=True)
    assert retried.status_code == 201
    assert retried.get_json()["replayed"] is False
    assert balance(client, auth) == "-5.00"


def test_a_debit_with_allow_negative_takes_the_member_below_zero(client, auth, existing) -> None:
    assert adjust(client, auth, request_id="credit", amount="10.00").status_code == 201
    response = adjust(client, auth, request_id="debit", amount="-25.50", allow_negative=True)
    assert response.status_code == 201
    assert response.get_json()["amount"] == "-25.50"
    assert balance(client, auth) == "-15.50"


def test_an_organisation_debit_beyond_its_balance_is_422(client, auth, existing) -> None:
    response = adjust(client, auth, member_id=_OMIT, organisation_id="club", amount="-0.01")
    error = assert_error(response, 422, "insufficient_funds")
    assert error["message"] == "organisation club: balance 0.00, needs 0.01"


@pytest.mark.parametrize(
    "amount",
    [12.5, 12.0, "12.345", "", "   ", "abc", "NaN", "Infinity", "1e3", "12,50", True, None, [], {}, "1000000.01", "-1000000.01"],
    ids=repr,
)
def test_a_bad_adjustment_amount_is_a_400_naming_amount(client, auth, sessions, existing, amount) -> None:
    error = assert_error(adjust(client, auth, amount=amount), 400, "invalid_amount", "amount")
    assert error["message"].startswith("amount:")
    assert entry_count(sessions) == 0


@pytest.mark.parametrize("amount", [0, "0.00", "-0"], ids=repr)
def test_an_adjustment_of_zero_is_a_400_naming_amount(client, auth, sessions, existing, amount) -> None:
    error = assert_error(adjust(client, auth, amount=amount), 400, "invalid_input", "amount")
    assert error["message"] == "amount: an adjustment of 0.00 books nothing"
    assert entry_count(sessions) == 0


def test_the_largest_allowed_adjustment_is_booked(client, auth, existing) -> None:
    assert adjust(client, auth, amount="1000000.00").status_code == 201
    assert balance(client, auth) == "1000000.00"


def test_an_adjustment_naming_both_a_member_and_an_organisation_is_a_400(client, auth, sessions, existing) -> None:
    error = assert_error(adjust(client, auth, organisation_id="club"), 400, "invalid_input", "member_id")
    assert "more than one" in error["message"]
    assert entry_count(sessions) == 0


def test_an_adjustment_naming_neither_a_member_nor_an_organisation_is_a_400(client, auth, existing) -> None:
    error = assert_error(adjust(client, auth, member_id=_OMIT), 400, "invalid_input", "member_id")
    assert "missing" in error["message"]
    assert_error(adjust(client, auth, member_id=None), 400, "invalid_input", "member_id")


def test_an_adjustment_description_may_be_80_characters_but_not_81(client, auth, existing) -> None:
    assert_error(adjust(client, auth, description="x" * 81), 400, "invalid_input", "description")
    assert adjust(client, auth, description="x" * 80).status_code == 201


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"admin_id": _OMIT}, "admin_id"),
        ({"admin_id": ""}, "admin_id"),
        ({"request_id": _OMIT}, "request_id"),
        ({"request_id": "has space"}, "request_id"),
        ({"description": _OMIT}, "description"),
        ({"description": ""}, "description"),
        ({"allow_negative": "true"}, "allow_negative"),
        ({"allow_negative": 1}, "allow_negative"),
    ],
    ids=["no-admin", "empty-admin", "no-request", "bad-request", "no-description", "empty-description", "negative-text", "negative-int"],
)
def test_an_adjustment_missing_or_with_a_bad_field_is_a_400_naming_it(client, auth, sessions, existing, changes, field) -> None:
    assert_error(adjust(client, auth, **changes), 400, "invalid_input", field)
    assert entry_count(sessions) == 0


# Balances ---------------------------------------------------------------------------------


def test_the_balance_after_adjustments_has_no_last_top_up_and_auto_topup_off(client, auth, existing) -> None:
    assert adjust(client, auth, request_id="a1", amount="30.00").status_code == 201
    assert adjust(client, auth, request_id="a2", amount="-7.55").status_code == 201
    response = client.get("/api/members/ann/balance", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {
        "member_id": "ann",
        "balance": "22.45",
        "last_top_up": None,
        "auto_topup": {"status": "off", "amount": "100.00"},
    }


def test_a_member_without_entries_has_a_zero_balance(client, auth, existing) -> None:
    assert client.get("/api/members/ann/balance", headers=auth).get_json()["balance"] == "0.00"
    assert client.get("/api/organisations/club/balance", headers=auth).get_json()["balance"] == "0.00"


def test_the_balance_on_a_date_counts_entries_to_the_end_of_that_local_day(client, auth, existing) -> None:
    with freeze_time("2026-03-10T12:50:00Z"):  # 23:50 on 10 March in Sydney
        assert adjust(client, auth, request_id="a1", amount="10.00").status_code == 201
        assert adjust(client, auth, request_id="o1", member_id=_OMIT, organisation_id="club", amount="4.00").status_code == 201
    with freeze_time("2026-03-10T13:10:00Z"):  # 00:10 on 11 March in Sydney
        assert adjust(client, auth, request_id="a2", amount="2.50").status_code == 201
    expected = {"2026-03-09": "0.00", "2026-03-10": "10.00", "2026-03-11": "12.50"}
    for day, cents in expected.items():
        response = client.get(f"/api/members/ann/balance?date={day}", headers=auth)
        assert response.status_code == 200
        assert response.get_json() == {"member_id": "ann", "date": day, "balance": cents}
    org = client.get("/api/organisations/club/balance?date=2026-03-09", headers=auth)
    assert org.get_json() == {"organisation_id": "club", "date": "2026-03-09", "balance": "0.00"}
    org = client.get("/api/organisations/club/balance?date=2026-03-10", headers=auth)
    assert org.get_json() == {"organisation_id": "club", "date": "2026-03-10", "balance": "4.00"}


@pytest.mark.parametrize("day", ["2026-02-30", "yesterday", "", "10/03/2026", "2026-03-10T00:00", "9999-12-31", "2026-W10-1", "20260310"])
@pytest.mark.parametrize("who", ["members/ann", "organisations/club"])
def test_a_bad_balance_date_is_a_400_naming_date(client, auth, existing, who, day) -> None:
    response = client.get(f"/api/{who}/balance", query_string={"date": day}, headers=auth)
    assert_error(response, 400, "invalid_input", "date")


# Statements and summaries (values are checked cell by cell in test_statements.py) -----------


def test_a_statement_in_an_unknown_format_is_a_400_naming_format(client, auth, existing) -> None:
    response = client.get("/api/members/ann/statement?format=pdf", headers=auth)
    assert_error(response, 400, "invalid_input", "format")
    response = client.get("/api/organisations/club/statement?format=xml", headers=auth)
    assert_error(response, 400, "invalid_input", "format")


def test_an_empty_statement_has_no_rows_and_a_csv_header_only(client, auth, existing) -> None:
    with freeze_time("2026-03-10T03:00:00Z"):
        body = client.get("/api/members/ann/statement", headers=auth).get_json()
    assert body == {"member_id": "ann", "rows": [], "next_cursor": None, "opening_balance": "0.00",
                    "closing_balance": "0.00", "from": "1901-01-01", "to": "2026-03-10"}
    csv_response = client.get("/api/organisations/club/statement?format=csv", headers=auth)
    assert csv_response.status_code == 200
    assert csv_response.mimetype == "text/csv"
    assert csv_response.headers["Content-Disposition"] == 'attachment; filename="statement-organisation-club.csv"'
    assert csv_response.get_data(as_text=True) == "Date,Counterparty,Reference,Type,Description,Amount,Balance,Event,Session\r\n"


@pytest.mark.parametrize(("days", "shown"), [("30", 30), ("90", 90), ("365", 365), ("all", "all"), ("ALL", "all"), (None, 30)])
def test_the_organisation_summary_accepts_30_90_365_and_all_days(client, auth, existing, days, shown) -> None:
    assert adjust(client, auth, member_id=_OMIT, organisation_id="club", amount="40.00").status_code == 201
    query = {} if days is None else {"days": days}
    response = client.get("/api/organisations/club/summary", query_string=query, headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {
        "organisation_id": "club",
        "days": shown,
        "by_type": [{"type": "Manual Adjustment", "amount": "40.00", "count": 1}],
        "total": "40.00",
    }


@pytest.mark.parametrize("days", ["7", "0", "", "abc", "-30", "30.0"])
def test_an_organisation_summary_over_other_days_is_a_400_naming_days(client, auth, existing, days) -> None:
    response = client.get("/api/organisations/club/summary", query_string={"days": days}, headers=auth)
    assert_error(response, 400, "invalid_input", "days")


# Admin summary ----------------------------------------------------------------------------


def test_the_admin_summary_counts_and_sums_members_organisations_and_card_money(
    client, auth, sessions
) -> None:
    with freeze_time("2026-01-20T00:00:00Z"):
        for member_id in ("ann", "bob", "cat", "dan"):
            assert put_member(client, auth, member_id).status_code == 201
        for org_id in ("club", "congress", "empty"):
            assert put_organisation(client, auth, org_id).status_code == 201
        with sessions.begin() as session:
            ann = session.get(Member, "ann")
            top_up(session, ann.account_id, 500_00, "old-card")  # more than 30 days before "now"
    with freeze_time("2026-03-01T00:00:00Z"):
        with sessions.begin() as session:
            top_up(session, session.get(Member, "bob").account_id, 60_00, "card-1")
            top_up(session, session.get(Member, "cat").account_id, 15_50, "card-2")
            session.execute(
                update(Member).where(Member.member_id == "cat").values(auto_topup_status=AutoTopUpStatus.ON.value)
            )
        adjustments = [
            ("a1", "ann", None, "-100.00", False),  # ann 400.00
            ("a2", None, "club", "75.25", False),  # club 75.25
            ("a3", None, "congress", "10.00", False),
            ("a4", None, "congress", "-10.00", False),  # congress back to 0.00
            ("a5", "dan", None, "-3.00", True),  # dan -3.00
        ]
        for request_id, member_id, org_id, amount, negative in adjustments:
            response = adjust(
                client,
                auth,
                request_id=request_id,
                member_id=member_id or _OMIT,
                organisation_id=org_id or _OMIT,
                amount=amount,
                allow_negative=negative,
            )
            assert response.status_code == 201, response.get_data(as_text=True)
    with freeze_time("2026-03-15T00:00:00Z"):
        response = client.get("/api/admin/summary", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {
        "members": 4,
        "members_auto_topup_on": 1,
        # ann 400.00 + bob 60.00 + cat 15.50 + dan -3.00
        "members_with_balance": {"count": 4, "sum": "472.50"},
        "organisations": 3,
        # club 75.25; congress is back at 0.00 and empty never moved
        "organisations_with_balance": {"count": 1, "sum": "75.25"},
        "net_liability": "547.75",
        # card-1 and card-2; old-card is 54 days old
        "card_money_last_30_days": "75.50",
        # No Stripe key in these settings: never read (tests/integration/test_federation_reports.py reads it)
        "stripe_balance": None,
    }


def test_the_admin_summary_of_an_empty_service_is_all_zero(client, auth) -> None:
    assert client.get("/api/admin/summary", headers=auth).get_json() == {
        "members": 0,
        "members_auto_topup_on": 0,
        "members_with_balance": {"count": 0, "sum": "0.00"},
        "organisations": 0,
        "organisations_with_balance": {"count": 0, "sum": "0.00"},
        "net_liability": "0.00",
        "card_money_last_30_days": "0.00",
        "stripe_balance": None,
    }


# Hostile input ----------------------------------------------------------------------------

_VALID_ADJUSTMENT = {
    "request_id": "adj-1",
    "member_id": "ann",
    "amount": "10.00",
    "description": "Goodwill credit",
    "admin_id": "admin-7",
}
_VALID_MEMBER = {"email": "ann@example.org", "first_name": "Ann", "last_name": "Lee"}


def _with(base: dict[str, Any], **changes: Any) -> str:
    return json.dumps({**base, **changes})


MALFORMED_ADJUSTMENTS = {
    "string-body": '"adjust please"',
    "number-body": "42",
    "nested-lists": "[[[[[[]]]]]]",
    "deep-nesting": "[" * 5000 + "]" * 5000,
    "truncated": '{"request_id": "adj-1", "amount": ',
    "amount-object": _with(_VALID_ADJUSTMENT, amount={"value": "10.00"}),
    "amount-list": _with(_VALID_ADJUSTMENT, amount=["10.00"]),
    "amount-null": _with(_VALID_ADJUSTMENT, amount=None),
    "amount-1e308": _with(_VALID_ADJUSTMENT, amount=1e308),
    "amount-1e400": _with(_VALID_ADJUSTMENT, amount="x").replace('"x"', "1e400"),
    "amount-NaN-literal": _with(_VALID_ADJUSTMENT, amount="x").replace('"x"', "NaN"),
    "amount-huge-int": _with(_VALID_ADJUSTMENT, amount=10**30),
    "amount-5000-digits": _with(_VALID_ADJUSTMENT, amount="x").replace('"x"', "9" * 5000),
    "amount-long-text": _with(_VALID_ADJUSTMENT, amount="1" * 100_000),
    "amount-exponent": _with(_VALID_ADJUSTMENT, amount="1E+999999999"),
    "member-object": _with(_VALID_ADJUSTMENT, member_id={"id": "ann"}),
    "member-list": _with(_VALID_ADJUSTMENT, member_id=["ann"]),
    "member-negative-int": _with(_VALID_ADJUSTMENT, member_id=-1),
    "member-bool": _with(_VALID_ADJUSTMENT, member_id=True),
    "request-id-long": _with(_VALID_ADJUSTMENT, request_id="r" * 10_000),
    "request-id-object": _with(_VALID_ADJUSTMENT, request_id={}),
    "request-id-null": _with(_VALID_ADJUSTMENT, request_id=None),
    "description-long": _with(_VALID_ADJUSTMENT, description="d" * 500_000),
    "description-list": _with(_VALID_ADJUSTMENT, description=["a", ["b"]]),
    "description-null": _with(_VALID_ADJUSTMENT, description=None),
    "description-nul": _with(_VALID_ADJUSTMENT, description="a\u0000b"),
    "description-surrogate": _with(_VALID_ADJUSTMENT, description="\ud800"),
    "admin-number-float": _with(_VALID_ADJUSTMENT, admin_id=1.5),
    "allow-negative-null": _with(_VALID_ADJUSTMENT, allow_negative=None),
    "allow-negative-object": _with(_VALID_ADJUSTMENT, allow_negative={}),
}

MALFORMED_MEMBERS = {
    "string-body": '"Ann Lee"',
    "nested-lists": '[["ann@example.org"], ["Ann"]]',
    "null-body": "null",
    "deep-nesting": '{"a":' * 3000 + "1" + "}" * 3000,
    "email-object": _with(_VALID_MEMBER, email={"address": "ann@example.org"}),
    "email-list": _with(_VALID_MEMBER, email=["ann@example.org"]),
    "email-number": _with(_VALID_MEMBER, email=1e308),
    "email-long": _with(_VALID_MEMBER, email="a" * 300 + "@example.org"),
    "email-surrogate": _with(_VALID_MEMBER, email="\udfff@example.org"),
    "first-name-null": _with(_VALID_MEMBER, first_name=None),
    "first-name-number": _with(_VALID_MEMBER, first_name=10**30),
    "first-name-long": _with(_VALID_MEMBER, first_name="A" * 500_000),
    "last-name-list": _with(_VALID_MEMBER, last_name=[["Lee"]]),
    "last-name-newline": _with(_VALID_MEMBER, last_name="Lee\nDROP"),
    "low-balance-null-string": _with(_VALID_MEMBER, low_balance_emails="null"),
    "low-balance-list": _with(_VALID_MEMBER, low_balance_emails=[True]),
    "low-balance-huge": _with(_VALID_MEMBER, low_balance_emails=1e308),
}


@pytest.mark.parametrize("body", MALFORMED_ADJUSTMENTS.values(), ids=MALFORMED_ADJUSTMENTS.keys())
def test_a_malformed_adjustment_is_a_400_never_a_500(client, auth, sessions, existing, body) -> None:
    response = client.post("/api/adjustments", data=body, content_type="application/json", headers=auth)
    assert_error(response, 400, response.get_json()["error"]["code"])
    assert response.get_json()["error"]["code"] in ("invalid_input", "invalid_amount")
    assert entry_count(sessions) == 0


@pytest.mark.parametrize("body", MALFORMED_MEMBERS.values(), ids=MALFORMED_MEMBERS.keys())
def test_a_malformed_member_is_a_400_never_a_500(client, auth, body) -> None:
    response = client.put("/api/members/x", data=body, content_type="application/json", headers=auth)
    assert_error(response, 400, "invalid_input")
    assert_error(client.get("/api/members/x", headers=auth), 404, "not_found")


@pytest.mark.parametrize("path", ["/api/adjustments", "/api/members/ann"])
def test_a_body_over_one_mebibyte_is_a_413(client, auth, sessions, existing, path) -> None:
    body = _with(_VALID_ADJUSTMENT, description="d" * (1024 * 1024))
    response = client.open(
        path, method="POST" if path == "/api/adjustments" else "PUT", data=body,
        content_type="application/json", headers=auth,
    )
    assert_error(response, 413, "payload_too_large")
    assert entry_count(sessions) == 0


def test_a_body_of_just_under_one_mebibyte_is_read(client, auth, existing) -> None:
    body = _with(_VALID_ADJUSTMENT, description="d" * 1000)
    body = body[:-1] + ', "padding": "' + "p" * (1024 * 1024 - len(body) - 16) + '"}'
    assert len(body.encode()) <= 1024 * 1024
    response = client.post("/api/adjustments", data=body, content_type="application/json", headers=auth)
    # Read and checked (the description is too long), not refused for size.
    assert_error(response, 400, "invalid_input", "description")


# Keys namespaced by kind (SPEC 5) ---------------------------------------------------------


def test_an_adjustment_is_booked_under_its_kind_with_the_request_id_as_reference(client, auth, sessions, existing) -> None:
    assert adjust(client, auth).status_code == 201
    with sessions.begin() as session:
        entry = session.scalars(select(JournalEntry)).one()
        assert (entry.idempotency_key, entry.reference) == ("adjustment:adj-1", "adj-1")


def test_an_adjustment_named_like_a_payment_leaves_the_payment_its_booking(client, auth, sessions, existing) -> None:
    assert adjust(client, auth, request_id="payment:r1", amount="50.00").status_code == 201
    order = payments.parse({"request_id": "r1", "member_id": "ann", "amount": "30.00", "description": "Table money",
                            "organisation_id": "club"}, Settings())
    with sessions.begin() as session:
        assert payments.pay(session, order, Settings()).status == "paid"
    assert balance(client, auth) == "20.00"


def test_an_adjustment_named_like_a_settlement_leaves_the_settlement_its_booking(client, auth, sessions, existing) -> None:
    with sessions.begin() as session:
        club = profiles.get_organisation(session, "club").account_id
        ledger.post(session, Entry("takings", EntryType.CLUB_PAYMENT, "Table money",
                                   (Line(club, 1000_00), Line(profiles.system_account(session, SystemAccount.STRIPE), -1000_00))),
                    now=datetime(2025, 10, 15, tzinfo=UTC))
    assert adjust(client, auth, request_id="settlement:club:2025-10-31").status_code == 201
    order = settlements.parse({"request_id": "s1", "reference_date": "2025-10-31",
                               "organisations": [{"organisation_id": "club"}]}, Settings())
    with sessions.begin() as session:
        row = settlements.settle(session, order, Settings())
    assert row.result is not None
    assert (row.result["organisations"][0]["status"], row.result["organisations"][0]["net"]) == ("settled", "1000.00")


def test_an_adjustment_named_like_card_money_leaves_the_card_money_its_booking(client, auth, sessions, existing) -> None:
    assert adjust(client, auth, request_id="card:checkout:r9").status_code == 201
    with sessions.begin() as session:
        attempt = topups.open_attempt(session, key="checkout:r9", kind=CardPaymentKind.CHECKOUT, member_id="ann",
                                      amount=25_00, request_id="r9")
        assert attempt is not None
        assert topups.book_card_money(session, attempt, payment_intent_id="pi_r9").replayed is False
    assert balance(client, auth) == "35.00"


def test_an_adjustment_booked_under_its_bare_request_id_still_replays(client, auth, sessions, existing) -> None:
    """Before keys were namespaced an adjustment's key was its request id: it stays readable."""
    with sessions.begin() as session:
        ann = profiles.get_member(session, "ann").account_id
        adjustments = profiles.system_account(session, SystemAccount.ADJUSTMENTS)
        first = ledger.post(session, Entry("adj-1", EntryType.MANUAL_ADJUSTMENT, "Goodwill credit",
                                           (Line(ann, 10_00), Line(adjustments, -10_00)), admin_id="admin-7"))
    again = adjust(client, auth)
    assert again.status_code == 200
    assert (again.get_json()["entry_id"], again.get_json()["replayed"]) == (first.entry_id, True)
    assert_error(adjust(client, auth, amount="11.00"), 409, "conflict", "request_id")
    assert balance(client, auth) == "10.00"
    assert entry_count(sessions) == 1


# Optional profile fields: absent keeps, null means the default ---------------------------


@pytest.mark.parametrize(
    ("field", "value", "shown", "default"),
    [
        ("settlement_fee_percent", "3.5", "3.50", None),
        ("minimum_balance_after_settlement", "250.00", "250.00", "0.00"),
    ],
)
def test_an_organisation_update_without_an_optional_field_keeps_it_and_null_restores_the_default(
    client, auth, field, value, shown, default
) -> None:
    assert put_organisation(client, auth, "club", **{field: value}).get_json()[field] == shown
    assert put_organisation(client, auth, "club", name="North Shore BC").get_json()[field] == shown
    assert client.get("/api/organisations/club", headers=auth).get_json()[field] == shown
    assert put_organisation(client, auth, "club", **{field: None}).get_json()[field] == default


def test_a_member_update_without_low_balance_emails_keeps_it_and_null_turns_it_off(client, auth) -> None:
    assert put_member(client, auth, "ann", low_balance_emails=True).get_json()["low_balance_emails"] is True
    assert put_member(client, auth, "ann", first_name="Annie").get_json()["low_balance_emails"] is True
    assert put_member(client, auth, "ann", low_balance_emails=None).get_json()["low_balance_emails"] is False


# Payment types in the wrong direction, names and e-mail addresses --------------------------


@pytest.mark.parametrize("payment_type", ["Refund", "Club Top Up", "Member Transfer", "Settlement", "Card Refund"])
def test_a_payment_typed_in_the_organisation_to_member_direction_is_a_400_naming_payment_type(
    client, auth, existing, payment_type
) -> None:
    body = {"request_id": "p1", "member_id": "ann", "amount": "5.00", "description": "Table money",
            "organisation_id": "club", "payment_type": payment_type}
    assert_error(client.post("/api/payments", json=body, headers=auth), 400, "invalid_input", "payment_type")
    assert_error(client.get("/api/payments/p1", headers=auth), 404, "not_found")


HEADER_BREAKERS = {
    "line separator": "Ann\u2028Bcc: victim@example.org",
    "paragraph separator": "Ann\u2029Lee",
    "next line": "Ann\u0085Lee",
    "right-to-left override": "Ann\u202eeeL",
    "left-to-right isolate": "Ann\u2066Lee",
    "zero-width space": "An\u200bn",
    "carriage return": "Ann\rLee",
    "tab": "Ann\tLee",
}


@pytest.mark.parametrize("name", HEADER_BREAKERS.values(), ids=HEADER_BREAKERS.keys())
@pytest.mark.parametrize("field", ["first_name", "last_name"])
def test_a_member_name_with_a_control_or_formatting_character_is_a_400_naming_it(client, auth, field, name) -> None:
    assert_error(put_member(client, auth, "ann", **{field: name}), 400, "invalid_input", field)


@pytest.mark.parametrize("name", HEADER_BREAKERS.values(), ids=HEADER_BREAKERS.keys())
def test_an_organisation_name_or_description_with_a_control_or_formatting_character_is_a_400(
    client, auth, sessions, existing, name
) -> None:
    assert_error(put_organisation(client, auth, "club", name=name), 400, "invalid_input", "name")
    assert_error(adjust(client, auth, description=name), 400, "invalid_input", "description")
    assert entry_count(sessions) == 0


@pytest.mark.parametrize(
    "address",
    ["x@evil.io,victim@example.org", "evil,victim@example.org", "victim@example.org,evil.io",
     "x@evil.io;victim@example.org", "victim;x@example.org", "x@evil.io victim@example.org",
     "Ann <ann@example.org>", "<ann@example.org>", '"ann"@example.org', "ann@example.org\u2028"
     "Bcc: victim@example.org"],
    ids=["two-addresses-comma", "comma-local", "comma-domain", "two-addresses-semicolon", "semicolon-local",
         "space", "display-name", "angle-brackets", "quoted", "line-separator"],
)
def test_a_member_email_that_is_not_exactly_one_address_is_a_400_naming_email(client, auth, address) -> None:
    assert_error(put_member(client, auth, "ann", email=address), 400, "invalid_input", "email")
