"""End-to-end fixtures: a real `payments worker` on Redis and PostgreSQL, and a second Celery
app consuming callbacks on its own queue. Both are started once per test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

import urllib.request

from tests.conftest import API_TOKEN, REDIS_URL
from tests.e2e.processes import free_port, readies, start, stop, wait_for
from tests.stripe_fixture import STRIPE_TEST_KEY, register_webhook

# A Redis database of its own per run, so side-by-side runs do not share queues. Not the one the
# integration tests enqueue into (PAYMENTS_TEST_REDIS_URL): the e2e worker lives for the whole
# run, and would take and decide their tasks under them.
REDIS_DB = int(os.environ.get("PAYMENTS_TEST_REDIS_DB", str(1 + uuid.uuid4().int % 14)))
BROKER = f"redis://127.0.0.1:6379/{REDIS_DB}"
if BROKER == REDIS_URL.rstrip("/"):
    raise RuntimeError(f"PAYMENTS_TEST_REDIS_DB={REDIS_DB} is the database of PAYMENTS_TEST_REDIS_URL ({REDIS_URL}):"
                       " give the e2e worker another one")
CALLBACK_QUEUE = "events"
CALLBACK_LIST = "callbacks-received"
# EVT reaches the events app; GONE names a route code no one configured.
ROUTES = f"EVT=events.payment_done@{CALLBACK_QUEUE}"


WEBHOOK_SECRET = "whsec_e2e_not_a_secret"
HEAL_MAX_TRIES = 20
PUBLISHABLE_KEY = "pk_test_e2e"
# Where the session's localstripe listens; set by the `worker` fixture, which starts it first.
STRIPE_BASE: list[str] = []


def worker_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "PAYMENTS_DATABASE_URL": database_url,
        "PAYMENTS_BROKER_URL": BROKER,
        # The bootstrap client, and the key the service signs its own task messages with.
        "PAYMENTS_API_TOKEN": API_TOKEN,
        "PAYMENTS_STRIPE_API_KEY": STRIPE_TEST_KEY,
        "PAYMENTS_STRIPE_API_BASE": STRIPE_BASE[0] if STRIPE_BASE else "",
        "PAYMENTS_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PAYMENTS_STRIPE_PUBLISHABLE_KEY": PUBLISHABLE_KEY,
        # The pages load localstripe's stand-in for Stripe.js.
        "PAYMENTS_STRIPE_JS_URL": f"{STRIPE_BASE[0]}/js.stripe.com/v3/" if STRIPE_BASE else "",
        "PAYMENTS_CALLBACK_ROUTES": ROUTES,
        # The bootstrap client's callback key is derived from it (shared.client.admin_callback_key).
        "PAYMENTS_API_TOKEN": API_TOKEN,
        "PAYMENTS_OUTBOX_MAX_ATTEMPTS": "3",
        "PAYMENTS_OUTBOX_BACKOFF_SECONDS": "0.2",
        "PAYMENTS_REDRIVE_AFTER_SECONDS": "0.5",
        # Healing backs a row off by 1 s, doubling up to 10 s, and gives it up after 20 tries
        # (about 3 minutes): quick for tests, slower than any backlog a test makes.
        "PAYMENTS_HEAL_BACKOFF_SECONDS": "1",
        "PAYMENTS_HEAL_BACKOFF_MAX_SECONDS": "10",
        "PAYMENTS_HEAL_MAX_TRIES": str(HEAL_MAX_TRIES),
        # The limiter counts in Redis as in production, with room for the storm's bursts.
        "PAYMENTS_RATE_LIMIT": "2000/second",
        **extra,
    }


# The broker's users of deploy/redis/start.sh (README "Security model") and their test passwords.
PASSWORDS = {f"REDIS_{user}_PASSWORD": f"test-{user.lower()}-password"
             for user in ("WORKER", "BEAT", "WEBHOOK", "MODULES", "FLOWER")}
REDIS_START = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "start.sh"


@pytest.fixture
def restricted_redis(tmp_path: Path) -> Iterator[int]:
    """A private Redis started by deploy/redis/start.sh, as compose starts it (the production
    users, `default` off), on a free port; yields the port."""
    port = free_port()
    env = {**os.environ, **PASSWORDS, "REDIS_ACL_FILE": str(tmp_path / "users.acl")}
    with open(tmp_path / "redis.log", "wb") as log:
        process = subprocess.Popen(
            ["sh", str(REDIS_START), "--port", str(port), "--dir", str(tmp_path), "--appendonly", "no", "--save", ""],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    admin = redis.Redis(port=port, username="worker", password=PASSWORDS["REDIS_WORKER_PASSWORD"])
    wait_for(admin.ping, "the restricted Redis to start", 20)
    admin.close()
    yield port
    process.terminate()
    process.wait(10)


def broker_user_url(user: str, port: int) -> str:
    """The broker URL of one of the restricted Redis's users."""
    return f"redis://{user}:{PASSWORDS[f'REDIS_{user.upper()}_PASSWORD']}@127.0.0.1:{port}/0"


