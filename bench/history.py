"""Costs that do not grow with history (issue 16 item 4): a payment and a balance read for a
member with 1,000 postings and for one with 1,000,000, in the same run.

Data: two members, `short` (1,000 postings) and `long` (1,000,000), and one club. Each member's
history alternates a top-up of 10.00 from the `stripe` account and a payment of 9.00 to the club,
over ten years. It is bulk-loaded in SQL with the ledger's triggers off
(`session_replication_role = replica`: 2,002,000 postings through `ledger_post` would take about
ten minutes); the running sums (`account_balances`) are then summed from the postings, as
migration 0016 does, and the load is checked: every entry sums to zero and every running sum
is its account's sum of postings (exit 1 if not).

Measured, interleaved (short, long, short, long, ...) so both see the same machine:
* **payment**: `payments.pay_at_once`, the worker's path for a plain payment (one autocommitted
  `pay_request`: claim the request, lock the payer, check its funds, book, mark it paid) of
  0.01 from the member to the club;
* **balance read**: `GET /api/members/{id}/balance` through the real Flask app (the test client
  in this process: routing, auth, SQL, JSON);
* for the record, what a balance cost before migration 0016: the sum of the account's postings
  (an index-only scan), as `ledger_post` summed it on every debit.

Target: long within 1.2x of short, for the payment and for the read (medians).

    .venv/bin/python bench/history.py               # about 2 minutes, most of it loading
    .venv/bin/python bench/history.py --skip-load   # reuse the loaded database

It drops and recreates the database `payments_bench_history` on the server given by
PAYMENTS_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import schema  # noqa: E402
from common import recreate_database, url_for  # bench/common.py, beside this script

BENCH_DB = "payments_bench_history"
HISTORY = {"short": 1_000, "long": 1_000_000}
ROUNDS = 400
TOKEN = "bench-history-admin-token-0123456789abcdef"

LOAD_SQL = """
SET session_replication_role = replica;
INSERT INTO accounts (kind, owner, created_at)
VALUES ('member', 'short', '2016-01-01Z'), ('member', 'long', '2016-01-01Z'), ('organisation', 'club', '2016-01-01Z');
INSERT INTO members (member_id, account_id, email, first_name, last_name, low_balance_emails,
                     auto_topup_status, auto_topup_amount, created_at, updated_at)
SELECT owner, id, owner || '@example.org', 'Pat', initcap(owner), false, 'off', 10000, created_at, created_at
  FROM accounts WHERE kind = 'member';
INSERT INTO organisations (org_id, account_id, name, minimum_balance_after_settlement, created_at, updated_at)
SELECT owner, id, 'The Club', 0, created_at, created_at FROM accounts WHERE kind = 'organisation';
CREATE TEMPORARY TABLE plan AS
SELECT row_number() OVER (ORDER BY i::float8 / h.postings, m.owner) AS entry_id, m.id AS member, i,
       timestamptz '2016-01-01Z' + interval '3650 days' * (i::float8 / h.postings) AS created_at
  FROM accounts m JOIN (VALUES ('short', {short}), ('long', {long})) AS h(owner, postings) ON h.owner = m.owner
  CROSS JOIN LATERAL generate_series(0, h.postings - 1) AS i;
INSERT INTO journal_entries (id, idempotency_key, payload_hash, type, description, reference, created_at)
SELECT entry_id, 'history:' || entry_id, md5(entry_id::text),
       CASE WHEN i % 2 = 0 THEN 'Auto Top Up' ELSE 'Club Payment' END,
       CASE WHEN i % 2 = 0 THEN 'Top up by card' ELSE 'Table money' END, 'history-' || entry_id, created_at
  FROM plan;
