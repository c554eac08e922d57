"""Operations endpoints (ISSUE 12, item 5): `/metrics` only on the internal listener's app, and
`/metrics` and `/readyz` answered from a cache, so a flood of calls costs the database and the
broker one check per period. Queries are counted on the engine; broker work on a Redis server
of the test's own (its INFO counters belong to this test alone)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
import redis
from flask import Flask
from sqlalchemy import event

from shared import inbox
from shared.client import QUEUES
from shared.config import Settings
from tests.e2e.processes import PrivateRedis, private_redis, wait_for
from webhook import create_app, create_ops_app

CALLS = 25


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


@pytest.fixture
def apps(settings: Settings, broker: PrivateRedis, clean_db: None) -> Iterator[tuple[Flask, Flask]]:
    """The public app and the internal one, as `payments webhook` builds them, with a 5 s cache."""
    changed = dataclasses.replace(settings, broker_url=broker.url, ops_cache_seconds=5)
    public = create_app(changed)
    ops = create_ops_app(changed, resources=public.extensions["payments"])
    yield public, ops
    public.extensions["payments"]["engine"].dispose()
    public.extensions["payments"]["rejections"].close()


def statements_on(app: Flask) -> list[str]:
    """Every SQL statement the app's engine runs from now on."""
    seen: list[str] = []
    event.listen(app.extensions["payments"]["engine"], "before_cursor_execute",
                 lambda conn, cursor, statement, *args: seen.append(statement))
    return seen


def redis_stats(server: PrivateRedis) -> dict[str, int]:
    client = redis.Redis.from_url(server.url)
    try:
        calls = client.info("commandstats").get("cmdstat_llen", {}).get("calls", 0)
        connections = client.info("stats")["total_connections_received"]
    finally:
        client.close()
    return {"llen": calls, "connections": connections - 1}  # less this reading's own connection


def test_metrics_are_not_served_on_the_public_app(apps) -> None:
    public, ops = apps
    assert public.test_client().get("/metrics").status_code == 404
    assert ops.test_client().get("/metrics").status_code == 200


def test_quick_metrics_scrapes_query_the_database_and_the_broker_once(apps, broker) -> None:
    _, ops = apps
    client = ops.test_client()
    statements = statements_on(ops)
    before = redis_stats(broker)
    answers = {client.get("/metrics").get_data(as_text=True) for _ in range(CALLS)}
    after = redis_stats(broker)
    assert len(answers) == 1
    queries_per_render = len(statements)
    assert queries_per_render > 0
    assert after["llen"] - before["llen"] == len(QUEUES)  # one LLEN per queue, once
    # One render's queries, not CALLS of them: a second render would double them.
    client.get("/metrics")
    assert len(statements) == queries_per_render


def test_quick_readyz_calls_check_the_database_and_the_broker_once(apps, broker) -> None:
    public, _ = apps
    client = public.test_client()
    statements = statements_on(public)
    before = redis_stats(broker)
    for _ in range(CALLS):
        assert client.get("/readyz").get_json() == {"status": "ready", "checks": {"database": True, "broker": True}}
    after = redis_stats(broker)
    assert [s for s in statements if "SELECT 1" in s] == ["SELECT 1"]
    assert 1 <= after["connections"] - before["connections"] <= 2  # one broker check (kombu may reconnect once)


def test_the_cached_metrics_answer_is_refreshed_after_its_time(apps, sessions) -> None:
    public, _ = apps
    changed = dataclasses.replace(public.extensions["payments"]["settings"], ops_cache_seconds=0.5)
    ops = create_ops_app(changed)
    try:
        client = ops.test_client()
        started = time.monotonic()  # the answer is cached from the scrape below, not from the event
        assert 'payments_inbox_events{status="received"} 0.0' in client.get("/metrics").get_data(as_text=True)
        with sessions.begin() as session:
            inbox.accept(session, {"id": "evt_new", "type": "x", "data": {"object": {}}})
        assert 'payments_inbox_events{status="received"} 0.0' in client.get("/metrics").get_data(as_text=True)
        wait_for(lambda: 'payments_inbox_events{status="received"} 1.0' in client.get("/metrics").get_data(as_text=True),
                 "the metrics to show the new event", timeout=10)
        assert time.monotonic() - started >= 0.5, "refreshed before its time"
    finally:
        ops.extensions["payments"]["engine"].dispose()
        ops.extensions["payments"]["rejections"].close()


def test_readyz_notices_a_broker_going_away_once_its_answer_expires(settings, broker, clean_db) -> None:
    with private_redis() as own:
        app = create_app(dataclasses.replace(settings, broker_url=own.url, ops_cache_seconds=0.5))
        try:
            client = app.test_client()
            assert client.get("/readyz").status_code == 200
            own.stop()
            assert client.get("/readyz").status_code == 200  # the answer of a moment ago
            wait_for(lambda: client.get("/readyz").status_code == 503, "readyz to see the broker gone", timeout=15)
        finally:
            app.extensions["payments"]["engine"].dispose()
            app.extensions["payments"]["rejections"].close()
