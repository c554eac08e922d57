"""The client on every journal entry (CONTRACT "Clients and scopes"; issue 12 item 2): each
entry records the client whose request booked it, as each payment request already does (0009).

- `journal_entries.client` (nullable): the client's name; NULL for entries booked before this
  revision and for the service's own bookings with no request behind them (card money of the
  auto top-up sweep or a reconciled charge with no request).
- `ledger_post` takes it as a last argument, `p_client` (no default: a caller cannot forget
  it silently), and checks it like its other arguments. Still SECURITY DEFINER with 0010's
  fixed search_path. PostgreSQL cannot add an argument in place, so the function is dropped and
  created again; `pay_request`, which calls it, is too, and takes `p_client` for a request it
  inserts (a recorded request keeps the client it was recorded with, and another client's
  request is not the plain case, as in `requests.claim`).
- A new function has EXECUTE for PUBLIC until revoked; it is revoked, and every role that could
  execute the old function may execute the new one, so a running runtime role keeps working
  before `payments_grant_runtime` runs again. That function (0010) names the functions by
  signature; its stored text is rewritten to the new signatures (and back on downgrade).

The entry hash (`ledger_entry_hash`) is unchanged: the client says who asked, not what was
booked.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

LEDGER_POST = "ledger_post(text, text, text, text, text, timestamptz, text, text, text, boolean, bigint[], bigint[])"
LEDGER_POST_CLIENT = LEDGER_POST.removesuffix(")") + ", text)"
PAY_REQUEST = (
    "pay_request(text, text, json, text, bigint, text, text, text, text, text, text, text, timestamptz, bigint, json)"
)
PAY_REQUEST_CLIENT = PAY_REQUEST.removesuffix(")") + ", text)"
GRANT_FUNCTION = "payments_grant_runtime(name)"


def upgrade() -> None:
    op.add_column("journal_entries", sa.Column("client", sa.String(64), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return
    _replace_functions(old=(LEDGER_POST, PAY_REQUEST), new=(LEDGER_POST_CLIENT, PAY_REQUEST_CLIENT), client=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _replace_functions(old=(LEDGER_POST_CLIENT, PAY_REQUEST_CLIENT), new=(LEDGER_POST, PAY_REQUEST), client=False)
    op.drop_column("journal_entries", "client")


def _replace_functions(old: tuple[str, str], new: tuple[str, str], *, client: bool) -> None:
    bind = op.get_bind()
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    path = f"SET search_path = pg_catalog, {schema}, pg_temp"
    # Roles that may execute the old functions now (the runtime role, say), but not PUBLIC.
    grantees = bind.execute(
        sa.text(
            "SELECT DISTINCT quote_ident(r.rolname) FROM pg_proc p, aclexplode(p.proacl) a"
            " JOIN pg_roles r ON r.oid = a.grantee"
            " WHERE p.oid = ANY (CAST(:functions AS regprocedure[])) AND a.privilege_type = 'EXECUTE'"
            " AND a.grantee <> p.proowner"
        ),
        {"functions": list(old)},
    ).scalars().all()
    for function in reversed(old):  # pay_request calls ledger_post
        op.execute(f"DROP FUNCTION {function}")
    op.execute(_ledger_post(path, client))
    op.execute(_pay_request(client))
    for function in new:
        op.execute(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC")
        for role in grantees:
            op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {role}")
    _rewrite_grant_function(dict(zip(old, new, strict=True)))


def _rewrite_grant_function(renames: dict[str, str]) -> None:
    """Point 0010's `payments_grant_runtime` at the functions' new signatures. Its stored text
    is rewritten rather than copied here, so that this revision changes only the signatures."""
    bind = op.get_bind()
    text = bind.execute(sa.text(f"SELECT pg_get_functiondef('{GRANT_FUNCTION}'::regprocedure)")).scalar_one()
    for before, after in renames.items():
        if text.count(before) != 1:
            raise RuntimeError(f"{GRANT_FUNCTION} does not name {before} once: was it changed by hand?")
        text = text.replace(before, after)
    op.execute(text)


def _ledger_post(path: str, client: bool) -> str:
    """0010's `ledger_post`, with `p_client` (checked, and written to the entry) when `client`."""
    check = """            IF p_client IS NOT NULL AND length(p_client) NOT BETWEEN 1 AND 64 THEN
                RAISE EXCEPTION 'journal entry %: the client must be 1 to 64 characters', p_key
                    USING ERRCODE = 'check_violation';
            END IF;
"""
    return f"""
        CREATE FUNCTION ledger_post(
            p_key text, p_hash text, p_type text, p_description text, p_reference text,
            p_created_at timestamptz, p_event_id text, p_session_id text, p_admin_id text,
            p_allow_negative boolean, p_accounts bigint[], p_amounts bigint[]{', p_client text' if client else ''},
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
{check if client else ''}            IF p_allow_negative AND NOT (p_type = 'Manual Adjustment' AND nullif(btrim(p_admin_id), '') IS NOT NULL) THEN
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
                    reference, created_at, event_id, session_id, admin_id{', client' if client else ''})
            VALUES (p_key, p_hash, p_type, p_description, p_reference, p_created_at,
                    p_event_id, p_session_id, p_admin_id{', p_client' if client else ''})
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


def _pay_request(client: bool) -> str:
    """0006's `pay_request`, with `p_client` when `client`: passed to `ledger_post`, and recorded
    on a request it inserts."""
    check = """            -- requests.claim: another client's request is a conflict, left to `pay` to report.
            IF recorded AND claimed.client IS NOT NULL AND p_client IS NOT NULL AND claimed.client <> p_client THEN
                RAISE EXCEPTION 'request %: made by another client', p_request_id USING ERRCODE = 'CB001';
            END IF;
            maker := CASE WHEN recorded THEN claimed.client ELSE p_client END;
