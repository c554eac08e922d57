"""Ledger booking throughput: `shared.ledger.post` against a table-lock baseline and pgbench.

What it measures, in one run against one PostgreSQL server (same settings for every row):

* ledger bookings made with the real `shared.ledger.post`, one transaction per booking
  (`with sessions.begin() as session:`, exactly as production code does), in three shapes:
    - spread: a random member pays a random one of 50 organisations (Club Payment);
    - hot:    a random member pays the same single organisation;
    - top-up: the `stripe` system account pays a random member (Auto Top Up), so every
              booking touches the same system account.
  Each booking is one journal entry with two postings (postings/s = 2 x bookings/s).
* a table-lock baseline that books the way the old system did: one transaction per booking
  that takes `LOCK TABLE old_transactions IN EXCLUSIVE MODE`, reads the member's latest row for
  the running balance, inserts a row with the new balance, and does the same for the
  organisation (two rows, comparable to a two-posting payment). Raw psycopg, no ORM.
* `pgbench -N` (TPC-B-like without the hot branch/teller updates) at the same client counts:
  the database's own ceiling for small write transactions on this machine.

Each cell runs N OS processes (multiprocessing, "spawn"; each process makes its own engine or
connection after it starts) for a fixed time, released together by a barrier, after a
CHECKPOINT (so no cell inherits the checkpoint of the one before). Per cell it reports
bookings/s (journal entries per second, summed over processes), the p99 latency of one booking
(wall time from begin to commit), and the CPU time per booking of the booking processes and of
their PostgreSQL backends (where the time goes). At the end it checks the ledger invariants:
every journal entry's postings sum to zero and no member balance is negative (exit 1 if not).

Run it from the project root (PostgreSQL must be up, e.g. `make services`):

    .venv/bin/python bench/ledger.py                    # or: make bench
    .venv/bin/python bench/ledger.py --seconds 10 --procs 1,4

It drops and recreates the databases `payments_bench` and `payments_pgbench` on the server
given by PAYMENTS_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier

import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger, profiles, schema
from shared.db import make_engine, make_sessions
from shared.ledger import Entry, Line
from shared.models import EntryType, SystemAccount
from shared.profiles import MemberDetails, OrganisationDetails
from common import cpu_seconds, recreate_database, url_for  # bench/common.py, beside this script

BENCH_DB = "payments_bench"
PGBENCH_DB = "payments_pgbench"
MEMBERS = 200
ORGANISATIONS = 50
STARTING_BALANCE = 10**12  # cents: no member ever runs out during a run
LEDGER_SHAPES = ("spread", "hot", "top-up")
SHAPES = (*LEDGER_SHAPES, "baseline")


@dataclass(frozen=True)
class Accounts:
    """Ledger account ids of the members, the organisations and the `stripe` account."""

    members: list[int]
    orgs: list[int]
    stripe: int


@dataclass(frozen=True)
class Result:
    """One cell: bookings (or pgbench transactions) per second and latency in ms."""

    rate: float
    p99_ms: float
    count: int = 0
    # CPU time per booking, in ms, of the booking processes and of their PostgreSQL backends
    # (the backends' share includes the commit; pgbench cells leave both NaN).
    client_ms: float = float("nan")
    server_ms: float = float("nan")


# --- databases -------------------------------------------------------------------------


def set_up_ledger(url: str) -> Accounts:
    """Migrate, create members (each topped up once) and organisations."""
    schema.upgrade(url)
    engine = make_engine(url)
    sessions = make_sessions(engine)
    with sessions.begin() as session:
        stripe = profiles.system_account(session, SystemAccount.STRIPE)
        members = []
        for i in range(MEMBERS):
            details = MemberDetails(email=f"m{i}@example.org", first_name="Bench", last_name=f"M{i}")
            member, _ = profiles.put_member(session, f"m{i}", details, default_topup_amount=100_00)
            members.append(member.account_id)
        orgs = []
        for i in range(ORGANISATIONS):
            org, _ = profiles.put_organisation(session, f"o{i}", OrganisationDetails(name=f"Club {i}"))
            orgs.append(org.account_id)
        for i, account_id in enumerate(members):
            lines = (Line(account_id, STARTING_BALANCE), Line(stripe, -STARTING_BALANCE))
            ledger.post(session, Entry(f"setup-{i}", EntryType.MANUAL_TOP_UP, "Starting balance", lines))
    engine.dispose()
    return Accounts(members=members, orgs=orgs, stripe=stripe)


def set_up_baseline(url: str) -> None:
    """The old system's table, each member starting with one row carrying its balance."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE old_transactions (id bigserial PRIMARY KEY, member text NOT NULL,"
            " amount bigint NOT NULL, balance bigint NOT NULL,"
            " created_at timestamptz NOT NULL, description text NOT NULL)"
        )
        conn.execute("CREATE INDEX old_transactions_member_id ON old_transactions (member, id)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO old_transactions (member, amount, balance, created_at, description)"
                " VALUES (%s, %s, %s, now(), 'Starting balance')",
                [(f"m{i}", STARTING_BALANCE, STARTING_BALANCE) for i in range(MEMBERS)],
            )


