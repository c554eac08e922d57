"""The federation's reports (ORIGINAL 6.4 to 6.7) through the API: balances at a date,
reconciliation at a reference date, the specific transactions, and the admin summary's live
Stripe balance. Checked cell by cell, in JSON, CSV and XLSX, against a small known history
that crosses Sydney's local midnight at a month end (AEDT, UTC+11)."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook
from sqlalchemy.orm import Session, sessionmaker

from shared import access, ledger, profiles
from shared.errors import StripeUnavailable
from shared.ledger import Entry, Line
from shared.models import EntryType, SystemAccount
from shared.stripe_balance import LiveBalance
from shared.stripe_gateway import StripeGateway
from shared.specific_transactions import gst
from tests.e2e.processes import free_port
from tests.integration.helpers import add_member, add_organisation
from tests.stripe_fixture import STRIPE_TEST_KEY, customer_with_card

NOW = "2026-04-10T00:00:00Z"  # 10 April local: last month is March, its last day 31 March


def _utc(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


@pytest.fixture
def history(sessions: sessionmaker[Session]) -> None:
    """Booked in one transaction, each entry at its own time (UTC; Sydney local time, AEDT,
    UTC+11, in the comments).

    ann:  E1 +1100.00  E2 -1000.00  E4 +5.50                         -> 105.50
    club: E2 +1000.00  E5 -1.25  E8 -900.00 (bank 882.00, fees 18.00) -> 98.75
    bob:  E3 +50.00  E6 -10.00  E7 +10.00                            -> 50.00
    zed:  E6 +10.00  E7 -10.00                                       -> 0.00
    east: nothing.
    """
    with freeze_time("2026-01-15T00:00:00Z"), sessions.begin() as session:
        ann = add_member(session, "ann")
        bob = add_member(session, "bob", "Bob", "Ray")
        zed = add_member(session, "zed", "Zed", "Zero")
        club = add_organisation(session, "club")
        add_organisation(session, "east", "East Club")
    with sessions.begin() as s:
        system = {name: profiles.system_account(s, name) for name in SystemAccount}

        def book(moment: str, key: str, type_: EntryType, text: str, *lines: tuple[int, int], **extra: str) -> None:
            entry = Entry(key, type_, text, tuple(Line(a, c) for a, c in lines), **extra)  # type: ignore[arg-type]
            ledger.post(s, entry, now=_utc(moment))

        def adjust(moment: str, request_id: str, text: str, account: int, cents: int) -> None:
            # As shared.adjustments books it for the staff tool's request.
            book(moment, f"adjustment:{request_id}", EntryType.MANUAL_ADJUSTMENT, text, (account, cents),
                 (system[SystemAccount.ADJUSTMENTS], -cents), reference=request_id, admin_id="admin-7", client="staff")

        stripe = system[SystemAccount.STRIPE]
        # E1 27 Feb 12:00: card money in.
        book("2026-02-27T01:00:00Z", "top-1", EntryType.MANUAL_TOP_UP, "Top up", (ann, 1100_00), (stripe, -1100_00))
        # E2 28 Feb 23:50, ten minutes before the month ends.
        book("2026-02-28T12:50:00Z", "pay-1", EntryType.CLUB_PAYMENT, "Congress entry", (ann, -1000_00),
             (club, 1000_00))
        # E3 1 March 00:10, ten minutes after.
        book("2026-02-28T13:10:00Z", "top-2", EntryType.MANUAL_TOP_UP, "Top up", (bob, 50_00), (stripe, -50_00))
        # E4 1 March 09:00 and E5 2 March 10:00: adjustments by an admin.
        adjust("2026-02-28T22:00:00Z", "adj-1", "Goodwill credit", ann, 5_50)
        adjust("2026-03-01T23:00:00Z", "adj-2", "Scorer fee correction", club, -1_25)
        # E6 2 March 11:00 and E7 11:30: zed's money comes and goes the same day.
        book("2026-03-02T00:00:00Z", "xfer-1", EntryType.MEMBER_TRANSFER, "Lunch", (bob, -10_00), (zed, 10_00))
        book("2026-03-02T00:30:00Z", "xfer-2", EntryType.MEMBER_TRANSFER, "Lunch", (zed, -10_00), (bob, 10_00))
        # E8 3 March 15:00: the club settled to 28 February, 2 %: net 900.00, bank 882.00, fee 18.00.
        book("2026-03-03T04:00:00Z", "settlement:club:2026-02-28", EntryType.SETTLEMENT, "Settlement to 2026-02-28",
             (club, -900_00), (system[SystemAccount.BANK], 882_00), (system[SystemAccount.FEES], 18_00),
             reference="SET-1", client="staff")


def _get(client, auth, path: str, **args: str):  # type: ignore[no-untyped-def]
    with freeze_time(NOW):
        response = client.get(path, query_string=args, headers=auth)
        body = response.get_data()  # a streamed body is read while the clock is still frozen
        response.close()  # an XLSX is sent from a temporary file
    return response, body


def _json(client, auth, path: str, **args: str) -> dict:  # type: ignore[no-untyped-def]
    response, _ = _get(client, auth, path, **args)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _csv(client, auth, path: str, **args: str) -> tuple[str, list[list[str]]]:  # type: ignore[no-untyped-def]
    response, body = _get(client, auth, path, format="csv", **args)
    assert response.status_code == 200, body[:300]
    assert response.mimetype == "text/csv"
    return response.headers["Content-Disposition"], list(csv.reader(io.StringIO(body.decode(), newline="")))


# Balances at a date (ORIGINAL 6.5) ----------------------------------------------------------


MEMBER_BALANCES = {
    "2026-01-31": [],
    "2026-02-27": [["ann", "Ann Lee", "1100.00"]],
    # 28 Feb ends after the payment at 23:50 and before bob's top-up at 00:10.
    "2026-02-28": [["ann", "Ann Lee", "100.00"]],
    "2026-03-01": [["ann", "Ann Lee", "105.50"], ["bob", "Bob Ray", "50.00"]],
    # zed held 10.00 for half an hour on 2 March: a zero balance at the end is left out.
    "2026-03-02": [["ann", "Ann Lee", "105.50"], ["bob", "Bob Ray", "50.00"]],
}


def test_member_balances_at_the_end_of_a_local_date(client, auth, history) -> None:
    for day, rows in MEMBER_BALANCES.items():
        body = _json(client, auth, "/api/reports/balances", kind="member", date=day)
        assert body == {
            "date": day, "kind": "member",
            "rows": [{"id": i, "name": n, "balance": b} for i, n, b in rows],
            "count": len(rows),
            "total": f"{sum(Decimal(b) for _, _, b in rows):.2f}",
            "next_cursor": None,
        }, day


def test_organisation_balances_at_a_date(client, auth, history) -> None:
    for day, balance in (("2026-02-28", "1000.00"), ("2026-03-02", "998.75"), ("2026-03-03", "98.75")):
        body = _json(client, auth, "/api/reports/balances", kind="organisation", date=day)
        assert body["rows"] == [{"id": "club", "name": "North Shore Bridge Club", "balance": balance}], day
        assert (body["count"], body["total"]) == (1, balance)
    assert _json(client, auth, "/api/reports/balances", kind="organisation", date="2026-02-27")["rows"] == []


def test_balances_default_to_today_and_page_by_id_with_the_whole_lists_count_and_total(client, auth, history) -> None:
    first = _json(client, auth, "/api/reports/balances", kind="member", limit="1")
    assert first["date"] == "2026-04-10"
    assert first["rows"] == [{"id": "ann", "name": "Ann Lee", "balance": "105.50"}]
    assert (first["count"], first["total"], first["next_cursor"]) == (2, "155.50", "ann")
    second = _json(client, auth, "/api/reports/balances", kind="member", limit="1", cursor="ann")
    assert second["rows"] == [{"id": "bob", "name": "Bob Ray", "balance": "50.00"}]
    assert (second["count"], second["total"], second["next_cursor"]) == (2, "155.50", None)
    past = _json(client, auth, "/api/reports/balances", kind="member", cursor="bob")
    assert (past["rows"], past["count"], past["total"], past["next_cursor"]) == ([], 2, "155.50", None)


def test_balances_csv_has_the_title_row_and_the_original_columns(client, auth, history) -> None:
    disposition, rows = _csv(client, auth, "/api/reports/balances", kind="member", date="2026-03-01")
    assert 'filename="member-balances-2026-03-01.csv"' in disposition
    assert rows == [
        ["Member Balances", "as at 2026-03-01"],
        ["Member Number", "Member First Name", "Member Last Name", "Balance"],
        ["ann", "Ann", "Lee", "105.50"],
        ["bob", "Bob", "Ray", "50.00"],
    ]
    _, rows = _csv(client, auth, "/api/reports/balances", kind="organisation", date="2026-03-02")
    assert rows == [["Organisation Balances", "as at 2026-03-02"], ["Club Number", "Club Name", "Balance"],
                    ["club", "North Shore Bridge Club", "998.75"]]


def test_balances_xlsx_holds_numbers_read_back_with_openpyxl(client, auth, history) -> None:
    response, body = _get(client, auth, "/api/reports/balances", kind="member", date="2026-02-28", format="xlsx")
    assert response.status_code == 200
    assert "filename=member-balances-2026-02-28.xlsx" in response.headers["Content-Disposition"]
    sheet = load_workbook(io.BytesIO(body))["Member Balances"]
    values = [[cell.value for cell in row] for row in sheet.iter_rows()]
    assert values == [["Member Balances", "as at 2026-02-28", None, None],
                      ["Member Number", "Member First Name", "Member Last Name", "Balance"],
                      ["ann", "Ann", "Lee", 100]]
    assert sheet["D3"].data_type == "n"


# Reconciliation (ORIGINAL 6.6) --------------------------------------------------------------


def test_reconciliation_at_a_month_end_sums_to_zero_with_the_months_movements(client, auth, history) -> None:
    body = _json(client, auth, "/api/reports/reconciliation", date="2026-02-28")
    assert body == {
        "date": "2026-02-28",
        "from": "2026-01-29",
        "totals": {"members": "100.00", "organisations": "1000.00", "stripe": "-1100.00", "fees": "0.00",
                   "bank": "0.00", "adjustments": "0.00"},
        "counts": {"members": 1, "organisations": 1, "stripe": 1, "fees": 0, "bank": 0, "adjustments": 0},
        "sum": "0.00",
        "movements": [
            {"account": "members", "type": "Club Payment", "count": 1, "amount": "-1000.00"},
            {"account": "members", "type": "Manual Top Up", "count": 1, "amount": "1100.00"},
            {"account": "organisations", "type": "Club Payment", "count": 1, "amount": "1000.00"},
            {"account": "stripe", "type": "Manual Top Up", "count": 1, "amount": "-1100.00"},
        ],
    }


def test_reconciliation_defaults_to_the_last_day_of_last_month(client, auth, history) -> None:
    body = _json(client, auth, "/api/reports/reconciliation")
    # 31 March less a month is 28 February (clamped): the window is 1 to 31 March, so the
    # payment at 23:50 on 28 February is out and bob's top-up at 00:10 on 1 March is in.
    assert (body["date"], body["from"], body["sum"]) == ("2026-03-31", "2026-03-01", "0.00")
    assert body["totals"] == {"members": "155.50", "organisations": "98.75", "stripe": "-1150.00", "fees": "18.00",
                              "bank": "882.00", "adjustments": "-4.25"}
    assert body["counts"] == {"members": 3, "organisations": 1, "stripe": 1, "fees": 1, "bank": 1, "adjustments": 1}
    assert body["movements"] == [
        {"account": "adjustments", "type": "Manual Adjustment", "count": 2, "amount": "-4.25"},
        {"account": "bank", "type": "Settlement", "count": 1, "amount": "882.00"},
        {"account": "fees", "type": "Settlement", "count": 1, "amount": "18.00"},
        {"account": "members", "type": "Manual Adjustment", "count": 1, "amount": "5.50"},
        {"account": "members", "type": "Manual Top Up", "count": 1, "amount": "50.00"},
        {"account": "members", "type": "Member Transfer", "count": 4, "amount": "0.00"},
        {"account": "organisations", "type": "Manual Adjustment", "count": 1, "amount": "-1.25"},
        {"account": "organisations", "type": "Settlement", "count": 1, "amount": "-900.00"},
        {"account": "stripe", "type": "Manual Top Up", "count": 1, "amount": "-50.00"},
    ]


def test_reconciliation_csv_lists_the_windows_postings_by_date_with_running_balances(client, auth, history) -> None:
    disposition, rows = _csv(client, auth, "/api/reports/reconciliation")
    assert 'filename="reconciliation.csv"' in disposition
    assert rows[:4] == [
        ["Generated on", "2026-04-10T10:00:00+10:00"],  # AEST from 5 April
        ["Date range >=", "2026-03-01"],
        ["Date range <=", "2026-03-31"],
        ["Date", "Table", "Counterparty", "Reference", "Type", "Description", "Amount", "Balance", "Account"],
    ]
    assert rows[4:] == [
        ["2026-03-01T00:10:00+11:00", "Member", "Stripe", "top-2", "Manual Top Up", "Top up", "50.00", "50.00",
         "Bob Ray (bob)"],
        ["2026-03-01T00:10:00+11:00", "Stripe", "Bob Ray (bob)", "top-2", "Manual Top Up", "Top up", "-50.00", "",
         "Stripe"],
        ["2026-03-01T09:00:00+11:00", "Member", "Adjustments", "adj-1", "Manual Adjustment", "Goodwill credit", "5.50",
         "105.50", "Ann Lee (ann)"],
        ["2026-03-02T10:00:00+11:00", "Organisation", "Adjustments", "adj-2", "Manual Adjustment",
         "Scorer fee correction", "-1.25", "998.75", "North Shore Bridge Club"],
        ["2026-03-02T11:00:00+11:00", "Member", "Zed Zero (zed)", "xfer-1", "Member Transfer", "Lunch", "-10.00",
         "40.00", "Bob Ray (bob)"],
        ["2026-03-02T11:00:00+11:00", "Member", "Bob Ray (bob)", "xfer-1", "Member Transfer", "Lunch", "10.00",
         "10.00", "Zed Zero (zed)"],
        ["2026-03-02T11:30:00+11:00", "Member", "Bob Ray (bob)", "xfer-2", "Member Transfer", "Lunch", "-10.00",
         "0.00", "Zed Zero (zed)"],
        ["2026-03-02T11:30:00+11:00", "Member", "Zed Zero (zed)", "xfer-2", "Member Transfer", "Lunch", "10.00",
         "50.00", "Bob Ray (bob)"],
        ["2026-03-03T15:00:00+11:00", "Organisation", "Bank", "SET-1", "Settlement", "Settlement to 2026-02-28",
         "-900.00", "98.75", "North Shore Bridge Club"],
    ]


def test_reconciliation_balance_csvs_are_the_balances_before_the_end_of_the_date(client, auth, history) -> None:
    disposition, rows = _csv(client, auth, "/api/reports/reconciliation", date="2026-02-28", file="member_balances")
    assert 'filename="member_balances.csv"' in disposition
    assert rows == [["Balances prior to 2026-03-01T00:00+11:00"], ["ABF Number", "First Name", "Last Name", "Balance"],
                    ["ann", "Ann", "Lee", "100.00"]]
    disposition, rows = _csv(client, auth, "/api/reports/reconciliation", date="2026-02-28",
                             file="organisation_balances")
    assert 'filename="organisation_balances.csv"' in disposition
    assert rows == [["Balances prior to 2026-03-01T00:00+11:00"], ["Organisation", "ABF Org Number", "Balance"],
                    ["North Shore Bridge Club", "club", "1000.00"]]


# Specific transactions (ORIGINAL 6.7) -------------------------------------------------------


def test_settlements_show_the_bank_amount_fee_and_gst(client, auth, history) -> None:
    body = _json(client, auth, "/api/reports/transactions", type="settlements")  # last month: March
    assert body == {
        "type": "settlements", "from": "2026-03-01", "to": "2026-03-31",
        "members": [],
        "organisations": [{
            "date": "2026-03-03T15:00:00+11:00", "admin": None, "client": "staff", "type": "Settlement",
            "organisation_id": "club", "organisation": "North Shore Bridge Club",
            "description": "Settlement to 2026-02-28", "amount": "-900.00", "bank_amount": "882.00",
            "fee": "18.00", "gst": "1.64",
        }],
        "totals": {"members": {"count": 0, "amount": "0.00"},
                   "organisations": {"count": 1, "amount": "-900.00", "bank_amount": "882.00", "fee": "18.00"}},
        "next_cursor": None,
    }


def test_adjustments_of_a_period_page_across_both_sections(client, auth, history) -> None:
    first = _json(client, auth, "/api/reports/transactions", type="adjustments", **{"from": "2026-03-01"},
                  to="2026-03-02", limit="1")
    assert first["members"] == [{
        "date": "2026-03-01T09:00:00+11:00", "admin": "admin-7", "client": "staff", "type": "Manual Adjustment",
        "member_id": "ann", "name": "Ann Lee", "description": "Goodwill credit", "amount": "5.50",
    }]
    assert first["organisations"] == []
    assert first["totals"] == {"members": {"count": 1, "amount": "5.50"},
                               "organisations": {"count": 1, "amount": "-1.25", "bank_amount": "0.00", "fee": "0.00"}}
    second = _json(client, auth, "/api/reports/transactions", type="adjustments", **{"from": "2026-03-01"},
                   to="2026-03-02", limit="1", cursor=first["next_cursor"])
    assert second["members"] == []
    assert second["organisations"] == [{
        "date": "2026-03-02T10:00:00+11:00", "admin": "admin-7", "client": "staff", "type": "Manual Adjustment",
        "organisation_id": "club", "organisation": "North Shore Bridge Club",
        "description": "Scorer fee correction", "amount": "-1.25", "bank_amount": "0.00", "fee": "0.00", "gst": "0.00",
    }]
    assert second["next_cursor"] is None
    # 28 February ends before the first adjustment (1 March 09:00 local, 28 February UTC).
    february = _json(client, auth, "/api/reports/transactions", type="adjustments", **{"from": "2026-02-01"},
                     to="2026-02-28")
    assert (february["members"], february["organisations"]) == ([], [])


def test_specific_transactions_csv_has_both_sections(client, auth, history) -> None:
    disposition, rows = _csv(client, auth, "/api/reports/transactions", type="settlements")
    assert 'filename="Settlements.csv"' in disposition
    assert rows == [
        ["Members", "2026-03-01 to 2026-03-31"],
        ["Date", "Administrator", "Client", "Transaction Type", "ABF Number", "User", "Description", "Amount"],
        [],
        ["Organisations", "2026-03-01 to 2026-03-31"],
        ["Date", "Administrator", "Client", "Transaction Type", "Club ID", "Organisation", "Description", "Amount",
         "Payment", "Fee", "GST"],
        ["2026-03-03T15:00:00+11:00", "", "staff", "Settlement", "club", "North Shore Bridge Club",
         "Settlement to 2026-02-28", "-900.00", "882.00", "18.00", "1.64"],
    ]
    _, rows = _csv(client, auth, "/api/reports/transactions", type="adjustments")
    assert rows[2] == ["2026-03-01T09:00:00+11:00", "admin-7", "staff", "Manual Adjustment", "ann", "Ann Lee",
                       "Goodwill credit", "5.50"]
    assert rows[6] == ["2026-03-02T10:00:00+11:00", "admin-7", "staff", "Manual Adjustment", "club",
                       "North Shore Bridge Club", "Scorer fee correction", "-1.25", "0.00", "0.00", "0.00"]


@pytest.mark.parametrize(("fee", "expected"), [(18_00, 1_64), (11, 1), (5, 0), (6, 1), (0, 0), (1_10, 10)])
def test_gst_is_a_eleventh_of_the_fee_rounded_half_up(fee, expected) -> None:
    assert gst(fee) == expected


# Bad arguments and access -------------------------------------------------------------------


@pytest.mark.parametrize(("path", "args", "field"), [
    ("/api/reports/balances", {}, "kind"),
    ("/api/reports/balances", {"kind": "system"}, "kind"),
    ("/api/reports/balances", {"kind": "member", "date": "2026-02-30"}, "date"),
    ("/api/reports/balances", {"kind": "member", "date": "9999-12-31"}, "date"),
    ("/api/reports/balances", {"kind": "member", "format": "pdf"}, "format"),
    ("/api/reports/balances", {"kind": "member", "limit": "0"}, "limit"),
    ("/api/reports/balances", {"kind": "member", "cursor": "a b"}, "cursor"),
    ("/api/reports/reconciliation", {"date": "31/03/2026"}, "date"),
    ("/api/reports/reconciliation", {"format": "csv", "file": "everything"}, "file"),
    ("/api/reports/reconciliation", {"format": "xlsx"}, "format"),
    ("/api/reports/transactions", {"type": "refunds"}, "type"),
    ("/api/reports/transactions", {"type": "settlements", "from": "2026-04-01", "to": "2026-03-01"}, "from"),
    ("/api/reports/transactions", {"type": "settlements", "period": "fortnight"}, "period"),
    ("/api/reports/transactions", {"type": "settlements", "cursor": "x_1"}, "cursor"),
    ("/api/reports/transactions", {"type": "settlements", "cursor": "0_99999999999999999999"}, "cursor"),
    ("/api/reports/transactions", {"type": "settlements", "cursor": "999999999999999999_1"}, "cursor"),
    ("/api/reports/transactions", {"type": "settlements", "format": "csv", "to": "2026-13-01"}, "to"),
])
def test_bad_arguments_are_400s_naming_the_field(client, auth, path, args, field) -> None:
    response = client.get(path, query_string=args, headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == field


REPORT_ARGS = {
    "/api/reports/balances": ("kind", "date", "format", "limit", "cursor"),
    "/api/reports/reconciliation": ("date", "format", "file"),
    "/api/reports/transactions": ("type", "from", "to", "period", "format", "limit", "cursor"),
}
ARG_VALUES = st.one_of(
    st.sampled_from(["member", "organisation", "settlements", "adjustments", "csv", "xlsx", "json", "2026-03-01",
                     "9999-12-31", "0001-01-01", "1901-01-01", "2026-02-30", "last_month", "all", "1", "10000",
                     "10001", "-1", "1e3", "99999999999999999999_1", "0_99999999999999999999", "member_balances",
                     "", "a" * 300]),
    st.text(max_size=40),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(sorted(REPORT_ARGS)), data=st.data())
def test_any_arguments_are_answered_or_refused_never_a_500(client, auth, path, data) -> None:
    names = data.draw(st.lists(st.sampled_from(REPORT_ARGS[path]), unique=True))
    args = {name: data.draw(ARG_VALUES) for name in names}
    response = client.get(path, query_string=args, headers=auth)
    response.get_data()
    response.close()
    assert response.status_code in (200, 400), (path, args, response.get_data()[:300])
    if response.status_code == 400:
        assert set(response.get_json()["error"]) <= {"code", "message", "field"}


def test_the_reports_scope_reads_the_reports_and_the_payments_scope_does_not(client, sessions, history) -> None:
    with sessions.begin() as session:
        reporter = access.add(session, "reporter", ["reports"]).token
        portal = access.add(session, "portal", ["payments"]).token
    for path in ("/api/reports/balances?kind=member", "/api/reports/reconciliation",
                 "/api/reports/transactions?type=adjustments"):
        assert client.get(path, headers={"Authorization": f"Bearer {reporter}"}).status_code == 200
        refused = client.get(path, headers={"Authorization": f"Bearer {portal}"})
        assert refused.status_code == 403
        assert "reports" in refused.get_json()["error"]["message"]


# Admin summary (ORIGINAL 6.4) ---------------------------------------------------------------


def test_admin_summary_counts_organisations_and_reads_the_stripe_balance_from_stripe(
    app_with, settings, stripe_api, browser, history,
) -> None:
    app = app_with(stripe_api_base=stripe_api, stripe_api_key=STRIPE_TEST_KEY)
    gateway = StripeGateway(replace(settings, stripe_api_base=stripe_api, stripe_api_key=STRIPE_TEST_KEY))
    before = gateway.available_balance()
    customer = customer_with_card(gateway, browser, "summary-member")
    gateway.charge_saved_card(customer_id=customer, amount_cents=25_00, idempotency_key="summary-charge",
                              metadata={})
    response = app.test_client().get("/api/admin/summary", headers={"Authorization": f"Bearer {settings.api_token}"})
    body = response.get_json()
    assert response.status_code == 200
    assert body["organisations"] == 2
    assert body["organisations_with_balance"] == {"count": 1, "sum": "98.75"}
    assert body["stripe_balance"]["available"] == f"{Decimal(before + 25_00) / 100:.2f}"
    assert body["stripe_balance"]["stale"] is False


def test_admin_summary_answers_at_once_when_stripe_is_unreachable(app_with, settings) -> None:
    app = app_with(stripe_api_base=f"http://127.0.0.1:{free_port()}", stripe_api_key=STRIPE_TEST_KEY)
    started = time.monotonic()
    response = app.test_client().get("/api/admin/summary", headers={"Authorization": f"Bearer {settings.api_token}"})
    assert time.monotonic() - started < 1.5
    assert response.status_code == 200
    assert response.get_json()["stripe_balance"] is None


def test_the_last_stripe_balance_is_answered_stale_while_stripe_fails() -> None:
    from zoneinfo import ZoneInfo

    clock, answers = [0.0], [12_34]

    def read() -> int:
        if not answers:
            raise StripeUnavailable("read the Stripe balance: Stripe APIConnectionError")
        return answers.pop(0)

    calls: list[float] = []

    def counted() -> int:
        calls.append(clock[0])
        return read()

    live = LiveBalance(counted, fresh_for=60, retry_after=30, clock=lambda: clock[0])
    zone = ZoneInfo("Australia/Sydney")
    with freeze_time("2026-03-01T00:00:00Z"):
        first = live.answer(zone)
    assert first == {"available": "12.34", "fetched_at": "2026-03-01T11:00:00+11:00", "stale": False}
    clock[0] = 59.0
    assert live.answer(zone) == first and calls == [0.0]  # fresh: Stripe not asked
    clock[0] = 61.0
    assert live.answer(zone) == {**first, "stale": True} and calls == [0.0, 61.0]  # asked, failed
    clock[0] = 80.0
    assert live.answer(zone) == {**first, "stale": True} and calls == [0.0, 61.0]  # resting after the failure
    clock[0] = 92.0
    answers.append(56_78)
    assert live.answer(zone)["available"] == "56.78" and calls == [0.0, 61.0, 92.0]
