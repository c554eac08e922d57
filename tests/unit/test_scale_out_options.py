"""The options of scale-out (README "Scaling out"): which queues a worker consumes, and which
scheduler beat runs on which broker. The processes themselves: tests/e2e/test_scale_out.py."""

from __future__ import annotations

import pytest
from celery import Celery

from payments_cli import _worker_queues
from scheduler import redis_lock
from scheduler.schedule import lock_seconds, uses_lock
from shared.client import QUEUES
from shared.errors import ConfigError


def test_a_worker_consumes_every_queue_unless_told(monkeypatch) -> None:
    monkeypatch.delenv("PAYMENTS_WORKER_QUEUES", raising=False)
    assert _worker_queues(["--concurrency", "2", "-E"], QUEUES) == (list(QUEUES), ["--concurrency", "2", "-E"])


@pytest.mark.parametrize(("argv", "queues", "rest"), [
    (["--queues", "topups,outbox", "-E"], ["topups", "outbox"], ["-E"]),
    (["-Q", "webhooks, payments ,celery"], ["webhooks", "payments", "celery"], []),
    (["--queues=outbox", "--hostname", "b@%h"], ["outbox"], ["--hostname", "b@%h"]),
])
def test_the_command_line_chooses_the_queues_over_the_environment(monkeypatch, argv, queues, rest) -> None:
    monkeypatch.setenv("PAYMENTS_WORKER_QUEUES", "payments")
    assert _worker_queues(argv, QUEUES) == (queues, rest)


def test_the_environment_chooses_the_queues(monkeypatch) -> None:
    monkeypatch.setenv("PAYMENTS_WORKER_QUEUES", "topups,outbox")
    assert _worker_queues(["--concurrency", "1"], QUEUES) == (["topups", "outbox"], ["--concurrency", "1"])


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--queues", "topup"], "", "--queues: unknown queue 'topup'"),
    (["--queues", ","], "", "--queues: no queue named"),
    ([], "payments,emails", "PAYMENTS_WORKER_QUEUES: unknown queue 'emails'"),
])
def test_an_unknown_queue_is_refused_naming_where_it_came_from(monkeypatch, argv, env, message) -> None:
    monkeypatch.setenv("PAYMENTS_WORKER_QUEUES", env)
    with pytest.raises(SystemExit) as refused:
        _worker_queues(argv, QUEUES)
    assert str(refused.value) == (f"payments worker: {message}; the queues are "
                                  "webhooks, payments, topups, outbox, celery")


def test_beats_share_a_lock_on_redis_only() -> None:
    assert uses_lock("redis://beat:pw@redis:6379/0") and uses_lock("rediss://redis:6380/0")
    assert not uses_lock("sqla+sqlite:///var/broker.db")  # the embedded default: one beat, its file


def test_the_lock_time_sets_the_tick(monkeypatch) -> None:
    monkeypatch.setenv("PAYMENTS_BEAT_LOCK_SECONDS", "10")
    app = Celery("payments")
    redis_lock.configure(app, "redis://127.0.0.1:6379/0", lock_seconds())
    assert app.conf.beat_scheduler == "scheduler.redis_lock:RedisLockScheduler"
    assert (app.conf.redbeat_lock_timeout, app.conf.beat_max_loop_interval) == (10, 2)
    assert app.conf.redbeat_redis_url == "redis://127.0.0.1:6379/0"


def test_the_lock_time_defaults_to_25_seconds_and_must_be_positive(monkeypatch) -> None:
    monkeypatch.delenv("PAYMENTS_BEAT_LOCK_SECONDS", raising=False)
    assert lock_seconds() == 25
    monkeypatch.setenv("PAYMENTS_BEAT_LOCK_SECONDS", "0")
    with pytest.raises(ConfigError) as refused:
        lock_seconds()
    assert refused.value.field == "PAYMENTS_BEAT_LOCK_SECONDS"
