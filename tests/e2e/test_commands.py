"""The `payments` command, really started: `db upgrade`, `worker` on Redis, and `run` on the
embedded default (SQLite database, SQLite broker)."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
import uuid
from pathlib import Path

from celery import Celery
import psycopg
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from shared import client as payments_client
from shared import messages
from shared.db import make_engine
from tests.conftest import API_TOKEN, PG_ADMIN_URL
from tests.e2e.processes import PAYMENTS, free_port, private_redis, readies, start, stop, wait_for


def test_db_upgrade_creates_the_schema_and_running_it_again_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/payments.db"
    for _ in range(2):
        done = subprocess.run(
            [PAYMENTS, "db", "upgrade"], env={"PAYMENTS_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
    engine = make_engine(url)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        systems = conn.execute(text("SELECT owner FROM accounts WHERE kind = 'system' ORDER BY owner")).scalars().all()
    engine.dispose()
    assert {"accounts", "members", "organisations", "journal_entries", "postings"} <= tables
    assert systems == ["adjustments", "bank", "fees", "stripe"]


def test_db_upgrade_migrates_as_the_owner_and_grants_the_runtime_role_only_its_privileges() -> None:
    """Migration 0010: the runtime role of PAYMENTS_DATABASE_URL never migrates; the owner's URL
    does, and grants it its privileges; a second run leaves the same grants."""
    name, role = f"payments_cmd_{uuid.uuid4().hex[:8]}", f"payments_cmd_rt_{uuid.uuid4().hex[:8]}"
    admin = make_url(PG_ADMIN_URL)
    owner_url = admin.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        env = {"PAYMENTS_DATABASE_URL": admin.set(database=name, username=role).render_as_string(hide_password=False),
               "PAYMENTS_MIGRATE_DATABASE_URL": owner_url, "PAYMENTS_DATABASE_RUNTIME_ROLE": role,
               "PATH": "/usr/bin:/bin"}
        for _ in range(2):
            done = subprocess.run([PAYMENTS, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert f"privileges of {role} granted" in done.stdout
        with psycopg.connect(owner_url) as conn:
            privileges = dict(conn.execute(
                "SELECT t, array_to_string(ARRAY(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE',"
                " 'TRUNCATE']) AS p WHERE CASE WHEN p IN ('DELETE', 'TRUNCATE') THEN has_table_privilege(%s, t, p)"
                " ELSE has_any_column_privilege(%s, t, p) END), ',')"
                " FROM unnest(ARRAY['journal_entries', 'postings', 'payment_requests', 'alembic_version']) AS t",
                [role, role],
            ).fetchall())
            key_updatable = conn.execute("SELECT has_column_privilege(%s, 'payment_requests', 'request_id', 'UPDATE')",
                                         [role]).fetchone()
            may_book = conn.execute("SELECT has_function_privilege(%s, 'ledger_post(text, text, text, text, text,"
                                    " timestamptz, text, text, text, boolean, bigint[], bigint[], text)', 'EXECUTE')",
                                    [role]).fetchone()
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f"DROP ROLE IF EXISTS {role}")
    assert privileges == {"journal_entries": "SELECT", "postings": "SELECT",
                          "payment_requests": "SELECT,INSERT,UPDATE", "alembic_version": ""}
    assert may_book == (True,) and key_updatable == (False,)


def test_worker_consumes_its_named_queues_and_celerys_default_queue(tmp_path: Path) -> None:
    # A broker of its own: a shared Redis database may hold other runs' tasks for this worker.
    with private_redis() as broker:
        _worker_consumes(broker.url, tmp_path / "worker.log")


def _worker_consumes(broker_url: str, log: Path) -> None:
    worker = start(
        ["worker", "--concurrency", "1", "--hostname", f"test-{uuid.uuid4().hex[:6]}@%h"],
        {"PAYMENTS_BROKER_URL": broker_url, "PAYMENTS_API_TOKEN": API_TOKEN},
        log,
    )
    sender = payments_client.celery_for(broker_url, messages.service_key(API_TOKEN))  # pings signed as the service's
    try:
        wait_for(lambda: readies(log) or worker.poll() is not None, "the worker to start")
        sent = [
            sender.send_task("payments.ping", queue="payments").id,
            sender.send_task("payments.ping").id,  # no queue: Celery's default `celery`
        ]
        for task_id in sent:
            wait_for(lambda: f"payments.ping[{task_id}] succeeded" in log.read_text(), f"task {task_id}")
        assert "refused" not in log.read_text()
    finally:
        assert stop(worker) == 0, log.read_text()[-2000:]


def test_worker_refuses_a_queue_the_service_does_not_have(tmp_path: Path) -> None:
    done = subprocess.run([PAYMENTS, "worker", "--queues", "payments,topup"], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "PAYMENTS_API_TOKEN": API_TOKEN,
                                           "PAYMENTS_BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.db"})
    assert done.returncode == 1
    assert done.stderr.strip().endswith("payments worker: --queues: unknown queue 'topup'; the queues are "
                                        "webhooks, payments, topups, outbox, celery")


def test_run_serves_the_api_on_sqlite_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "run.log"
    stack = start(["run", "--port", str(port)], {"PAYMENTS_API_TOKEN": "t0ken-for-the-run-command-test-only"}, log, cwd=tmp_path)
    try:
        def ready() -> dict | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                return json.load(response)

        assert wait_for(ready, "the stack to be ready", timeout=60) == {
            "status": "ready",
            "checks": {"database": True, "broker": True},
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/admin/summary", headers={"Authorization": "Bearer t0ken-for-the-run-command-test-only"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["members"] == 0
        assert (tmp_path / "var" / "payments.db").exists()
        wait_for(lambda: (tmp_path / "var" / "broker.db").exists(), "the worker to open its SQLite broker")
        wait_for(lambda: "beat: Starting" in log.read_text(), "beat to start")
        # On the SQLite broker there is no lock to share: one beat, Celery's file scheduler.
        assert "scheduler -> celery.beat.PersistentScheduler" in log.read_text()
        stack.send_signal(signal.SIGINT)
        assert stack.wait(timeout=30) == 0
    finally:
        stop(stack)
    output = log.read_text()
    assert f"API on http://127.0.0.1:{port}" in output
    assert "no PAYMENTS_STRIPE_API_KEY: localstripe on http://127.0.0.1:" in output
    assert "payments stopped" in output
    run_info = json.loads((tmp_path / "var" / "run.json").read_text())
    assert "flower" not in run_info  # no events on the SQLite broker (tests/e2e/test_flower.py runs it on Redis)
    assert run_info["metrics"].startswith("http://127.0.0.1:") and run_info["worker_metrics"].startswith("http://127.0.0.1:")
    assert (tmp_path / "var" / "run.json").stat().st_mode & 0o077 == 0
    assert (tmp_path / "var").stat().st_mode & 0o077 == 0
    for secret in ("t0ken-for-the-run-command-test-only", run_info["stripe_webhook_secret"]):
        assert secret not in output


def test_events_replay_processes_a_stored_event_again_and_names_an_unknown_one(
    sessions, database_url, stripe_api
) -> None:
    from shared import inbox
    from tests.e2e.conftest import worker_env

    with sessions.begin() as session:
        inbox.accept(session, {"id": "evt_again", "object": "event", "type": "customer.created",
                               "data": {"object": {"id": "cus_1"}}})
        inbox.finish(session, "evt_again", inbox.EventStatus.PROCESSED)
    env = {**worker_env(database_url, PAYMENTS_STRIPE_API_BASE=stripe_api), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([PAYMENTS, "events", "replay", "evt_again"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "event evt_again: ignored"), done.stderr
    with sessions.begin() as session:
        event = session.get(inbox.StripeEvent, "evt_again")
        assert (event.status, event.attempts) == ("ignored", 1)
    missing = subprocess.run([PAYMENTS, "events", "replay", "evt_nope"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert (missing.returncode, missing.stderr.strip()) == (1, "event evt_nope: not in the inbox")


def test_reconcile_runs_the_reconciler_now(sessions, database_url, stripe_api) -> None:
    from tests.e2e.conftest import worker_env

    env = {**worker_env(database_url, PAYMENTS_STRIPE_API_BASE=stripe_api), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([PAYMENTS, "reconcile"], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (
        0, "reconcile: 0 card attempts reconciled, 0 card refunds sent, 0 not sent"), done.stderr
