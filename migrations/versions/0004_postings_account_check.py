"""Cheaper ledger checks on PostgreSQL, with the same guarantees.

- Postings check their account without a foreign key. A foreign key makes every posting take
  a KEY SHARE lock on its account's row; on a hot club (or the `stripe` account) every
  concurrent payment takes it on the same row and PostgreSQL builds a MultiXact each time.
  Accounts are never deleted (a trigger now refuses it), so checking that the account exists
  is enough.
- The balance check runs once per INSERT statement on postings (a statement trigger with a
  transition table) instead of once per posting at commit. Entries without any posting are
  still refused at commit by the deferred trigger on journal_entries.

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
        return  # SQLite takes no row locks; its foreign keys stay
    op.drop_constraint("fk_postings_account_id_accounts", "postings", type_="foreignkey")
    # One check per INSERT statement instead of one deferred check per posting: the postings of
    # an entry are inserted together (ledger_post does), so each statement must leave every
    # entry it touches balanced, with at least two postings, on known accounts.
    op.execute("DROP TRIGGER postings_balanced ON postings")
    op.execute(
        """
        CREATE FUNCTION ledger_postings_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            bad record;
        BEGIN
            SELECT n.account_id INTO bad FROM new_postings n
             WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = n.account_id) LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'posting to unknown account %', bad.account_id
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            SELECT p.entry_id, sum(p.amount) AS total, count(*) AS lines INTO bad
              FROM postings p WHERE p.entry_id IN (SELECT DISTINCT entry_id FROM new_postings)
             GROUP BY p.entry_id HAVING sum(p.amount) <> 0 OR count(*) < 2 LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'journal entry % is unbalanced: % postings summing to %',
                    bad.entry_id, bad.lines, bad.total USING ERRCODE = 'check_violation';
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER postings_balanced AFTER INSERT ON postings REFERENCING NEW TABLE AS new_postings "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_balanced()"
    )
    op.execute(
        "CREATE TRIGGER accounts_never_deleted BEFORE DELETE ON accounts "
        "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS accounts_never_deleted ON accounts")
    op.execute("DROP TRIGGER IF EXISTS postings_balanced ON postings")
    op.execute("DROP FUNCTION IF EXISTS ledger_postings_balanced()")
    op.execute(
        "CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON postings "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_balanced()"
    )
    op.create_foreign_key("fk_postings_account_id_accounts", "postings", "accounts", ["account_id"], ["id"])
