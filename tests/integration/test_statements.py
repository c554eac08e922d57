"""Statements, CSV, balances at the end of a local day and organisation summaries, checked cell
by cell against a small known history that crosses local midnight in Australia/Sydney (AEDT,
UTC+11, in February and March 2026)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time
from openpyxl import load_workbook
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger, profiles, statements
from shared.adjustments import Adjustment, book_adjustment
from shared.ledger import Entry, Line
from shared.models import EntryType, SystemAccount
from tests.integration.helpers import add_member, add_organisation, top_up

SYDNEY = ZoneInfo("Australia/Sydney")
HEADER = ["Date", "Counterparty", "Reference", "Type", "Description", "Amount", "Balance", "Event", "Session"]


@dataclass(frozen=True)
class History:
    ann: int
    bob: int
    club: int


def _at(moment: str, sessions: sessionmaker[Session], book) -> None:  # type: ignore[no-untyped-def]
    """Book in one transaction with the clock frozen at `moment` (UTC)."""
    with freeze_time(moment), sessions.begin() as session:
        book(session)


@pytest.fixture
def history(sessions: sessionmaker[Session]) -> History:
    """The known history, booked in time order (UTC; Sydney local time in the comments).

    ann:  E1 +100.00  E2 -20.00  E3 -30.00  E4 +5.50  E5 -20.00  E6 +50.00  -> 85.50
    club: E2 +20.00  E3 +30.00  E7 -1.25  E8 -40.00                       -> 8.75
    bob:  E5 +20.00                                                      -> 20.00
    """
    with freeze_time("2026-01-15T00:00:00Z"), sessions.begin() as session:
        ann = add_member(session, "ann")
        bob = add_member(session, "bob", "Bob", "Ray")
        club = add_organisation(session, "club")
    h = History(ann=ann, bob=bob, club=club)

    def stripe(session: Session) -> int:
        return profiles.system_account(session, SystemAccount.STRIPE)

    # E1 2026-02-01 12:00 local: card money in.
    _at("2026-02-01T01:00:00Z", sessions, lambda s: top_up(s, ann, 100_00, "top-1"))
    # E2 2026-02-01 13:00 local: club membership, with a reference other than its key.
    _at(
        "2026-02-01T02:00:00Z",
        sessions,
        lambda s: ledger.post(
            s,
            Entry(
                "mem-1",
                EntryType.CLUB_MEMBERSHIP,
                "Annual subscription",
                (Line(ann, -20_00), Line(club, 20_00)),
                reference="MEM-2026",
            ),
        ),
    )
    # E3 2026-03-10 23:50 local: table money, ten minutes before local midnight.
    _at(
        "2026-03-10T12:50:00Z",
        sessions,
        lambda s: ledger.post(
            s,
            Entry(
                "pay-1",
                EntryType.CLUB_PAYMENT,
                "Table money 10 March",
                (Line(ann, -30_00), Line(club, 30_00)),
                session_id="S-77",
            ),
        ),
    )
    # E4 2026-03-11 00:10 local: an admin credit, ten minutes after local midnight.
    _at(
        "2026-03-10T13:10:00Z",
        sessions,
        lambda s: book_adjustment(
            s, Adjustment("adj-1", 5_50, "Goodwill credit", "admin-7", member_id="ann")
        ),
    )
    # E5 2026-03-11 12:00 local: a transfer whose description looks like a formula.
    _at(
        "2026-03-11T01:00:00Z",
        sessions,
        lambda s: ledger.post(
            s,
            Entry(
                "xfer-1",
                EntryType.MEMBER_TRANSFER,
                "=HYPERLINK(\"http://x\",\"lunch\")",
                (Line(ann, -20_00), Line(bob, 20_00)),
            ),
        ),
    )
    # E7 2026-03-11 13:00 local: an admin debit of the club.
    _at(
        "2026-03-11T02:00:00Z",
        sessions,
        lambda s: book_adjustment(
            s, Adjustment("adj-2", -1_25, "Scorer fee correction", "admin-7", organisation_id="club")
        ),
    )
    # E6 2026-03-12 14:00 local: an auto top-up.
    _at(
        "2026-03-12T03:00:00Z",
        sessions,
        lambda s: ledger.post(
            s,
            Entry("auto-1", EntryType.AUTO_TOP_UP, "Auto top up", (Line(ann, 50_00), Line(stripe(s), -50_00))),
        ),
    )

    # E8 2026-03-12 15:00 local: a settlement, 2 % fee; the bank is the larger other side.
    def settle(s: Session) -> None:
        bank = profiles.system_account(s, SystemAccount.BANK)
        fees = profiles.system_account(s, SystemAccount.FEES)
        ledger.post(
            s,
            Entry(
                "settle-1",
                EntryType.SETTLEMENT,
                "Settlement to 2026-02-28",
                (Line(club, -40_00), Line(bank, 39_20), Line(fees, 80)),
            ),
        )

    _at("2026-03-12T04:00:00Z", sessions, settle)
    return h


# The expected statements, newest first, exactly as the JSON shows them.
ANN_ROWS = [
    ["2026-03-12T14:00:00+11:00", "Stripe", "auto-1", "Auto Top Up", "Auto top up", "50.00", "85.50", "", ""],
    ["2026-03-11T12:00:00+11:00", "Bob Ray (bob)", "xfer-1", "Member Transfer", '=HYPERLINK("http://x","lunch")', "-20.00", "35.50", "", ""],
    ["2026-03-11T00:10:00+11:00", "Adjustments", "adj-1", "Manual Adjustment", "Goodwill credit", "5.50", "55.50", "", ""],
    ["2026-03-10T23:50:00+11:00", "North Shore Bridge Club", "pay-1", "Club Payment", "Table money 10 March", "-30.00", "50.00", "", "S-77"],
    ["2026-02-01T13:00:00+11:00", "North Shore Bridge Club", "MEM-2026", "Club Membership", "Annual subscription", "-20.00", "80.00", "", ""],
    ["2026-02-01T12:00:00+11:00", "Stripe", "top-1", "Manual Top Up", "Top up", "100.00", "100.00", "", ""],
]
CLUB_ROWS = [
    ["2026-03-12T15:00:00+11:00", "Bank", "settle-1", "Settlement", "Settlement to 2026-02-28", "-40.00", "8.75", "", ""],
    ["2026-03-11T13:00:00+11:00", "Adjustments", "adj-2", "Manual Adjustment", "Scorer fee correction", "-1.25", "48.75", "", ""],
    ["2026-03-10T23:50:00+11:00", "Ann Lee (ann)", "pay-1", "Club Payment", "Table money 10 March", "30.00", "50.00", "", "S-77"],
    ["2026-02-01T13:00:00+11:00", "Ann Lee (ann)", "MEM-2026", "Club Membership", "Annual subscription", "20.00", "20.00", "", ""],
]
BOB_ROWS = [
    ["2026-03-11T12:00:00+11:00", "Ann Lee (ann)", "xfer-1", "Member Transfer", '=HYPERLINK("http://x","lunch")', "20.00", "20.00", "", ""],
]


def _as_json_rows(rows: list[list[str]]) -> list[dict[str, str | None]]:
    keys = ["date", "counterparty", "reference", "type", "description", "amount", "balance", "event_id", "session_id"]
    return [{key: cell or None if key.endswith("_id") else cell for key, cell in zip(keys, row, strict=True)}
            for row in rows]


def _parse_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


# shared.statements.statement -------------------------------------------------------------


def test_a_member_statement_lists_every_line_newest_first_with_the_balance_after_it(sessions, history) -> None:
    with sessions.begin() as session:
        rows = statements.statement(session, history.ann, SYDNEY)
    assert [
        [row.date.isoformat(), row.counterparty, row.reference, row.type, row.description, row.amount, row.balance]
        for row in rows
    ] == [
        [date_, who, ref, type_, text, int(amount.replace(".", "")), int(after.replace(".", ""))]
        for date_, who, ref, type_, text, amount, after, _, _ in ANN_ROWS
    ]


def test_statement_dates_are_local_datetimes_in_the_given_zone(sessions, history) -> None:
    with sessions.begin() as session:
        rows = statements.statement(session, history.ann, SYDNEY)
    midnight_pair = rows[2:4]
    assert [row.date for row in midnight_pair] == [
        datetime(2026, 3, 11, 0, 10, tzinfo=SYDNEY),
        datetime(2026, 3, 10, 23, 50, tzinfo=SYDNEY),
    ]
    assert all(row.date.utcoffset().total_seconds() == 11 * 3600 for row in rows)
    with sessions.begin() as session:
        in_utc = statements.statement(session, history.ann, ZoneInfo("UTC"))
    assert [row.date.isoformat() for row in in_utc[2:4]] == ["2026-03-10T13:10:00+00:00", "2026-03-10T12:50:00+00:00"]


def test_an_organisation_statement_names_the_member_and_the_larger_system_side(sessions, history) -> None:
    with sessions.begin() as session:
        rows = statements.statement(session, history.club, SYDNEY)
    assert [row.as_json() for row in rows] == _as_json_rows(CLUB_ROWS)


def test_a_winter_entry_is_shown_with_the_standard_time_offset(sessions, history) -> None:
    _at("2026-07-01T02:30:00Z", sessions, lambda s: top_up(s, history.bob, 10_00, "winter"))
    with sessions.begin() as session:
        newest = statements.statement(session, history.bob, SYDNEY)[0]
    assert newest.as_json() == {
        "date": "2026-07-01T12:30:00+10:00",
        "counterparty": "Stripe",
        "reference": "winter",
        "type": "Manual Top Up",
        "description": "Top up",
        "amount": "10.00",
        "balance": "30.00",
        "event_id": None,
        "session_id": None,
    }


def test_the_statement_of_an_account_without_entries_is_empty(sessions, history) -> None:
    with sessions.begin() as session:
        carol = add_member(session, "carol", "Carol", "Ng")
    with sessions.begin() as session:
        assert statements.statement(session, carol, SYDNEY) == []


# The HTTP statement: JSON and CSV --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/members/ann/statement", ANN_ROWS),
        ("/api/members/bob/statement", BOB_ROWS),
        ("/api/organisations/club/statement", CLUB_ROWS),
    ],
)
def test_the_json_statement_matches_the_expected_table(client, auth, history, path, expected) -> None:
    response = client.get(path, headers=auth)
    assert response.status_code == 200
    owner = {"organisation_id": "club"} if "organisations" in path else {"member_id": path.split("/")[3]}
    opening = int(expected[-1][6].replace(".", "")) - int(expected[-1][5].replace(".", ""))
    assert response.get_json() == {
        **owner,
        "rows": _as_json_rows(expected),
        "next_cursor": None,
        "opening_balance": f"{opening / 100:.2f}",
        "closing_balance": expected[0][6],
        "from": "1901-01-01",
        "to": datetime.now(ZoneInfo("Australia/Sydney")).date().isoformat(),  # the service's today
    }


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/api/members/ann/statement", ANN_ROWS), ("/api/organisations/club/statement", CLUB_ROWS)],
)
@pytest.mark.parametrize("limit", [1, 2, 4])
def test_the_json_statement_in_pages_is_the_expected_table_cut_in_pieces(client, auth, history, path, expected, limit) -> None:
    """Each page holds the next `limit` lines, cell by cell; its opening balance is its oldest
    line's balance minus its amount, its closing balance its newest line's balance."""
    rows, cursor, pages = [], None, 0
    while True:
        query = {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}
        body = client.get(path, query_string=query, headers=auth).get_json()
        want = _as_json_rows(expected[pages * limit:(pages + 1) * limit])
        assert body["rows"] == want
        assert body["closing_balance"] == want[0]["balance"]
        oldest = want[-1]
        assert body["opening_balance"] == f"{(int(oldest['balance'].replace('.', '')) - int(oldest['amount'].replace('.', ''))) / 100:.2f}"
        rows += body["rows"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert rows == _as_json_rows(expected)
    assert pages == -(-len(expected) // limit)


def _csv_cells(rows: list[list[str]]) -> list[list[str]]:
    """What the CSV must hold: a formula-like description gets a leading apostrophe."""
    return [HEADER] + [
        [cell if column != 4 or not cell.startswith("=") else "'" + cell for column, cell in enumerate(row)]
        for row in rows
    ]


@pytest.mark.parametrize(
    ("path", "expected", "filename"),
    [
        ("/api/members/ann/statement?format=csv", ANN_ROWS, "statement-member-ann.csv"),
        ("/api/members/bob/statement?format=csv", BOB_ROWS, "statement-member-bob.csv"),
        ("/api/organisations/club/statement?format=csv", CLUB_ROWS, "statement-organisation-club.csv"),
    ],
)
def test_the_csv_statement_matches_the_expected_table_cell_by_cell(
    client, auth, history, path, expected, filename
) -> None:
    response = client.get(path, headers=auth)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{filename}"'
    text = response.get_data(as_text=True)
    cells = _parse_csv(text)
    expected_cells = _csv_cells(expected)
    assert len(cells) == len(expected_cells)
    for line, (got, want) in enumerate(zip(cells, expected_cells, strict=True)):
        assert got == want, f"CSV line {line}"
    assert text.count("\r\n") == len(expected_cells)


def test_a_description_starting_with_equals_gets_a_leading_apostrophe_only_in_csv(client, auth, history) -> None:
    transfer_json = client.get("/api/members/ann/statement", headers=auth).get_json()["rows"][1]
    assert transfer_json["description"] == '=HYPERLINK("http://x","lunch")'
    transfer_csv = _parse_csv(client.get("/api/members/ann/statement?format=csv", headers=auth).get_data(as_text=True))[2]
    assert transfer_csv[4] == '\'=HYPERLINK("http://x","lunch")'
    # Negative amounts are numbers, not formulas: no apostrophe.
    assert transfer_csv[5] == "-20.00"


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@"])
def test_every_formula_prefix_in_a_csv_or_xlsx_text_cell_is_escaped(client, auth, sessions, history, prefix) -> None:
    _at(
        "2026-03-13T00:00:00Z",
        sessions,
        lambda s: book_adjustment(
            s, Adjustment("adj-f", 1_00, f"{prefix}cmd|' /C calc'!A0", "admin-7", member_id="bob")
        ),
    )
    newest = _parse_csv(client.get("/api/members/bob/statement?format=csv", headers=auth).get_data(as_text=True))[1]
    assert newest == [
        "2026-03-13T11:00:00+11:00",
        "Adjustments",
        "adj-f",
        "Manual Adjustment",
        f"'{prefix}cmd|' /C calc'!A0",
        "1.00",
        "21.00",
        "",
        "",
    ]
    sheet = _xlsx_cells(client.get("/api/members/bob/statement?format=xlsx", headers=auth))
    assert sheet[1] == [
        datetime(2026, 3, 13, 11, 0),
        "Adjustments",
        "adj-f",
        "Manual Adjustment",
        f"'{prefix}cmd|' /C calc'!A0",
        Decimal("1.00"),
        Decimal("21.00"),
        None,
        None,
    ]


def _xlsx_cells(response) -> list[list[object]]:  # type: ignore[no-untyped-def]
    """The one sheet `Transactions` of an XLSX answer, read back with openpyxl."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    data = response.get_data()
    response.close()  # closes the temporary file the workbook was written to
    book = load_workbook(io.BytesIO(data))
    assert book.sheetnames == ["Transactions"]
    return [[_decimal(cell) for cell in row] for row in book["Transactions"].iter_rows(values_only=True)]


