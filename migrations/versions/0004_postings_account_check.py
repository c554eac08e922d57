"""Cheaper ledger checks on PostgreSQL, with the same guarantees.

- Postings check their account without a foreign key. A foreign key makes every posting take
  a KEY SHARE lock on its account's row; on a hot club (or the `stripe` account) every
  concurrent payment takes it on the same row, and PostgreSQL builds a MultiXact each time.
  Accounts are never deleted (a trigger now refuses it), so checking that the account exists
  when the entry commits is enough.
- One deferred check per entry instead of one per posting (they cost a quarter of the
  database's time per payment): at commit, each new entry must have two or more postings,
  summing to zero, on known accounts. Postings can only be written by `ledger_post` for the
  entry it is creating (it marks the entry in a transaction-local setting that a cheap row
  trigger compares), so no posting can be slipped into an entry afterwards.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite takes no row locks and has no deferred triggers; its checks stay
    op.drop_constraint("fk_postings_account_id_accounts", "postings", type_="foreignkey")
    op.execute("DROP TRIGGER postings_balanced ON postings")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION ledger_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            total numeric;
            lines integer;
            unknown integer;
        BEGIN
            SELECT coalesce(sum(p.amount), 0), count(*), count(*) FILTER (WHERE a.id IS NULL)
              INTO total, lines, unknown
              FROM postings p LEFT JOIN accounts a ON a.id = p.account_id
             WHERE p.entry_id = NEW.id;
            IF unknown > 0 THEN
                RAISE EXCEPTION 'journal entry % posts to an unknown account', NEW.id
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            IF total <> 0 OR lines < 2 THEN
                RAISE EXCEPTION 'journal entry % is unbalanced: % postings summing to %',
                    NEW.id, lines, total USING ERRCODE = 'check_violation';
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION ledger_postings_by_ledger_post() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.entry_id IS DISTINCT FROM nullif(current_setting('ledger.entry', true), '')::bigint THEN
                RAISE EXCEPTION 'postings of entry % may only be written by ledger_post', NEW.entry_id
                    USING ERRCODE = 'restrict_violation';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER postings_by_ledger_post BEFORE INSERT ON postings "
        "FOR EACH ROW EXECUTE FUNCTION ledger_postings_by_ledger_post()"
    )
    op.execute(
        "CREATE TRIGGER accounts_never_deleted BEFORE DELETE ON accounts "
        "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS accounts_never_deleted ON accounts")
    op.execute("DROP TRIGGER IF EXISTS postings_by_ledger_post ON postings")
    op.execute("DROP FUNCTION IF EXISTS ledger_postings_by_ledger_post()")
    op.execute(
        "CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON postings "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_balanced()"
    )
    op.create_foreign_key("fk_postings_account_id_accounts", "postings", "accounts", ["account_id"], ["id"])
