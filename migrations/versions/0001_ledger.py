"""The ledger: accounts, member and organisation profiles, journal entries and postings,
with the invariants the schema itself can hold (unique idempotency keys, no zero postings,
append-only entries and postings, and on PostgreSQL a deferred check that every entry sums
to zero).

Revision ID: 0001
Revises:
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from shared.models import AccountKind, AutoTopUpStatus, BigId, EntryType, SystemAccount, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _in(column: str, values: type) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


def upgrade() -> None:
    accounts = op.create_table(
        "accounts",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("kind", "owner", name="uq_accounts_kind_owner"),
        sa.CheckConstraint(_in("kind", AccountKind), name="kind"),
    )
    op.create_table(
        "members",
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("account_id", BigId, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("first_name", sa.String(100), nullable=False),
        sa.Column("last_name", sa.String(100), nullable=False),
        sa.Column("low_balance_emails", sa.Boolean, nullable=False),
        sa.Column("auto_topup_status", sa.String(16), nullable=False),
        sa.Column("auto_topup_amount", sa.BigInteger, nullable=False),
        sa.Column("stripe_customer_id", sa.String(255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("account_id", name="uq_members_account_id"),
        sa.CheckConstraint(_in("auto_topup_status", AutoTopUpStatus), name="auto_topup_status"),
    )
    op.create_table(
        "organisations",
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("account_id", BigId, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("settlement_fee_percent", sa.Numeric(5, 2), nullable=True),
        sa.Column("minimum_balance_after_settlement", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("account_id", name="uq_organisations_account_id"),
        sa.CheckConstraint(
            "settlement_fee_percent IS NULL OR settlement_fee_percent BETWEEN 0 AND 100",
            name="settlement_fee_percent",
        ),
        sa.CheckConstraint(
            "minimum_balance_after_settlement >= 0", name="minimum_balance"
        ),
    )
    op.create_table(
        "journal_entries",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("reference", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("admin_id", sa.String(64), nullable=True),
        sa.UniqueConstraint("idempotency_key", name="uq_journal_entries_idempotency_key"),
        sa.CheckConstraint(_in("type", EntryType), name="type"),
    )
    op.create_index("ix_journal_entries_created_at", "journal_entries", ["created_at"])
    op.create_table(
        "postings",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("entry_id", BigId, sa.ForeignKey("journal_entries.id"), nullable=False),
        sa.Column("account_id", BigId, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("entry_id", "account_id", name="uq_postings_entry_id_account_id"),
        sa.CheckConstraint("amount <> 0", name="amount_not_zero"),
    )
    op.create_index(
        "ix_postings_account_id_id", "postings", ["account_id", "id"], postgresql_include=["amount"]
    )

    now = datetime.now(UTC)
    op.bulk_insert(
        accounts,
        [{"kind": AccountKind.SYSTEM.value, "owner": s.value, "created_at": now} for s in SystemAccount],
    )

    if op.get_bind().dialect.name == "postgresql":
        _postgresql_invariants()
    else:
        _sqlite_invariants()


def _postgresql_invariants() -> None:
    # Checked at commit, when every posting of the entry is in place.
    op.execute(
        """
        CREATE FUNCTION ledger_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            entry bigint;
            total numeric;
            lines integer;
        BEGIN
            IF TG_TABLE_NAME = 'postings' THEN
                entry := NEW.entry_id;
            ELSE
                entry := NEW.id;
            END IF;
            SELECT coalesce(sum(amount), 0), count(*) INTO total, lines
              FROM postings WHERE entry_id = entry;
            IF total <> 0 OR lines < 2 THEN
                RAISE EXCEPTION 'journal entry % is unbalanced: % postings summing to %',
                    entry, lines, total USING ERRCODE = 'check_violation';
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'restrict_violation';
        END $$
        """
    )
    for table in ("journal_entries", "postings"):
        op.execute(
            f"CREATE CONSTRAINT TRIGGER {table}_balanced AFTER INSERT ON {table} "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_balanced()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
        )


def _sqlite_invariants() -> None:
    for table in ("journal_entries", "postings"):
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {action} refused'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("journal_entries", "postings"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_balanced ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute("DROP FUNCTION IF EXISTS ledger_entry_balanced()")
        op.execute("DROP FUNCTION IF EXISTS ledger_append_only()")
    for table in ("postings", "journal_entries", "organisations", "members", "accounts"):
        op.drop_table(table)
