"""`pay_request`: a plain payment request decided in one statement (PostgreSQL only).

A payment through the worker took six round trips (BEGIN, claim the request, find payer and
payee, `ledger_post`, mark it paid, COMMIT), and they, not the booking, were most of its cost.
`pay_request` runs the same steps inside the database as one statement, which the worker sends
in autocommit, so the statement is the transaction. It handles only the plain case:

    a queued (or new) request with the same payload; payer and payee known; funds enough; the
    payer still at or above the low-balance limit after paying.

Anything else raises SQLSTATE `CB001` ("not the plain case") before any of it is committed
(the statement is rolled back whole), and the worker decides the request the general way in
`shared.payments.pay`, which owns every rule. So this function adds no rule of its own: the
caller passes the low limit and the callback to write, and the steps are those of
`requests.claim`, `profiles.payment_parties`, `ledger.post` and `requests.finish`.

`ledger_entry_hash` is the entry hash `shared.ledger.Entry.payload_hash` computes, so an entry
booked here has the hash the Python path would give it (a test holds the two together).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION ledger_entry_hash(
            p_type text, p_description text, p_reference text, p_event_id text, p_session_id text,
            p_admin_id text, p_allow_negative boolean, p_accounts bigint[], p_amounts bigint[]
        ) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
        DECLARE
            lines text;
        BEGIN
            SELECT string_agg(l.account || ':' || l.amount, ',' ORDER BY l.account, l.amount) INTO lines
              FROM unnest(p_accounts, p_amounts) AS l(account, amount);
            RETURN encode(sha256(convert_to(concat_ws(E'\\n',
                CASE WHEN p_type IS NULL THEN 'null' ELSE length(p_type) || ':' || p_type END,
                CASE WHEN p_description IS NULL THEN 'null' ELSE length(p_description) || ':' || p_description END,
                CASE WHEN p_reference IS NULL THEN 'null' ELSE length(p_reference) || ':' || p_reference END,
                CASE WHEN p_event_id IS NULL THEN 'null' ELSE length(p_event_id) || ':' || p_event_id END,
                CASE WHEN p_session_id IS NULL THEN 'null' ELSE length(p_session_id) || ':' || p_session_id END,
                CASE WHEN p_admin_id IS NULL THEN 'null' ELSE length(p_admin_id) || ':' || p_admin_id END,
                CASE WHEN p_allow_negative THEN 't' ELSE 'f' END,
                coalesce(lines, '')), 'UTF8')), 'hex');
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION pay_request(
            p_request_id text, p_request_hash text, p_payload json, p_member_id text, p_amount bigint,
            p_route_code text, p_organisation_id text, p_other_member_id text,
            p_type text, p_description text, p_event_id text, p_session_id text,
            p_now timestamptz, p_low_limit bigint, p_callback json,
            OUT entry_id bigint, OUT balance bigint, OUT outbox_id bigint
        ) LANGUAGE plpgsql AS $$
        DECLARE
            claimed record;
            recorded boolean;
            payer bigint;
            payee bigint;
            posted record;
            accounts bigint[];
            amounts bigint[];
        BEGIN
            -- requests.claim: a row recorded by the HTTP edge must be queued with this payload,
            -- and stays locked to the end; a new request is inserted, paid, at the end.
            SELECT r.status, r.payload_hash INTO claimed
              FROM payment_requests r WHERE r.request_id = p_request_id FOR UPDATE;
            recorded := FOUND;
            IF recorded AND (claimed.status <> 'queued' OR claimed.payload_hash <> p_request_hash) THEN
                RAISE EXCEPTION 'request %: already decided, or another payload', p_request_id
                    USING ERRCODE = 'CB001';
            END IF;

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
                accounts, amounts);
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
                        amount, route_code, result, attempts, created_at, updated_at)
                VALUES (p_request_id, 'payment', p_request_hash, p_payload, 'paid', p_member_id,
                        p_amount, p_route_code, 'null', 1, p_now, p_now)
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
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DROP FUNCTION IF EXISTS pay_request(text, text, json, text, bigint, text, text, text, text, text, text,"
        " text, timestamptz, bigint, json)"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS ledger_entry_hash(text, text, text, text, text, text, boolean, bigint[], bigint[])"
    )