def vacuum_analyze(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


# --- bookers: one per process, each returns a function that makes booking number n ------


def sessions_for(url: str) -> sessionmaker[Session]:
    """The engine settings of the worker (no per-transaction pre-ping), for both bookers."""
    return make_sessions(make_engine(url, pool_size=1, pool_pre_ping=False))


def backend_pid(sessions: sessionmaker[Session]) -> int:
    """Connect before the barrier, and say which PostgreSQL backend serves this process (the
    pool holds one connection, so every booking of the process goes through it)."""
    with sessions.kw["bind"].connect() as connection:
        return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def ledger_booker(shape: str, procs: int, sessions: sessionmaker[Session], accounts: Accounts) -> Callable[[int], None]:
    rng = random.Random()
    hot_org = accounts.orgs[0]
    pid = os.getpid()

    def book(n: int) -> None:
        key = f"{shape}-{procs}-{pid}-{n}"
        member = rng.choice(accounts.members)
        cents = rng.randint(1_00, 50_00)
        if shape == "top-up":
            lines = (Line(member, cents), Line(accounts.stripe, -cents))
            entry = Entry(key, EntryType.AUTO_TOP_UP, "Auto top up", lines)
        else:
            org = hot_org if shape == "hot" else rng.choice(accounts.orgs)
            lines = (Line(member, -cents), Line(org, cents))
            entry = Entry(key, EntryType.CLUB_PAYMENT, "Table money", lines)
        with sessions.begin() as session:
            ledger.post(session, entry)

    return book


LATEST_BALANCE = text("SELECT balance FROM old_transactions WHERE member = :who ORDER BY id DESC LIMIT 1")
INSERT_ROW = text(
    "INSERT INTO old_transactions (member, amount, balance, created_at, description)"
    " VALUES (:who, :cents, :balance, now(), :description)"
)
LOCK_TABLE = text("LOCK TABLE old_transactions IN EXCLUSIVE MODE")


def baseline_booker(sessions: sessionmaker[Session]) -> Callable[[int], None]:
    """The old way, through the same SQLAlchemy session stack as the ledger, so that the two
    differ only in how they book: one table lock, the latest row's balance, a new row."""
    rng = random.Random()

    def post_row(session: Session, who: str, cents: int) -> None:
        before = session.execute(LATEST_BALANCE, {"who": who}).scalar() or 0
        if before + cents < 0:
            raise RuntimeError(f"{who}: insufficient funds")
        session.execute(INSERT_ROW, {"who": who, "cents": cents, "balance": before + cents, "description": "Table money"})

    def book(n: int) -> None:
        member = f"m{rng.randrange(MEMBERS)}"
        org = f"o{rng.randrange(ORGANISATIONS)}"
        cents = rng.randint(1_00, 50_00)
        with sessions.begin() as session:
            session.execute(LOCK_TABLE)
            post_row(session, member, -cents)
            post_row(session, org, cents)

    return book


# --- running a cell -----------------------------------------------------------------------


def worker(
    shape: str, procs: int, seconds: float, url: str, accounts: Accounts,
    barrier: Barrier, results: multiprocessing.Queue,
) -> None:
    """Book as fast as possible for `seconds` after the barrier; report (count, elapsed,
    latencies, CPU seconds of this process, CPU seconds of its backend)."""
    try:
        sessions = sessions_for(url)
        backend = backend_pid(sessions)
        book = baseline_booker(sessions) if shape == "baseline" else ledger_booker(shape, procs, sessions, accounts)
        latencies: list[float] = []
        barrier.wait(timeout=120)
        cpu_before = (time.process_time(), cpu_seconds([backend]))
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            book(len(latencies))
            done = time.perf_counter()
            latencies.append(done - now)
            now = done
        cpu = (time.process_time() - cpu_before[0], cpu_seconds([backend]) - cpu_before[1])
        results.put((len(latencies), now - start, latencies, cpu))
    except BaseException as exc:  # report, so the parent does not wait forever
        results.put(exc)
        raise


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else float("nan")


def checkpoint(url: str) -> None:
    """Start each cell from the same state: without this, the checkpoint that the previous
    cell's writes (pgbench's above all) made due lands in the next cell, which was always the
    spread one, and made spread look slower than hot. Needs a superuser (or pg_checkpoint)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def run_cell(shape: str, procs: int, seconds: float, url: str, accounts: Accounts) -> Result:
    checkpoint(url)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=worker, args=(shape, procs, seconds, url, accounts, barrier, results))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    reports = [results.get(timeout=seconds + 180) for _ in workers]
    for w in workers:
        w.join()
    errors = [r for r in reports if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{shape} at {procs} processes failed: {errors[0]!r}")
    latencies = [lat for _, _, lats, _ in reports for lat in lats]
    rate = sum(count / elapsed for count, elapsed, _, _ in reports)
    count = len(latencies)
    client, server = (sum(cpu[i] for *_, cpu in reports) for i in (0, 1))
    return Result(rate=rate, p99_ms=p99(latencies) * 1000, count=count,
                  client_ms=client / count * 1000, server_ms=server / count * 1000)


# --- pgbench --------------------------------------------------------------------------


def pgbench_init(url: str) -> None:
    subprocess.run(["pgbench", "-i", "-q", "-s", "10", url], check=True, capture_output=True)


def pgbench_run(url: str, clients: int, seconds: float) -> Result:
    """`pgbench -N -c N -j N -T S`; rate is tps, latency is pgbench's average (not p99)."""
    command = ["pgbench", "-N", "-n", "-c", str(clients), "-j", str(clients),
               "-T", str(max(1, round(seconds))), url]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    if not tps or not latency:
        raise RuntimeError(f"could not parse pgbench output:\n{out}")
    return Result(rate=float(tps.group(1)), p99_ms=float(latency.group(1)))


# --- checks and report ----------------------------------------------------------------


def check_invariants(url: str, expected_entries: int) -> list[str]:
    """Problems found: unbalanced entries, negative member balances, a wrong entry count."""
    with psycopg.connect(url) as conn:
        unbalanced = conn.execute(
            "SELECT count(*) FROM (SELECT j.id FROM journal_entries j"
            " LEFT JOIN postings p ON p.entry_id = j.id GROUP BY j.id"
            " HAVING count(p.id) < 2 OR coalesce(sum(p.amount), 0) <> 0) bad"
        ).fetchone()[0]
        negative = conn.execute(
            "SELECT count(*) FROM (SELECT a.id FROM accounts a JOIN postings p ON p.account_id = a.id"
            " WHERE a.kind = 'member' GROUP BY a.id HAVING sum(p.amount) < 0) bad"
        ).fetchone()[0]
        entries = conn.execute("SELECT count(*) FROM journal_entries").fetchone()[0]
    problems = []
    if unbalanced:
        problems.append(f"{unbalanced} journal entries whose postings do not sum to zero")
    if negative:
        problems.append(f"{negative} members with a negative balance")
    if entries != expected_entries:
        problems.append(f"{entries} journal entries, expected {expected_entries}")
    return problems


def print_table(results: dict[tuple[str, int], Result], procs_list: list[int]) -> None:
    headers = ["procs", "spread/s", "p99 ms", "hot/s", "p99 ms", "top-up/s", "p99 ms",
               "baseline/s", "p99 ms", "pgbench tps", "avg ms"]
    rows = []
    for procs in procs_list:
        row = [str(procs)]
        for shape in (*SHAPES, "pgbench"):
            r = results[(shape, procs)]
            row += [f"{r.rate:.0f}", f"{r.p99_ms:.1f}"]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in rows:
        print(line(row))
    print("(ledger and baseline: bookings/s = journal entries/s, each 2 postings, so postings/s"
          " = 2 x bookings/s; p99 of one booking from begin to commit. pgbench: tps and average"
          " latency.)")


def print_ratios(results: dict[tuple[str, int], Result], procs: int) -> None:
    rate = {shape: results[(shape, procs)].rate for shape in SHAPES}
    checks = [
        ("spread / baseline", rate["spread"] / rate["baseline"], 2.5),  # issue 16 (1.3 before)
        ("hot / baseline", rate["hot"] / rate["baseline"], 1.3),
        ("top-up / spread", rate["top-up"] / rate["spread"], 0.8),
    ]
    print(f"\nRatios at {procs} processes:")
    for name, value, target in checks:
        verdict = "ok" if value >= target else "BELOW TARGET"
        print(f"  {name:18} {value:5.2f}x  (target >= {target}x: {verdict})")
    print(f"CPU per booking at {procs} processes (the machine's {os.cpu_count()} CPUs bound the rate):")
    for shape in SHAPES:
        r = results[(shape, procs)]
        print(f"  {shape:8} {r.client_ms:.2f} ms in the booking process + {r.server_ms:.2f} ms in its backend")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each cell (default 4)")
    parser.add_argument("--procs", default="1,2,4,8", help="process counts (default 1,2,4,8)")
    args = parser.parse_args()
    args.procs = [int(p) for p in args.procs.split(",")]
    return args


def main() -> int:
    args = parse_args()
    if shutil.which("pgbench") is None:
        sys.exit("pgbench not found on PATH")
    bench_url, pgbench_url = url_for(BENCH_DB), url_for(PGBENCH_DB)
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    print(f"setting up {BENCH_DB} and {PGBENCH_DB} ...", flush=True)
    recreate_database(BENCH_DB)
    accounts = set_up_ledger(bench_url)
    set_up_baseline(bench_url)
    vacuum_analyze(bench_url)
    recreate_database(PGBENCH_DB)
    pgbench_init(pgbench_url)

    results: dict[tuple[str, int], Result] = {}
    booked = 0
    for procs in args.procs:
        for shape in SHAPES:
            result = run_cell(shape, procs, args.seconds, bench_url, accounts)
            results[(shape, procs)] = result
            booked += result.count if shape in LEDGER_SHAPES else 0
            print(f"  {shape:8} x{procs}: {result.rate:7.0f} bookings/s, p99 {result.p99_ms:6.1f} ms,"
                  f" CPU per booking {result.client_ms:.2f} ms client + {result.server_ms:.2f} ms server",
                  flush=True)
        checkpoint(pgbench_url)
        result = pgbench_run(pgbench_url, procs, args.seconds)
        results[("pgbench", procs)] = result
        print(f"  pgbench  x{procs}: {result.rate:7.0f} tps, avg {result.p99_ms:6.1f} ms", flush=True)

    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (other work on the machine skews results)\n")
    print_table(results, args.procs)
    print_ratios(results, 4 if 4 in args.procs else args.procs[-1])

    problems = check_invariants(bench_url, expected_entries=MEMBERS + booked)
    if problems:
        print("\nLedger invariants VIOLATED: " + "; ".join(problems))
        return 1
    print(f"\nLedger invariants hold: {MEMBERS + booked} journal entries all sum to zero,"
          " no member balance is negative.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
