"""Creating and migrating the schema with Alembic (`payments db upgrade`), and the runtime
role's privileges on it (DESIGN invariant 10; migration 0010).

The schema's owner runs the migrations. On PostgreSQL the service can then run as a runtime
role of its own, which `grant_runtime` gives exactly what migration 0010's
`payments_grant_runtime` lists: no UPDATE, DELETE or TRUNCATE of the ledger, bookings only
through `ledger_post`. The role itself (with its password) is the operator's to create.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shared.db import make_engine, normalise_url
from shared.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is ConfigParser-based: a literal % must be doubled.
    config.set_main_option("sqlalchemy.url", normalise_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, runtime_role: str | None = None) -> None:
    """Bring the database to the newest revision, then, if `runtime_role` is given, grant it
    its privileges again (so a table added by this upgrade is covered); running it again
    changes nothing."""
    if runtime_role and make_url(normalise_url(database_url)).get_backend_name() != "postgresql":
        raise _no_roles()  # before migrating: the setting would do nothing
    command.upgrade(alembic_config(database_url), "head")
    if runtime_role:
        grant_runtime(database_url, runtime_role)


def grant_runtime(database_url: str, role: str) -> None:
    """Give `role` the runtime role's privileges, and only those, connected as the schema's
    owner (`database_url`). PostgreSQL only: SQLite has no roles."""
    engine = make_engine(database_url)
    try:
        if engine.dialect.name != "postgresql":
            raise _no_roles()
        with engine.begin() as connection:
            connection.execute(text("SELECT payments_grant_runtime(:role)"), {"role": role})
    finally:
        engine.dispose()


def _no_roles() -> ConfigError:
    return ConfigError(
        "PAYMENTS_DATABASE_RUNTIME_ROLE needs PostgreSQL: SQLite has no roles", field="PAYMENTS_DATABASE_RUNTIME_ROLE"
    )
