"""Payments through the worker: end-to-end rate of `payments.pay` against the queue's ceiling.

What it measures, in one run, against one real `payments worker --concurrency 2` (prefork, the
production Celery settings of worker/app.py: late acks, prefetch 1, JSON, explicit queues):

* **ceiling**: N empty tasks (`payments.ping`, which returns "pong" and touches nothing) sent
  to the `payments` queue, i.e. the same broker, queue, worker processes and settings as the
  payments. Results are ignored, so completion is measured by draining the broker: with late
  acks a message stays in the Redis transport's `unacked` hash from delivery until the task
  has *finished* and been acked, so "all done" is `LLEN payments == 0` and `HLEN unacked == 0`
  (after every message was sent). The two are polled every 5 ms; the first poll that sees both
  at zero is the end time, confirmed by a second zero reading 50 ms later (this rules out
  catching a message between the worker's BRPOP and its write to `unacked`, which would show
  up in the second reading). Polling Redis costs the worker nothing measurable.
* **spread**: N payments (1.00 each, Club Payment) from a random one of 200 members to a random
  one of 50 organisations, enqueued by task name exactly as a calling module does
  (`shared.client.pay(settings, request_id=..., member_id=..., amount="1.00", ...)`).
* **hot**: the same, every payment to one organisation.

Before the rows, 20,000 earlier payments are booked straight into the database (with their paid
request rows) and the tables are analysed, so the run starts on a database with a history, as
the federation's has (see `seed_history` for why that matters).

Each row enqueues its N tasks as fast as one process can (no pacing) and then waits: for
payments it polls `SELECT count(*) FROM payment_requests WHERE status = 'paid' AND request_id
LIKE '<row>-%'` every 50 ms (deadline 300 s) until all N are paid. The rate is N divided by the
time from the first enqueue to the first poll that sees the last task done; enqueueing
overlaps with the worker consuming, and the sender shares the 2 CPUs with the worker.

At the end it checks that exactly N requests of each payments row are `paid` (none in any
other status), that every journal entry sums to zero, that each member's balance is its
starting balance minus 1.00 per payment it made, and that each organisation's balance is
1.00 per payment it received (exit status 1 if not). The worker is stopped with SIGTERM
(warm shutdown).

Run it from the project root (PostgreSQL and Redis must be up, e.g. `make services`):

    .venv/bin/python bench/payments.py             # N = 3000 per row
    .venv/bin/python bench/payments.py -n 1000

It drops and recreates the database `payments_bench_pay` on PAYMENTS_BENCH_PG_URL (default
postgresql://postgres@127.0.0.1:5432/postgres) and flushes Redis database 9 on
PAYMENTS_BENCH_REDIS (default redis://127.0.0.1:6379/9). It refuses to run if another client
is connected to that Redis database (the e2e tests pick a random one in 1..14; if one is on 9,
set PAYMENTS_BENCH_REDIS to a free one). The worker's log goes to var/bench-payments-worker.log.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import redis

from shared import client, ledger, messages, profiles, schema
from shared.config import Settings
from shared.db import make_engine, make_sessions
from shared.ledger import Entry, Line
from shared.models import EntryType, SystemAccount
from shared.profiles import MemberDetails, OrganisationDetails
from common import backend_pids, cpu_seconds, recreate_database, url_for  # bench/common.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("PAYMENTS_BENCH_REDIS", "redis://127.0.0.1:6379/9")
BENCH_DB = "payments_bench_pay"
MEMBERS = 200
ORGANISATIONS = 50
HISTORY = 20_000  # payments already booked before the run: see `seed_history`
STARTING_BALANCE = 10**12  # cents: no member ever runs low, so nothing declines or warns
AMOUNT = 100  # cents: every payment is 1.00
QUEUE = "payments"
TARGET = 0.8  # payments should reach at least this fraction of the ceiling (issue 16; issue 6: 0.4)
WORKER_LOG = ROOT / "var" / "bench-payments-worker.log"
HOSTNAME = "bench-payments@%h"
# The bootstrap client for this run: the payments carry it as their token, and the worker signs
# and checks its own messages with a key derived from it (shared.messages). Not a secret.
TOKEN = "bench-token-not-a-secret-but-long-enough-for-the-check"


@dataclass(frozen=True)
class Row:
    name: str
    n: int
    seconds: float
    enqueue_seconds: float
    # CPU seconds used during the row by the worker (main process and children), by the
    # worker's PostgreSQL backends and by this process (the sender and poller).
    worker_cpu: float = 0.0
    postgres_cpu: float = 0.0
    sender_cpu: float = 0.0

    def cpu_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.n

    @property
    def rate(self) -> float:
        return self.n / self.seconds


# --- setup ------------------------------------------------------------------------------


def set_up(url: str) -> tuple[dict[str, int], dict[str, int]]:
    """Migrate; create members (each funded once) and organisations. Returns their account ids."""
    schema.upgrade(url)
    engine = make_engine(url)
    with make_sessions(engine).begin() as session:
        stripe = profiles.system_account(session, SystemAccount.STRIPE)
        members: dict[str, int] = {}
        for i in range(MEMBERS):
            details = MemberDetails(email=f"m{i}@example.org", first_name="Bench", last_name=f"M{i}")
            member, _ = profiles.put_member(session, f"m{i}", details, default_topup_amount=100_00)
            members[member.member_id] = member.account_id
            lines = (Line(member.account_id, STARTING_BALANCE), Line(stripe, -STARTING_BALANCE))
            ledger.post(session, Entry(f"setup-{i}", EntryType.MANUAL_TOP_UP, "Starting balance", lines))
        orgs: dict[str, int] = {}
        for i in range(ORGANISATIONS):
            org, _ = profiles.put_organisation(session, f"o{i}", OrganisationDetails(name=f"Club {i}"))
            orgs[org.org_id] = org.account_id
    engine.dispose()
    return members, orgs


def seed_history(url: str, sent: Counter) -> int:
    """Book HISTORY earlier payments (member m(i % 200) pays o(i % 50) 1.00, with its paid
    request row), then VACUUM ANALYZE, so the run starts on a database with a history, as the
    federation's has.

    Without it the tables start almost empty and the planner's statistics say so: the plans
    PostgreSQL caches in each connection (psycopg prepares a statement on its fifth run, and
    PL/pgSQL caches its own) use sequential scans of `journal_entries` and `payment_requests`,
    and every payment then costs more than the one before (backend CPU per payment went
    1.0 -> 1.5 -> 2.1 ms over three rows of 2,000 in one process) until autovacuum's next
    ANALYZE replans them. In service that lasts a minute after a fresh install; in a 30-second
    benchmark it is the whole run, and it was why the `hot` row, run after `spread`, cost the
    database twice as much."""
    with psycopg.connect(url) as conn:
        conn.execute(
            """INSERT INTO payment_requests (request_id, kind, payload_hash, payload, status, member_id,
                                             amount, attempts, created_at, updated_at)
               SELECT 'history-' || i, 'payment', md5(i::text), '{}', 'paid', 'm' || (i %% %(m)s), %(amount)s, 1,
                      now(), now()
               FROM generate_series(1, %(n)s) AS i""",
            {"n": HISTORY, "m": MEMBERS, "amount": AMOUNT},
        )
        booked = conn.execute(
            """SELECT count(*) FILTER (WHERE (r.p).outcome = 'booked') FROM (
                 SELECT ledger_post('payment:history-' || i, md5(i::text), 'Club Payment', 'Table money',
                                    'history-' || i, now(), NULL, NULL, NULL, false,
                                    ARRAY[m.account_id, o.account_id], ARRAY[-%(amount)s, %(amount)s]::bigint[], NULL) AS p
                 FROM generate_series(1, %(n)s) AS i
                 JOIN members m ON m.member_id = 'm' || (i %% %(m)s)
                 JOIN organisations o ON o.org_id = 'o' || (i %% %(o)s)) AS r""",
            {"n": HISTORY, "m": MEMBERS, "o": ORGANISATIONS, "amount": AMOUNT},
        ).fetchone()[0]
    if booked != HISTORY:
        raise RuntimeError(f"seeding booked {booked} of {HISTORY} history payments")
    for i in range(1, HISTORY + 1):
        sent[("member", f"m{i % MEMBERS}")] += 1
        sent[("org", f"o{i % ORGANISATIONS}")] += 1
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return HISTORY


def check_broker(broker: redis.Redis, db: int) -> None:
    others = [c for c in broker.client_list() if int(c.get("db", -1)) == db and c["id"] != str(broker.client_id())]
    if others:
        sys.exit(f"another client is connected to Redis database {db}; pick another with PAYMENTS_BENCH_REDIS")
    broker.flushdb()


def start_worker(database_url: str) -> subprocess.Popen:
    WORKER_LOG.parent.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PAYMENTS_DATABASE_URL": database_url,
        "PAYMENTS_BROKER_URL": BROKER_URL,
        "PAYMENTS_API_TOKEN": TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    command = [str(Path(sys.executable).with_name("payments")), "worker", "--concurrency", "2",
               "--hostname", HOSTNAME]
    with open(WORKER_LOG, "wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_for_worker(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until the worker logs that it is ready (its remote control is off: no ping)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            sys.exit(f"the worker exited ({process.returncode}); see {WORKER_LOG}")
        if ' ready."' in WORKER_LOG.read_text(errors="replace"):
            return
        if time.monotonic() > deadline:
            sys.exit(f"the worker was not ready within {timeout:.0f}s; see {WORKER_LOG}")
        time.sleep(0.1)


def stop_worker(process: subprocess.Popen, timeout: float = 30.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # warm shutdown: finish what is running, then exit
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


# --- CPU accounting (Linux /proc) -------------------------------------------------------



def worker_pids(main_pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{main_pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    return [main_pid, *children]


class CpuMeter:
    """CPU used by the worker, its PostgreSQL backends and this process between start and stop.

    Backends are listed at start (after the warm-up each worker child holds its connection);
    the bench's own polling connection is counted with the sender, not with PostgreSQL.
    """

    def __init__(self, worker_pid: int, database_url: str) -> None:
        self.workers = worker_pids(worker_pid)
        self.backends = backend_pids(database_url)
        self.start = (cpu_seconds(self.workers), cpu_seconds(self.backends), time.process_time())

    def stop(self, row: Row) -> Row:
        w, p, s = cpu_seconds(self.workers), cpu_seconds(self.backends), time.process_time()
        return replace(row, worker_cpu=w - self.start[0], postgres_cpu=p - self.start[1],
                       sender_cpu=s - self.start[2])


# --- the rows ---------------------------------------------------------------------------


def run_ceiling(broker: redis.Redis, n: int) -> Row:
    sender = client.celery_for(BROKER_URL, messages.service_key(TOKEN))  # signed: the worker runs them
    start = time.perf_counter()
    for _ in range(n):
        sender.send_task("payments.ping", queue=QUEUE)
    sent = time.perf_counter()
    deadline = start + 300
    while True:
        now = time.perf_counter()
        if broker.llen(QUEUE) == 0 and broker.hlen("unacked") == 0:
            time.sleep(0.05)
            if broker.llen(QUEUE) == 0 and broker.hlen("unacked") == 0:
                return Row("ceiling", n, now - start, sent - start)
            continue
        if now > deadline:
            raise RuntimeError("pings did not drain within 300 s")
        time.sleep(0.005)


def run_payments(name: str, n: int, settings: Settings, database_url: str,
                 members: list[str], orgs: list[str], sent: Counter) -> Row:
    """Enqueue n payments as fast as possible; poll until all are paid. Counts what was sent."""
    rng = random.Random(name)
    orders = []
    for i in range(n):
        member = rng.choice(members)
        org = orgs[0] if name == "hot" else rng.choice(orgs)
        orders.append((f"{name}-{i}", member, org))
        sent[("member", member)] += 1
        sent[("org", org)] += 1
    pattern = f"{name}-%"
    with psycopg.connect(database_url, autocommit=True) as conn:
        count = "SELECT count(*) FROM payment_requests WHERE status = 'paid' AND request_id LIKE %s"
        start = time.perf_counter()
        for request_id, member, org in orders:
            client.pay(settings, token=TOKEN, request_id=request_id, member_id=member, amount="1.00",
                       description="Table money", organisation_id=org, payment_type="Club Payment")
        enqueued = time.perf_counter()
        deadline = start + 300
        while True:
            now = time.perf_counter()
            if conn.execute(count, (pattern,)).fetchone()[0] >= n:
                return Row(name, n, now - start, enqueued - start)
            if now > deadline:
                raise RuntimeError(f"{name}: not all {n} payments paid within 300 s")
            time.sleep(0.05)


# --- checks and report ------------------------------------------------------------------


def check(database_url: str, rows: dict[str, int], members: dict[str, int], orgs: dict[str, int],
          sent: Counter) -> list[str]:
    problems = []
    with psycopg.connect(database_url) as conn:
        for name, n in rows.items():
            statuses = dict(conn.execute(
                "SELECT status, count(*) FROM payment_requests WHERE request_id LIKE %s GROUP BY status",
                (f"{name}-%",),
            ).fetchall())
            if statuses != {"paid": n}:
                problems.append(f"{name}: request statuses {statuses}, expected {{'paid': {n}}}")
        unbalanced = conn.execute(
            "SELECT count(*) FROM (SELECT entry_id FROM postings GROUP BY entry_id HAVING sum(amount) <> 0) bad"
        ).fetchone()[0]
        if unbalanced:
            problems.append(f"{unbalanced} journal entries do not sum to zero")
        entries = conn.execute("SELECT count(*) FROM journal_entries WHERE type = 'Club Payment'").fetchone()
        balances = dict(conn.execute("SELECT account_id, sum(amount) FROM postings GROUP BY account_id").fetchall())
    if entries[0] != sum(rows.values()):
        problems.append(f"{entries[0]} Club Payment journal entries, expected {sum(rows.values())}")
    wrong_members = [m for m, acc in members.items()
                     if balances.get(acc, 0) != STARTING_BALANCE - AMOUNT * sent[("member", m)]]
    wrong_orgs = [o for o, acc in orgs.items() if balances.get(acc, 0) != AMOUNT * sent[("org", o)]]
    if wrong_members:
        problems.append(f"{len(wrong_members)} member balances wrong, e.g. {wrong_members[:3]}")
    if wrong_orgs:
        problems.append(f"{len(wrong_orgs)} organisation balances wrong, e.g. {wrong_orgs[:3]}")
    return problems


def print_table(results: list[Row]) -> None:
    ceiling = results[0].rate
    headers = ["row", "N", "seconds", "rate/s", "x ceiling", "enqueue s",
               "worker CPU ms/task", "postgres CPU ms/task", "sender CPU ms/task"]
    rows = [[r.name, str(r.n), f"{r.seconds:.2f}", f"{r.rate:.0f}", f"{r.rate / ceiling:.2f}",
             f"{r.enqueue_seconds:.2f}", f"{r.cpu_ms(r.worker_cpu):.2f}", f"{r.cpu_ms(r.postgres_cpu):.2f}",
             f"{r.cpu_ms(r.sender_cpu):.2f}"] for r in results]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    print(line(headers))
    print("|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":")
                         for i, w in enumerate(widths)) + "|")
    for row in rows:
        print(line(row))
    print("(seconds: first enqueue to last task done; enqueue s: time the sender took to enqueue"
          " all N, overlapping with the worker. CPU: utime+stime from /proc per task; worker ="
          " main process + 2 children, postgres = the worker's backends, sender = this process.)")
    first = results[0]
    for r in results[1:]:
        verdict = "ok" if r.rate / ceiling >= TARGET else "BELOW TARGET"
        own = (first.worker_cpu + first.postgres_cpu) / first.n / ((r.worker_cpu + r.postgres_cpu) / r.n)
        print(f"  {r.name:7} / ceiling {r.rate / ceiling:5.2f}x  (target >= {TARGET}x: {verdict});"
              f" by CPU per task (worker + postgres) {own:4.2f}x")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="tasks per row (default 3000)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    database_url = url_for(BENCH_DB)
    broker = redis.Redis.from_url(BROKER_URL)
    check_broker(broker, int(broker.connection_pool.connection_kwargs.get("db", 0)))
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    print(f"setting up {BENCH_DB} ({MEMBERS} members, {ORGANISATIONS} organisations) ...", flush=True)
    recreate_database(BENCH_DB)
    members, orgs = set_up(database_url)
    sent: Counter = Counter()
    print(f"booking {HISTORY} earlier payments as history ...", flush=True)
    history = seed_history(database_url, sent)
    settings = Settings(database_url=database_url, broker_url=BROKER_URL, api_token=TOKEN)

    print(f"starting the worker (log: {WORKER_LOG}) ...", flush=True)
    process = start_worker(database_url)
    results: list[Row] = []
    try:
        wait_for_worker(process)
        # Warm up: fork children, open their database connections, prime SQLAlchemy's caches.
        run_ceiling(broker, 50)
        warm = run_payments("warmup", 50, settings, database_url, list(members), list(orgs), sent)
        for name in ("ceiling", "spread", "hot"):
            meter = CpuMeter(process.pid, database_url)
            if name == "ceiling":
                result = run_ceiling(broker, args.n)
            else:
                result = run_payments(name, args.n, settings, database_url, list(members), list(orgs), sent)
            result = meter.stop(result)
            results.append(result)
            print(f"  {name:7}: {result.n} in {result.seconds:6.2f} s = {result.rate:6.0f}/s"
                  f" (load average {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        code = stop_worker(process)
        print(f"worker stopped (exit status {code})", flush=True)

    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (other work on the machine skews results)\n")
    print_table(results)
    problems = check(database_url, {"history": history, "warmup": warm.n, "spread": args.n, "hot": args.n}, members, orgs, sent)
    broker.close()
    if problems:
        print("\nChecks FAILED: " + "; ".join(problems))
        return 1
    print(f"\nChecks hold: exactly {args.n} spread and {args.n} hot requests paid (plus {warm.n} warm-up),"
          " every entry sums to zero, every member and organisation balance matches what was sent.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
