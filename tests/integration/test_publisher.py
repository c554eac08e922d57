"""The service's per-process publisher (shared.messages.Publisher), which the webhook uses on
SQLite: the message is the one Celery's `send_task` makes, signed, one connection is kept, and
a broker that goes away fails a send at once and is reconnected to at the next one."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError as BrokerError

from shared import inbox, messages
from shared.client import celery_for
from shared.config import Settings
from shared.db import make_engine, one_statement
from shared.schema import upgrade
from tests.conftest import API_TOKEN, REDIS_URL
from tests.e2e.processes import free_port, private_redis

TASK = "payments.process_stripe_event"
# A queue no worker consumes (an e2e worker on the same Redis database would take `webhooks`).
QUEUE = "test-publisher"


def queued(broker: redis.Redis, queue: str = QUEUE) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(broker.lrange(queue, 0, -1))]


@pytest.fixture
def broker() -> Any:
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(QUEUE)
    yield client
    client.delete(QUEUE)
    client.close()


def test_the_message_is_the_one_send_task_makes_and_carries_the_service_signature(broker: redis.Redis) -> None:
    settings = Settings(broker_url=REDIS_URL, api_token=API_TOKEN)
    key = messages.service_key(API_TOKEN)
    celery_for(REDIS_URL, key).send_task(TASK, kwargs={"event_id": "evt_1"}, queue=QUEUE)
    messages.send(TASK, {"event_id": "evt_1"}, queue=QUEUE, settings=settings)
    by_celery, by_publisher = queued(broker)
    assert by_publisher["body"] == by_celery["body"]
    assert base64.b64decode(by_publisher["body"]) == b'[[], {"event_id": "evt_1"}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    same = ("id", "root_id", "origin")  # per message, or per process
    assert {k: v for k, v in by_publisher["headers"].items() if k not in same} == \
        {k: v for k, v in by_celery["headers"].items() if k not in same}
    assert messages.from_service(key, TASK, [], {"event_id": "evt_1"}, by_publisher["headers"])
    for field in ("content-type", "content-encoding"):
        assert by_publisher[field] == by_celery[field]
    properties = by_publisher["properties"]
    assert properties["correlation_id"] == by_publisher["headers"]["id"]
    assert properties["delivery_info"] == {"exchange": "", "routing_key": QUEUE}  # the default exchange
    per_message = ("correlation_id", "delivery_tag", "delivery_info")
    assert {k: v for k, v in properties.items() if k not in per_message} == \
        {k: v for k, v in by_celery["properties"].items() if k not in per_message}


def test_one_connection_is_kept_for_every_send_of_a_process(broker: redis.Redis) -> None:
    settings = Settings(broker_url=REDIS_URL, api_token=API_TOKEN)
    messages.send(TASK, {"event_id": "evt_first"}, queue=QUEUE, settings=settings)
    publisher = messages._publishers.current
    connection = publisher.connection
    for i in range(20):
        messages.send(TASK, {"event_id": f"evt_{i}"}, queue=QUEUE, settings=settings)
    assert messages._publishers.current is publisher and publisher.connection is connection
    assert broker.llen(QUEUE) == 21


def test_a_broker_that_is_down_fails_a_send_at_once() -> None:
    settings = Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", api_token=API_TOKEN)  # nothing there
    started = time.monotonic()
    with pytest.raises(BrokerError):
        messages.send(TASK, {"event_id": "evt_1"}, queue=QUEUE, settings=settings)
    assert time.monotonic() - started < 5  # one refused connection; 5 s only guards a hang


def test_after_the_broker_went_away_a_send_fails_and_the_next_one_reconnects() -> None:
    with private_redis() as server:
        settings = Settings(broker_url=server.url, api_token=API_TOKEN)
        messages.send(TASK, {"event_id": "evt_before"}, queue=QUEUE, settings=settings)
        server.stop()
        with pytest.raises(BrokerError):
            messages.send(TASK, {"event_id": "evt_during"}, queue=QUEUE, settings=settings)
        server.start()
        messages.send(TASK, {"event_id": "evt_after"}, queue=QUEUE, settings=settings)
        client = redis.Redis.from_url(server.url)
        try:
            sent = [json.loads(base64.b64decode(m["body"]))[1]["event_id"] for m in queued(client)]
        finally:
            client.close()
    # Restarted empty: only what was sent after it is there.
    assert sent == ["evt_after"]


def test_a_stored_event_reaches_the_workers_once_and_a_notified_one_is_not_published(tmp_path) -> None:
    """`inbox.hand_to_workers` after the webhook's store: on SQLite (no NOTIFY) the event's task
    is enqueued on `webhooks`, once (a duplicate sends nothing); an event whose INSERT NOTIFYed
    (PostgreSQL) is left to the inbox consumers."""
    url = f"sqlite:///{tmp_path}/inbox.db"
    upgrade(url)
    engine = make_engine(url)
    event = {"id": "evt_sqlite", "object": "event", "type": "customer.updated", "data": {"object": {}}}
    with private_redis() as server:
        settings = Settings(broker_url=server.url, api_token=API_TOKEN)
        client = redis.Redis.from_url(server.url)
        for _ in range(2):  # the second delivery is a duplicate
            with one_statement(engine) as connection:
                accepted = inbox.accept(connection, event)
            inbox.hand_to_workers(accepted, settings)
        inbox.hand_to_workers(inbox.Accepted("evt_notified", duplicate=False, notified=True), settings)
        sent = queued(client, "webhooks")
        client.close()
    engine.dispose()
    assert [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[1]) for m in sent] == \
        [(TASK, {"event_id": "evt_sqlite"})]