-- In entry order, as bookings write them (the tables' physical order is what plans meet).
INSERT INTO postings (entry_id, account_id, amount)
SELECT entry_id, account_id, amount FROM (
    SELECT entry_id, member AS account_id, CASE WHEN i % 2 = 0 THEN 1000 ELSE -900 END AS amount FROM plan
    UNION ALL
    SELECT entry_id, CASE WHEN i % 2 = 0 THEN (SELECT id FROM accounts WHERE kind = 'system' AND owner = 'stripe')
                          ELSE (SELECT id FROM accounts WHERE owner = 'club') END,
           CASE WHEN i % 2 = 0 THEN -1000 ELSE 900 END FROM plan) AS p
 ORDER BY entry_id, account_id;
SELECT setval(pg_get_serial_sequence('journal_entries', 'id'), (SELECT max(id) FROM journal_entries));
INSERT INTO account_balances (account_id, stripe, balance)
SELECT account_id, 0, sum(amount) FROM postings GROUP BY account_id;
"""

def load(url: str) -> None:
    schema.upgrade(url)
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        conn.execute(LOAD_SQL.format(**HISTORY))
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"  loaded in {time.perf_counter() - started:.0f} s", flush=True)


def check(url: str) -> None:
    from shared import ledger
    from shared.db import make_engine, make_sessions

    with psycopg.connect(url) as conn:
        unbalanced = conn.execute("SELECT count(*) FROM (SELECT entry_id FROM postings GROUP BY entry_id"
                                  " HAVING sum(amount) <> 0 OR count(*) < 2) x").fetchone()[0]
        assert unbalanced == 0, f"{unbalanced} entries that do not sum to zero"
        counts = dict(conn.execute("SELECT m.member_id, count(p.id) FROM members m JOIN postings p"
                                   " ON p.account_id = m.account_id GROUP BY m.member_id").fetchall())
    assert all(counts[m] >= HISTORY[m] for m in HISTORY), counts  # earlier runs' payments add to them
    engine = make_engine(_sqlalchemy(url))
    with make_sessions(engine).begin() as session:
        assert ledger.disagreeing_balances(session) == [], "a running sum is not its postings' sum"
    engine.dispose()


def _sqlalchemy(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def measure(url: str) -> dict[str, dict[str, list[float]]]:
    from shared import payments
    from shared.config import Settings
    from shared.db import make_engine
    from webhook import create_app

    settings = Settings(database_url=_sqlalchemy(url), broker_url="redis://127.0.0.1:6379/7", api_token=TOKEN,
                        ops_cache_seconds=0, rate_limit=None)
    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    engine = make_engine(settings.database_url)
    times: dict[str, dict[str, list[float]]] = {what: {m: [] for m in HISTORY} for what in ("payment", "read", "sum")}
    run = time.strftime("%H%M%S")
    with psycopg.connect(url, autocommit=True) as raw:
        account = dict(raw.execute("SELECT member_id, account_id FROM members").fetchall())
        for n in range(-20, ROUNDS):  # the first 20 warm up: connections, plans, imports
            for member in HISTORY:
                order = payments.parse({"request_id": f"h-{run}-{member}-{n}", "member_id": member, "amount": "0.01",
                                        "description": "Table money", "organisation_id": "club"}, settings)
                started = time.perf_counter()
                assert payments.pay_at_once(engine, order, settings) is not None, "not paid at once"
                paid = time.perf_counter() - started

                started = time.perf_counter()
                response = client.get(f"/api/members/{member}/balance", headers=headers)
                read = time.perf_counter() - started
                assert response.status_code == 200, response.get_data()

                summed = 0.0
                if n % 20 == 0:  # the old way is slow on `long`: a sample is enough
                    started = time.perf_counter()
                    raw.execute("SELECT coalesce(sum(amount), 0) FROM postings WHERE account_id = %s",
                                (account[member],)).fetchone()
                    summed = time.perf_counter() - started
                if n >= 0:
                    times["payment"][member].append(paid)
                    times["read"][member].append(read)
                    if summed:
                        times["sum"][member].append(summed)
    engine.dispose()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-load", action="store_true", help="reuse the loaded database")
    args = parser.parse_args()
    url = url_for(BENCH_DB)
    if not args.skip_load:
        recreate_database(BENCH_DB)
        load(url)
    schema.upgrade(url)
    check(url)
    times = measure(url)

    ms = lambda values, q: statistics.quantiles(values, n=100)[q - 1] * 1000  # noqa: E731
    print(f"\n{'measure':<40} {'1,000 postings':>16} {'1,000,000 postings':>20} {'long / short':>13}  target")
    met = True
    for what, name, target in [("payment", "payment (pay_request), median ms", 1.2),
                               ("read", "balance read (GET), median ms", 1.2),
                               ("sum", "before 0016: sum of postings, median ms", None)]:
        short, long = (statistics.median(times[what][m]) * 1000 for m in HISTORY)
        ratio = long / short
        verdict = "" if target is None else f"<= {target}: {'met' if ratio <= target else 'NOT met'}"
        met = met and (target is None or ratio <= target)
        print(f"{name:<40} {short:>16.3f} {long:>20.3f} {ratio:>12.2f}x  {verdict}")
        if what != "sum":
            print(f"{'  p99 ms':<40} {ms(times[what]['short'], 99):>16.3f} {ms(times[what]['long'], 99):>20.3f}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
