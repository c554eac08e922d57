"""The ledger under real concurrency on PostgreSQL: 8 OS processes book 2,000 payments from
200 members, once all into one club and once spread over 50. No update is lost, no deadlock
reaches a caller, no member is overdrawn, every final balance is exact, and the running sums
(`account_balances`) are the sums of the postings."""

from __future__ import annotations

import multiprocessing
import random
from collections import Counter

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger
from shared.db import make_engine, make_sessions
from shared.errors import InsufficientFunds
from shared.ledger import Entry, Line
from shared.models import EntryType
from tests.integration.helpers import add_member, add_organisation, top_up

PROCESSES = 8
MEMBERS = 200
PAYMENTS_EACH = 10  # 2,000 payments in all
FUNDED_FOR = 8  # each member can afford 8 of their 10 payments


def book_payments(url: str, jobs: list[tuple[str, list[tuple[int, int]], int]], start) -> list:
    """Run in a child process: book each job, return what was booked and what was refused."""
    engine = make_engine(url, pool_size=1)
    sessions = make_sessions(engine)
    outcomes = []
    start.wait()
    for key, debits, credit_account in jobs:
        lines = tuple(Line(a, -c) for a, c in debits) + (Line(credit_account, sum(c for _, c in debits)),)
        try:
            with sessions.begin() as session:
                ledger.post(session, Entry(key, EntryType.CLUB_PAYMENT, "Table money", lines))
            outcomes.append(("booked", key, debits, credit_account))
        except InsufficientFunds:
            outcomes.append(("refused", key, debits, credit_account))
    engine.dispose()
    return outcomes


def run_in_processes(url: str, jobs: list) -> list:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Barrier(PROCESSES)
        with context.Pool(PROCESSES) as pool:
            chunks = [jobs[i::PROCESSES] for i in range(PROCESSES)]
            results = pool.starmap(book_payments, [(url, chunk, start) for chunk in chunks])
    return [outcome for chunk in results for outcome in chunk]


def balances(sessions: sessionmaker[Session]) -> dict[int, int]:
    with sessions.begin() as session:
        rows = session.execute(text("SELECT account_id, sum(amount) FROM postings GROUP BY account_id"))
        return {account_id: int(total) for account_id, total in rows}


@pytest.mark.parametrize("organisations", [1, 50], ids=["one-hot-club", "spread-over-50"])
def test_concurrent_payments_lose_nothing_and_overdraw_no_one(
    sessions: sessionmaker[Session], database_url: str, organisations: int
) -> None:
    with sessions.begin() as session:
        members = [add_member(session, f"m{i}") for i in range(MEMBERS)]
        clubs = [add_organisation(session, f"club{i}") for i in range(organisations)]
        price = {account: 1_00 + i for i, account in enumerate(members)}
        for account in members:
            top_up(session, account, FUNDED_FOR * price[account], f"fund-{account}")

    rng = random.Random(organisations)
    jobs = [
        (f"pay-{member}-{n}", [(member, price[member])], rng.choice(clubs))
        for member in members
        for n in range(PAYMENTS_EACH)
    ]
    rng.shuffle(jobs)
    outcomes = run_in_processes(database_url, jobs)

    assert len(outcomes) == MEMBERS * PAYMENTS_EACH
    booked = [o for o in outcomes if o[0] == "booked"]
    per_member = Counter(debits[0][0] for _, _, debits, _ in booked)
    assert per_member == {member: FUNDED_FOR for member in members}
    expected_clubs = Counter()
    for _, _, debits, club in booked:
        expected_clubs[club] += debits[0][1]
    final = balances(sessions)
    assert all(final[member] == 0 for member in members)
    assert {club: final.get(club, 0) for club in clubs} == {club: expected_clubs[club] for club in clubs}
    with sessions.begin() as session:
        assert session.scalar(text("SELECT count(*) FROM journal_entries WHERE type = 'Club Payment'")) == len(booked)
        # The running sums agree with the postings, and a club credited from 8 connections at
        # once was credited on more than one row (its stripes), so the credits did not queue.
        assert ledger.disagreeing_balances(session) == []
        stripes = session.scalar(text("SELECT count(*) FROM account_balances WHERE account_id = :club"),
                                 {"club": clubs[0]})
        assert stripes > 1


def test_entries_debiting_two_members_in_opposite_orders_never_deadlock(
    sessions: sessionmaker[Session], database_url: str
) -> None:
    """Each entry locks two members; listed in random order, the ledger still locks in id order."""
    with sessions.begin() as session:
        members = [add_member(session, f"m{i}") for i in range(6)]
        club = add_organisation(session, "club")
        for account in members:
            top_up(session, account, 1_000_00, f"fund-{account}")
    rng = random.Random(7)
    jobs = []
    for n in range(800):
        a, b = rng.sample(members, 2)
        jobs.append((f"split-{n}", [(a, 1_00), (b, 2_00)], club))
    outcomes = run_in_processes(database_url, jobs)

    assert [o[0] for o in outcomes].count("booked") == 800
    spent = Counter()
    for _, _, debits, _ in outcomes:
        for account, cents in debits:
            spent[account] += cents
    final = balances(sessions)
    assert {m: final[m] for m in members} == {m: 1_000_00 - spent[m] for m in members}
    assert final[club] == 800 * 3_00
    with sessions.begin() as session:
        assert ledger.disagreeing_balances(session) == []
