"""Reads at scale (issue 14): statements, exports and federation reports over a ledger of
1,000,000 postings, through the real Flask app (`webhook.create_app`, the bootstrap admin's
token, the test client in this process: routing, auth, SQL and JSON, no network).

Data (bulk-loaded in SQL, through `ledger_post`, so every entry passes the ledger's checks):
100,000 members and 2,000 organisations; 500,000 entries = 1,000,000 postings over two years
(December 2024 to November 2026):
* 100,000 card top-ups of 100.00 from the `stripe` account, one per member;
* 300,000 payments of 5.00 to 9.99 to one club, `c0000` (event entries, club sessions and
  memberships in turn), so that club holds 300,000 postings;
* 100,000 club payments to the other 1,999 clubs.

Measured, each printed with its target:
* a statement page of 100 rows of `c0000` at random cursor positions (p50/p99 of 200 pages);
* the CSV of `c0000`'s whole history (300,000 rows), streamed: rows/s, and the peak RSS growth
  of the process serving it (a child process, so earlier work does not hide it);
* balances at a date for the 100,000 members (the CSV of all of them, and the JSON count/total);
* reconciliation at a date.

    .venv/bin/python bench/reports.py               # about 3 minutes, most of it loading
    .venv/bin/python bench/reports.py --skip-load   # reuse the loaded database

It drops and recreates the database `payments_bench_reports` on the server given by
PAYMENTS_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import schema  # noqa: E402
from common import recreate_database, url_for  # bench/common.py, beside this script

BENCH_DB = "payments_bench_reports"
MEMBERS = 100_000
ORGANISATIONS = 2_000
BIG_CLUB = "c0000"
BIG_CLUB_PAYMENTS = 300_000
OTHER_PAYMENTS = 100_000
TOKEN = "bench-reports-admin-token-0123456789abcdef"
PAGES = 200

ACCOUNTS_SQL = """
INSERT INTO accounts (kind, owner, created_at)
SELECT 'member', 'm' || lpad(i::text, 6, '0'), timestamptz '2024-11-01 00:00Z'
  FROM generate_series(0, {members} - 1) AS i;
INSERT INTO accounts (kind, owner, created_at)
SELECT 'organisation', 'c' || lpad(j::text, 4, '0'), timestamptz '2024-11-01 00:00Z'
  FROM generate_series(0, {orgs} - 1) AS j;
INSERT INTO organisations (org_id, account_id, name, minimum_balance_after_settlement, created_at, updated_at)
SELECT owner, id, 'Club ' || owner, 0, created_at, created_at FROM accounts WHERE kind = 'organisation';
INSERT INTO members (member_id, account_id, email, first_name, last_name, low_balance_emails,
                     auto_topup_status, auto_topup_amount, created_at, updated_at)
SELECT owner, id, owner || '@example.org',
       (ARRAY['Ann','Bob','Cath','Dev','Eve','Fay','Gus','Hal'])[1 + id % 8], 'Player ' || owner,
       false, 'off', 10000, created_at, created_at
  FROM accounts WHERE kind = 'member';
"""

# Entry n (0-based) of all 500,000, in time order over two years: top-ups first (one per
# member), then payments, member i paying 4 times (3 to the big club, 1 to another club).
PLAN_SQL = """
CREATE TABLE plan AS
WITH n AS (SELECT n FROM generate_series(0::bigint, {total} - 1) AS n)
SELECT n,
       timestamptz '2024-12-01 00:00Z' + (interval '730 days' * n / {total}) AS created_at,
       CASE WHEN n < {members} THEN n ELSE (n - {members}) % {members} END AS member_index,
       CASE WHEN n < {members} THEN 'topup'
            WHEN (n - {members}) % 4 = 3 THEN 'other'
            ELSE 'big' || ((n - {members}) % 4) END AS kind,
       500 + (n * 7919) % 500 AS amount
  FROM n;
