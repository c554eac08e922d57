"""Balances that cost the same at any length of history (issue 16 item 4).

A balance was the sum of every posting of its account, and `ledger_post` summed it again under
the lock on every debit: a member with ten years of history paid for all of them on every
payment. `account_balances` now keeps each account's running sum, in up to 16 rows per account
(`stripe`), maintained by one statement trigger on `postings` in the same transaction as the
postings it adds. So:

- a balance is the sum of at most 16 rows, and DESIGN invariant 2 holds by construction: any
  snapshot sees a posting and its share of the balance together, or neither;
- a credit to a hot club (or a debit of the `stripe` account) updates the row of its own
  stripe, chosen by the database backend (`pg_backend_pid() % 16`), so concurrent payments to
  one club do not queue on one row until each commits (DESIGN invariant 4: a hot account must
  not serialise payments). One connection always writes the same stripe, so an account has as
  many rows as connections that ever booked to it, at most 16;
- the trigger adds a booking's accounts in ascending id, the same order as `ledger_post`'s
  locks, so two bookings cannot wait on each other in a cycle;
- the runtime role may only read the table (`payments_grant_runtime`), like the ledger's
  other tables, and TRUNCATE is refused as for them;
- no foreign key to `accounts`, for the reason postings have none (0004): its check would take
  a KEY SHARE lock on the account's row, and the rows come only from postings, whose accounts
  `ledger_post` checks (and accounts are never deleted).

`ledger_post`'s funds check reads the balance from here; its stored text is rewritten in place
(as 0014 does). Existing postings are summed into stripe 0 while `postings` is locked against
inserts, so the running sums start equal to the ledger.

SQLite (the embedded default, one writer) gets a row trigger and one row per account.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

LEDGER_POST = (
    "ledger_post(text, text, text, text, text, timestamptz, text, text, text, boolean, bigint[], bigint[], text)"
)
GRANT_FUNCTION = "payments_grant_runtime(name)"
SUM_OF_POSTINGS = """SELECT coalesce(sum(p.amount), 0) INTO short_balance
                          FROM postings p WHERE p.account_id = debit.account;"""
SUM_OF_STRIPES = """SELECT coalesce(sum(b.balance), 0) INTO short_balance
                          FROM account_balances b WHERE b.account_id = debit.account;"""
READ_ONLY_BEFORE = "info.relname IN ('journal_entries', 'postings', 'clients', 'client_tokens')"
READ_ONLY_AFTER = "info.relname IN ('journal_entries', 'postings', 'account_balances', 'clients', 'client_tokens')"


def upgrade() -> None:
    op.create_table(
        "account_balances",
        sa.Column("account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("stripe", sa.SmallInteger(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "stripe", name=op.f("pk_account_balances")),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _postgresql()
    else:
        op.execute(
            """
            CREATE TRIGGER postings_add_to_balances AFTER INSERT ON postings FOR EACH ROW BEGIN
                INSERT INTO account_balances (account_id, stripe, balance) VALUES (NEW.account_id, 0, NEW.amount)
                ON CONFLICT (account_id, stripe) DO UPDATE SET balance = balance + excluded.balance;
            END
            """
        )
    op.execute("INSERT INTO account_balances (account_id, stripe, balance) "
               "SELECT account_id, 0, sum(amount) FROM postings GROUP BY account_id")


def _postgresql() -> None:
    bind = op.get_bind()
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute("LOCK TABLE postings IN SHARE MODE")  # no booking between the sums and the trigger
    op.execute(
        f"""
        CREATE FUNCTION ledger_add_to_balances() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, {schema}, pg_temp AS $$
        BEGIN
            INSERT INTO account_balances AS b (account_id, stripe, balance)
            SELECT n.account_id, pg_backend_pid() % 16, sum(n.amount)
              FROM new_postings n GROUP BY n.account_id ORDER BY n.account_id
            ON CONFLICT (account_id, stripe) DO UPDATE SET balance = b.balance + excluded.balance;
            RETURN NULL;
        END $$
        """
    )
    op.execute("REVOKE EXECUTE ON FUNCTION ledger_add_to_balances() FROM PUBLIC")
    op.execute(
        "CREATE TRIGGER postings_add_to_balances AFTER INSERT ON postings REFERENCING NEW TABLE AS new_postings "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_add_to_balances()"
    )
    op.execute(
        "CREATE TRIGGER account_balances_no_truncate BEFORE TRUNCATE ON account_balances "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()"
    )
    _rewrite(LEDGER_POST, SUM_OF_POSTINGS, SUM_OF_STRIPES)
    _rewrite(GRANT_FUNCTION, READ_ONLY_BEFORE, READ_ONLY_AFTER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _rewrite(GRANT_FUNCTION, READ_ONLY_AFTER, READ_ONLY_BEFORE)
        _rewrite(LEDGER_POST, SUM_OF_STRIPES, SUM_OF_POSTINGS)
        op.execute("DROP TRIGGER postings_add_to_balances ON postings")
        op.execute("DROP FUNCTION ledger_add_to_balances()")
    else:
        op.execute("DROP TRIGGER postings_add_to_balances")
    op.drop_table("account_balances")


def _rewrite(function: str, before: str, after: str) -> None:
    text = op.get_bind().execute(sa.text(f"SELECT pg_get_functiondef('{function}'::regprocedure)")).scalar_one()
    if text.count(before) != 1:
        raise RuntimeError(f"{function} does not hold the expected text once: was it changed by hand?")
    op.execute(text.replace(before, after))