def _decimal(cell: object) -> object:
    """openpyxl reads numbers back as int or float: money compares as Decimal to the cent."""
    return Decimal(str(cell)).quantize(Decimal("0.01")) if isinstance(cell, int | float) else cell


def _sheet_cells(rows: list[list[str]]) -> list[list[object]]:
    """What the XLSX must hold: local times without an offset, money as Decimal, guarded text."""
    return [HEADER] + [
        [datetime.fromisoformat(row[0]).replace(tzinfo=None), row[1], row[2], row[3],
         "'" + row[4] if row[4].startswith("=") else row[4], Decimal(row[5]), Decimal(row[6]),
         row[7] or None, row[8] or None]
        for row in rows
    ]


@pytest.mark.parametrize(
    ("path", "expected", "filename"),
    [
        ("/api/members/ann/statement?format=xlsx", ANN_ROWS, "statement-member-ann.xlsx"),
        ("/api/members/bob/statement?format=xlsx", BOB_ROWS, "statement-member-bob.xlsx"),
        ("/api/organisations/club/statement?format=xlsx", CLUB_ROWS, "statement-organisation-club.xlsx"),
    ],
)
def test_the_xlsx_statement_matches_the_expected_table_cell_by_cell(client, auth, history, path, expected, filename) -> None:
    response = client.get(path, headers=auth)
    assert response.headers["Content-Disposition"] == f"attachment; filename={filename}"
    cells, want = _xlsx_cells(response), _sheet_cells(expected)
    assert len(cells) == len(want)
    for line, (got, wanted) in enumerate(zip(cells, want, strict=True)):
        assert got == wanted, f"XLSX row {line + 1}"


