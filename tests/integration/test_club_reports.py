"""Club finance (`GET /api/organisations/{id}/report`, ORIGINAL 6.3) and the organisation movement
report (`GET /api/reports/movement`, ORIGINAL 6.7), checked cell by cell in JSON, CSV and XLSX
against a small known history that crosses Sydney's local midnight and the end of January
(AEDT, UTC+11): February 2026 is the period most tests read."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from freezegun import freeze_time
from openpyxl import load_workbook
from sqlalchemy import literal, select
from sqlalchemy.orm import Session, sessionmaker

from shared import access, club_reports, ledger, org_movements, profiles
from shared.adjustments import Adjustment, book_adjustment
from shared.org_movements import Category
from shared.ledger import Entry, Line
from shared.models import EntryType, JournalEntry, Posting, SystemAccount
from tests.integration.helpers import add_member, add_organisation, bearer

FEB = "from=2026-02-01&to=2026-02-28"
TODAY = "2026-03-05T01:00:00Z"  # 12:00 on 5 March in Sydney: "last month" is February


def _at(moment: str, sessions: sessionmaker[Session], book) -> None:  # type: ignore[no-untyped-def]
    """Book at `moment` (UTC): `book(session, now)` passes the time to the ledger (freezing the
    clock for every entry would make these tests several times slower)."""
    with sessions.begin() as session:
        book(session, datetime.fromisoformat(moment))


def _entry(key: str, type_: EntryType, text: str, payer: str, cents: int, **ids: str):  # type: ignore[no-untyped-def]
    """A booking of `cents` from the member `payer` to the club (negative: club to member)."""

    def book(session: Session, now: datetime) -> None:
        member = profiles.get_member(session, payer).account_id
        club = profiles.get_organisation(session, "club").account_id
        ledger.post(session, Entry(key, type_, text, (Line(member, -cents), Line(club, cents)), **ids),  # type: ignore[arg-type]
                    now=now)

    return book


def _top_up(member_id: str, cents: int):  # type: ignore[no-untyped-def]
    def book(session: Session, now: datetime) -> None:
        member = profiles.get_member(session, member_id).account_id
        stripe = profiles.system_account(session, SystemAccount.STRIPE)
        ledger.post(session, Entry(f"top-{member_id}", EntryType.MANUAL_TOP_UP, "Top up",
                                   (Line(member, cents), Line(stripe, -cents))), now=now)

    return book


@pytest.fixture
def history(sessions: sessionmaker[Session]) -> dict[str, int]:
    """The known history (UTC; Sydney local time in the comments). Returns the club's posting id
    of each entry, by its reference.

    club: before February (opening 60.00): mem-ann +50.00, s1-ann +10.00 (31 Jan 23:50).
          February: ev-ann +25.00 (1 Feb 00:10), s2-bob +12.00, mem-bob +40.00, refund-ann -5.00,
          adj-1 -1.25, bar-bob +7.00, settle-1 -30.00, s2-ann +12.00 (28 Feb 23:50) -> 119.75.
          March: s3-ann +8.00 (1 Mar 00:10).
    other: raffle-ann +3.00 in February.  empty: nothing.
    """
    with freeze_time("2026-01-01T00:00:00Z"), sessions.begin() as session:
        ann = add_member(session, "ann")
        add_member(session, "bob", "Bob", "Ray")
        add_organisation(session, "club")
        add_organisation(session, "other", "Harbour Club")
        add_organisation(session, "empty", "Quiet Club")
    _at("2026-01-09T23:00:00Z", sessions, _top_up("ann", 500_00))
    _at("2026-01-09T23:00:00Z", sessions, _top_up("bob", 200_00))
    _at("2026-01-20T01:00:00Z", sessions, _entry("mem-ann", EntryType.CLUB_MEMBERSHIP, "Membership 2026", "ann", 50_00))
    _at("2026-01-31T12:50:00Z", sessions, _entry("s1-ann", EntryType.CLUB_PAYMENT, "Table money 31 Jan", "ann", 10_00,
                                                 session_id="S-1"))
    _at("2026-01-31T13:10:00Z", sessions, _entry("ev-ann", EntryType.EVENT_ENTRY, "Congress entry", "ann", 25_00,
                                                 event_id="EV-9"))
    _at("2026-02-03T08:00:00Z", sessions, _entry("s2-bob", EntryType.CLUB_PAYMENT, "Table money 3 Feb", "bob", 12_00,
                                                 session_id="S-2"))
    _at("2026-02-04T23:00:00Z", sessions, _entry("mem-bob", EntryType.CLUB_MEMBERSHIP, "Membership 2026", "bob", 40_00))
    _at("2026-02-10T01:00:00Z", sessions, _entry("refund-ann", EntryType.REFUND, "Part refund of entry", "ann", -5_00,
                                                 event_id="EV-9"))
    with freeze_time("2026-02-12T01:00:00Z"), sessions.begin() as session:
        book_adjustment(session, Adjustment("adj-1", -1_25, "Scorer fee correction", "admin-7", organisation_id="club"))
    _at("2026-02-14T01:00:00Z", sessions, _entry("bar-bob", EntryType.CLUB_PAYMENT, "Bar tab 100%_off", "bob", 7_00))

    def settle(s: Session, now: datetime) -> None:
        club = profiles.get_organisation(s, "club").account_id
        bank = profiles.system_account(s, SystemAccount.BANK)
        fees = profiles.system_account(s, SystemAccount.FEES)
        ledger.post(s, Entry("settle-1", EntryType.SETTLEMENT, "Settlement to 2026-01-31",
                             (Line(club, -30_00), Line(bank, 29_40), Line(fees, 60))), now=now)

    _at("2026-02-20T01:00:00Z", sessions, settle)
    _at("2026-02-28T12:50:00Z", sessions, _entry("s2-ann", EntryType.CLUB_PAYMENT, "Table money 28 Feb", "ann", 12_00,
                                                 session_id="S-2"))
    _at("2026-02-28T13:10:00Z", sessions, _entry("s3-ann", EntryType.CLUB_PAYMENT, "Table money 1 Mar", "ann", 8_00,
                                                 session_id="S-3"))

    def raffle(s: Session, now: datetime) -> None:
        other = profiles.get_organisation(s, "other").account_id
        ledger.post(s, Entry("raffle-ann", EntryType.MISCELLANEOUS, "Raffle", (Line(ann, -3_00), Line(other, 3_00))),
                    now=now)

    _at("2026-02-15T01:00:00Z", sessions, raffle)
    with sessions.begin() as session:
        club = profiles.get_organisation(session, "club").account_id
        return dict(session.execute(  # type: ignore[arg-type]
            select(JournalEntry.reference, Posting.id).join(Posting, Posting.entry_id == JournalEntry.id)
            .where(Posting.account_id == club)).all())


# The club's February lines, as listings show them: (reference, local time, counterparty, type,
# description, session, event, amount).
LINES = {
    "ev-ann": ("2026-02-01T00:10:00+11:00", "Ann Lee (ann)", "Entry to an event", "Congress entry", None, "EV-9", "25.00"),
    "s2-bob": ("2026-02-03T19:00:00+11:00", "Bob Ray (bob)", "Club Payment", "Table money 3 Feb", "S-2", None, "12.00"),
    "mem-bob": ("2026-02-05T10:00:00+11:00", "Bob Ray (bob)", "Club Membership", "Membership 2026", None, None, "40.00"),
    "refund-ann": ("2026-02-10T12:00:00+11:00", "Ann Lee (ann)", "Refund", "Part refund of entry", None, "EV-9", "-5.00"),
    "adj-1": ("2026-02-12T12:00:00+11:00", "Adjustments", "Manual Adjustment", "Scorer fee correction", None, None,
              "-1.25"),
    "bar-bob": ("2026-02-14T12:00:00+11:00", "Bob Ray (bob)", "Club Payment", "Bar tab 100%_off", None, None, "7.00"),
    "settle-1": ("2026-02-20T12:00:00+11:00", "Bank", "Settlement", "Settlement to 2026-01-31", None, None, "-30.00"),
    "s2-ann": ("2026-02-28T23:50:00+11:00", "Ann Lee (ann)", "Club Payment", "Table money 28 Feb", "S-2", None, "12.00"),
}


def line_json(ids: dict[str, int], reference: str) -> dict[str, Any]:
    when, who, type_, text, session_id, event_id, amount = LINES[reference]
    return {"id": ids[reference], "date": when, "counterparty": who, "reference": reference, "type": type_,
            "description": text, "session_id": session_id, "event_id": event_id, "amount": amount}


def line_cells(ids: dict[str, int], reference: str) -> list[Any]:
    when, who, type_, text, session_id, event_id, amount = LINES[reference]
    return [datetime.fromisoformat(when).replace(tzinfo=None), who, reference, ids[reference], type_, text,
            session_id, event_id, Decimal(amount)]


def report(client, auth, query: str, org: str = "club"):  # type: ignore[no-untyped-def]
    with freeze_time(TODAY):
        return client.get(f"/api/organisations/{org}/report?{query}", headers=auth)


HEAD = {"organisation_id": "club", "name": "North Shore Bridge Club", "from": "2026-02-01", "to": "2026-02-28"}


# The classification ------------------------------------------------------------------------


def test_sql_and_python_classify_every_type_and_id_combination_alike(sessions) -> None:
    combos = list(itertools.product([t.value for t in EntryType], [None, "EV-1"], [None, "S-1"]))
    with sessions.begin() as session:
        in_sql = session.execute(select(*[
            org_movements.category_sql(literal(t), literal(e, type_=JournalEntry.event_id.type),
                                      literal(s, type_=JournalEntry.session_id.type)) for t, e, s in combos
        ])).one()
    assert list(in_sql) == [org_movements.category_of(*combo).value for combo in combos]
    assert org_movements.category_of("Settlement", "EV-1", "S-1") is Category.SETTLEMENTS
    assert org_movements.category_of("Manual Adjustment", None, None) is Category.MANUAL_ADJUSTMENTS
    assert org_movements.category_of("Refund", "EV-1", "S-1") is Category.EVENT_ENTRIES
    assert org_movements.category_of("Club Membership", None, "S-1") is Category.CLUB_SESSIONS
    assert org_movements.category_of("Club Membership", None, None) is Category.CLUB_MEMBERSHIPS
    assert org_movements.category_of("Club Payment", None, None) is Category.OTHER


# JSON views --------------------------------------------------------------------------------


def test_the_movement_summary_adds_up_to_the_closing_balance(client, auth, history, sessions) -> None:
    response = report(client, auth, f"view=movement&{FEB}")
    assert response.status_code == 200
    body = response.get_json()
    assert body == {**HEAD, "view": "movement", "opening_balance": "60.00", "settlements": "-30.00",
                    "event_entries": "20.00", "club_sessions": "24.00", "club_memberships": "40.00", "other": "5.75",
                    "closing_balance": "119.75"}
    parts = ["opening_balance", "settlements", "event_entries", "club_sessions", "club_memberships", "other"]
    assert sum(Decimal(body[p]) for p in parts) == Decimal(body["closing_balance"])
    with sessions.begin() as session:  # and the closing balance is the ledger's at the end of 28 Feb
        club = profiles.get_organisation(session, "club").account_id
        assert ledger.balance_at(session, club, datetime.fromisoformat("2026-03-01T00:00:00+11:00")) == 119_75
        assert ledger.balance_at(session, club, datetime.fromisoformat("2026-02-01T00:00:00+11:00")) == 60_00


PRESETS = [
    # preset, (from, to), (opening, settlements, events, sessions, memberships, other, closing)
    ("month_to_date", ("2026-03-01", "2026-03-05"), ("119.75", "0.00", "0.00", "8.00", "0.00", "0.00", "127.75")),
    ("last_month", ("2026-02-01", "2026-02-28"), ("60.00", "-30.00", "20.00", "24.00", "40.00", "5.75", "119.75")),
    ("year_to_date", ("2026-01-01", "2026-03-05"), ("0.00", "-30.00", "20.00", "42.00", "90.00", "5.75", "127.75")),
    ("last_year", ("2025-01-01", "2025-12-31"), ("0.00", "0.00", "0.00", "0.00", "0.00", "0.00", "0.00")),
    ("all", ("1901-01-01", "2026-03-05"), ("0.00", "-30.00", "20.00", "42.00", "90.00", "5.75", "127.75")),
    (None, ("2026-03-01", "2026-03-05"), ("119.75", "0.00", "0.00", "8.00", "0.00", "0.00", "127.75")),
]


def test_presets_follow_the_frozen_local_today(client, auth, history) -> None:
    keys = ["opening_balance", "settlements", "event_entries", "club_sessions", "club_memberships", "other",
            "closing_balance"]
    for preset, span, figures in PRESETS:
        body = report(client, auth, "view=movement" + (f"&period={preset}" if preset else "")).get_json()
        assert ((body["from"], body["to"]), tuple(body[k] for k in keys)) == (span, figures), preset
    # "to" alone: from the default preset's first day (month to date) to that day
    body = report(client, auth, "view=movement&to=2026-03-03").get_json()
    assert (body["from"], body["to"], body["closing_balance"]) == ("2026-03-01", "2026-03-03", "127.75")
    # "Today" is Sydney's: at 00:30 on 1 March local it is still 28 February in UTC.
    with freeze_time("2026-02-28T13:30:00Z"):
        body = client.get("/api/organisations/club/report?view=movement", headers=auth).get_json()
        last = client.get("/api/organisations/club/report?view=movement&period=last_month", headers=auth).get_json()
    assert (body["from"], body["to"], body["opening_balance"], body["club_sessions"]) == (
        "2026-03-01", "2026-03-01", "119.75", "8.00")
    assert (last["from"], last["to"], last["closing_balance"]) == ("2026-02-01", "2026-02-28", "119.75")


def test_the_31_january_midnight_splits_the_months(client, auth, history) -> None:
    jan = report(client, auth, "view=sessions&from=2026-01-31&to=2026-01-31").get_json()
    assert [row["session_id"] for row in jan["rows"]] == ["S-1"]
    feb1 = report(client, auth, "view=events&from=2026-02-01&to=2026-02-01").get_json()
    assert feb1["rows"] == [{"event_id": "EV-9", "count": 1, "total": "25.00", "first_payment": "2026-02-01T00:10:00+11:00",
                             "last_payment": "2026-02-01T00:10:00+11:00"}]


def test_sessions_and_events_have_one_row_per_id(client, auth, history) -> None:
    assert report(client, auth, f"view=sessions&{FEB}").get_json() == {
        **HEAD, "view": "sessions", "count": 1, "total": "24.00",
        "rows": [{"session_id": "S-2", "count": 2, "total": "24.00", "first_payment": "2026-02-03T19:00:00+11:00",
                  "last_payment": "2026-02-28T23:50:00+11:00"}]}
    assert report(client, auth, f"view=events&{FEB}").get_json() == {
        **HEAD, "view": "events", "count": 1, "total": "20.00",
        "rows": [{"event_id": "EV-9", "count": 2, "total": "20.00", "first_payment": "2026-02-01T00:10:00+11:00",
                  "last_payment": "2026-02-10T12:00:00+11:00"}]}
    assert report(client, auth, "view=sessions&period=year_to_date").get_json()["rows"] == [
        {"session_id": "S-1", "count": 1, "total": "10.00", "first_payment": "2026-01-31T23:50:00+11:00",
         "last_payment": "2026-01-31T23:50:00+11:00"},
        {"session_id": "S-2", "count": 2, "total": "24.00", "first_payment": "2026-02-03T19:00:00+11:00",
         "last_payment": "2026-02-28T23:50:00+11:00"},
        {"session_id": "S-3", "count": 1, "total": "8.00", "first_payment": "2026-03-01T00:10:00+11:00",
         "last_payment": "2026-03-01T00:10:00+11:00"},
    ]


LISTINGS = [
    # query, the lines (by reference), their total
    ("view=membership", ["mem-bob"], "40.00"),
    ("view=other", ["adj-1", "bar-bob"], "5.75"),  # a Club Payment with no session or event is Other
    ("view=transactions", list(LINES), "59.75"),
    ("view=transactions&type=Club+Payment", ["s2-bob", "bar-bob", "s2-ann"], "31.00"),
    ("view=transactions&search=RAY", ["s2-bob", "mem-bob", "bar-bob"], "59.00"),  # a member's last name
    ("view=transactions&search=ann+lee", ["ev-ann", "refund-ann", "s2-ann"], "32.00"),  # first and last
    ("view=transactions&search=BAR", ["bar-bob"], "7.00"),  # the description
    ("view=transactions&search=%25_", ["bar-bob"], "7.00"),  # LIKE wildcards are plain characters
    ("view=transactions&search=%25", ["bar-bob"], "7.00"),
    ("view=transactions&search=_", ["bar-bob"], "7.00"),
    ("view=other&search=bob", ["bar-bob"], "7.00"),
    ("view=membership&search=nobody", [], "0.00"),
]


def test_listings_show_each_line_cell_by_cell(client, auth, history) -> None:
    for query, references, total in LISTINGS:
        response = report(client, auth, f"{query}&{FEB}")
        assert response.status_code == 200, (query, response.get_json())
        args = dict(part.split("=") for part in query.split("&"))
        search = args.get("search")
        assert response.get_json() == {
            **HEAD, "view": args["view"],
            "search": None if search is None else search.replace("+", " ").replace("%25", "%"),
            "type": "Club Payment" if "type" in args else None, "count": len(references), "total": total,
            "rows": [line_json(history, ref) for ref in references], "next_cursor": None}, query


def test_a_listing_pages_by_posting_id_without_losing_or_repeating_a_line(client, auth, history) -> None:
    seen, cursor, pages = [], None, 0
    while True:
        body = report(client, auth, f"view=transactions&{FEB}&limit=3" + (f"&cursor={cursor}" if cursor else "")).get_json()
        assert body["count"] == 8 and body["total"] == "59.75"  # of the whole period, on every page
        seen += body["rows"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert cursor == str(body["rows"][-1]["id"])
    assert pages == 3
    assert seen == [line_json(history, ref) for ref in LINES]


# XLSX: the eight sheets ----------------------------------------------------------------------


def _sheets(response) -> dict[str, list[list[Any]]]:  # type: ignore[no-untyped-def]
    """Every sheet's rows as values; numbers as Decimal (openpyxl reads them back as float or
    int), trailing empty cells dropped. Closes the response (its temporary file)."""
    assert response.status_code == 200
    assert response.mimetype == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    data = response.get_data()
    response.close()
    book = load_workbook(io.BytesIO(data))
    sheets = {}
    for sheet in book.worksheets:
        rows = []
        for row in sheet.iter_rows(values_only=True):
            cells = [Decimal(str(c)) if isinstance(c, float | int) and not isinstance(c, bool) else c for c in row]
            while cells and cells[-1] is None:
                cells.pop()
            rows.append(cells)
        sheets[sheet.title] = rows
    return sheets


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_the_workbook_has_the_originals_eight_sheets_cell_by_cell(client, auth, history) -> None:
    response = report(client, auth, f"view=movement&{FEB}&format=xlsx")
    assert response.status_code == 200
    assert response.mimetype == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert 'filename=statement-club.xlsx' in response.headers["Content-Disposition"]
    sheets = _sheets(response)
    assert list(sheets) == ["Movement Summary", "Transactions", "Sessions", "Events", "Combined", "Membership",
                            "Settlements", "Other"]
    D = Decimal
    assert sheets["Movement Summary"] == [
        ["Organisation", "North Shore Bridge Club"], ["From", _dt("2026-02-01")], ["To", _dt("2026-02-28")],
        ["Item", "Amount"], ["Opening Balance", D("60")], ["Settlements", D("-30")], ["Event Entries", D("20")],
        ["Club Sessions", D("24")], ["Club Memberships", D("40")], ["Other", D("5.75")],
        ["Closing Balance", D("119.75")],
    ]
    balances = ["85", "97", "137", "132", "130.75", "137.75", "107.75", "119.75"]
    assert sheets["Transactions"] == [
        [*club_reports.LINE_COLUMNS, "Balance"],
        *[[*line_cells(history, ref), D(after)] for ref, after in zip(LINES, balances, strict=True)],
    ]
    assert sheets["Sessions"] == [
        ["Session ID", "Payments", "Total", "First Payment", "Last Payment"],
        ["S-2", D(2), D(24), _dt("2026-02-03T19:00"), _dt("2026-02-28T23:50")],
        ["Total", None, D(24)],
    ]
    assert sheets["Events"] == [
        ["Event ID", "Payments", "Total", "First Payment", "Last Payment"],
        ["EV-9", D(2), D(20), _dt("2026-02-01T00:10"), _dt("2026-02-10T12:00")],
        ["Total", None, D(20)],
    ]
    assert sheets["Combined"] == [
        ["Date", "Line", "Reference", "Description", "Amount"],
        [_dt("2026-02-01T00:10"), "Event", "EV-9", "2 payments", D(20)],
        [_dt("2026-02-03T19:00"), "Session", "S-2", "2 payments", D(24)],
        [_dt("2026-02-05T10:00"), "Club Memberships", None, "1 payment", D(40)],
        [_dt("2026-02-12T12:00"), "Manual Adjustment", "adj-1", "Scorer fee correction", D("-1.25")],
        [_dt("2026-02-14T12:00"), "Club Payment", "bar-bob", "Bar tab 100%_off", D(7)],
        [_dt("2026-02-20T12:00"), "Settlement", "settle-1", "Settlement to 2026-01-31", D(-30)],
        ["Total", None, None, None, D("59.75")],  # closing - opening
    ]
    total = [None] * (len(club_reports.LINE_COLUMNS) - 2)
    assert sheets["Membership"] == [club_reports.LINE_COLUMNS, line_cells(history, "mem-bob"), ["Total", *total, D(40)]]
    assert sheets["Settlements"] == [club_reports.LINE_COLUMNS, line_cells(history, "settle-1"),
                                     ["Total", *total, D(-30)]]
    assert sheets["Other"] == [club_reports.LINE_COLUMNS, line_cells(history, "adj-1"), line_cells(history, "bar-bob"),
                               ["Total", *total, D("5.75")]]


def test_an_empty_period_says_no_payments(client, auth, history) -> None:
    sheets = _sheets(report(client, auth, "period=last_year&format=xlsx"))
    assert sheets["Sessions"] == [["Session ID", "Payments", "Total", "First Payment", "Last Payment"], ["No Payments"]]
    assert sheets["Events"][1:] == [["No Payments"]]
    assert sheets["Transactions"] == [[*club_reports.LINE_COLUMNS, "Balance"]]
    assert sheets["Combined"][1:] == [["Total", None, None, None, Decimal(0)]]
    assert sheets["Other"][1:] == [["Total", *[None] * (len(club_reports.LINE_COLUMNS) - 2), Decimal(0)]]


# The federation's movement report --------------------------------------------------------------

MOVEMENT_COLUMNS = ["organisation_id", "name", "opening_balance", "event_entries", "club_sessions", "club_memberships",
                    "other", "manual_adjustments", "settlements", "closing_balance"]
MOVEMENT_ROWS = [
    ["club", "North Shore Bridge Club", "60.00", "20.00", "24.00", "40.00", "7.00", "-1.25", "-30.00", "119.75"],
    ["empty", "Quiet Club", "0.00", "0.00", "0.00", "0.00", "0.00", "0.00", "0.00", "0.00"],
    ["other", "Harbour Club", "0.00", "0.00", "0.00", "0.00", "3.00", "0.00", "0.00", "3.00"],
]
MOVEMENT_TOTALS = ["60.00", "20.00", "24.00", "40.00", "10.00", "-1.25", "-30.00", "122.75"]


def movement(client, auth, query: str = ""):  # type: ignore[no-untyped-def]
    with freeze_time(TODAY):
        return client.get(f"/api/reports/movement?{query}", headers=auth)


def test_the_movement_report_as_json(client, auth, history, sessions) -> None:
    for query in ("", FEB, "period=last_month"):  # last month is the default
        response = movement(client, auth, query)
        assert response.status_code == 200
        assert response.get_json() == {
            "from": "2026-02-01", "to": "2026-02-28",
            "rows": [dict(zip(MOVEMENT_COLUMNS, row, strict=True)) for row in MOVEMENT_ROWS],
            "totals": dict(zip(MOVEMENT_COLUMNS[2:], MOVEMENT_TOTALS, strict=True)),
        }, query
    with sessions.begin() as session:  # opening + the columns = closing, the ledger's balances
        for org_id, _, opening, *columns, closing in MOVEMENT_ROWS:
            assert sum(Decimal(cell) for cell in [opening, *columns]) == Decimal(closing)
            account = profiles.get_organisation(session, org_id).account_id
            assert [ledger.balance_at(session, account, datetime.fromisoformat(f"{day}T00:00:00+11:00"))
                    for day in ("2026-02-01", "2026-03-01")] == [int(Decimal(opening) * 100), int(Decimal(closing) * 100)]


def test_the_movement_report_as_csv_and_xlsx(client, auth, history) -> None:
    response = movement(client, auth, "format=csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert list(csv.reader(io.StringIO(response.get_data(as_text=True), newline=""))) == [
        MOVEMENT_COLUMNS, *MOVEMENT_ROWS, ["Total", "", *MOVEMENT_TOTALS]]
    response = movement(client, auth, "format=xlsx")
    assert response.status_code == 200
    sheets = _sheets(response)
    assert list(sheets) == ["Movement Report"]
    assert sheets["Movement Report"] == [
        MOVEMENT_COLUMNS,
        *[[*row[:2], *[Decimal(cell) for cell in row[2:]]] for row in MOVEMENT_ROWS],
        ["Total", None, *[Decimal(cell) for cell in MOVEMENT_TOTALS]],
    ]


# Refusals ------------------------------------------------------------------------------------


BAD_REPORTS = [
    ("view=cheques", "view"),
    ("period=fortnight", "period"),
    ("period=all&from=2026-01-01", "period"),
    ("from=2026-02-30", "from"),
    ("from=2026-03-01&to=2026-02-01", "from"),
    ("to=yesterday", "to"),
    ("view=other&limit=0", "limit"),
    ("view=other&limit=1001", "limit"),
    ("view=other&limit=ten", "limit"),
    ("view=other&cursor=-1", "cursor"),
    ("view=other&type=Cheque", "type"),
    ("view=sessions&limit=10", "limit"),
    ("view=movement&search=ann", "search"),
    ("view=other&format=xlsx&search=ann", "search"),
    ("view=other&search=%20", "search"),
    ("format=pdf", "format"),
]
BAD_MOVEMENTS = [("format=pdf", "format"), ("from=2026-13-01", "from"), ("period=soon", "period")]


def test_bad_arguments_are_400s_naming_the_field(client, auth, history) -> None:
    for ask, cases in ((report, BAD_REPORTS), (movement, BAD_MOVEMENTS)):
        for query, field in cases:
            response = ask(client, auth, query)
            assert response.status_code == 400, (query, response.get_data(as_text=True))
            assert response.get_json()["error"]["field"] == field, query


def test_who_may_read_the_reports(client, auth, history, sessions) -> None:
    with sessions.begin() as session:
        own = access.add(session, "club-tool", ["clubs"], organisations=["club"]).token
        elsewhere = access.add(session, "other-tool", ["clubs"], organisations=["other"]).token
        reporter = access.add(session, "reporter", ["reports"]).token

    assert report(client, bearer(own), FEB).status_code == 200
    assert report(client, bearer(reporter), FEB).status_code == 200
    refused = report(client, bearer(elsewhere), FEB)
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
    assert report(client, bearer(elsewhere), f"{FEB}&format=xlsx").status_code == 403
    assert movement(client, bearer(reporter)).status_code == 200
    assert movement(client, bearer(own)).status_code == 403
    missing = report(client, auth, FEB, org="nowhere")
    assert missing.status_code == 404 and missing.get_json()["error"]["field"] == "organisation_id"
    assert report(client, auth, f"{FEB}&format=xlsx", org="nowhere").status_code == 404
