"""The embedded default: the same ledger rules hold on SQLite (`make run` on a laptop)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_sessions
from shared.errors import Conflict, InsufficientFunds
from shared.schema import upgrade
from tests.integration.helpers import add_member, add_organisation, balance_of, pay, top_up


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path}/payments.db"
    upgrade(url)
    engine = make_engine(url)
    yield make_sessions(engine)
    engine.dispose()


def test_sqlite_books_refuses_overdrafts_and_replays_like_postgresql(lite: sessionmaker[Session]) -> None:
    with lite.begin() as session:
        ann, club = add_member(session, "ann"), add_organisation(session, "club")
        top_up(session, ann, 20_00, "t1")
    with lite.begin() as session:
        pay(session, ann, club, 15_00, "p1")
    with lite.begin() as session:
        assert pay(session, ann, club, 15_00, "p1").replayed
    with pytest.raises(InsufficientFunds, match="balance 5.00, needs 15.00"), lite.begin() as session:
        pay(session, ann, club, 15_00, "p2")
    with pytest.raises(Conflict), lite.begin() as session:
        pay(session, ann, club, 1_00, "p1")
    assert (balance_of(lite, ann), balance_of(lite, club)) == (5_00, 15_00)


def test_sqlite_refuses_edits_and_deletes_of_the_ledger(lite: sessionmaker[Session]) -> None:
    with lite.begin() as session:
        top_up(session, add_member(session, "ann"), 20_00, "t1")
    for statement in ("UPDATE postings SET amount = 1", "DELETE FROM journal_entries"):
        with pytest.raises(IntegrityError, match="append-only"), lite.begin() as session:
            session.execute(text(statement))
