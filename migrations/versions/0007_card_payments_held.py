"""Card payments may be `held`: Stripe reported money whose amount received or currency does
not match the attempt, so it is not booked and waits for an admin (SPEC 5).

The value lists are written out here rather than read from `shared.models`, so this revision
means the same whenever it runs. (0005 builds its list from the enum of the day, so on a new
database the constraint already allows `held`; recreating it is then a no-op.)

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BEFORE = ("pending", "awaiting_card", "succeeded", "failed", "action_required")
AFTER = (*BEFORE, "held")


def _status_in(values: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("card_payments") as batch:
        batch.drop_constraint("status", type_="check")
        batch.create_check_constraint("status", _status_in(AFTER))


def downgrade() -> None:
    # Fails while a held row exists: an admin settles those first.
    with op.batch_alter_table("card_payments") as batch:
        batch.drop_constraint("status", type_="check")
        batch.create_check_constraint("status", _status_in(BEFORE))
