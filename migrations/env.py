"""Alembic environment: migrates the database named by the `sqlalchemy.url` option, else
PAYMENTS_DATABASE_URL."""

from alembic import context

from shared.config import Settings
from shared.db import make_engine
from shared.models import Base

url = context.config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
engine = make_engine(url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
