"""The broker's users of deploy/redis/start.sh, as docker-compose runs them: a real Redis started
by that script; a real `payments worker` logging in as its `worker` user, as compose starts it
(`-E`), stays up and consumes; the webhook (its `webhook` user) and a calling module (the
`modules` user) send payments it pays. (The worker's gossip once PSUBSCRIBEd a pattern the rules
did not list literally, and the worker died right after "ready": nothing else in the suite logs
in as a restricted user.)"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from celery import Celery
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from shared import client as payments_client
from shared.config import Settings
from tests.conftest import API_TOKEN
from tests.e2e.conftest import PASSWORDS, broker_user_url as _url, worker_env
from tests.e2e.processes import readies, start, stop, wait_for
from tests.integration.helpers import add_member, add_organisation, top_up

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


@pytest.fixture
def restricted_worker(restricted_redis: int, runtime_database_url: str, tmp_path: Path) -> Iterator[subprocess.Popen]:
    log = tmp_path / "worker.log"
    env = worker_env(runtime_database_url, PAYMENTS_BROKER_URL=_url("worker", restricted_redis))
    process = start(["worker", "--concurrency", "1", "-E"], env, log)
    wait_for(lambda: readies(log) or process.poll() is not None, "the worker to start", 60)
    yield process
    assert process.poll() is None, log.read_text(errors="replace")[-3000:]  # still up at the end
    stop(process)


def test_a_worker_logged_in_as_its_broker_user_stays_up_and_consumes(
    restricted_redis: int, restricted_worker: subprocess.Popen
) -> None:
    sender = Celery(broker=_url("worker", restricted_redis))
    for _ in range(3):
        sender.send_task("payments.ping", queue="payments")
    queue = redis.Redis(port=restricted_redis, username="worker", password=PASSWORDS["REDIS_WORKER_PASSWORD"])
    wait_for(lambda: restricted_worker.poll() is not None or (queue.llen("payments") == 0 and queue.hlen("unacked") == 0),
             "the worker to consume three pings", 30)


def test_payments_sent_as_the_webhook_and_as_a_module_are_paid_by_the_worker(
    restricted_redis: int, restricted_worker: subprocess.Popen, app_with: Callable[..., Flask],
    settings: Settings, sessions: sessionmaker[Session], auth: dict[str, str],
) -> None:
    with sessions.begin() as session:
        top_up(session, add_member(session, "ann"), 100_00, "seed")
        add_organisation(session, "club")
    payment = {"member_id": "ann", "amount": "10.00", "description": "Table money", "organisation_id": "club"}
    api = app_with(broker_url=_url("webhook", restricted_redis)).test_client()
    sent = api.post("/api/payments", headers=auth, json={"request_id": "by-webhook", **payment})
    assert sent.status_code == 202, sent.get_json()
    payments_client.pay(replace(settings, broker_url=_url("modules", restricted_redis)), token=API_TOKEN,
                        request_id="by-module", **payment)

    def status(request_id: str) -> str:
        return api.get(f"/api/payments/{request_id}", headers=auth).get_json()["status"]

    wait_for(lambda: restricted_worker.poll() is not None or {status("by-webhook"), status("by-module")} == {"paid"},
             "both payments to be paid", 30)


def test_the_beat_user_keeps_its_schedule_and_lock_under_redbeat_and_cannot_touch_a_queue(
    restricted_redis: int,
) -> None:
    """What celery-redbeat does (scheduler/redis_lock.py; two beats really run in
    tests/e2e/test_scale_out.py), and no more: its keys give it no way into the queues."""
    beat = redis.Redis(port=restricted_redis, username="beat", password=PASSWORDS["REDIS_BEAT_PASSWORD"])
    lock = beat.lock("redbeat::lock", timeout=5)
    assert lock.acquire(blocking=False) and lock.reacquire() and lock.owned()
    lock.release()
    with beat.pipeline() as pipe:
        pipe.hset("redbeat:relay-outbox", "definition", "{}").hsetnx("redbeat:relay-outbox", "meta", "{}")
        pipe.zadd("redbeat::schedule", {"redbeat:relay-outbox": 1.0}).zrangebyscore("redbeat::schedule", 0, 2)
        assert pipe.execute()[-1] == [b"redbeat:relay-outbox"]
    beat.lpush("payments", "a message")  # as before: publish only
    for forbidden in (lambda: beat.delete("payments"), lambda: beat.lrange("payments", 0, -1),
                      lambda: beat.rpop("payments"), lambda: beat.set("payments", "x"), lambda: beat.get("unacked")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()
