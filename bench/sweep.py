"""Auto top-up sweep (SPEC 4.4): `payments.sweep_auto_topups` over 100,000 members.

What it measures: the sweep task's own work, in-process, exactly as a worker runs it when beat
sends it: `scheduler.jobs.sweep_auto_topups()` is called directly (imported with
PAYMENTS_DATABASE_URL and PAYMENTS_BROKER_URL set, so it uses the worker's Celery app, routes and
engine settings). It selects the due members with `shared.topups.members_due_for_topup` (one
query) and sends the due members in chunks of 100, one `payments.auto_topups` task per chunk,
each member keyed `sweep:{member}:{window}`, to Redis. The selection is timed by wrapping that function; enqueue = the rest of the call.

Data (bulk-loaded in SQL, through `ledger_post` so every entry passes the ledger's triggers):

* 100,000 members, each with a `member` account, a saved card (`stripe_customer_id`) and an auto
  top-up amount of 100.00, and 50 organisations;
* three journal entries per member (300,000 entries, 600,000 postings): an Auto Top Up from the
  `stripe` account, then a Club Payment and an Entry to an event paid to a club, leaving:
    - 5,000 members `on` and below the 20.00 low limit (0.00 to 19.99): the due ones;
    - 60 members below the limit that must not be selected: 20 `off`, 10 `failed`,
      10 `on` without a saved card, 20 `on` with an auto top-up already in flight (pending);
    - 94,940 members at or above the limit (20.00 to 499.99; 100 of them exactly 20.00),
      100 of them with a pending auto top-up;
* one succeeded auto top-up `card_payments` row per member (history), plus the pending ones.

It runs the sweep three times (Redis emptied before each; within one sweep window the keys are
identical) and checks each time that exactly 5,000 members were selected, that the `topups`
queue holds 50 `payments.auto_topups` messages of at most 100 members with one distinct key
per due member, and that none of the 60 is among them. Then it prints EXPLAIN (ANALYZE, BUFFERS) of the query.

    .venv/bin/python bench/sweep.py              # about 1 minute, most of it loading
    .venv/bin/python bench/sweep.py --runs 5 --skip-load   # reuse the loaded database
    .venv/bin/python bench/sweep.py --skip-load --compare 5  # also time other ways of enqueueing

It drops and recreates the database `payments_bench_sweep` on the server given by
PAYMENTS_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres) and flushes Redis
database 7 (PAYMENTS_BENCH_SWEEP_REDIS, default redis://127.0.0.1:6379/7).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import schema  # noqa: E402
from common import recreate_database, url_for  # bench/common.py, beside this script

BROKER_URL = os.environ.get("PAYMENTS_BENCH_SWEEP_REDIS", "redis://127.0.0.1:6379/7")
BENCH_DB = "payments_bench_sweep"
MEMBERS = 100_000
ORGANISATIONS = 50
DUE = 5_000
LOW_LIMIT = 20_00
QUEUE = "topups"
TARGET_SECONDS = 0.5  # issue 16 (issue 6: 2.0)

# Below the limit but not due: (how many, status, has a card, pending auto top-up).
NOT_DUE = (
    (20, "off", True, False),
    (10, "failed", True, False),
    (10, "on", False, False),
    (20, "on", True, True),
)
PENDING_ABOVE = 100  # members above the limit with an auto top-up in flight


# Member i (0-based) is "m000123". Due: i % 20 == 0 (5,000). Not due though below the limit: the
# first 60 members with i % 20 == 10, in the groups of NOT_DUE. The rest: at or above the limit.
SETUP_SQL = """
CREATE TABLE plan AS
SELECT i,
       'm' || lpad(i::text, 6, '0') AS member_id,
       CASE WHEN i % 20 = 0 THEN 'due'
            WHEN i % 20 = 10 AND i / 20 < %(not_due)s THEN 'low'
            ELSE 'above' END AS shape,
       (i / 20) AS n
  FROM generate_series(0, %(members)s - 1) AS i;

ALTER TABLE plan ADD COLUMN target bigint, ADD COLUMN spend bigint, ADD COLUMN status text,
                 ADD COLUMN card boolean, ADD COLUMN pending boolean;
UPDATE plan SET
  target = CASE WHEN shape IN ('due', 'low') THEN (n * 37) % %(low)s
                WHEN i % 1000 = 1 THEN %(low)s
                ELSE %(low)s + (i * 7919) % 48000 END,
  spend  = 3000 + (i % 7) * 500,
  status = 'on', card = true, pending = false;
