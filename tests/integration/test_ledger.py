"""shared.ledger.post on PostgreSQL: balanced, idempotent, never overdrawn, append-only."""

from __future__ import annotations

import pytest
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger, profiles
from shared.errors import Conflict, InsufficientFunds, InvalidInput, UnbalancedEntry
from shared.ledger import Entry, Line
from shared.models import EntryType, JournalEntry, SystemAccount
from tests.integration.helpers import add_member, add_organisation, balance_of, pay, top_up


@pytest.fixture
def accounts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions.begin() as session:
        return {
            "ann": add_member(session, "ann"),
            "bob": add_member(session, "bob", "Bob", "Ray"),
            "club": add_organisation(session, "club"),
            "stripe": profiles.system_account(session, SystemAccount.STRIPE),
        }


def test_a_balanced_entry_moves_money_between_accounts(sessions, accounts) -> None:
    with sessions.begin() as session:
        top_up(session, accounts["ann"], 100_00, "t1")
    with sessions.begin() as session:
        booking = pay(session, accounts["ann"], accounts["club"], 30_00, "p1")
    assert not booking.replayed
    assert booking.balances == {accounts["ann"]: 70_00}
    assert balance_of(sessions, accounts["ann"]) == 70_00
    assert balance_of(sessions, accounts["club"]) == 30_00
    assert balance_of(sessions, accounts["stripe"]) == -100_00


def test_unbalanced_entries_are_refused_before_anything_is_written(sessions, accounts) -> None:
    for lines, problem in [
        ((Line(accounts["ann"], 5_00), Line(accounts["stripe"], -4_00)), "sum to 1.00"),
        ((Line(accounts["ann"], 5_00),), "at least two"),
        ((Line(accounts["ann"], 0), Line(accounts["stripe"], 0)), "non-zero"),
        ((Line(accounts["ann"], 5_00), Line(accounts["ann"], -5_00)), "appears twice"),
    ]:
        with pytest.raises(UnbalancedEntry, match=problem), sessions.begin() as session:
            ledger.post(session, Entry("bad", EntryType.MISCELLANEOUS, "x", lines))
    with sessions.begin() as session:
        assert session.scalar(text("SELECT count(*) FROM journal_entries")) == 0


def test_a_member_cannot_be_overdrawn_and_nothing_is_booked(sessions, accounts) -> None:
    with sessions.begin() as session:
        top_up(session, accounts["ann"], 10_00, "t1")
    with pytest.raises(InsufficientFunds, match="member ann: balance 10.00, needs 10.01"):
        with sessions.begin() as session:
            pay(session, accounts["ann"], accounts["club"], 10_01, "p1")
    assert balance_of(sessions, accounts["ann"]) == 10_00
    assert balance_of(sessions, accounts["club"]) == 0


def test_an_organisation_cannot_pay_out_more_than_it_holds(sessions, accounts) -> None:
    with pytest.raises(InsufficientFunds, match="organisation club: balance 0.00"):
        with sessions.begin() as session:
            pay(session, accounts["club"], accounts["bob"], 1, "p1")


def test_only_an_admin_adjustment_may_allow_a_negative_balance(sessions, accounts) -> None:
    adjustments_line = lambda s: profiles.system_account(s, SystemAccount.ADJUSTMENTS)  # noqa: E731
    with pytest.raises(InvalidInput, match="only an admin adjustment"), sessions.begin() as session:
        pay(session, accounts["ann"], accounts["club"], 5_00, "p1", allow_negative=True, admin_id="adm")
    with sessions.begin() as session:
        adj = adjustments_line(session)
        ledger.post(
            session,
            Entry(
                "a1",
                EntryType.MANUAL_ADJUSTMENT,
                "Correction",
                (Line(accounts["ann"], -5_00), Line(adj, 5_00)),
                admin_id="adm",
                allow_negative=True,
            ),
        )
    assert balance_of(sessions, accounts["ann"]) == -5_00


def test_the_same_key_and_payload_returns_the_first_booking_and_books_nothing(sessions, accounts) -> None:
    with sessions.begin() as session:
        first = top_up(session, accounts["ann"], 10_00, "same")
    with sessions.begin() as session:
        again = top_up(session, accounts["ann"], 10_00, "same")
    assert again.replayed
    assert (again.entry_id, again.created_at) == (first.entry_id, first.created_at)
    assert balance_of(sessions, accounts["ann"]) == 10_00


def test_the_same_key_with_a_different_payload_is_a_conflict(sessions, accounts) -> None:
    with sessions.begin() as session:
        top_up(session, accounts["ann"], 10_00, "same")
    with pytest.raises(Conflict, match="request same: already used"), sessions.begin() as session:
        top_up(session, accounts["ann"], 11_00, "same")
    assert balance_of(sessions, accounts["ann"]) == 10_00


