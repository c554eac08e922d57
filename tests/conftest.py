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
from shared.schema import upgrade

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

    TRUNCATE, because the ledger's tables (and accounts) refuse DELETE. Stored clients go too;
    the bootstrap client `admin` (`API_TOKEN`) is not stored, so it keeps working.
    """
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE accounts, postings, journal_entries, members, organisations, payment_requests, outbox, stripe_events, card_payments, clients, client_tokens"))
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
    # has tests of its own (tests/integration/test_ops_endpoints.py).
    return Settings(database_url=database_url, broker_url=REDIS_URL, api_token=API_TOKEN, ops_cache_seconds=0)


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