# The broker, the worker and the events app live for one package (tests/e2e, tests/faults), not
# the whole run: the worker's inbox consumer takes `received` Stripe events from the shared test
# database, which the integration tests after them must have to themselves.
@pytest.fixture(scope="package")
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="package")
def worker(
    runtime_database_url: str, broker: redis.Redis, stripe_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A real `payments worker` with two processes, on localstripe; yields its log file. It logs
    in as the runtime role (migration 0010), as in production: no UPDATE, DELETE or TRUNCATE of
    the ledger, bookings only through `ledger_post`."""
    STRIPE_BASE[:] = [stripe_api]
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start(["worker", "--concurrency", "2", "--hostname", f"e2e-{REDIS_DB}@%h"],
                    worker_env(runtime_database_url), log)
    wait_for(lambda: readies(log) or process.poll() is not None, "the worker to start", 60)
    assert process.poll() is None, log.read_text()[-3000:]
    yield log
    stop(process)


@pytest.fixture(scope="package")
def callback_consumer(broker: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The events module's own Celery worker, on its own queue."""
    log = tmp_path_factory.mktemp("events") / "events.log"
    env = {**os.environ, "CALLBACK_BROKER_URL": BROKER, "CALLBACK_QUEUE": CALLBACK_QUEUE, "CALLBACK_LIST": CALLBACK_LIST}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.e2e.callback_app", "worker", "--queues", CALLBACK_QUEUE,
             "--concurrency", "1", "--hostname", f"events-{REDIS_DB}@%h", "--pool", "solo"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    sender = Celery(broker=BROKER)
    wait_for(lambda: any(f"events-{REDIS_DB}" in name for r in sender.control.ping(timeout=0.5) for name in r),
             "the events worker to start", 60)
    yield
    sender.close()
    stop(process)


@pytest.fixture
def received(broker: redis.Redis, callback_consumer: None):
    """A function returning the callbacks the events app has received so far."""
    broker.delete(CALLBACK_LIST)
    return lambda: [json.loads(item) for item in broker.lrange(CALLBACK_LIST, 0, -1)]


# Per module: once its tests are done the server stops, so a late localstripe delivery cannot
# write into the shared database while later tests count its rows.
@pytest.fixture(scope="module")
def webhook_url(
    runtime_database_url: str, worker: Path, stripe_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The real webhook server (`payments webhook`, gunicorn, as the runtime role), registered
    with localstripe, which delivers its payment_intent.* events to it about a second after each
    API call."""
    port = free_port()
    log = tmp_path_factory.mktemp("webhook") / "webhook.log"
    base = f"http://127.0.0.1:{port}"
    process = start(["webhook", "--port", str(port), "--workers", "1"],
                    worker_env(runtime_database_url, PAYMENTS_PUBLIC_URL=base), log)

    def healthy() -> bool:
        with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
            return response.status == 200

    wait_for(healthy, "the webhook server", 30)
    register_webhook(stripe_api, f"e2e-{REDIS_DB}", url=f"{base}/stripe/webhook", secret=WEBHOOK_SECRET,
                     events=["payment_intent.succeeded", "payment_intent.payment_failed"])
    yield f"{base}/stripe/webhook"
    stop(process)
