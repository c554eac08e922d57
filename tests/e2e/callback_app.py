"""A second, separate Celery app standing in for a calling module (say, events): it consumes
its own queue and records every callback it receives in a Redis list, for the test to read."""

from __future__ import annotations

import json
import os

import redis
from celery import Celery
from kombu import Exchange, Queue

BROKER = os.environ["CALLBACK_BROKER_URL"]
QUEUE = os.environ.get("CALLBACK_QUEUE", "events")
RECEIVED = os.environ.get("CALLBACK_LIST", "callbacks-received")

app = Celery("events", broker=BROKER)
app.conf.update(
    task_queues=[Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)],
    accept_content=["json"],
    task_serializer="json",
    worker_hijack_root_logger=False,
)
store = redis.Redis.from_url(BROKER)


@app.task(name="events.payment_done")
def payment_done(**kwargs: object) -> None:
    store.rpush(RECEIVED, json.dumps(kwargs, sort_keys=True))
