"""Stripe: the inbox of webhook events, card payments (one committed row per attempt to take
card money), and two more request kinds (manual top-ups and card refunds).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from shared.models import BigId, CardPaymentKind, CardPaymentStatus, EventStatus, RequestKind, RequestStatus, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _in(column: str, values: type) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "stripe_events",
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(_in("status", EventStatus), name="status"),
    )
    op.create_index("ix_stripe_events_status_updated_at", "stripe_events", ["status", "updated_at"])
    op.create_table(
        "card_payments",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("attempt_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("payment_intent_id", sa.String(255), nullable=True),
        sa.Column("client_secret", sa.String(255), nullable=True),
        sa.Column("entry_id", sa.BigInteger, nullable=True),
        sa.Column("tries", sa.Integer, nullable=False),
        sa.Column("refunded", sa.BigInteger, nullable=False),
        sa.Column("stripe_notes", sa.JSON, nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("attempt_key", name="uq_card_payments_attempt_key"),
        sa.UniqueConstraint("payment_intent_id", name="uq_card_payments_payment_intent_id"),
        sa.CheckConstraint(_in("kind", CardPaymentKind), name="kind"),
        sa.CheckConstraint(_in("status", CardPaymentStatus), name="status"),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
    )
    op.create_index(
        "uq_card_payments_one_top_up_in_flight",
        "card_payments",
        ["member_id"],
        unique=True,
        postgresql_where=sa.text("status = 'pending' AND kind = 'auto_topup'"),
        sqlite_where=sa.text("status = 'pending' AND kind = 'auto_topup'"),
    )
    op.create_index("ix_card_payments_status_updated_at", "card_payments", ["status", "updated_at"])
    with op.batch_alter_table("payment_requests") as batch:
        batch.drop_constraint("kind", type_="check")
        batch.create_check_constraint("kind", _in("kind", RequestKind))


def downgrade() -> None:
    with op.batch_alter_table("payment_requests") as batch:
        batch.drop_constraint("kind", type_="check")
        batch.create_check_constraint("kind", "kind IN ('payment', 'transfer', 'settlement')")
    op.drop_table("card_payments")
    op.drop_table("stripe_events")