# Balances at the end of a local date -----------------------------------------------------


@pytest.mark.parametrize(
    ("day", "ann", "club"),
    [
        (date(2026, 1, 31), 0, 0),
        (date(2026, 2, 1), 80_00, 20_00),
        (date(2026, 3, 9), 80_00, 20_00),
        (date(2026, 3, 10), 50_00, 50_00),  # the 23:50 booking counts for the 10th
        (date(2026, 3, 11), 35_50, 48_75),  # the 00:10 booking counts for the 11th
        (date(2026, 3, 12), 85_50, 8_75),
        (date(2026, 12, 31), 85_50, 8_75),
    ],
)
def test_the_balance_at_the_end_of_a_local_date_counts_bookings_by_local_day(sessions, history, day, ann, club) -> None:
    with sessions.begin() as session:
        assert statements.balance_at_end_of(session, history.ann, day, SYDNEY) == ann
        assert statements.balance_at_end_of(session, history.club, day, SYDNEY) == club


def test_the_same_bookings_fall_on_other_days_in_utc(sessions, history) -> None:
    with sessions.begin() as session:
        # In UTC both midnight bookings are on the 10th.
        assert statements.balance_at_end_of(session, history.ann, date(2026, 3, 10), ZoneInfo("UTC")) == 55_50
        assert statements.balance_at_end_of(session, history.ann, date(2026, 3, 9), ZoneInfo("UTC")) == 80_00


