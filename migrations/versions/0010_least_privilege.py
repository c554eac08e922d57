"""Least privilege in the database (DESIGN invariant 10, issue 12 item 6): the ledger's
guarantees hold even against the service's own runtime role.

The schema's owner runs the migrations; the service runs as a runtime role that
`payments_grant_runtime(role)` (below; `payments db upgrade` calls it when
PAYMENTS_DATABASE_RUNTIME_ROLE is set) grants exactly this:

- journal_entries and postings: SELECT only. Every booking goes through `ledger_post`, which is
  now SECURITY DEFINER (it runs as the owner) and checks its own arguments, so a caller that
  skips `shared.ledger` cannot book an unbalanced entry, a zero or duplicate posting, or a
  negative balance outside an admin adjustment. No UPDATE, DELETE or TRUNCATE, ever.
- accounts: SELECT, INSERT, and UPDATE of `created_at` only because PostgreSQL asks for an UPDATE
  privilege before it takes a row lock (`FOR NO KEY UPDATE` in `ledger.lock_accounts`); a new
  trigger refuses every UPDATE of an account, as 0004's refuses DELETE.
- every other table (the working tables: requests, outbox, events, card payments, profiles and
  whatever later migrations add): SELECT, INSERT, and UPDATE of every column but the primary key
  and `account_id` (a member's or organisation's account never changes: swapping it would move
  a balance). No DELETE (nothing deletes), no TRUNCATE.
- USAGE on the sequences of those tables; EXECUTE on `ledger_post`, `pay_request` and
  `ledger_entry_hash` (taken from PUBLIC, which PostgreSQL gives every new function).

`pay_request` stays SECURITY INVOKER: it writes only tables the runtime role may write itself
(payment_requests, outbox) and books through `ledger_post`, which holds the ledger's rules; as
the invoker it can do nothing its caller could not do statement by statement, so it needs no
argument checks of its own and is no way around a privilege.

Two more guarantees, for the owner as much as the runtime role:
- a posting is accepted only for a journal entry created in the same transaction (the entry's
  xmin is this transaction or one of its subtransactions), so no posting can be slipped into
  a booked entry, whatever `ledger.entry` mark a session forges;
- TRUNCATE of journal_entries, postings and accounts is refused (a statement trigger). Only a
  superuser can get past it (session_replication_role = replica, as the tests' cleanup does).

Functions that SECURITY DEFINER or the deferred check run carry a fixed search_path with
pg_temp last: otherwise a temporary table called `postings` made by the caller would be
searched first (PostgreSQL puts pg_temp first unless it is named).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

LEDGER_POST = (
    "ledger_post(text, text, text, text, text, timestamptz, text, text, text, boolean, bigint[], bigint[])"
)
PAY_REQUEST = (
    "pay_request(text, text, json, text, bigint, text, text, text, text, text, text, text, timestamptz, bigint, json)"
)
ENTRY_HASH = "ledger_entry_hash(text, text, text, text, text, text, boolean, bigint[], bigint[])"
LEDGER_TABLES = ("journal_entries", "postings", "accounts")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return  # SQLite has no roles: the embedded default runs as one user
    name, schema = bind.execute(sa.text("SELECT current_schema(), quote_ident(current_schema())")).one()
    path = f"SET search_path = pg_catalog, {schema}, pg_temp"
    _ledger_post(path)
    _postings_same_transaction(path)
    op.execute(f"ALTER FUNCTION ledger_entry_balanced() {path}")
    for table in LEDGER_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()"
        )
    op.execute(
        "CREATE TRIGGER accounts_never_updated BEFORE UPDATE ON accounts "
        "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
    )
    _grant_function(path, name, schema)
    # PostgreSQL lets PUBLIC execute every new function; a SECURITY DEFINER one must not be.
    for function in (LEDGER_POST, PAY_REQUEST, ENTRY_HASH, "payments_grant_runtime(name)"):
        op.execute(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC")


def _ledger_post(path: str) -> None:
    """0003's `ledger_post`, run as its owner, with its arguments checked first. Each refusal
    is a check_violation (SQLSTATE 23514) naming what is wrong; the messages of 0001's deferred
    check are kept, so a caller sees the same words before the commit as it saw at it."""
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION ledger_post(
            p_key text, p_hash text, p_type text, p_description text, p_reference text,
            p_created_at timestamptz, p_event_id text, p_session_id text, p_admin_id text,
            p_allow_negative boolean, p_accounts bigint[], p_amounts bigint[],
            OUT outcome text, OUT entry_id bigint, OUT created_at timestamptz,
            OUT short_account bigint, OUT short_balance bigint,
            OUT checked_accounts bigint[], OUT balances_after bigint[]
        ) LANGUAGE plpgsql SECURITY DEFINER {path} AS $$
        DECLARE
            existing record;
            debit record;
            held integer;
            lines integer := coalesce(cardinality(p_accounts), 0);
            total numeric;
            zero bigint;
        BEGIN
            IF p_key IS NULL OR length(p_key) NOT BETWEEN 1 AND 200 THEN
                RAISE EXCEPTION 'ledger_post: the idempotency key must be 1 to 200 characters'
                    USING ERRCODE = 'check_violation';
            END IF;
            IF p_description IS NULL OR btrim(p_description) = '' OR length(p_description) > 200 THEN
                RAISE EXCEPTION 'journal entry %: the description must be 1 to 200 characters', p_key
                    USING ERRCODE = 'check_violation';
            END IF;
            IF p_hash IS NULL OR p_type IS NULL OR p_reference IS NULL OR p_created_at IS NULL
               OR p_allow_negative IS NULL THEN
                -- A NULL allow_negative would skip the funds check below (NOT NULL is NULL).
                RAISE EXCEPTION 'journal entry %: hash, type, reference, time and allow_negative are required', p_key
                    USING ERRCODE = 'check_violation';
            END IF;
            IF p_allow_negative AND NOT (p_type = 'Manual Adjustment' AND nullif(btrim(p_admin_id), '') IS NOT NULL) THEN
                RAISE EXCEPTION 'journal entry %: only a Manual Adjustment with an admin_id may allow a negative balance', p_key
                    USING ERRCODE = 'check_violation';
            END IF;
            -- unnest() of two arrays pads the shorter with NULLs: the lengths must agree.
            IF lines <> coalesce(cardinality(p_amounts), 0) OR array_position(p_accounts, NULL) IS NOT NULL
               OR array_position(p_amounts, NULL) IS NOT NULL THEN
                RAISE EXCEPTION 'journal entry %: one account and one amount per posting, none NULL', p_key
                    USING ERRCODE = 'check_violation';
            END IF;
            SELECT coalesce(sum(a), 0) INTO total FROM unnest(p_amounts) AS a;
            IF total <> 0 OR lines < 2 THEN
                RAISE EXCEPTION 'journal entry % is unbalanced: % postings summing to %', p_key, lines, total
                    USING ERRCODE = 'check_violation';
            END IF;
            SELECT d.account INTO zero FROM unnest(p_accounts, p_amounts) AS d(account, amount) WHERE d.amount = 0 LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'journal entry %: a posting of 0 to account % (amount_not_zero)', p_key, zero
                    USING ERRCODE = 'check_violation';
            END IF;
            IF (SELECT count(DISTINCT a) FROM unnest(p_accounts) AS a) <> lines THEN
                RAISE EXCEPTION 'journal entry %: an account appears twice', p_key
                    USING ERRCODE = 'check_violation';
            END IF;
            IF (SELECT count(*) FROM accounts a WHERE a.id = ANY (p_accounts)) <> lines THEN
                RAISE EXCEPTION 'journal entry % posts to an unknown account', p_key
                    USING ERRCODE = 'foreign_key_violation';
            END IF;

            SELECT e.id, e.created_at, e.payload_hash INTO existing
              FROM journal_entries e WHERE e.idempotency_key = p_key;
            IF FOUND THEN
                outcome := CASE WHEN existing.payload_hash = p_hash THEN 'replayed' ELSE 'conflict' END;
                entry_id := existing.id;
                created_at := existing.created_at;
                RETURN;
            END IF;

            PERFORM 1 FROM accounts a
             WHERE a.id = ANY (SELECT d.account FROM unnest(p_accounts, p_amounts) AS d(account, amount)
                                WHERE d.amount < 0)
               AND a.kind <> 'system'
             ORDER BY a.id
               FOR NO KEY UPDATE;
            GET DIAGNOSTICS held = ROW_COUNT;

            IF held > 0 THEN
                SELECT e.id, e.created_at, e.payload_hash INTO existing
                  FROM journal_entries e WHERE e.idempotency_key = p_key;
                IF FOUND THEN
                    outcome := CASE WHEN existing.payload_hash = p_hash THEN 'replayed' ELSE 'conflict' END;
                    entry_id := existing.id;
                    created_at := existing.created_at;
                    RETURN;
                END IF;
                IF NOT p_allow_negative THEN
                    FOR debit IN
                        SELECT d.account, d.amount FROM unnest(p_accounts, p_amounts) AS d(account, amount)
                          JOIN accounts a ON a.id = d.account AND a.kind <> 'system'
                         WHERE d.amount < 0 ORDER BY d.account
                    LOOP
                        SELECT coalesce(sum(p.amount), 0) INTO short_balance
                          FROM postings p WHERE p.account_id = debit.account;
                        IF short_balance + debit.amount < 0 THEN
                            outcome := 'insufficient';
                            short_account := debit.account;
                            checked_accounts := NULL;
                            balances_after := NULL;
                            RETURN;
                        END IF;
                        checked_accounts := checked_accounts || debit.account;
                        balances_after := balances_after || (short_balance + debit.amount);
                    END LOOP;
                    short_balance := NULL;
                END IF;
            END IF;

            INSERT INTO journal_entries AS e (idempotency_key, payload_hash, type, description,
                    reference, created_at, event_id, session_id, admin_id)
            VALUES (p_key, p_hash, p_type, p_description, p_reference, p_created_at,
                    p_event_id, p_session_id, p_admin_id)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING e.id INTO entry_id;
            IF entry_id IS NULL THEN
                SELECT e.id, e.created_at, e.payload_hash INTO existing
                  FROM journal_entries e WHERE e.idempotency_key = p_key;
                outcome := CASE WHEN existing.payload_hash = p_hash THEN 'replayed' ELSE 'conflict' END;
                entry_id := existing.id;
                created_at := existing.created_at;
                RETURN;
            END IF;

            -- The mark lets postings through for this entry only (migration 0004).
            PERFORM set_config('ledger.entry', entry_id::text, true);
            INSERT INTO postings (entry_id, account_id, amount)
            SELECT entry_id, d.account, d.amount FROM unnest(p_accounts, p_amounts) AS d(account, amount);
            outcome := 'booked';
            created_at := p_created_at;
        END $$
        """
    )


