"""The Alembic migration and the models describe the same schema, on PostgreSQL and SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from shared.db import make_engine
from shared.models import Base
from shared.schema import upgrade


def _differences(engine: Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_the_migrated_postgresql_schema_matches_the_models(engine: Engine) -> None:
    assert _differences(engine) == []


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
