"""Many plain payments in one statement and one transaction (issue 16 item 1).

`pay_requests(items json)` runs `pay_request` (0006, 0011) for each item of a JSON array, in
ascending member id (the payers' locks are then taken in one order by every batch, so two
batches cannot wait on each other in a cycle), each in its own subtransaction: a payment that
is not the plain case (`CB001`), or that meets a deadlock, is rolled back alone and answered
`paid = false`, having written nothing, and the others go on. Each answer names its item by
`n`, its place in the array from 1 (one request id may come twice: a message delivered twice). One commit for the whole batch,
where `pay_request` alone commits once per payment.

Each item holds `pay_request`'s arguments by name (`request_id`, `request_hash`, `payload` and
`callback` as JSON text, `member_id`, `amount`, `route_code`, `organisation_id`,
`other_member_id`, `type`, `description`, `event_id`, `session_id`, `now`, `low_limit`,
`client`); an absent one is NULL. It runs as the caller (like `pay_request`), and
`payments_grant_runtime` now grants it to the runtime role too.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

PAY_REQUEST = (
    "pay_request(text, text, json, text, bigint, text, text, text, text, text, text, text, timestamptz, bigint, "
    "json, text)"
)
GRANT_FUNCTION = "payments_grant_runtime(name)"
GRANTED_BEFORE = f"{PAY_REQUEST}, ledger_entry_hash("
GRANTED_AFTER = f"{PAY_REQUEST}, pay_requests(json), ledger_entry_hash("


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no pay_request: payments there are decided one by one
    op.execute(
        """
        CREATE FUNCTION pay_requests(p_items json, OUT n bigint, OUT paid boolean, OUT outbox_id bigint)
        RETURNS SETOF record LANGUAGE plpgsql AS $$
        DECLARE
            item record;
            done record;
        BEGIN
            FOR item IN SELECT i.value AS args, i.n FROM json_array_elements(p_items) WITH ORDINALITY AS i(value, n)
                         ORDER BY i.value->>'member_id', i.n
            LOOP
                n := item.n;
                BEGIN
                    SELECT * INTO done FROM pay_request(
                        item.args->>'request_id', item.args->>'request_hash', (item.args->>'payload')::json,
                        item.args->>'member_id', (item.args->>'amount')::bigint, item.args->>'route_code',
                        item.args->>'organisation_id', item.args->>'other_member_id', item.args->>'type',
                        item.args->>'description', item.args->>'event_id', item.args->>'session_id',
                        (item.args->>'now')::timestamptz, (item.args->>'low_limit')::bigint,
                        (item.args->>'callback')::json, item.args->>'client');
                    paid := true;
                    outbox_id := done.outbox_id;
                EXCEPTION WHEN SQLSTATE 'CB001' OR deadlock_detected THEN
                    paid := false;
                    outbox_id := NULL;
                END;
                RETURN NEXT;
            END LOOP;
        END $$
        """
    )
    op.execute("REVOKE EXECUTE ON FUNCTION pay_requests(json) FROM PUBLIC")
    _rewrite(GRANT_FUNCTION, GRANTED_BEFORE, GRANTED_AFTER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _rewrite(GRANT_FUNCTION, GRANTED_AFTER, GRANTED_BEFORE)
    op.execute("DROP FUNCTION pay_requests(json)")


def _rewrite(function: str, before: str, after: str) -> None:
    text = op.get_bind().execute(sa.text(f"SELECT pg_get_functiondef('{function}'::regprocedure)")).scalar_one()
    if text.count(before) != 1:
        raise RuntimeError(f"{function} does not hold the expected text once: was it changed by hand?")
    op.execute(text.replace(before, after))
