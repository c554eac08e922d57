"""The settlement run over HTTP (issue 14 item 4; ORIGINAL 2.9, SPEC 5): candidates at a
reference date, `"organisations": "all"`, the history and the bank file, and the bank details
they need. A known history crosses local midnight at the end of October (Sydney, UTC+11)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared import access, ledger, profiles, requests, settlements
from shared.config import Settings
from shared.ledger import Entry, Line
from shared.models import EntryType, Organisation, SystemAccount
from shared.profiles import OrganisationDetails
from tests.integration.helpers import bearer
from tests.integration.test_api import assert_error

TODAY = "2025-11-20T01:00:00Z"  # 12:00 in Sydney, 20 November
OCTOBER = "2025-10-31"


def _book(session: Session, key: str, account: int, cents: int, moment: datetime) -> None:
    stripe = profiles.system_account(session, SystemAccount.STRIPE)
    ledger.post(session, Entry(key, EntryType.CLUB_PAYMENT, "Table money", (Line(account, cents), Line(stripe, -cents))),
                now=moment)


@pytest.fixture
def clubs(sessions: sessionmaker[Session]) -> dict[str, int]:
    """alpha: 2 % (the default), no minimum; 1000.00 mid-October, 50.00 at 23:30 on 31 October
    in Sydney (12:30 UTC, in October) and 70.00 at 00:10 on 1 November (13:10 UTC on 31
    October, after the reference date). beta: 1.5 %, a minimum of 100.00, 333.33. gamma: 80.00,
    below its minimum of 100.00. delta: 500.00, already settled to 31 October. epsilon: nothing."""
    accounts: dict[str, int] = {}
    with sessions.begin() as session:
        for org_id, name, fee, minimum in (
            ("alpha", "Alpha Bridge Club", None, None),
            ("beta", "=Beta Club", "1.50", 100_00),
            ("gamma", "Gamma", None, 100_00),
            ("delta", "Delta", None, None),
            ("epsilon", "Epsilon", None, None),
        ):
            details = OrganisationDetails(name=name, settlement_fee_percent=None if fee is None else _dec(fee),
                                          minimum_balance_after_settlement=minimum)
            accounts[org_id] = profiles.put_organisation(session, org_id, details)[0].account_id
        _book(session, "a1", accounts["alpha"], 1000_00, datetime(2025, 10, 15, 2, tzinfo=UTC))
        _book(session, "a2", accounts["alpha"], 50_00, datetime(2025, 10, 31, 12, 30, tzinfo=UTC))
        _book(session, "a3", accounts["alpha"], 70_00, datetime(2025, 10, 31, 13, 10, tzinfo=UTC))
        _book(session, "b1", accounts["beta"], 333_33, datetime(2025, 10, 2, tzinfo=UTC))
        _book(session, "g1", accounts["gamma"], 80_00, datetime(2025, 10, 2, tzinfo=UTC))
        _book(session, "d1", accounts["delta"], 500_00, datetime(2025, 10, 2, tzinfo=UTC))
    with freeze_time("2025-11-03T00:00:00Z"):
        _settle(sessions, "early-delta", OCTOBER, [{"organisation_id": "delta"}])
    return accounts


def _dec(value: str) -> Any:
    from decimal import Decimal

    return Decimal(value)


def _settle(sessions: sessionmaker[Session], request_id: str, day: str, organisations: Any) -> dict[str, Any]:
    """What the worker does with a stored settlement request."""
    order = settlements.parse({"request_id": request_id, "reference_date": day, "organisations": organisations},
                              Settings())
    with sessions.begin() as session:
        settlements.record(session, order)
    return _run(sessions, request_id)


def _run(sessions: sessionmaker[Session], request_id: str) -> dict[str, Any]:
    with sessions.begin() as session:
        order = settlements.SettlementOrder.from_payload(requests.get(session, request_id).payload)
        row = settlements.settle(session, order, Settings())
        assert row.result is not None
        return row.result


ALPHA = {"organisation_id": "alpha", "name": "Alpha Bridge Club", "gross": "1050.00", "net": "1050.00",
         "fee": "21.00", "bank_amount": "1029.00", "fee_percent": "2.00"}
BETA = {"organisation_id": "beta", "name": "=Beta Club", "gross": "333.33", "net": "233.33", "fee": "3.50",
        "bank_amount": "229.83", "fee_percent": "1.50"}  # 233.33 x 0.985 = 229.83005


def test_candidates_are_those_with_a_net_above_zero_not_yet_settled_to_the_date(client, auth, clubs) -> None:
    with freeze_time(TODAY):
        response = client.get("/api/settlements/candidates", headers=auth)  # default: the last day of last month
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {
        "reference_date": OCTOBER, "organisations": [ALPHA, BETA], "count": 2, "total_gross": "1383.33",
        "total_net": "1283.33", "total_fee": "24.50", "total_bank": "1258.83",
    }


def test_the_candidates_csv_has_the_original_export_columns(client, auth, clubs) -> None:
    assert client.put("/api/organisations/alpha", headers=auth,
                      json={"name": "Alpha Bridge Club", "bank_bsb": "062000", "bank_account": "00123456"}).status_code == 200
    with freeze_time(TODAY):
        response = client.get(f"/api/settlements/candidates?reference_date={OCTOBER}&format=csv", headers=auth)
        assert_error(client.get("/api/settlements/candidates?format=xlsx", headers=auth), 400, "invalid_input", "format")
    assert response.status_code == 200
    assert 'filename="settlements-2025-10-31.csv"' in response.headers["Content-Disposition"]
    assert list(csv.reader(io.StringIO(response.get_data(as_text=True)))) == [
        ["Club Number", "Club Name", "BSB", "Account Number", "Gross Amount", "Minimum Balance", "Net Amount", "Fees %",
         "Settlement Amount"],
        ["alpha", "Alpha Bridge Club", "062-000", "00123456", "1050.00", "0.00", "1050.00", "2.00", "1029.00"],
        ["beta", "'=Beta Club", "", "", "333.33", "100.00", "233.33", "1.50", "229.83"],
    ]


def test_all_settles_exactly_the_candidates_and_books_what_they_showed(client, auth, sessions, clubs) -> None:
    with freeze_time(TODAY):
        listed = client.get(f"/api/settlements/candidates?reference_date={OCTOBER}", headers=auth).get_json()
        body = {"request_id": "run-oct", "reference_date": OCTOBER, "organisations": "all"}
        assert client.post("/api/settlements", json=body, headers=auth).status_code == 202
        assert client.post("/api/settlements", json=body, headers=auth).status_code == 200  # the same request
        result = _run(sessions, "run-oct")
        _run(sessions, "run-oct")  # a redelivered task books nothing more
        assert [r["status"] for r in result["organisations"]] == ["settled", "settled"]
        for shown, booked in zip(listed["organisations"], result["organisations"], strict=True):
            assert booked["organisation_id"] == shown["organisation_id"]
            assert {k: booked[k] for k in ("gross", "net", "fee", "bank_amount", "fee_percent")} == {
                k: shown[k] for k in ("gross", "net", "fee", "bank_amount", "fee_percent")}
        with sessions.begin() as session:
            assert ledger.balance(session, clubs["alpha"]) == 70_00  # November's takings stay
            assert ledger.balance(session, clubs["beta"]) == 100_00  # the minimum stays
            assert ledger.balance(session, profiles.system_account(session, SystemAccount.BANK)) == 500_00 * 98 // 100 + 1029_00 + 229_83
        again = client.get(f"/api/settlements/candidates?reference_date={OCTOBER}", headers=auth).get_json()
        assert (again["organisations"], again["count"], again["total_bank"]) == ([], 0, "0.00")
        second = _settle(sessions, "run-oct-2", OCTOBER, "all")
    assert second == {"reference_date": OCTOBER, "organisations": []}


def test_an_organisation_whose_balance_changed_after_the_date_is_assessed_at_the_date(client, auth, sessions, clubs) -> None:
    """A November payment out of alpha does not change its October candidate figures."""
    with sessions.begin() as session:
        stripe = profiles.system_account(session, SystemAccount.STRIPE)
        ledger.post(session, Entry("out", EntryType.ORG_TRANSFER, "Out", (Line(clubs["alpha"], -20_00), Line(stripe, 20_00))),
                    now=datetime(2025, 11, 10, tzinfo=UTC))
    with freeze_time(TODAY):
        assert client.get("/api/settlements/candidates", headers=auth).get_json()["organisations"][0] == ALPHA


def test_a_reference_date_not_ended_or_malformed_is_a_400_naming_it(client, auth, clubs) -> None:
    with freeze_time(TODAY):
        for day in ("2025-11-20", "2025-13-01", "tomorrow"):
            response = client.get(f"/api/settlements/candidates?reference_date={day}", headers=auth)
            assert_error(response, 400, "invalid_input", "reference_date")


def test_a_club_client_bound_to_one_organisation_may_not_settle_all(client, sessions, clubs) -> None:
    with sessions.begin() as session:
        token = access.add(session, "alpha-club", ["clubs"], organisations=["alpha"]).token
    headers = {"Authorization": f"Bearer {token}"}
    with freeze_time(TODAY):
        mine = client.post("/api/settlements", headers=headers,
                           json={"request_id": "c1", "reference_date": OCTOBER, "organisations": [{"organisation_id": "alpha"}]})
        everyone = client.post("/api/settlements", headers=headers,
                               json={"request_id": "c2", "reference_date": OCTOBER, "organisations": "all"})
    assert mine.status_code == 202
    assert everyone.status_code == 403


# History -----------------------------------------------------------------------------------


def test_the_history_lists_every_settlement_entry_newest_first_in_pages(client, auth, sessions, clubs) -> None:
    with freeze_time(TODAY):
        _settle(sessions, "run-oct", OCTOBER, "all")
        whole = client.get("/api/settlements", headers=auth)
        assert whole.status_code == 200
        rows = whole.get_json()["rows"]
        with sessions.begin() as session:
            ids = {r["organisation_id"]: r["entry_id"] for r in requests.get(session, "run-oct").result["organisations"]}
            ids["delta"] = requests.get(session, "early-delta").result["organisations"][0]["entry_id"]
        # Both of today's were booked at the same instant: newest first, then the later id first.
        assert rows == [
            {"request_id": "run-oct", "organisation_id": "beta", "name": "=Beta Club", "reference_date": OCTOBER,
             "net": "233.33", "fee": "3.50", "bank_amount": "229.83", "entry_id": ids["beta"],
             "created_at": "2025-11-20T12:00:00+11:00"},
            {"request_id": "run-oct", "organisation_id": "alpha", "name": "Alpha Bridge Club", "reference_date": OCTOBER,
             "net": "1050.00", "fee": "21.00", "bank_amount": "1029.00", "entry_id": ids["alpha"],
             "created_at": "2025-11-20T12:00:00+11:00"},
            {"request_id": "early-delta", "organisation_id": "delta", "name": "Delta", "reference_date": OCTOBER,
             "net": "500.00", "fee": "10.00", "bank_amount": "490.00", "entry_id": ids["delta"],
             "created_at": "2025-11-03T11:00:00+11:00"},
        ]
        paged, cursor = [], None
        while True:
            page = client.get("/api/settlements?limit=2" + (f"&cursor={cursor}" if cursor else ""), headers=auth).get_json()
            paged += page["rows"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert paged == rows
        # 3 November local is outside 4 to 30 November; one club's own list.
        assert [r["organisation_id"] for r in client.get(
            "/api/settlements?from=2025-11-04&to=2025-11-30", headers=auth).get_json()["rows"]] == ["beta", "alpha"]
        assert [r["organisation_id"] for r in client.get(
            "/api/settlements?organisation_id=delta", headers=auth).get_json()["rows"]] == ["delta"]
        assert client.get("/api/settlements?period=last_month", headers=auth).get_json()["rows"] == []


BAD_HISTORY_ARGUMENTS = [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"), ("cursor=nope", "cursor"),
    ("cursor=999999999999999999.1", "cursor"), ("from=2025-02-30", "from"), ("period=forever", "period"),
    ("period=all&from=2025-01-01", "period"), ("organisation_id=", "organisation_id"),
]


def test_bad_history_arguments_are_a_400_naming_the_field(client, auth) -> None:
    for query, field in BAD_HISTORY_ARGUMENTS:
        assert_error(client.get(f"/api/settlements?{query}", headers=auth), 400, "invalid_input", field)
    assert_error(client.get("/api/settlements?organisation_id=nobody", headers=auth), 404, "not_found", "organisation_id")


def test_a_club_reads_its_own_settlements_only(client, sessions, clubs) -> None:
    with sessions.begin() as session:
        club = bearer(access.add(session, "delta-club", ["clubs"], organisations=["delta"]).token)
        portal = bearer(access.add(session, "portal", ["payments"]).token)
        reporter = bearer(access.add(session, "reporter", ["reports"]).token)
    assert client.get("/api/settlements?organisation_id=delta", headers=club).status_code == 200
    assert client.get("/api/settlements?organisation_id=alpha", headers=club).status_code == 403
    assert client.get("/api/settlements", headers=club).status_code == 403
    assert client.get("/api/settlements/candidates", headers=club).status_code == 403
    assert client.get("/api/settlements/candidates", headers=portal).status_code == 403
    assert client.get("/api/settlements/early-delta/bank-file", headers=portal).status_code == 403
    with freeze_time(TODAY):
        assert client.get("/api/settlements/candidates", headers=reporter).status_code == 200


# Bank file -----------------------------------------------------------------------------------


def test_the_bank_file_pays_each_organisation_settled_by_the_request(client, auth, sessions, clubs) -> None:
    with freeze_time(TODAY):
        _settle(sessions, "run-oct", OCTOBER, "all")
    missing = assert_error(client.get("/api/settlements/run-oct/bank-file", headers=auth), 409, "conflict", "bank_bsb")
    assert "organisations alpha, beta have no BSB" in missing["message"]
    for org_id, name, bsb, account in (("alpha", "Alpha Bridge Club", "062-000", "00123456"),
                                       ("beta", "=Beta Club", "733123", "987654321")):
        response = client.put(f"/api/organisations/{org_id}", headers=auth,
                              json={"name": name, "bank_bsb": bsb, "bank_account": account})
        assert response.status_code == 200, response.get_data(as_text=True)
    response = client.get("/api/settlements/run-oct/bank-file", headers=auth)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert 'filename="bank-file-run-oct.csv"' in response.headers["Content-Disposition"]
    assert list(csv.reader(io.StringIO(response.get_data(as_text=True)))) == [
        ["BSB", "Account Number", "Account Name", "Amount", "Reference"],
        ["062-000", "00123456", "Alpha Bridge Club", "1029.00", "Settle 2025-10-31"],
        ["733-123", "987654321", "'=Beta Club", "229.83", "Settle 2025-10-31"],  # the formula guard
    ]
    # delta was settled by its own request: in that file, not this one.
    delta = assert_error(client.get("/api/settlements/early-delta/bank-file", headers=auth), 409, "conflict")
    assert "organisations delta have no BSB" in delta["message"]


def test_the_bank_file_of_an_unknown_queued_or_other_request(client, auth, sessions, clubs) -> None:
    assert_error(client.get("/api/settlements/nope/bank-file", headers=auth), 404, "not_found", "request_id")
    with sessions.begin() as session:
        requests.record(session, requests.RequestKind.PAYMENT, "pay-1", {"x": 1}, amount=1_00)
    assert_error(client.get("/api/settlements/pay-1/bank-file", headers=auth), 404, "not_found", "request_id")
    with freeze_time(TODAY):
        body = {"request_id": "queued", "reference_date": OCTOBER, "organisations": "all"}
        assert client.post("/api/settlements", json=body, headers=auth).status_code == 202
    queued = assert_error(client.get("/api/settlements/queued/bank-file", headers=auth), 409, "conflict", "request_id")
    assert "still queued" in queued["message"]


# Bank details --------------------------------------------------------------------------------


GOOD_BANK_DETAILS = [("123-456", "12345", "123-456"), ("062000", "123456789", "062-000"), ("000-001", "00000", "000-001")]


def test_good_bank_details_are_stored_as_digits_and_shown_with_the_dash(client, auth, sessions) -> None:
    for n, (bsb, account, shown) in enumerate(GOOD_BANK_DETAILS):
        _good_bank_details(client, auth, sessions, f"club{n}", bsb, account, shown)


def _good_bank_details(client, auth, sessions, club, bsb, account, shown) -> None:  # type: ignore[no-untyped-def]
    response = client.put(f"/api/organisations/{club}", headers=auth, json={"name": "C", "bank_bsb": bsb, "bank_account": account})
    assert response.status_code == 201
    assert (response.get_json()["bank_bsb"], response.get_json()["bank_account"]) == (shown, account)
    assert client.get(f"/api/organisations/{club}", headers=auth).get_json()["bank_bsb"] == shown
    with sessions.begin() as session:
        assert session.get(Organisation, club).bank_bsb == shown.replace("-", "")
    kept = client.put(f"/api/organisations/{club}", headers=auth, json={"name": "C2"}).get_json()
    assert (kept["bank_bsb"], kept["bank_account"]) == (shown, account)  # kept when not sent
    cleared = client.put(f"/api/organisations/{club}", headers=auth, json={"name": "C", "bank_bsb": None}).get_json()
    assert (cleared["bank_bsb"], cleared["bank_account"]) == (None, account)


BAD_BANK_DETAILS = [
    ({"bank_bsb": "12345"}, "bank_bsb"), ({"bank_bsb": "1234567"}, "bank_bsb"), ({"bank_bsb": "12-3456"}, "bank_bsb"),
    ({"bank_bsb": 123456}, "bank_bsb"), ({"bank_bsb": "abcdef"}, "bank_bsb"), ({"bank_bsb": "123 456"}, "bank_bsb"),
    ({"bank_bsb": "١٢٣٤٥٦"}, "bank_bsb"),  # digits, but not ASCII ones
    ({"bank_account": "1234"}, "bank_account"), ({"bank_account": "1234567890"}, "bank_account"),
    ({"bank_account": "12a45"}, "bank_account"), ({"bank_account": 12345}, "bank_account"),
    ({"bank_account": "12345\n"}, "bank_account"),
]


def test_bad_bank_details_are_a_400_naming_the_field(client, auth) -> None:
    for body, field in BAD_BANK_DETAILS:
        response = client.put("/api/organisations/club", headers=auth, json={"name": "C", **body})
        assert_error(response, 400, "invalid_input", field)


def test_only_admin_sets_bank_details(client, sessions) -> None:
    with sessions.begin() as session:
        people = bearer(access.add(session, "people", ["profiles"]).token)
    assert client.put("/api/organisations/club", headers=people, json={"name": "C"}).status_code == 201
    for field, value in (("bank_bsb", "123456"), ("bank_account", "12345"), ("bank_bsb", None)):
        assert client.put("/api/organisations/club", headers=people, json={"name": "C", field: value}).status_code == 403


def test_the_database_refuses_bank_details_that_break_the_rule(sessions) -> None:
    with sessions.begin() as session:
        profiles.put_organisation(session, "club", OrganisationDetails(name="C"))
    for column, value in (("bank_bsb", "12345x"), ("bank_bsb", "12345"), ("bank_bsb", "12-456"),
                          ("bank_account", "1234"), ("bank_account", "1234-5678"), ("bank_account", "12345678a")):
        with pytest.raises(IntegrityError), sessions.begin() as session:
            session.execute(update(Organisation).values({column: value}))
    with sessions.begin() as session:
        session.execute(text("UPDATE organisations SET bank_bsb = '012345', bank_account = '123456789'"))


def test_the_runtime_role_sets_bank_details_settles_all_and_reads_the_lists(runtime_sessions, clubs) -> None:
    """Migration 0015's columns are covered by the runtime role's grants (0010's function, run
    again after migrating), and every read of the run works with them."""
    with runtime_sessions.begin() as session:
        profiles.put_organisation(session, "alpha", OrganisationDetails(name="Alpha", bank_bsb="062000", bank_account="12345"))
        profiles.put_organisation(session, "beta", OrganisationDetails(name="Beta", bank_bsb="733123", bank_account="54321"))
    with freeze_time(TODAY):
        assert [c.org_id for c in _candidates(runtime_sessions)] == ["alpha", "beta"]
        result = _settle(runtime_sessions, "run-oct", OCTOBER, "all")
        assert [r["status"] for r in result["organisations"]] == ["settled", "settled"]
        assert _candidates(runtime_sessions) == []
    from shared import periods, settlement_history

    with runtime_sessions.begin() as session:
        rows, _ = settlement_history.history(session, periods.Period(periods.EARLIEST, periods.LATEST), Settings().time_zone)
        _, lines = settlement_history.bank_file_lines(session, "run-oct")
    assert [r.organisation_id for r in rows] == ["beta", "alpha", "delta"]
    assert [(line.bsb, line.account, line.amount) for line in lines] == [("062000", "12345", 1029_00), ("733123", "54321", 229_83)]


def _candidates(sessions: sessionmaker[Session]) -> list[settlements.Candidate]:
    with sessions.begin() as session:
        return settlements.candidates(session, datetime(2025, 10, 31).date(), Settings())
