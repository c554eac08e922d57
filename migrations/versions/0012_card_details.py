"""The card that paid each card payment (issue 13 item 5; ORIGINAL 2.6): brand, last four digits,
expiry and Stripe's receipt, kept on the attempt, for the statement's description and the card
payments list (CONTRACT `GET /api/card-payments`). Nullable: payments booked before, and any part
Stripe did not say.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("card_payments") as batch:
        batch.add_column(sa.Column("card_brand", sa.String(20), nullable=True))
        batch.add_column(sa.Column("card_last4", sa.String(4), nullable=True))
        batch.add_column(sa.Column("card_exp_month", sa.SmallInteger, nullable=True))
        batch.add_column(sa.Column("card_exp_year", sa.SmallInteger, nullable=True))
        batch.add_column(sa.Column("receipt_url", sa.String(500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("card_payments") as batch:
        for column in ("receipt_url", "card_exp_year", "card_exp_month", "card_last4", "card_brand"):
            batch.drop_column(column)
