"""Fixtures shared by every test: a private PostgreSQL database per test run (so runs can go
side by side), emptied before each test that uses it, and the Flask app on top of it."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import make_engine, make_sessions
from shared.models import SystemAccount
from shared.schema import grant_runtime, upgrade

pytest_plugins = ["tests.stripe_fixture"]  # the `stripe_api` fixture: localstripe over HTTP

PG_ADMIN_URL = os.environ.get("PAYMENTS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PAYMENTS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
API_TOKEN = "test-token-not-a-secret-but-long-enough-for-the-check"


def _admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database with the schema, dropped after the run."""
    name = f"payments_test_{uuid.uuid4().hex[:10]}"
    try:
        with _admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable (run `make test`): {exc}")
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def runtime_database_url(database_url: str) -> Iterator[str]:
    """The service's runtime role (migration 0010): a LOGIN role of its own for this run, given
    its privileges as `payments db upgrade` gives them (`grant_runtime`), and the URL that
    connects as it. Dropped after the run (its grants first, with DROP OWNED)."""
    role = f"payments_runtime_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    with _admin() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        grant_runtime(database_url, role)
        yield make_url(database_url).set(username=role, password=password).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
            conn.execute(f"DROP OWNED BY {role}")
        with _admin() as conn:
            conn.execute(f"DROP ROLE {role}")


@pytest.fixture(scope="session")
def runtime_engine(runtime_database_url: str) -> Iterator[Engine]:
    engine = make_engine(runtime_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def runtime_sessions(runtime_engine: Engine, clean_db: None) -> sessionmaker[Session]:
    """Sessions as the runtime role, on a database emptied before the test."""
    return make_sessions(runtime_engine)


@pytest.fixture(scope="session", autouse=True)
def _empty_broker_database() -> Iterator[None]:
    """The apps of the integration tests enqueue tasks on REDIS_URL that no worker takes: empty
    it after the run, so they do not pile up from run to run."""
    yield
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.RedisError:
        pass  # Redis is down: nothing to empty
    finally:
        client.close()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def empty_database(engine: Engine) -> None:
    """Empty every table and put back the system accounts, as the first migration made them.

    TRUNCATE, because the ledger's tables (and accounts) refuse DELETE. They refuse TRUNCATE too
    (a trigger, migration 0010), so the cleanup runs, as the superuser it is, with
    session_replication_role = replica, in which triggers do not fire; only a superuser may
    set it, so the runtime role cannot do the same. SET LOCAL: it ends with this transaction.
    Stored clients go too; the bootstrap client `admin` (`API_TOKEN`) is not stored, so it keeps
    working.
    """
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("TRUNCATE accounts, account_balances, postings, journal_entries, members, organisations, payment_requests, outbox, stripe_events, card_payments, clients, client_tokens, ious"))
        conn.execute(
            text("INSERT INTO accounts (kind, owner, created_at) SELECT 'system', name, now() FROM unnest(CAST(:names AS text[])) AS name"),
            {"names": [s.value for s in SystemAccount]},
        )


@pytest.fixture
def clean_db(engine: Engine) -> None:
    empty_database(engine)


@pytest.fixture
def sessions(engine: Engine, clean_db: None) -> sessionmaker[Session]:
    return make_sessions(engine)


@pytest.fixture
def settings(database_url: str) -> Settings:
    # No cached /metrics and /readyz answers: tests read them right after a change. The cache
    # has tests of its own (tests/integration/test_ops_endpoints.py). No rate limit: the test
    # client sends hundreds of requests a second; tests/integration/test_rate_limits.py has its own.
    return Settings(database_url=database_url, broker_url=REDIS_URL, api_token=API_TOKEN, ops_cache_seconds=0,
                    rate_limit=None)


@pytest.fixture
def app(settings: Settings, clean_db: None) -> Iterator[Flask]:
    from webhook import create_app

    app = create_app(settings)
    yield app
    app.extensions["payments"]["engine"].dispose()


@pytest.fixture
def app_with(settings: Settings, clean_db: None) -> Iterator[Callable[..., Flask]]:
    """Build apps from changed settings (`app_with(api_token=None)`); engines disposed after."""
    from webhook import create_app

    apps: list[Flask] = []

    def build(**changes: Any) -> Flask:
        app = create_app(dataclasses.replace(settings, **changes))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["payments"]["engine"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def ops_client(app: Flask) -> FlaskClient:
    """The internal listener's app (`/metrics`), sharing the public app's engine and caches."""
    from webhook import create_ops_app

    return create_ops_app(app.extensions["payments"]["settings"], resources=app.extensions["payments"]).test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}
