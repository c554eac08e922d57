"""IOUs (issue 13 item 4; ORIGINAL 1.7 and 2.11): what a member owes a club, paid later by a
payment to the club. A table of its own, booking nothing.

The runtime role gets SELECT, INSERT and UPDATE on it (no DELETE: an IOU is cancelled, never
deleted) from 0010's `payments_grant_runtime`, which grants every table it does not name that
way; `payments db upgrade` runs it again after migrating, so nothing is granted here.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ious",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("organisation_id", sa.String(64), sa.ForeignKey("organisations.org_id",
                  name="fk_ious_organisation_id_organisations"), nullable=False),
        sa.Column("member_id", sa.String(64), sa.ForeignKey("members.member_id",
                  name="fk_ious_member_id_members"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("description", sa.String(80), nullable=False),
        sa.Column("route_code", sa.String(64), nullable=True),
        sa.Column("route_payload", sa.JSON, nullable=True),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payment_request_id", sa.String(64), nullable=True),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ious"),
        sa.UniqueConstraint("request_id", name="uq_ious_request_id"),
        sa.CheckConstraint("status IN ('open', 'paid', 'cancelled')", name="ck_ious_status"),
        sa.CheckConstraint("amount > 0", name="ck_ious_amount_positive"),
    )
    op.create_index("ix_ious_member_id_created_at", "ious", ["member_id", "created_at"])
    op.create_index("ix_ious_organisation_id_created_at", "ious", ["organisation_id", "created_at"])


def downgrade() -> None:
    op.drop_table("ious")