def test_a_booking_at_exactly_local_midnight_belongs_to_the_new_day(sessions, history) -> None:
    _at("2026-03-12T13:00:00Z", sessions, lambda s: top_up(s, history.bob, 5_00, "midnight"))  # 00:00 on the 13th
    with sessions.begin() as session:
        assert statements.balance_at_end_of(session, history.bob, date(2026, 3, 12), SYDNEY) == 20_00
        assert statements.balance_at_end_of(session, history.bob, date(2026, 3, 13), SYDNEY) == 25_00


@pytest.mark.parametrize(
    ("day", "balance"),
    [("2026-03-09", "80.00"), ("2026-03-10", "50.00"), ("2026-03-11", "35.50"), ("2026-03-12", "85.50")],
)
def test_the_balance_endpoint_on_a_date_counts_bookings_by_local_day(client, auth, history, day, balance) -> None:
    response = client.get(f"/api/members/ann/balance?date={day}", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"member_id": "ann", "date": day, "balance": balance}


@pytest.mark.parametrize(("day", "balance"), [("2026-03-10", "50.00"), ("2026-03-11", "48.75")])
def test_the_organisation_balance_endpoint_on_a_date_counts_bookings_by_local_day(
    client, auth, history, day, balance
) -> None:
    response = client.get(f"/api/organisations/club/balance?date={day}", headers=auth)
    assert response.get_json() == {"organisation_id": "club", "date": day, "balance": balance}