"""


ENTRIES = (
    ("topup", "Auto Top Up", "Top up by card", "m.account", "stripe.id", "p.target + p.spend"),
    ("pay1", "Club Payment", "Club fees", "o.account", "m.account", "p.spend / 3"),
    ("pay2", "Entry to an event", "Event entry", "o.account", "m.account", "p.spend - p.spend / 3"),
)
BOOK_SQL = """
SELECT count(*) FILTER (WHERE (r).outcome = 'booked') FROM (
  SELECT ledger_post(
           'bench:{key}:' || p.member_id, md5('bench:{key}:' || p.member_id), '{entry_type}',
           '{description}', p.member_id, now(), NULL, NULL, NULL, false,
           ARRAY[{credit}, {debit}], ARRAY[{amount}, -({amount})], NULL) AS r
    FROM plan p
    JOIN LATERAL (SELECT a.id AS account FROM accounts a
                   WHERE a.kind = 'member' AND a.owner = p.member_id) m ON true
    JOIN LATERAL (SELECT a.id AS account FROM accounts a
                   WHERE a.kind = 'organisation' AND a.owner = 'o' || (p.i %% {orgs})) o ON true
    CROSS JOIN (SELECT id FROM accounts WHERE kind = 'system' AND owner = 'stripe') stripe
   WHERE p.i >= %s AND p.i < %s
   ORDER BY p.i) booked
"""


def set_up(url: str) -> None:
    schema.upgrade(url)
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        conn.execute(SETUP_SQL.replace("%(not_due)s", str(sum(g[0] for g in NOT_DUE)))
                     .replace("%(members)s", str(MEMBERS)).replace("%(low)s", str(LOW_LIMIT)))
        # The groups of members below the limit that are not due, in member order.
        offset = 0
        for count, status, card, pending in NOT_DUE:
            conn.execute(
                "UPDATE plan SET status = %s, card = %s, pending = %s WHERE i IN ("
                " SELECT i FROM plan WHERE shape = 'low' ORDER BY i OFFSET %s LIMIT %s)",
                (status, card, pending, offset, count),
            )
            offset += count
        conn.execute(
            "UPDATE plan SET pending = true WHERE i IN ("
            " SELECT i FROM plan WHERE shape = 'above' ORDER BY i DESC LIMIT %s)", (PENDING_ABOVE,)
        )
        conn.execute(
            "INSERT INTO accounts (kind, owner, created_at)"
            " SELECT 'member', member_id, now() FROM plan ORDER BY i"
        )
        conn.execute(
            "INSERT INTO accounts (kind, owner, created_at)"
            " SELECT 'organisation', 'o' || j, now() FROM generate_series(0, %s - 1) AS j", (ORGANISATIONS,)
        )
        conn.execute(
            "INSERT INTO organisations (org_id, account_id, name, minimum_balance_after_settlement,"
            " created_at, updated_at)"
            " SELECT a.owner, a.id, 'Club ' || a.owner, 0, now(), now() FROM accounts a"
            " WHERE a.kind = 'organisation'"
        )
        conn.execute(
            "INSERT INTO members (member_id, account_id, email, first_name, last_name, low_balance_emails,"
            " auto_topup_status, auto_topup_amount, stripe_customer_id, created_at, updated_at)"
            " SELECT p.member_id, a.id, p.member_id || '@example.org', 'Bench', p.member_id, false,"
            " p.status, 10000, CASE WHEN p.card THEN 'cus_' || p.member_id END, now(), now()"
            " FROM plan p JOIN accounts a ON a.kind = 'member' AND a.owner = p.member_id"
        )
        conn.commit()
        print(f"  members and accounts: {time.perf_counter() - started:.1f} s", flush=True)

    # Three entries per member through ledger_post (the only way postings may be written): a
    # top-up of target + spend, then two payments to a club summing to spend. The first 1,000
    # members are booked and the tables analysed before the rest, on a fresh connection: the
    # ledger's PL/pgSQL plans are cached per connection, and plans made while the tables were
    # empty scan them whole (quadratic over 300,000 entries).
    for first, last in ((0, 1_000), (1_000, MEMBERS)):
        with psycopg.connect(url) as conn:
            for key, entry_type, description, credit, debit, amount in ENTRIES:
                step = time.perf_counter()
                booked = conn.execute(BOOK_SQL.format(key=key, entry_type=entry_type, description=description,
                                                      credit=credit, debit=debit, amount=amount,
                                                      orgs=ORGANISATIONS), (first, last)).fetchone()[0]
                conn.commit()  # the deferred balance check of every entry runs here
                assert booked == last - first, f"{key}: {booked} entries booked"
                print(f"  {booked:,} '{entry_type}' entries: {time.perf_counter() - step:.1f} s", flush=True)
            conn.execute("ANALYZE journal_entries")
            conn.execute("ANALYZE postings")
            conn.commit()

    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO card_payments (attempt_key, kind, status, member_id, amount, payment_intent_id,"
            " tries, refunded, created_at, updated_at)"
            " SELECT 'bench:topup:' || member_id, 'auto_topup', 'succeeded', member_id, target + spend,"
            " 'pi_' || member_id, 1, 0, now() - interval '1 day', now() - interval '1 day' FROM plan"
        )
        conn.execute(
            "INSERT INTO card_payments (attempt_key, kind, status, member_id, amount, tries, refunded,"
            " created_at, updated_at)"
            " SELECT 'bench:pending:' || member_id, 'auto_topup', 'pending', member_id, 10000, 1, 0, now(), now()"
            " FROM plan WHERE pending"
        )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"  loaded and vacuumed in {time.perf_counter() - started:.1f} s", flush=True)


def expected(url: str) -> tuple[set[str], set[str], dict[str, int]]:
    """The due members, the below-limit members that are not due, and the data shape, from the
    plan and the ledger (not from the query under test)."""
    with psycopg.connect(url) as conn:
        balances = conn.execute(
            "SELECT m.member_id, m.auto_topup_status, m.stripe_customer_id IS NOT NULL,"
            " EXISTS (SELECT 1 FROM card_payments c WHERE c.member_id = m.member_id"
            "         AND c.kind = 'auto_topup' AND c.status = 'pending'),"
            " (SELECT sum(p.amount) FROM postings p WHERE p.account_id = m.account_id)"
            " FROM members m"
        ).fetchall()
        shape = {
            "members": len(balances),
            "journal entries": conn.execute("SELECT count(*) FROM journal_entries").fetchone()[0],
            "postings": conn.execute("SELECT count(*) FROM postings").fetchone()[0],
            "card_payments": conn.execute("SELECT count(*) FROM card_payments").fetchone()[0],
        }
    below = {m for m, _, _, _, b in balances if b < LOW_LIMIT}
    due = {m for m, status, card, pending, b in balances if b < LOW_LIMIT and status == "on" and card and not pending}
    shape["below the limit"] = len(below)
    shape["exactly at the limit"] = sum(1 for *_, b in balances if b == LOW_LIMIT)
    shape["pending auto top-ups"] = sum(1 for _, _, _, pending, _ in balances if pending)
    return due, below - due, shape


def queued(broker: redis.Redis) -> list[dict]:
    messages = []
    for raw in broker.lrange(QUEUE, 0, -1):
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        body = json.loads(body)
        messages.append({"task": message["headers"]["task"], "kwargs": body[1]})
    return messages


def chunked_members(messages: list[dict]) -> list[dict]:
    """The members of the sweep's chunks (`payments.auto_topups`), each `{member_id, key}`."""
    return [member for m in messages for member in m["kwargs"]["members"]]