"""

BOOK_SQL = """
SELECT count(*) FILTER (WHERE (r).outcome = 'booked') FROM (
  SELECT ledger_post(
           'bench:' || p.n, md5('bench:' || p.n),
           CASE p.kind WHEN 'topup' THEN 'Auto Top Up' WHEN 'other' THEN 'Club Payment'
                       WHEN 'big0' THEN 'Entry to an event' WHEN 'big1' THEN 'Club Payment'
                       ELSE 'Club Membership' END,
           CASE p.kind WHEN 'topup' THEN 'Top up by card' WHEN 'other' THEN 'Table money'
                       WHEN 'big0' THEN 'Entry: Congress ' || (p.n %% 50)
                       WHEN 'big1' THEN 'Session ' || (p.n %% 700) ELSE 'Annual subscription' END,
           'bench-' || p.n, p.created_at,
           CASE WHEN p.kind = 'big0' THEN 'ev' || (p.n %% 50) END,
           CASE WHEN p.kind = 'big1' THEN 'ss' || (p.n %% 700) END,
           NULL, false,
           CASE WHEN p.kind = 'topup' THEN ARRAY[m.id, stripe.id] ELSE ARRAY[o.id, m.id] END,
           CASE WHEN p.kind = 'topup' THEN ARRAY[10000, -10000]::bigint[]
                ELSE ARRAY[p.amount, -p.amount]::bigint[] END,
           NULL) AS r
    FROM plan p
    JOIN accounts m ON m.kind = 'member' AND m.owner = 'm' || lpad(p.member_index::text, 6, '0')
    JOIN accounts o ON o.kind = 'organisation'
                   AND o.owner = CASE WHEN p.kind = 'other' THEN 'c' || lpad((1 + p.n %% ({orgs} - 1))::text, 4, '0')
                                      ELSE '{big}' END
    CROSS JOIN (SELECT id FROM accounts WHERE kind = 'system' AND owner = 'stripe') stripe
   WHERE p.n >= %s AND p.n < %s
   ORDER BY p.n) booked
"""
CHUNK = 50_000


def load(url: str) -> None:
    total = MEMBERS + BIG_CLUB_PAYMENTS + OTHER_PAYMENTS
    schema.upgrade(url)
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        conn.execute(ACCOUNTS_SQL.format(members=MEMBERS, orgs=ORGANISATIONS))
        conn.execute(PLAN_SQL.format(total=total, members=MEMBERS))
        conn.commit()
    # In chunks, each on a fresh connection after ANALYZE: the ledger's PL/pgSQL plans are cached
    # per connection, and plans made while the tables were empty scan them whole.
    bounds = [0, 1_000, *range(CHUNK, total, CHUNK), total]  # 1,000 first: plans made on a non-empty ledger
    for first, last in zip(bounds, bounds[1:]):
        with psycopg.connect(url) as conn:
            booked = conn.execute(BOOK_SQL.format(orgs=ORGANISATIONS, big=BIG_CLUB), (first, last)).fetchone()[0]
            conn.commit()
            assert booked == last - first, f"entries {first} to {last}: {booked} booked"
            conn.execute("ANALYZE journal_entries")
            conn.execute("ANALYZE postings")
            conn.commit()
        print(f"  {last:,} entries booked ({time.perf_counter() - started:.0f} s)", flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE plan")
        conn.execute("VACUUM ANALYZE")
        postings = conn.execute("SELECT count(*) FROM postings").fetchone()[0]
    print(f"  {postings:,} postings loaded and vacuumed in {time.perf_counter() - started:.0f} s", flush=True)



def app_client(url: str):  # type: ignore[no-untyped-def]
    """The real Flask app on the loaded database, and the bootstrap admin's headers."""
    from shared.config import Settings
    from webhook import create_app

    settings = Settings(database_url=url, broker_url="redis://127.0.0.1:6379/7", api_token=TOKEN,
                        ops_cache_seconds=0, rate_limit=None)
    return create_app(settings).test_client(), {"Authorization": f"Bearer {TOKEN}"}


def get(client, headers, path: str) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    response = client.get(path, headers=headers)
    response.get_data()  # a download streams: read all of it
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, f"{path}: {response.status_code} {response.get_data()[:300]!r}"
    return elapsed, response.get_json() if response.mimetype == "application/json" else {}


