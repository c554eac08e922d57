"""Property: whatever sequence of bookings arrives (top-ups, payments, transfers, payouts,
adjustments, replays and reused keys), every entry sums to zero, every balance equals the sum of
its postings and the running balance on its statement, and no member is ever negative unless an
admin adjustment explicitly allowed it."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from shared import ledger, profiles, statements
from shared.db import make_engine, make_sessions
from shared.errors import Conflict, InsufficientFunds
from shared.ledger import Entry, Line
from shared.models import EntryType, SystemAccount
from shared.schema import upgrade
from tests.conftest import empty_database
from tests.integration.helpers import add_member, add_organisation

MEMBERS = ("ann", "bob", "cat")
CLUBS = ("north", "south")
ZONE = ZoneInfo("Australia/Sydney")

amounts = st.integers(min_value=1, max_value=300_00)
operation = st.one_of(
    st.tuples(st.just("top_up"), st.sampled_from(MEMBERS), amounts),
    st.tuples(st.just("pay"), st.sampled_from(MEMBERS), st.sampled_from(CLUBS), amounts),
    st.tuples(st.just("transfer"), st.sampled_from(MEMBERS), st.sampled_from(MEMBERS), amounts),
    st.tuples(st.just("payout"), st.sampled_from(CLUBS), st.sampled_from(MEMBERS), amounts),
    st.tuples(st.just("adjust"), st.sampled_from(MEMBERS), st.integers(-300_00, 300_00).filter(bool), st.booleans()),
    st.tuples(st.just("replay"), st.integers(min_value=0)),
    st.tuples(st.just("reuse_key"), st.integers(min_value=0), amounts),
)


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """A function giving an empty ledger per example: PostgreSQL runs the `ledger_post`
    function, SQLite the portable Python path of the same rules."""
    made: list[Engine] = []
    if request.param == "postgresql":
        engine = request.getfixturevalue("engine")

        def empty() -> Engine:
            empty_database(engine)
            return engine
    else:
        template = tmp_path / "template.db"
        upgrade(f"sqlite:///{template}")

        def empty() -> Engine:
            copy = tmp_path / f"ledger-{len(made)}.db"
            shutil.copy(template, copy)
            made.append(make_engine(f"sqlite:///{copy}"))
            return made[-1]
    yield empty
    for engine in made:
        engine.dispose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=25))
def test_any_sequence_of_bookings_keeps_the_ledger_invariants(
    fresh_engine: Callable[[], Engine], operations: list
) -> None:
    sessions = make_sessions(fresh_engine())
    with sessions.begin() as session:
        account = {m: add_member(session, m) for m in MEMBERS}
        account.update({c: add_organisation(session, c) for c in CLUBS})
        stripe = profiles.system_account(session, SystemAccount.STRIPE)
        adjustments = profiles.system_account(session, SystemAccount.ADJUSTMENTS)

    expected = dict.fromkeys(account.values(), 0)
    booked: list[Entry] = []
    allowed_negative: set[int] = set()

    for n, op in enumerate(operations):
        entry = _entry(n, op, account, stripe, adjustments, booked)
        if entry is None:
            continue
        debits_ok = all(
            expected[line.account_id] + line.amount >= 0
            for line in entry.lines
            if line.amount < 0 and line.account_id in expected
        )
        try:
            with sessions.begin() as session:
                booking = ledger.post(session, entry)
        except InsufficientFunds:
            assert not debits_ok and not entry.allow_negative, f"refused a bookable {entry}"
            continue
        except Conflict:
            assert op[0] == "reuse_key", f"unexpected conflict for {op}"
            continue
        if op[0] == "replay":
            assert booking.replayed
            continue
        assert debits_ok or entry.allow_negative, f"booked an overdraft: {entry}"
        assert not booking.replayed
        booked.append(entry)
        for line in entry.lines:
            if line.account_id in expected:
                expected[line.account_id] += line.amount
                if line.amount < 0 and entry.allow_negative and expected[line.account_id] < 0:
                    allowed_negative.add(line.account_id)

    with sessions.begin() as session:
        assert session.scalar(
            text("SELECT count(*) FROM (SELECT entry_id FROM postings GROUP BY entry_id HAVING sum(amount) <> 0) x")
        ) == 0
        assert session.scalar(text("SELECT count(*) FROM journal_entries")) == len(booked)
        assert session.scalar(text("SELECT coalesce(sum(amount), 0) FROM postings")) == 0
        assert ledger.disagreeing_balances(session) == []
        for account_id, cents in expected.items():
            assert ledger.balance(session, account_id) == cents
            rows = statements.statement(session, account_id, ZONE)
            assert (rows[0].balance if rows else 0) == cents
            assert sum(row.amount for row in rows) == cents
            if account_id not in allowed_negative:
                assert all(row.balance >= 0 for row in rows), f"account {account_id} went negative"


def _entry(n: int, op: tuple, account: dict, stripe: int, adjustments: int, booked: list[Entry]) -> Entry | None:
    kind = op[0]
    key = f"op-{n}"
    if kind == "top_up":
        _, m, c = op
        return Entry(key, EntryType.MANUAL_TOP_UP, "Top up", (Line(account[m], c), Line(stripe, -c)))
    if kind == "pay":
        _, m, club, c = op
        return Entry(key, EntryType.CLUB_PAYMENT, "Table money", (Line(account[m], -c), Line(account[club], c)))
    if kind == "transfer":
        _, a, b, c = op
        if a == b:
            return None
        return Entry(key, EntryType.MEMBER_TRANSFER, "Transfer", (Line(account[a], -c), Line(account[b], c)))
    if kind == "payout":
        _, club, m, c = op
        return Entry(key, EntryType.ORG_TRANSFER, "Prize", (Line(account[club], -c), Line(account[m], c)))
    if kind == "adjust":
        _, m, c, allow = op
        return Entry(
            key,
            EntryType.MANUAL_ADJUSTMENT,
            "Correction",
            (Line(account[m], c), Line(adjustments, -c)),
            admin_id="admin1",
            allow_negative=allow,
        )
    if not booked:
        return None
    earlier = booked[op[1] % len(booked)]
    if kind == "replay":
        return earlier
    # reuse_key: an earlier key with a different payload must be a conflict.
    first = earlier.lines[0]
    amount = op[2] if op[2] != abs(first.amount) else op[2] + 1
    return Entry(earlier.key, EntryType.MISCELLANEOUS, "Other", (Line(first.account_id, amount), Line(stripe, -amount)))
