"""Alembic migrations; `payments db upgrade` runs them (see `shared.schema`)."""