# Organisation summary by type ------------------------------------------------------------

ALL_TYPES = [
    {"type": "Club Membership", "amount": "20.00", "count": 1},
    {"type": "Club Payment", "amount": "30.00", "count": 1},
    {"type": "Manual Adjustment", "amount": "-1.25", "count": 1},
    {"type": "Settlement", "amount": "-40.00", "count": 1},
]
WITHOUT_MEMBERSHIP = ALL_TYPES[1:]


@pytest.mark.parametrize(
    ("now", "days", "by_type", "total"),
    [
        # 15 March: the 30 days reach back to 13 February; February's membership is out.
        ("2026-03-15T00:00:00Z", 30, WITHOUT_MEMBERSHIP, "-11.25"),
        ("2026-03-15T00:00:00Z", 90, ALL_TYPES, "8.75"),
        ("2026-03-15T00:00:00Z", 365, ALL_TYPES, "8.75"),
        ("2026-03-15T00:00:00Z", None, ALL_TYPES, "8.75"),
        # 11 April 03:30 UTC: only the settlement (12 March 04:00) is within 30 days.
        ("2026-04-11T03:30:00Z", 30, [ALL_TYPES[3]], "-40.00"),
        # 11 April 04:30 UTC: nothing is left in the last 30 days.
        ("2026-04-11T04:30:00Z", 30, [], "0.00"),
        # 3 May 01:30 UTC: 90 days back is 2 February 01:30, after the membership.
        ("2026-05-03T01:30:00Z", 90, WITHOUT_MEMBERSHIP, "-11.25"),
        ("2026-05-03T01:30:00Z", 365, ALL_TYPES, "8.75"),
        # 2027: a year later only "all" still sees anything.
        ("2027-03-13T00:00:00Z", 365, [], "0.00"),
        ("2027-03-13T00:00:00Z", None, ALL_TYPES, "8.75"),
    ],
)
def test_the_summary_by_type_covers_only_entries_within_the_period(
    sessions, client, auth, history, now, days, by_type, total
) -> None:
    expected = {"days": "all" if days is None else days, "by_type": by_type, "total": total}
    with freeze_time(now):
        with sessions.begin() as session:
            assert statements.summary_by_type(session, history.club, days) == expected
        response = client.get(f"/api/organisations/club/summary?days={days or 'all'}", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"organisation_id": "club", **expected}


