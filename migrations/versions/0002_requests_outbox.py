"""Payment requests (one row per caller-chosen request id, holding its outcome) and the outbox
(callbacks and notifications written in the same transaction as the booking that causes them).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from shared.models import BigId, OutboxKind, OutboxStatus, RequestKind, RequestStatus, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _in(column: str, values: type) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "payment_requests",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("member_id", sa.String(64), nullable=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(300), nullable=True),
        sa.Column("route_code", sa.String(64), nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(_in("kind", RequestKind), name="kind"),
        sa.CheckConstraint(_in("status", RequestStatus), name="status"),
    )
    op.create_index(
        "ix_payment_requests_status_updated_at", "payment_requests", ["status", "updated_at"]
    )
    op.create_table(
        "outbox",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("dedup_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("dedup_key", name="uq_outbox_dedup_key"),
        sa.CheckConstraint(_in("kind", OutboxKind), name="kind"),
        sa.CheckConstraint(_in("status", OutboxStatus), name="status"),
    )
    op.create_index("ix_outbox_status_next_attempt_at", "outbox", ["status", "next_attempt_at"])
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("low_balance_warned_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.drop_column("low_balance_warned_at")
    op.drop_table("outbox")
    op.drop_table("payment_requests")
