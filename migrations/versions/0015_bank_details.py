"""Bank details of organisations and the indexes of the settlement and card-payment lists
(issue 14 items 4 and 5).

- organisations.bank_bsb (6 digits) and bank_account (5 to 9 digits), nullable (not given
  yet), each with a CHECK of that rule, written with ltrim(x, digits) so that PostgreSQL and
  SQLite both read it. Only `admin` sets them (shared/access.ADMIN_ORGANISATION_FIELDS).
- journal_entries: a partial index on created_at of Settlement entries (the settlement history
  by time; each organisation's latest settled date, read for 2,000 organisations at once).
- card_payments: (member_id, created_at) for one member's card payments, and created_at for a
  period's.

Grants: the runtime role's UPDATE on organisations is granted column by column by 0010's
`payments_grant_runtime`, which lists the table's columns when it runs; `payments db upgrade`
runs it again after migrating, so the new columns are covered and nothing is granted here.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

BSB_RULE = "bank_bsb IS NULL OR (length(bank_bsb) = 6 AND ltrim(bank_bsb, '0123456789') = '')"
ACCOUNT_RULE = "bank_account IS NULL OR (length(bank_account) BETWEEN 5 AND 9 AND ltrim(bank_account, '0123456789') = '')"
SETTLEMENTS = "type = 'Settlement'"


def upgrade() -> None:
    with op.batch_alter_table("organisations") as table:  # SQLite adds a CHECK by copying the table
        table.add_column(sa.Column("bank_bsb", sa.String(6), nullable=True))
        table.add_column(sa.Column("bank_account", sa.String(9), nullable=True))
        table.create_check_constraint("ck_organisations_bank_bsb", BSB_RULE)
        table.create_check_constraint("ck_organisations_bank_account", ACCOUNT_RULE)
    op.create_index("ix_journal_entries_settlement_created_at", "journal_entries", ["created_at"],
                    postgresql_where=sa.text(SETTLEMENTS), sqlite_where=sa.text(SETTLEMENTS))
    op.create_index("ix_card_payments_member_id_created_at", "card_payments", ["member_id", "created_at"])
    op.create_index("ix_card_payments_created_at", "card_payments", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_card_payments_created_at", "card_payments")
    op.drop_index("ix_card_payments_member_id_created_at", "card_payments")
    op.drop_index("ix_journal_entries_settlement_created_at", "journal_entries")
    with op.batch_alter_table("organisations") as table:
        table.drop_constraint("ck_organisations_bank_account", type_="check")
        table.drop_constraint("ck_organisations_bank_bsb", type_="check")
        table.drop_column("bank_account")
        table.drop_column("bank_bsb")