def test_the_summary_by_type_adds_up_several_entries_of_one_type(sessions, history) -> None:
    _at("2026-03-13T00:00:00Z", sessions, lambda s: ledger.post(
        s, Entry("pay-2", EntryType.CLUB_PAYMENT, "Table money 13 March", (Line(history.bob, -7_00), Line(history.club, 7_00)))
    ))
    with sessions.begin() as session:
        summary = statements.summary_by_type(
            session, history.club, 30, now=datetime(2026, 3, 15, tzinfo=UTC)
        )
    assert summary == {
        "days": 30,
        "by_type": [
            {"type": "Club Payment", "amount": "37.00", "count": 2},
            {"type": "Manual Adjustment", "amount": "-1.25", "count": 1},
            {"type": "Settlement", "amount": "-40.00", "count": 1},
        ],
        "total": "-4.25",
    }


# Last top-up -----------------------------------------------------------------------------


def test_last_top_up_is_the_time_of_the_latest_top_up_entry(client, auth, sessions, history) -> None:
    with sessions.begin() as session:
        assert statements.last_top_up(session, history.ann) == datetime(2026, 3, 12, 3, 0, tzinfo=UTC)
    response = client.get("/api/members/ann/balance", headers=auth)
    assert response.get_json() == {
        "member_id": "ann",
        "balance": "85.50",
        "last_top_up": "2026-03-12T14:00:00+11:00",
        "auto_topup": {"status": "off", "amount": "100.00"},
    }


def test_entries_that_are_not_top_ups_do_not_move_last_top_up(client, auth, sessions, history) -> None:
    _at("2026-03-20T00:00:00Z", sessions, lambda s: book_adjustment(
        s, Adjustment("adj-late", 1_00, "Later credit", "admin-7", member_id="ann")
    ))
    _at("2026-03-21T00:00:00Z", sessions, lambda s: ledger.post(
        s, Entry("pay-late", EntryType.CLUB_PAYMENT, "Later table money", (Line(history.ann, -2_00), Line(history.club, 2_00)))
    ))
    assert client.get("/api/members/ann/balance", headers=auth).get_json()["last_top_up"] == "2026-03-12T14:00:00+11:00"


def test_a_card_payment_counts_as_a_top_up(client, auth, sessions, history) -> None:
    def card_payment(s: Session) -> None:
        stripe = profiles.system_account(s, SystemAccount.STRIPE)
        ledger.post(s, Entry("cc-1", EntryType.CC_PAYMENT, "Card payment", (Line(history.ann, 12_00), Line(stripe, -12_00))))

    _at("2026-03-25T06:45:30Z", sessions, card_payment)
    assert client.get("/api/members/ann/balance", headers=auth).get_json()["last_top_up"] == "2026-03-25T17:45:30+11:00"


def test_a_member_who_never_topped_up_has_no_last_top_up(client, auth, history) -> None:
    # bob only received a transfer.
    assert client.get("/api/members/bob/balance", headers=auth).get_json()["last_top_up"] is None