"""
    return f"""
        CREATE FUNCTION pay_request(
            p_request_id text, p_request_hash text, p_payload json, p_member_id text, p_amount bigint,
            p_route_code text, p_organisation_id text, p_other_member_id text,
            p_type text, p_description text, p_event_id text, p_session_id text,
            p_now timestamptz, p_low_limit bigint, p_callback json{', p_client text' if client else ''},
            OUT entry_id bigint, OUT balance bigint, OUT outbox_id bigint
        ) LANGUAGE plpgsql AS $$
        DECLARE
            claimed record;
            recorded boolean;
{'            maker text;' + chr(10) if client else ''}            payer bigint;
            payee bigint;
            posted record;
            accounts bigint[];
            amounts bigint[];
        BEGIN
            -- requests.claim: a row recorded by the HTTP edge must be queued with this payload,
            -- and stays locked to the end; a new request is inserted, paid, at the end.
            SELECT r.status, r.payload_hash{', r.client' if client else ''} INTO claimed
              FROM payment_requests r WHERE r.request_id = p_request_id FOR UPDATE;
            recorded := FOUND;
            IF recorded AND (claimed.status <> 'queued' OR claimed.payload_hash <> p_request_hash) THEN
                RAISE EXCEPTION 'request %: already decided, or another payload', p_request_id
                    USING ERRCODE = 'CB001';
            END IF;
{check if client else ''}
            -- profiles.payment_parties: an organisation, another member, or else `fees`.
            SELECT m.account_id INTO payer FROM members m WHERE m.member_id = p_member_id;
            IF p_organisation_id IS NOT NULL THEN
                SELECT o.account_id INTO payee FROM organisations o WHERE o.org_id = p_organisation_id;
            ELSIF p_other_member_id IS NOT NULL THEN
                SELECT m.account_id INTO payee FROM members m WHERE m.member_id = p_other_member_id;
            ELSE
                SELECT a.id INTO payee FROM accounts a WHERE a.kind = 'system' AND a.owner = 'fees';
            END IF;
            IF payer IS NULL OR payee IS NULL THEN
                RAISE EXCEPTION 'request %: payer or payee not known', p_request_id USING ERRCODE = 'CB001';
            END IF;

            -- ledger.post, with the hash the Python path computes.
            accounts := ARRAY[payer, payee];
            amounts := ARRAY[-p_amount, p_amount];
            SELECT * INTO posted FROM ledger_post(
                'payment:' || p_request_id,
                ledger_entry_hash(p_type, p_description, p_request_id, p_event_id, p_session_id, NULL, false,
                                  accounts, amounts),
                p_type, p_description, p_request_id, p_now, p_event_id, p_session_id, NULL, false,
                accounts, amounts{', maker' if client else ''});
            IF posted.outcome <> 'booked' THEN
                RAISE EXCEPTION 'request %: ledger_post says %', p_request_id, posted.outcome USING ERRCODE = 'CB001';
            END IF;
            balance := posted.balances_after[array_position(posted.checked_accounts, payer)];
            IF balance < p_low_limit THEN
                RAISE EXCEPTION 'request %: below the low limit after paying', p_request_id USING ERRCODE = 'CB001';
            END IF;
            entry_id := posted.entry_id;

            -- requests.finish(PAID), and the request's one callback if it has a route code. The
            -- result is JSON null, as `finish` leaves it.
            IF recorded THEN
                UPDATE payment_requests SET status = 'paid', reason = NULL, result = 'null', attempts = attempts + 1,
                       updated_at = p_now
                 WHERE request_id = p_request_id;
            ELSE
                INSERT INTO payment_requests (request_id, kind, payload_hash, payload, status, member_id,
                        amount, route_code, result, attempts, created_at, updated_at{', client' if client else ''})
                VALUES (p_request_id, 'payment', p_request_hash, p_payload, 'paid', p_member_id,
                        p_amount, p_route_code, 'null', 1, p_now, p_now{', p_client' if client else ''})
                ON CONFLICT (request_id) DO NOTHING;
                IF NOT FOUND THEN  -- recorded meanwhile: undo the booking, let `pay` decide
                    RAISE EXCEPTION 'request %: recorded while being paid', p_request_id USING ERRCODE = 'CB001';
                END IF;
            END IF;
            IF p_callback IS NOT NULL THEN
                INSERT INTO outbox AS o (dedup_key, kind, request_id, payload, status, attempts, created_at,
                        next_attempt_at)
                VALUES ('callback:' || p_request_id, 'callback', p_request_id, p_callback, 'pending', 0, p_now, p_now)
                ON CONFLICT (dedup_key) DO NOTHING
                RETURNING o.id INTO outbox_id;
            END IF;
        END $$
        """