def explain(url: str) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statement `members_due_for_topup` sends, with its
    parameters, in the same transaction (so with the settings it makes)."""
    from sqlalchemy import event

    from shared import topups
    from shared.config import Settings
    from shared.db import make_engine, make_sessions

    engine = make_engine(url)
    sent: list[tuple[str, object]] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, parameters, *_: sent.append(
        (statement, parameters)))
    try:
        with make_sessions(engine).begin() as session:
            topups.members_due_for_topup(session, Settings(auto_topup_low_limit=LOW_LIMIT))
            statements = list(sent)
            statement, parameters = statements[-1]
            plan = session.connection().exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            lines = [row[0] for row in plan]
    finally:
        engine.dispose()
    return [f"{len(statements)} statements sent; the query (parameters {parameters}):",
            *statement.splitlines(), "", *lines]


def compare_enqueue(broker: redis.Redis, members: list[str], reps: int) -> None:
    """The ways of sending the same 5,000 messages that were measured, interleaved so that each
    sees the same machine; seconds of wall time, best and median of `reps`."""
    from celery import group

    from worker.app import app

    def one_by_one() -> None:  # the sweep before: one Redis round trip (and client) per message
        with app.producer_or_acquire() as producer:
            for m in members:
                app.send_task("payments.auto_topup", kwargs={"member_id": m, "key": f"sweep:{m}:0"},
                              producer=producer)

    def celery_group() -> None:
        group(app.signature("payments.auto_topup", kwargs={"member_id": m, "key": f"sweep:{m}:0"})
              for m in members).apply_async()

    def batch() -> None:
        with app.producer_or_acquire() as producer, producer.batch():
            for m in members:
                app.send_task("payments.auto_topup", kwargs={"member_id": m, "key": f"sweep:{m}:0"},
                              producer=producer)

    def batch_declared_once() -> None:  # what the sweep does now
        queue = app.amqp.queues["topups"]
        with app.producer_or_acquire() as producer, producer.batch():
            producer.maybe_declare(queue)
            for m in members:
                app.send_task("payments.auto_topup", kwargs={"member_id": m, "key": f"sweep:{m}:0"},
                              producer=producer, declare=[])

    ways = {"one by one (before)": one_by_one, "group(...).apply_async()": celery_group,
            "producer.batch()": batch, "producer.batch(), queue declared once (now)": batch_declared_once}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(reps):
        for name, send in ways.items():
            broker.flushdb()
            begin = time.perf_counter()
            send()
            times[name].append(time.perf_counter() - begin)
            assert broker.llen(QUEUE) == len(members), name
    broker.flushdb()
    print(f"\nEnqueueing {len(members):,} messages, {reps} times each, interleaved:")
    width = max(map(len, ways))
    for name, values in times.items():
        values.sort()
        print(f"  {name:{width}}  best {values[0]:.3f} s, median {values[len(values) // 2]:.3f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-load", action="store_true", help="reuse the database of the last run")
    parser.add_argument("--compare", type=int, default=0, metavar="REPS",
                        help="also time other ways of enqueueing, REPS times each")
    args = parser.parse_args()

    url = url_for(BENCH_DB)
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    if not args.skip_load:
        print(f"setting up {BENCH_DB} ...", flush=True)
        recreate_database(BENCH_DB)
        set_up(url)
    due, not_due, shape = expected(url)
    print("data: " + ", ".join(f"{name} {count:,}" for name, count in shape.items()), flush=True)
    assert len(due) == DUE, f"{len(due)} members due, expected {DUE}"

    # The worker's app, engine and routes, pointed at the bench database and Redis db 7.
    os.environ["PAYMENTS_DATABASE_URL"] = url
    os.environ["PAYMENTS_BROKER_URL"] = BROKER_URL
    from shared import topups
    from scheduler import jobs
    from worker.app import settings

    assert settings().database_url == url and settings().broker_url == BROKER_URL
    broker = redis.Redis.from_url(BROKER_URL)

    select_query = topups.members_due_for_topup
    marks: dict[str, float] = {}

    def timed_selection(session, config):  # the same function, timed
        begin = time.perf_counter()
        result = select_query(session, config)
        marks["selected"] = time.perf_counter()
        marks["selection"] = marks["selected"] - begin
        return result

    topups.members_due_for_topup = timed_selection
    failures = []
    rows = []
    try:
        for run in range(1, args.runs + 1):
            broker.flushdb()
            begin = time.perf_counter()
            count = jobs.sweep_auto_topups()
            end = time.perf_counter()
            total, selection, enqueue = end - begin, marks["selection"], end - marks["selected"]
            messages = queued(broker)
            sent = chunked_members(messages)
            keys = {m["key"] for m in sent}
            members = {m["member_id"] for m in sent}
            ok = (
                count == DUE and len(sent) == DUE and members == due and len(keys) == DUE
                and all(m["task"] == "payments.auto_topups" for m in messages)
                and len(messages) == -(-DUE // jobs.SWEEP_CHUNK)
                and all(len(m["kwargs"]["members"]) <= jobs.SWEEP_CHUNK for m in messages)
                and all(m["key"].startswith(f"sweep:{m['member_id']}:") for m in sent)
                and not members & not_due
            )
            if not ok:
                failures.append(run)
            rows.append((run, selection, enqueue, total, count, len(messages), ok))
            print(f"  run {run}: selection {selection:.3f} s, enqueue {enqueue:.3f} s, total {total:.3f} s,"
                  f" selected {count:,}, queue '{QUEUE}' {len(messages):,} chunks of {len(sent):,} members"
                  f" {'ok' if ok else 'WRONG'}", flush=True)
    finally:
        topups.members_due_for_topup = select_query

    print(f"\nload average at end: {os.getloadavg()[0]:.2f}\n")
    headers = ["run", "selection s", "enqueue s", "total s", "selected", f"chunks in '{QUEUE}'", "check"]
    table = [[str(r), f"{s:.3f}", f"{e:.3f}", f"{t:.3f}", f"{c:,}", f"{q:,}", "ok" if ok else "WRONG"]
             for r, s, e, t, c, q, ok in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.rjust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in table:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")

    print("\nThe selection query and its plan:")
    for line in explain(url):
        print("  " + line)

    if args.compare:
        compare_enqueue(broker, sorted(due), args.compare)

    worst = max(r[3] for r in rows)
    print(f"\nslowest total {worst:.3f} s (target < {TARGET_SECONDS} s: "
          f"{'ok' if worst < TARGET_SECONDS else 'ABOVE TARGET'})")
    if failures:
        print(f"runs {failures}: wrong members or messages")
        return 1
    return 0 if worst < TARGET_SECONDS else 2


if __name__ == "__main__":
    sys.exit(main())
