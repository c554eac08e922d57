"""An event's refund may take its organisation below zero (ORIGINAL 2.7: event refunds are
booked with no check of the organisation's balance; issue 13). `ledger_post` allowed a
negative balance only for a Manual Adjustment with an admin id; it now also allows it for a
Refund that names an event and debits no member account, so a member is still never taken
below zero by anything but an admin's adjustment (SPEC 1).

Only that one check of the function changes: its stored text is rewritten in place
(CREATE OR REPLACE keeps its signature, owner and grants), as 0011 rewrites the grant function.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

LEDGER_POST = (
    "ledger_post(text, text, text, text, text, timestamptz, text, text, text, boolean, bigint[], bigint[], text)"
)
ADJUSTMENT_ONLY = """IF p_allow_negative AND NOT (p_type = 'Manual Adjustment' AND nullif(btrim(p_admin_id), '') IS NOT NULL) THEN
                RAISE EXCEPTION 'journal entry %: only a Manual Adjustment with an admin_id may allow a negative balance', p_key"""
ADJUSTMENT_OR_EVENT_REFUND = """IF p_allow_negative AND NOT (p_type = 'Manual Adjustment' AND nullif(btrim(p_admin_id), '') IS NOT NULL)
               AND NOT (p_type = 'Refund' AND nullif(btrim(p_event_id), '') IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM unnest(p_accounts, p_amounts) AS d(account, amount)
                                          JOIN accounts a ON a.id = d.account
                                         WHERE d.amount < 0 AND a.kind = 'member')) THEN
                RAISE EXCEPTION 'journal entry %: only a Manual Adjustment with an admin_id, or a Refund of an event debiting no member, may allow a negative balance', p_key"""


def upgrade() -> None:
    _rewrite(ADJUSTMENT_ONLY, ADJUSTMENT_OR_EVENT_REFUND)


def downgrade() -> None:
    _rewrite(ADJUSTMENT_OR_EVENT_REFUND, ADJUSTMENT_ONLY)


def _rewrite(before: str, after: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    text = bind.execute(sa.text(f"SELECT pg_get_functiondef('{LEDGER_POST}'::regprocedure)")).scalar_one()
    if text.count(before) != 1:
        raise RuntimeError(f"{LEDGER_POST} does not hold the expected check once: was it changed by hand?")
    op.execute(text.replace(before, after))
