"""The Alembic migration and the models describe the same schema, on PostgreSQL and SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from shared.db import make_engine
from shared.models import Base
from shared.schema import upgrade


def _differences(engine: Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def _is_postings_account_fk(difference: tuple) -> bool:
    return difference[0] == "add_fk" and difference[1].parent.name == "postings" and [
        c.name for c in difference[1].columns
    ] == ["account_id"]


def test_the_migrated_postgresql_schema_matches_the_models(engine: Engine) -> None:
    """On PostgreSQL, and only there, postings check their account by trigger (migration 0004)."""
    differences = _differences(engine)
    assert [d for d in differences if not _is_postings_account_fk(d)] == []
    assert len(differences) == 1


def test_postgresql_refuses_deleting_an_account(sessions) -> None:
    with pytest.raises(DBAPIError, match="accounts is append-only: DELETE refused"), sessions.begin() as session:
        session.execute(text("DELETE FROM accounts WHERE kind = 'system'"))


@pytest.mark.parametrize("runs", [1, 2])
def test_the_migrated_sqlite_schema_matches_the_models(tmp_path: Path, runs: int) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    for _ in range(runs):
        upgrade(url)
    engine = make_engine(url)
    try:
        assert _differences(engine) == []
    finally:
        engine.dispose()