def test_entries_and_postings_cannot_be_edited_or_deleted(sessions, accounts) -> None:
    with sessions.begin() as session:
        top_up(session, accounts["ann"], 10_00, "t1")
    for statement in [
        update(JournalEntry).values(description="changed"),
        text("DELETE FROM journal_entries"),
        text("UPDATE postings SET amount = amount * 2"),
        text("DELETE FROM postings"),
    ]:
        with pytest.raises(DBAPIError, match="append-only"), sessions.begin() as session:
            session.execute(statement)
    assert balance_of(sessions, accounts["ann"]) == 10_00


def _raw_ledger_post(session, key: str, accounts: list[int], amounts: list[int]) -> None:
    """Call the database's ledger_post directly, past the Python checks."""
    session.execute(
        text(
            "SELECT * FROM ledger_post(:key, 'h', 'Miscellaneous', 'd', 'r', now(), NULL, NULL, NULL,"
            " false, CAST(:accounts AS bigint[]), CAST(:amounts AS bigint[]), NULL)"
        ),
        {"key": key, "accounts": accounts, "amounts": amounts},
    )


def test_the_database_refuses_postings_written_around_ledger_post(sessions, accounts) -> None:
    with sessions.begin() as session:
        entry = top_up(session, accounts["ann"], 10_00, "t1").entry_id
    with pytest.raises(DBAPIError, match=f"postings of entry {entry} may only be written by ledger_post"):
        with sessions.begin() as session:
            session.execute(
                text("INSERT INTO postings (entry_id, account_id, amount) VALUES (:e, :a, 500)"),
                {"e": entry, "a": accounts["ann"]},
            )
    assert balance_of(sessions, accounts["ann"]) == 10_00


def test_the_database_refuses_at_commit_an_entry_that_is_unbalanced_empty_or_on_unknown_accounts(
    sessions, accounts
) -> None:
    with pytest.raises(IntegrityError, match="unbalanced: 2 postings summing to 100"), sessions.begin() as session:
        _raw_ledger_post(session, "u1", [accounts["ann"], accounts["stripe"]], [600, -500])
    with pytest.raises(IntegrityError, match="unbalanced: 1 postings summing to -500"), sessions.begin() as session:
        _raw_ledger_post(session, "u2", [accounts["stripe"]], [-500])
    with pytest.raises(IntegrityError, match="posts to an unknown account"), sessions.begin() as session:
        _raw_ledger_post(session, "u3", [999999, accounts["stripe"]], [500, -500])
    with pytest.raises(IntegrityError, match="unbalanced: 0 postings"), sessions.begin() as session:
        session.execute(
            text(
                "INSERT INTO journal_entries (idempotency_key, payload_hash, type, description,"
                " reference, created_at) VALUES ('empty', 'x', 'Miscellaneous', 'e', 'e', now())"
            )
        )
    assert balance_of(sessions, accounts["ann"]) == 0
    with sessions.begin() as session:
        assert session.scalar(text("SELECT count(*) FROM journal_entries")) == 0


def test_the_database_refuses_a_zero_posting_and_an_unknown_type(sessions, accounts) -> None:
    with pytest.raises(IntegrityError, match="amount_not_zero"), sessions.begin() as session:
        _raw_ledger_post(session, "z1", [accounts["ann"], accounts["stripe"]], [0, 0])
    with pytest.raises(IntegrityError, match="ck_journal_entries_type"), sessions.begin() as session:
        session.execute(
            text(
                "INSERT INTO journal_entries (idempotency_key, payload_hash, type, description,"
                " reference, created_at) VALUES ('k', 'x', 'Gift', 'd', 'r', now())"
            )
        )


def test_a_booking_reads_accounts_by_index_even_when_there_are_few(sessions, accounts) -> None:
    """Migration 0018: with four accounts the planner would scan `accounts` whole on each of
    ledger_post's statements. auto_explain shows every plan of the booking, triggers included."""
    with sessions.begin() as session:
        top_up(session, accounts["ann"], 10_00, "t1")
    plans: list[str] = []
    with sessions.begin() as session:
        driver = session.connection().connection.driver_connection
        driver.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        for setting in ("LOAD 'auto_explain'", "SET LOCAL auto_explain.log_min_duration = 0",
                        "SET LOCAL auto_explain.log_nested_statements = on",
                        "SET LOCAL auto_explain.log_level = 'notice'"):
            session.execute(text(setting))
        pay(session, accounts["ann"], accounts["club"], 1_00, "p1")
    assert any("accounts" in plan for plan in plans), plans  # the nested statements were seen
    assert [plan for plan in plans if "Seq Scan" in plan] == []
