"""The ledger's functions look accounts up by index, never by scanning (issue 16 item 3).

Every statement in `ledger_post` (and in the triggers it fires), and in the deferred check
`ledger_entry_balanced`, reads a handful of rows by key: the entry's accounts by id, an
idempotency key, an account's running sums. Their plans are cached with the generic estimate
for `id = ANY (array)` (ten rows), and while `accounts` is small (a new federation, a test
database, the benchmark's 250 accounts) the planner prefers a sequential scan and a hash join
over it, which compares every account row against the array on each of four statements per
booking. Measured on the benchmark's database: 0.61, 0.50, 0.61 ms of backend CPU per
`ledger_post` call against 0.48, 0.45, 0.48 ms with index lookups (`perf stat` on the backend,
5,000 autocommitted calls each, interleaved).

So both functions run with `enable_seqscan = off`, as a function setting (like their
`search_path`): it holds only while they run, and it changes only a choice the planner gets
wrong at this size; a lookup that had no index would still run (the setting only prices a
sequential scan out). `pay_request` runs `ledger_post`, so payments get the same plans.

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

FUNCTIONS = (
    "ledger_post(text, text, text, text, text, timestamptz, text, text, text, boolean, bigint[], bigint[], text)",
    "ledger_entry_balanced()",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite books from Python (`ledger._post_portable`)
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET enable_seqscan = off")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} RESET enable_seqscan")
