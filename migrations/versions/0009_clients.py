"""Clients (CONTRACT "Clients and scopes", DESIGN invariant 10): who may call the API, with
which scopes and bindings, their token hashes (several during a rotation, each with an optional
expiry) and callback keys; and the client that made each payment request.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from shared.models import BigId, UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("route_codes", sa.JSON, nullable=True),
        sa.Column("request_prefix", sa.String(64), nullable=True),
        sa.Column("organisations", sa.JSON, nullable=True),
        sa.Column("callback_key", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("name", name="uq_clients_name"),
    )
    op.create_table(
        "client_tokens",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("client_id", BigId, sa.ForeignKey("clients.id", name="fk_client_tokens_client_id_clients"),
                  nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("token_hash", name="uq_client_tokens_token_hash"),
    )
    op.create_index("ix_client_tokens_client_id", "client_tokens", ["client_id"])
    with op.batch_alter_table("payment_requests") as batch:
        batch.add_column(sa.Column("client", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_requests") as batch:
        batch.drop_column("client")
    op.drop_index("ix_client_tokens_client_id", "client_tokens")
    op.drop_table("client_tokens")
    op.drop_table("clients")
