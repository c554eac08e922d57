"""What a calling module imports to use payments: `pay`, `transfer`, `topup` and `settle`
enqueue the request by task name (needing only Celery and the broker URL); `status` reads the
outcome. The kwargs are the fields of the HTTP bodies in CONTRACT.

Each message carries the calling module's client token (`token=`, else PAYMENTS_CLIENT_TOKEN)
in the message header `payments_token`, never in the kwargs, so Flower and logs do not show
it; the worker authenticates it and checks the client's scopes and bindings
(`shared.messages`), as the HTTP API does for the same token.

    from shared import client
    client.pay(request_id="evt-123-ann", member_id="ann", amount="25.00",
               description="Congress entry", organisation_id="nsw", route_code="EVT")
    client.status("evt-123-ann")  # {"request_id": ..., "status": "paid", ...}
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from celery import Celery

from shared import callbacks
from shared.config import Settings, is_redis
from shared.db import make_engine, make_sessions
from shared.errors import ConfigError

QUEUE = "payments"
# Every queue the service consumes; `celery` is Celery's default, for tasks sent with no queue.
QUEUES = ("webhooks", "payments", "topups", "outbox", "celery")
TOKEN_ENV = "PAYMENTS_CLIENT_TOKEN"
TOKEN_HEADER = "payments_token"


@cache
def celery_for(broker_url: str, service_key: bytes | None = None) -> Celery:
    """A bare Celery app that only sends, JSON only, and fails at once when the broker is down
    (no connection or publish retries, which took 0.6 s a message): every caller has the
    request stored already (the webhook, the HTTP edge) and the scheduler redrives it, or is a
    calling module that gets the error at once and sends again. With the service's own key
    (`shared.messages.service_key`; only the service's processes have it) every message it
    publishes is signed as the service's."""
    config: dict[str, Any] = {"task_serializer": "json", "accept_content": ["json"],
                              "task_publish_retry": False, "broker_transport_options": {"max_retries": 0}}
    if service_key is None:
        return Celery("payments-client", broker=broker_url, set_as_current=False, config_source=config)
    config["payments_service_key"] = service_key
    return Celery("payments-service", broker=broker_url, set_as_current=False, config_source=config,
                  amqp="shared.messages:SigningAMQP")


def send(task: str, kwargs: dict[str, Any], *, queue: str = QUEUE, settings: Settings | None = None,
         token: str | None = None) -> None:
    """Enqueue `task` by name as the client whose token is given (else PAYMENTS_CLIENT_TOKEN)."""
    settings = settings or Settings.from_env()
    token = token or os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"{TOKEN_ENV}: not set, and no token= given: the worker refuses a task without one",
                          field=TOKEN_ENV)
    # On Redis the worker has declared the queues: a calling module's broker user may only push
    # to them and read their bindings (README "Security model"), so it declares nothing.
    declare: list[Any] | None = [] if is_redis(settings.broker_url) else None
    celery_for(settings.broker_url).send_task(task, kwargs=kwargs, queue=queue, headers={TOKEN_HEADER: token},
                                              declare=declare)


def pay(settings: Settings | None = None, *, token: str | None = None, **fields: Any) -> str:
    send("payments.pay", fields, settings=settings, token=token)
    return str(fields.get("request_id"))


def transfer(settings: Settings | None = None, *, token: str | None = None, **fields: Any) -> str:
    send("payments.transfer", fields, settings=settings, token=token)
    return str(fields.get("request_id"))


def topup(settings: Settings | None = None, *, token: str | None = None, **fields: Any) -> str:
    send("payments.topup", fields, settings=settings, token=token)
    return str(fields.get("request_id"))


def settle(settings: Settings | None = None, *, token: str | None = None, **fields: Any) -> str:
    send("payments.settle", fields, settings=settings, token=token)
    return str(fields.get("request_id"))


def status(request_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """The request's status document (CONTRACT `GET /api/payments/{request_id}`)."""
    from shared import page_links, requests

    settings = settings or Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        with make_sessions(engine).begin() as session:
            # `checkout.url` too, when these settings hold the service's PAYMENTS_API_TOKEN.
            return page_links.with_checkout_url(settings, requests.status_document(requests.get(session, request_id)))
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