def statement_pages(url: str) -> tuple[float, float, float, int]:
    """p50 and p99 (ms) of 100-row pages of the big club at PAGES random cursor positions, and
    the p99 of its first page (no cursor: the balance is one sum over its postings).

    A cursor is signed (it carries the balance before its posting), so a cursor at a random
    position is made as the service makes one: `statements.make_cursor` with the service's key."""
    from shared import statements

    client, headers = app_client(url)
    base = f"/api/organisations/{BIG_CLUB}/statement?limit=100"
    first_pages = [get(client, headers, base)[0] for _ in range(21)][1:]  # the first warms up
    with psycopg.connect(url) as conn:
        account = conn.execute("SELECT account_id FROM organisations WHERE org_id = %s", (BIG_CLUB,)).fetchone()[0]
        positions = conn.execute(
            "SELECT id, before FROM (SELECT id, sum(amount) OVER (ORDER BY id) - amount AS before"
            " FROM postings WHERE account_id = %s) p ORDER BY random() LIMIT %s", (account, PAGES)).fetchall()
    fingerprint, key = statements.Filters().fingerprint(account), statements.cursor_key(TOKEN)
    times: list[float] = []
    for posting_id, before in positions:
        cursor = statements.make_cursor(statements.Position(posting_id, int(before)), fingerprint, key)
        elapsed, page = get(client, headers, f"{base}&cursor={cursor}")
        times.append(elapsed)
        assert page["rows"] and page["closing_balance"] == f"{before / 100:.2f}", page["closing_balance"]
    times.sort()
    first_pages.sort()
    p99 = lambda values: values[max(0, int(len(values) * 0.99) - 1)] * 1000  # noqa: E731
    return times[len(times) // 2] * 1000, p99(times), p99(first_pages), len(times)


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _stream_csv(url: str, out: multiprocessing.Queue) -> None:
    """In a fresh process: the big club's whole statement as CSV, read as it streams."""
    client, headers = app_client(url)
    get(client, headers, f"/api/organisations/{BIG_CLUB}/statement?limit=1")  # warm: imports, connections
    before = _rss_kib()
    started = time.perf_counter()
    response = client.get(f"/api/organisations/{BIG_CLUB}/statement?format=csv", headers=headers, buffered=False)
    assert response.status_code == 200 and response.is_streamed
    lines = sum(chunk.count(b"\n") for chunk in response.response)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out.put((lines - 1, elapsed, (peak - before) / 1024))


def streamed_csv(url: str) -> tuple[int, float, float]:
    """Rows, rows/s and the serving process's peak RSS growth (MiB)."""
    out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(target=_stream_csv, args=(url, out))
    child.start()
    rows, elapsed, growth = out.get(timeout=600)
    child.join()
    return rows, rows / elapsed, growth


def timed(url: str, path: str, runs: int = 5) -> tuple[float, float, dict]:
    """Median and worst seconds of `runs` GETs (after one to warm up), and the last answer."""
    client, headers = app_client(url)
    get(client, headers, path)
    times, answer = [], {}
    for _ in range(runs):
        elapsed, answer = get(client, headers, path)
        times.append(elapsed)
    return statistics.median(times), max(times), answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-load", action="store_true", help="reuse the loaded database")
    args = parser.parse_args()
    url = url_for(BENCH_DB)
    if not args.skip_load:
        recreate_database(BENCH_DB)
        load(url)
    schema.upgrade(url)  # a database loaded by an older checkout gets the newer migrations
    with psycopg.connect(url) as conn:
        postings, club = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE account_id = (SELECT account_id FROM organisations"
            " WHERE org_id = %s)) FROM postings", (BIG_CLUB,)).fetchone()
    print(f"ledger: {postings:,} postings, {club:,} of them on {BIG_CLUB}", flush=True)

    p50, p99, first_p99, pages = statement_pages(url)
    rows, rate, growth = streamed_csv(url)
    day = "2026-06-30"
    csv_median, csv_worst, _ = timed(url, f"/api/reports/balances?kind=member&date={day}&format=csv", runs=3)
    json_median, json_worst, balances = timed(url, f"/api/reports/balances?kind=member&date={day}", runs=3)
    rec_median, rec_worst, rec = timed(url, f"/api/reports/reconciliation?date={day}", runs=3)
    assert rec["sum"] == "0.00", rec

    results = [
        (f"statement page, 100 rows, {pages} random cursors", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", "p99 < 50 ms",
         p99 < 50),
        ("  its first page (no cursor), 20 times", f"p99 {first_p99:.1f} ms", "p99 < 50 ms", first_p99 < 50),
        (f"CSV of {BIG_CLUB}'s history ({rows:,} rows)", f"{rate:,.0f} rows/s, RSS +{growth:.1f} MiB",
         ">= 50,000 rows/s, RSS growth < 50 MB", rate >= 50_000 and growth < 50),
        (f"balances at {day}, {balances['count']:,} members, CSV",
         f"median {csv_median:.2f} s, worst {csv_worst:.2f} s", "< 2 s", csv_worst < 2),
        ("  the same, JSON (first page, count and total)", f"median {json_median:.2f} s, worst {json_worst:.2f} s",
         "< 2 s", json_worst < 2),
        (f"reconciliation at {day}", f"median {rec_median:.2f} s, worst {rec_worst:.2f} s", "< 2 s", rec_worst < 2),
    ]
    width = max(len(r[0]) for r in results)
    print(f"\n{'measure':<{width}}  {'result':<36}  {'target':<36}  met")
    for name, result, target, met in results:
        print(f"{name:<{width}}  {result:<36}  {target:<36}  {'yes' if met else 'NO'}")
    return 0 if all(r[3] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
