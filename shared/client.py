"""What a calling module imports to use payments: `pay`, `transfer`, `topup` and `settle`
enqueue the request by task name (needing only Celery and the broker URL); `status` reads the
outcome. The kwargs are the fields of the HTTP bodies in CONTRACT.

    from shared import client
    client.pay(request_id="evt-123-ann", member_id="ann", amount="25.00",
               description="Congress entry", organisation_id="nsw", route_code="EVT")
    client.status("evt-123-ann")  # {"request_id": ..., "status": "paid", ...}
"""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery

from shared import callbacks
from shared.config import Settings
from shared.db import make_engine, make_sessions

QUEUE = "payments"
# Every queue the service consumes; `celery` is Celery's default, for tasks sent with no queue.
QUEUES = ("webhooks", "payments", "topups", "outbox", "celery")


@cache
def celery_for(broker_url: str) -> Celery:
    """A bare Celery app that only sends, JSON only, and fails at once when the broker is down
    (no connection or publish retries, which took 0.6 s a message): every caller has the
    request stored already (the webhook, the HTTP edge) and the scheduler redrives it, or is a
    calling module that gets the error at once and sends again."""
    return Celery("payments-client", broker=broker_url, set_as_current=False,
                  config_source={"task_serializer": "json", "accept_content": ["json"],
                                 "task_publish_retry": False, "broker_transport_options": {"max_retries": 0}})


def send(task: str, kwargs: dict[str, Any], *, queue: str = QUEUE, settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    celery_for(settings.broker_url).send_task(task, kwargs=kwargs, queue=queue)


def pay(settings: Settings | None = None, **fields: Any) -> str:
    send("payments.pay", fields, settings=settings)
    return str(fields.get("request_id"))


def transfer(settings: Settings | None = None, **fields: Any) -> str:
    send("payments.transfer", fields, settings=settings)
    return str(fields.get("request_id"))


def topup(settings: Settings | None = None, **fields: Any) -> str:
    send("payments.topup", fields, settings=settings)
    return str(fields.get("request_id"))


def settle(settings: Settings | None = None, **fields: Any) -> str:
    send("payments.settle", fields, settings=settings)
    return str(fields.get("request_id"))


def status(request_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """The request's status document (CONTRACT `GET /api/payments/{request_id}`)."""
    from shared import requests

    settings = settings or Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        with make_sessions(engine).begin() as session:
            return requests.status_document(requests.get(session, request_id))
    finally:
        engine.dispose()


def verify_callback(kwargs: dict[str, Any], callback_key: str) -> bool:
    """Whether a callback's kwargs are as this service signed them with your `callback_key`
    (from `payments clients add`; for the bootstrap client `admin`, `admin_callback_key()`).
    Call it with the kwargs exactly as received; a False is a forged or altered callback.

        @app.task(name="events.payment_done")
        def payment_done(**kwargs):
            if not client.verify_callback(kwargs, EVENTS_CALLBACK_KEY):
                raise ValueError("callback: bad signature")
    """
    return callbacks.verify(kwargs, callback_key)


def admin_callback_key(api_token: str | None = None) -> str:
    """The callback key of the bootstrap client `admin`, derived from PAYMENTS_API_TOKEN (the
    environment's, unless given): it signs the callbacks of its requests and of requests with
    no recorded client."""
    token = api_token if api_token is not None else Settings.from_env().api_token
    if not token:
        raise ValueError("PAYMENTS_API_TOKEN is not set: the admin callback key is derived from it")
    return callbacks.bootstrap_key(token)
