"""Healing row by row (DESIGN invariant 12): every row a healing job works on (a request
redriven, a card attempt reconciled or expired, a Stripe event redriven) keeps its own count of
tries and the time before which it is not tried again, so a row that keeps failing backs off,
ends `failed` after its last try, and never holds up the rows behind it.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("payment_requests", "card_payments", "stripe_events")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("heal_tries", sa.Integer, nullable=False, server_default=sa.text("0")))
            batch.add_column(sa.Column("next_heal_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("next_heal_at")
            batch.drop_column("heal_tries")