def _postings_same_transaction(path: str) -> None:
    """0004's posting trigger, which trusted a transaction-local setting that any session can
    set, now also asks whether the entry was created in this transaction.

    A row's xmin is the id of the (sub)transaction that inserted it. It is ours when it equals
    our top-level id, or, inside a SAVEPOINT, when pg_xact_status calls it 'in progress': a
    concurrent transaction's rows are invisible to us, so a row we can see whose creator is
    still in progress was made by us. A subtransaction's id comes after its top level's, in the
    same or the next epoch, which turns the 32-bit xmin into the 64-bit id pg_xact_status takes.
    """
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION ledger_postings_by_ledger_post() RETURNS trigger LANGUAGE plpgsql {path} AS $$
        DECLARE
            made xid;
            here bigint;
            full_id bigint;
        BEGIN
            IF NEW.entry_id IS DISTINCT FROM nullif(current_setting('ledger.entry', true), '')::bigint THEN
                RAISE EXCEPTION 'postings of entry % may only be written by ledger_post', NEW.entry_id
                    USING ERRCODE = 'restrict_violation';
            END IF;
            SELECT e.xmin INTO made FROM journal_entries e WHERE e.id = NEW.entry_id;
            IF FOUND THEN
                here := pg_current_xact_id()::text::bigint;
                IF made::text::bigint = here % 4294967296 THEN
                    RETURN NEW;
                END IF;
                full_id := here - here % 4294967296 + made::text::bigint;
                IF full_id < here THEN
                    full_id := full_id + 4294967296;
                END IF;
                IF full_id - here < 2147483648 AND pg_xact_status(full_id::text::xid8) = 'in progress' THEN
                    RETURN NEW;
                END IF;
            END IF;
            RAISE EXCEPTION 'posting refused: journal entry % was not created in this transaction', NEW.entry_id
                USING ERRCODE = 'restrict_violation';
        END $$
        """
    )


def _grant_function(path: str, name: str, schema: str) -> None:
    """`payments_grant_runtime(role)`: the runtime role's privileges, exactly (see the module
    docstring). It revokes everything first, so running it again, or after a migration that
    added a table, leaves exactly these grants. Later migrations that add a table with a rule
    of its own (say, append-only) replace this function."""
    op.execute(
        f"""
        CREATE FUNCTION payments_grant_runtime(p_role name) RETURNS void LANGUAGE plpgsql {path} AS $$
        DECLARE
            owner_role name;
            info record;
            columns text;
        BEGIN
            SELECT c.relowner::regrole::name INTO owner_role FROM pg_class c
             WHERE c.oid = '{schema}.journal_entries'::regclass;
            IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = p_role) THEN
                RAISE EXCEPTION 'runtime role % does not exist: create it first (CREATE ROLE % LOGIN PASSWORD ...)',
                    p_role, p_role USING ERRCODE = 'undefined_object';
            END IF;
            -- Grants to a superuser, to the owner or to a member of the owner's role mean nothing.
            IF EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = p_role AND (r.rolsuper OR r.rolbypassrls))
               OR pg_has_role(p_role, owner_role, 'USAGE') THEN
                RAISE EXCEPTION 'runtime role % is a superuser or acts as the schema owner %: use a role of its own',
                    p_role, owner_role USING ERRCODE = 'invalid_grant_operation';
            END IF;

            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', '{name}', p_role);
            EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I', '{name}', p_role);
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM %I', '{name}', p_role);
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', '{name}', p_role);

            FOR info IN
                SELECT c.oid, c.relname FROM pg_class c
                 WHERE c.relnamespace = '{schema}'::regnamespace AND c.relkind IN ('r', 'p')
                 ORDER BY c.relname
            LOOP
                IF info.relname = 'alembic_version' THEN
                    CONTINUE;
                ELSIF info.relname IN ('journal_entries', 'postings', 'clients', 'client_tokens') THEN
                    -- Clients are read to authenticate a caller; only the owner (`payments
                    -- clients`, with the owner's URL) adds, rotates or revokes them.
                    EXECUTE format('GRANT SELECT ON %s TO %I', info.oid::regclass, p_role);
                ELSIF info.relname = 'accounts' THEN
                    -- UPDATE of one column only so that rows can be locked; a trigger refuses updates.
                    EXECUTE format('GRANT SELECT, INSERT, UPDATE (created_at) ON %s TO %I', info.oid::regclass, p_role);
                ELSE
                    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO columns
                      FROM pg_attribute a
                     WHERE a.attrelid = info.oid AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attname <> 'account_id'
                       AND NOT EXISTS (SELECT 1 FROM pg_index i
                                        WHERE i.indrelid = info.oid AND i.indisprimary AND a.attnum = ANY (i.indkey));
                    EXECUTE format('GRANT SELECT, INSERT ON %s TO %I', info.oid::regclass, p_role);
                    IF columns IS NOT NULL THEN
                        EXECUTE format('GRANT UPDATE (%s) ON %s TO %I', columns, info.oid::regclass, p_role);
                    END IF;
                END IF;
            END LOOP;

            -- The sequences of the tables it inserts into; the ledger's are ledger_post's alone.
            FOR info IN
                SELECT s.oid FROM pg_class s
                  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                  JOIN pg_class t ON t.oid = d.refobjid
                 WHERE s.relkind = 'S' AND s.relnamespace = '{schema}'::regnamespace
                   AND t.relname NOT IN ('journal_entries', 'postings', 'alembic_version')
            LOOP
                EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', info.oid::regclass, p_role);
            END LOOP;

            EXECUTE format('GRANT EXECUTE ON FUNCTION {LEDGER_POST}, {PAY_REQUEST}, {ENTRY_HASH} TO %I', p_role);
        END $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS payments_grant_runtime(name)")
    op.execute("DROP TRIGGER IF EXISTS accounts_never_updated ON accounts")
    for table in LEDGER_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
    op.execute("ALTER FUNCTION ledger_entry_balanced() RESET search_path")
    for function in (LEDGER_POST, PAY_REQUEST, ENTRY_HASH):
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO PUBLIC")
    # ledger_post keeps its argument checks and the posting trigger its transaction check (0003's
    # and 0004's texts are not imported here: migrations are snapshots); both accept everything
    # shared.ledger sends, so the older code runs on them unchanged.
    op.execute(f"ALTER FUNCTION {LEDGER_POST} SECURITY INVOKER RESET search_path")
