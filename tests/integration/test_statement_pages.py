"""Statement pages, filters and downloads (issue 14 item 1), on a known club history that crosses
local midnight and a month end in Australia/Sydney (AEDT, UTC+11): a line booked at 00:30 on
1 March local time is still 28 February in UTC. Plus pagination while bookings arrive, the
refusals naming their field, and a property: pages put together are the naive statement."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger, statements
from shared.adjustments import Adjustment, book_adjustment
from shared.ledger import Entry, Line
from shared.models import EntryType, JournalEntry, Posting
from tests.integration.helpers import add_member, add_organisation, top_up

SYDNEY = ZoneInfo("Australia/Sydney")
HEADER = ["Date", "Counterparty", "Reference", "Type", "Description", "Amount", "Balance", "Event", "Session"]


def today() -> str:
    """The service's today: a date in its zone (Sydney), which is not the machine's (UTC) from
    13:00 or 14:00 UTC on."""
    return datetime.now(SYDNEY).date().isoformat()


def _book(sessions: sessionmaker[Session], moment: str, book) -> None:  # type: ignore[no-untyped-def]
    with freeze_time(moment), sessions.begin() as session:
        book(session)


def _pays(payer: int, payee: int, cents: int, key: str, type_: EntryType, text: str, **ids: str):  # type: ignore[no-untyped-def]
    return lambda s: ledger.post(s, Entry(key, type_, text, (Line(payer, -cents), Line(payee, cents)), **ids))  # type: ignore[arg-type]


@pytest.fixture
def club_history(sessions: sessionmaker[Session]) -> dict[str, int]:
    """The club's lines (UTC; Sydney local time in the comments), with a transfer between two
    members in between, so the club's postings are not the ledger's consecutive ids."""
    with freeze_time("2026-01-15T00:00:00Z"), sessions.begin() as s:
        ids = {"ann": add_member(s, "ann"), "bob": add_member(s, "bob", "Bob", "Ray"),
               "carol": add_member(s, "carol", "Carol", "Ng"), "club": add_organisation(s, "club")}
    ann, bob, carol, club = ids["ann"], ids["bob"], ids["carol"], ids["club"]
    _book(sessions, "2026-01-20T00:00:00Z", lambda s: [top_up(s, ann, 100_00, "top-a"), top_up(s, bob, 50_00, "top-b"),
                                                      top_up(s, carol, 20_00, "top-c")])
    # 27 Feb 10:00, 28 Feb 23:30, 1 Mar 00:30 (28 Feb in UTC), 1 Mar 09:00, 2 Mar 12:00, 2 Mar 18:00.
    _book(sessions, "2026-02-26T23:00:00Z", _pays(ann, club, 50_00, "mem-1", EntryType.CLUB_MEMBERSHIP, "Annual subscription"))
    _book(sessions, "2026-02-28T12:30:00Z", _pays(bob, club, 12_00, "pay-1", EntryType.CLUB_PAYMENT, "Table money 28 Feb", session_id="S-1"))
    _book(sessions, "2026-02-28T13:30:00Z", _pays(ann, club, 15_00, "evt-1", EntryType.EVENT_ENTRY, "Congress entry", event_id="E-9"))
    _book(sessions, "2026-02-28T14:00:00Z", _pays(ann, bob, 3_00, "xfer-1", EntryType.MEMBER_TRANSFER, "Coffee"))
    _book(sessions, "2026-02-28T22:00:00Z", _pays(club, bob, 5_00, "ref-1", EntryType.REFUND, "Refund half", event_id="E-9"))
    _book(sessions, "2026-03-02T01:00:00Z", lambda s: book_adjustment(
        s, Adjustment("adj-1", -2_00, "Scorer fee 100%_off", "admin-7", organisation_id="club")))
    _book(sessions, "2026-03-02T07:00:00Z", _pays(carol, club, 8_00, "pay-2", EntryType.CLUB_PAYMENT, "=SUM(A1)", session_id="S-1"))
    return ids


# The club's statement, newest first, as the JSON shows it (None: no event or session).
P6 = ["2026-03-02T18:00:00+11:00", "Carol Ng (carol)", "pay-2", "Club Payment", "=SUM(A1)", "8.00", "78.00", None, "S-1"]
P5 = ["2026-03-02T12:00:00+11:00", "Adjustments", "adj-1", "Manual Adjustment", "Scorer fee 100%_off", "-2.00", "70.00", None, None]
P4 = ["2026-03-01T09:00:00+11:00", "Bob Ray (bob)", "ref-1", "Refund", "Refund half", "-5.00", "72.00", "E-9", None]
P3 = ["2026-03-01T00:30:00+11:00", "Ann Lee (ann)", "evt-1", "Entry to an event", "Congress entry", "15.00", "77.00", "E-9", None]
P2 = ["2026-02-28T23:30:00+11:00", "Bob Ray (bob)", "pay-1", "Club Payment", "Table money 28 Feb", "12.00", "62.00", None, "S-1"]
P1 = ["2026-02-27T10:00:00+11:00", "Ann Lee (ann)", "mem-1", "Club Membership", "Annual subscription", "50.00", "50.00", None, None]
KEYS = ["date", "counterparty", "reference", "type", "description", "amount", "balance", "event_id", "session_id"]

# (query, the lines it shows, the balances of an empty page); the balances stay the club's
# running balance whatever a filter leaves out.
CASES: list[tuple[dict[str, str], list[list[Any]], str | None]] = [
    ({}, [P6, P5, P4, P3, P2, P1], None),
    ({"event_id": "E-9"}, [P4, P3], None),
    ({"session_id": "S-1"}, [P6, P2], None),
    ({"type": "Refund"}, [P4], None),
    ({"type": "Club Payment"}, [P6, P2], None),
    ({"search": "table"}, [P2], None),  # the description, any case
    ({"search": "sum("}, [P6], None),
    ({"search": "ray"}, [P4, P2], None),  # a member's last name
    ({"search": "LEE"}, [P3, P1], None),
    ({"search": "carol"}, [P6], None),  # a member's first name
    ({"search": "%"}, [P5], None),  # LIKE's wildcards are plain characters
    ({"search": "_"}, [P5], None),
    ({"from": "2026-03-01", "to": "2026-03-01"}, [P4, P3], None),  # 00:30 local is 1 March
    ({"to": "2026-02-28"}, [P2, P1], None),  # 23:30 local is still 28 February
    ({"from": "2026-02-28", "to": "2026-02-28"}, [P2], None),
    ({"from": "2026-03-02"}, [P6, P5], None),
    ({"from": "2026-03-01", "search": "ray"}, [P4], None),
    ({"from": "2026-03-01", "to": "2026-03-31", "session_id": "S-1", "type": "Club Payment"}, [P6], None),
    ({"from": "2026-03-03"}, [], "78.00"),  # empty: the balance at the end of `to` (today)
    ({"to": "2026-02-26"}, [], "0.00"),
    ({"to": "2026-02-28", "type": "Settlement"}, [], "62.00"),
    ({"search": "nobody"}, [], "78.00"),
]


def _json_rows(lines: list[list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(KEYS, line, strict=True)) for line in lines]


def _cents(text: str) -> int:
    return int(Decimal(text) * 100)


def _csv(response) -> list[list[str]]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200 and response.mimetype == "text/csv"
    return list(csv.reader(io.StringIO(response.get_data(as_text=True), newline="")))


def _xlsx(response) -> list[list[Any]]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.get_data(as_text=True)
    data = response.get_data()
    response.close()
    book = load_workbook(io.BytesIO(data))
    assert book.sheetnames == ["Transactions"]
    return [[Decimal(str(c)).quantize(Decimal("0.01")) if isinstance(c, int | float) else c for c in row]
            for row in book["Transactions"].iter_rows(values_only=True)]


def _guarded(text: str) -> str:
    return "'" + text if text[:1] in "=+-@" else text


def test_each_filter_and_date_range_shows_its_lines_cell_by_cell_in_json_csv_and_xlsx(client, auth, club_history) -> None:
    for query, lines, empty in CASES:
        where = f"query {query}"
        body = client.get("/api/organisations/club/statement", query_string=query, headers=auth).get_json()
        assert body["rows"] == _json_rows(lines), where
        assert body["organisation_id"] == "club" and body["next_cursor"] is None, where
        assert (body["from"], body["to"]) == (query.get("from", "1901-01-01"), query.get("to", today())), where
        if lines:
            oldest = lines[-1]
            assert body["opening_balance"] == f"{(_cents(oldest[6]) - _cents(oldest[5])) / 100:.2f}", where
            assert body["closing_balance"] == lines[0][6], where
        else:
            assert body["opening_balance"] == body["closing_balance"] == empty, where
        got_csv = _csv(client.get("/api/organisations/club/statement", query_string={**query, "format": "csv"}, headers=auth))
        want_csv = [HEADER] + [[_guarded(c) if i in (1, 2, 4) else c or "" for i, c in enumerate(line)] for line in lines]
        assert got_csv == want_csv, where
        got_xlsx = _xlsx(client.get("/api/organisations/club/statement", query_string={**query, "format": "xlsx"}, headers=auth))
        want_xlsx = [HEADER] + [
            [datetime.fromisoformat(line[0]).replace(tzinfo=None), line[1], line[2], line[3], _guarded(line[4]),
             Decimal(line[5]), Decimal(line[6]), line[7], line[8]]
            for line in lines
        ]
        assert got_xlsx == want_xlsx, where


@pytest.mark.parametrize(("query", "lines"), [({"search": "ray"}, [P4, P2]), ({"session_id": "S-1"}, [P6, P2]),
                                              ({}, [P6, P5, P4, P3, P2, P1])])
def test_filtered_pages_of_one_line_keep_the_running_balance(client, auth, club_history, query, lines) -> None:
    cursor, seen = None, []
    for line in lines:
        page = client.get("/api/organisations/club/statement", headers=auth,
                          query_string={**query, "limit": "1", **({"cursor": cursor} if cursor else {})}).get_json()
        assert page["rows"] == _json_rows([line])
        assert page["closing_balance"] == line[6]
        assert page["opening_balance"] == f"{(_cents(line[6]) - _cents(line[5])) / 100:.2f}"
        seen.append(line)
        cursor = page["next_cursor"]
        assert (cursor is None) == (len(seen) == len(lines))


def test_a_members_statement_crosses_the_month_end_by_local_date(client, auth, club_history) -> None:
    feb = client.get("/api/members/ann/statement", query_string={"from": "2026-02-01", "to": "2026-02-28"},
                     headers=auth).get_json()
    assert [(r["reference"], r["balance"]) for r in feb["rows"]] == [("mem-1", "50.00")]
    assert (feb["opening_balance"], feb["closing_balance"]) == ("100.00", "50.00")
    march = client.get("/api/members/ann/statement", query_string={"from": "2026-03-01", "to": "2026-03-31"},
                       headers=auth).get_json()
    assert [(r["reference"], r["balance"]) for r in march["rows"]] == [("xfer-1", "32.00"), ("evt-1", "35.00")]
    assert (march["opening_balance"], march["closing_balance"]) == ("50.00", "32.00")


def test_a_line_at_exactly_local_midnight_of_a_new_month_belongs_to_the_new_day(client, auth, sessions, club_history) -> None:
    # 2026-03-31T13:00Z is 00:00 on 1 April in Sydney (AEDT until 5 April).
    _book(sessions, "2026-03-31T13:00:00Z", _pays(club_history["ann"], club_history["club"], 1_00, "midnight",
                                                  EntryType.CLUB_PAYMENT, "At midnight"))
    path = "/api/organisations/club/statement"
    march = client.get(path, query_string={"from": "2026-03-01", "to": "2026-03-31"}, headers=auth).get_json()
    assert [r["reference"] for r in march["rows"]] == ["pay-2", "adj-1", "ref-1", "evt-1"]
    april = client.get(path, query_string={"from": "2026-04-01", "to": "2026-04-01"}, headers=auth).get_json()
    assert [(r["date"], r["balance"]) for r in april["rows"]] == [("2026-04-01T00:00:00+11:00", "79.00")]
    assert (april["opening_balance"], april["closing_balance"]) == ("78.00", "79.00")
    with freeze_time("2026-04-15T00:00:00Z"):  # a preset: last month is March
        preset = client.get(path, query_string={"period": "last_month"}, headers=auth).get_json()
    assert (preset["from"], preset["to"]) == ("2026-03-01", "2026-03-31")
    assert preset["rows"] == march["rows"]


# Pagination while bookings arrive ---------------------------------------------------------


def _naive(sessions: sessionmaker[Session], account_id: int) -> list[tuple[int, str, int, int]]:
    """(posting id, reference, amount, balance after it), newest first, summed here in Python."""
    with sessions.begin() as session:
        found = session.execute(
            select(Posting.id, JournalEntry.reference, Posting.amount)
            .join(JournalEntry, JournalEntry.id == Posting.entry_id)
            .where(Posting.account_id == account_id).order_by(Posting.id)
        ).all()
    balance, out = 0, []
    for posting_id, reference, amount in found:
        balance += amount
        out.append((posting_id, reference, amount, balance))
    return out[::-1]


def test_walking_pages_while_bookings_arrive_loses_and_repeats_no_line(client, auth, sessions, club_history) -> None:
    club, ann = club_history["club"], club_history["ann"]
    with sessions.begin() as s:
        top_up(s, ann, 1000_00, "top-more")
        for n in range(15):
            _pays(ann, club, 100 + n, f"walk-{n}", EntryType.CLUB_PAYMENT, f"Walk {n}")(s)
    before = _naive(sessions, club)
    shown, cursor, n = [], None, 0
    while True:
        page = client.get("/api/organisations/club/statement", headers=auth,
                          query_string={"limit": "2", **({"cursor": cursor} if cursor else {})}).get_json()
        naive = {ref: (amount, balance) for _, ref, amount, balance in _naive(sessions, club)}
        for row in page["rows"]:
            assert (_cents(row["amount"]), _cents(row["balance"])) == naive[row["reference"]]
        oldest, newest = page["rows"][-1], page["rows"][0]
        assert _cents(page["opening_balance"]) == naive[oldest["reference"]][1] - naive[oldest["reference"]][0]
        assert _cents(page["closing_balance"]) == naive[newest["reference"]][1]
        shown += [row["reference"] for row in page["rows"]]
        with sessions.begin() as s:  # a new line for the club and one for a member before the next page
            _pays(ann, club, 1_00, f"late-{n}", EntryType.CLUB_PAYMENT, "Late")(s)
            top_up(s, ann, 1_00, f"late-top-{n}")
        n += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert shown == [ref for _, ref, _, _ in before]  # every line once, in order, none of the late ones


# Refusals ---------------------------------------------------------------------------------


def _field(response) -> str | None:  # type: ignore[no-untyped-def]
    assert response.status_code == 400, response.get_data(as_text=True)
    return response.get_json()["error"].get("field")


def test_bad_arguments_are_400s_naming_the_field(client, auth, club_history) -> None:
    first = client.get("/api/organisations/club/statement?limit=2", headers=auth).get_json()["next_cursor"]
    of_ann = client.get("/api/members/ann/statement?limit=1", headers=auth).get_json()["next_cursor"]
    searched = client.get("/api/organisations/club/statement?limit=1&search=ray", headers=auth).get_json()["next_cursor"]
    assert first and of_ann and searched
    org, member = "/api/organisations/club/statement", "/api/members/ann/statement"
    for path, query, field in [
        (org, {"limit": "0"}, "limit"), (org, {"limit": "1001"}, "limit"), (org, {"limit": "ten"}, "limit"),
        (org, {"limit": "-1"}, "limit"), (org, {"limit": "2.5"}, "limit"), (org, {"limit": ""}, "limit"),
        (member, {"limit": "99999999999999999999"}, "limit"), (org, {"limit": "\uff11"}, "limit"),
        (org, {"cursor": "nonsense"}, "cursor"), (org, {"cursor": ""}, "cursor"), (org, {"cursor": first[:-1]}, "cursor"),
        (org, {"cursor": "%ff\u00e9"}, "cursor"), (org, {"cursor": "x" * 500}, "cursor"),
        (org, {"cursor": of_ann}, "cursor"),  # another account's
        (org, {"cursor": searched}, "cursor"),  # the same account, other filters
        (org, {"cursor": first, "from": "2026-01-01"}, "cursor"),
        (org, {"type": "Bogus"}, "type"), (org, {"type": "settlement"}, "type"),
        (org, {"event_id": "no spaces"}, "event_id"), (org, {"session_id": "x" * 65}, "session_id"),
        (org, {"search": "a" * 101}, "search"), (org, {"search": "a\x00b"}, "search"),
        (org, {"from": "2026-02-30"}, "from"), (org, {"to": "yesterday"}, "to"),
        (org, {"from": "2026-03-02", "to": "2026-03-01"}, "from"), (member, {"from": "1900-12-31"}, "from"),
        (org, {"format": "pdf"}, "format"), (org, {"format": "csv", "type": "Bogus"}, "type"),
        (org, {"format": "xlsx", "from": "2026-13-01"}, "from"),
        (member, {"type": "Refund"}, "type"), (member, {"search": "x"}, "search"), (member, {"event_id": "E-9"}, "event_id"),
    ]:
        assert _field(client.get(path, query_string=query, headers=auth)) == field, (path, query)
    assert client.get(org, query_string={"cursor": first}, headers=auth).status_code == 200


def test_any_argument_text_is_a_200_or_a_400_never_a_500(client, auth, club_history) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(who=st.sampled_from(["members/ann", "organisations/club"]),
           args=st.dictionaries(st.sampled_from(["from", "to", "limit", "cursor", "type", "search", "event_id",
                                                 "session_id", "format", "period"]),
                                st.one_of(st.text(max_size=30), st.sampled_from(["2026-03-01", "5", "csv", "xlsx",
                                                                                 "Refund", "%", "_", "all"])),
                                max_size=4))
    def run(who: str, args: dict[str, str]) -> None:
        response = client.get(f"/api/{who}/statement", query_string=args, headers=auth)
        assert response.status_code in (200, 400), (args, response.get_data(as_text=True)[:300])
        if response.status_code == 400:
            assert response.get_json()["error"]["field"] in args
        response.close()

    run()


def test_a_cursor_with_another_balance_is_refused(client, auth, club_history) -> None:
    """The balance a cursor carries is vouched for by the service's key: a client cannot make
    the next page show other balances."""
    import base64

    cursor = client.get("/api/organisations/club/statement?limit=2", headers=auth).get_json()["next_cursor"]
    posting_id, balance, check = base64.urlsafe_b64decode(cursor + "==").decode().split(".")
    assert balance == "7200"  # the first page's opening balance: before P5
    forged = base64.urlsafe_b64encode(f"{posting_id}.999999.{check}".encode()).decode().rstrip("=")
    assert _field(client.get("/api/organisations/club/statement", query_string={"cursor": forged}, headers=auth)) == "cursor"


def test_a_cursor_survives_a_new_day_and_a_new_limit(client, auth, club_history) -> None:
    with freeze_time("2026-03-05T03:00:00Z"):
        cursor = client.get("/api/members/ann/statement?limit=1", headers=auth).get_json()["next_cursor"]
    with freeze_time("2026-03-06T03:00:00Z"):
        page = client.get("/api/members/ann/statement", query_string={"cursor": cursor, "limit": "2"}, headers=auth)
    assert [r["reference"] for r in page.get_json()["rows"]] == ["evt-1", "mem-1"]


# Property: pages put together are the naive statement --------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    amounts=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 5_00)), min_size=0, max_size=25),
    limit=st.integers(1, 7),
    search=st.sampled_from([None, "odd"]),
    key=st.sampled_from([None, b"k" * 32]),
)
def test_pages_put_together_are_the_naive_statement_and_the_download(engine, amounts, limit, search, key) -> None:
    """With a key, later pages count from the balance the cursor carries; without, from a sum."""
    from tests.conftest import empty_database

    empty_database(engine)
    sessions = sessionmaker(engine)
    with sessions.begin() as s:
        accounts = [add_organisation(s, "club"), add_member(s, "ann"), add_member(s, "bob", "Bob", "Ray")]
        top_up(s, accounts[1], 10_000_00, "seed")
        club_has = 0
        for n, (kind, cents) in enumerate(amounts):  # ann pays the club or bob; the club pays bob
            if kind == 2 and club_has >= cents:
                payer, payee = accounts[0], accounts[2]
                club_has -= cents
            else:
                payer, payee = accounts[1], accounts[kind % 2 * 2]
                club_has += cents if payee == accounts[0] else 0
            _pays(payer, payee, cents, f"p-{n}", EntryType.CLUB_PAYMENT, "odd one" if n % 2 else "even one")(s)
    filters = statements.Filters(search=search)
    for account_id in accounts:
        naive = _naive(sessions, account_id)
        with sessions.begin() as s:
            wanted_refs = {e.reference for e in s.scalars(select(JournalEntry).where(JournalEntry.description.contains("odd")))}
        expected = [(ref, amount, balance) for _, ref, amount, balance in naive if search is None or ref in wanted_refs]
        got, cursor = [], None
        with sessions.begin() as s:
            while True:
                page = statements.page(s, account_id, SYDNEY, filters, limit=limit, cursor=cursor, key=key)
                assert len(page.rows) <= limit
                if page.rows:
                    assert page.closing_balance == page.rows[0].balance
                    assert page.opening_balance == page.rows[-1].balance - page.rows[-1].amount
                got += [(r.reference, r.amount, r.balance) for r in page.rows]
                cursor = page.next_cursor
                if cursor is None:
                    break
            downloaded = [(r.reference, r.amount, r.balance) for r in statements.lines(s, account_id, SYDNEY, filters, batch=3)]
        assert got == expected
        assert downloaded == expected


def test_pages_and_downloads_work_on_the_embedded_sqlite_default(tmp_path) -> None:
    from shared.db import make_engine, make_sessions
    from shared.schema import upgrade

    url = f"sqlite:///{tmp_path}/payments.db"
    upgrade(url)
    engine = make_engine(url)
    try:
        lite = make_sessions(engine)
        with lite.begin() as s:
            ann, club = add_member(s, "ann"), add_organisation(s, "club")
            top_up(s, ann, 20_00, "t1")
            for n in range(5):
                _pays(ann, club, 1_00 + n, f"p{n}", EntryType.CLUB_PAYMENT, f"Table {n}% off")(s)
        with lite.begin() as s:
            first = statements.page(s, ann, SYDNEY, statements.Filters(), limit=4, key=b"k")
            second = statements.page(s, ann, SYDNEY, statements.Filters(), limit=4, cursor=first.next_cursor, key=b"k")
            everything = list(statements.lines(s, ann, SYDNEY, statements.Filters()))
            found = statements.page(s, club, SYDNEY, statements.Filters(search="lee"), limit=2)
        assert [(r.reference, r.balance) for r in everything] == [
            ("p4", 14_90), ("p3", 15_94), ("p2", 16_97), ("p1", 17_99), ("p0", 19_00), ("t1", 20_00)]
        assert first.rows + second.rows == everything and second.next_cursor is None
        assert (first.opening_balance, first.closing_balance) == (19_00, 14_90)  # before p1, after p4
        assert [(r.reference, r.balance) for r in found.rows] == [("p4", 5_10), ("p3", 4_06)]
    finally:
        engine.dispose()
