"""The Celery app, configured as DESIGN.md asks: late acks, re-delivery of tasks whose worker
died, one task prefetched at a time, JSON only, explicit queues and time limits."""

from __future__ import annotations

from functools import cache

from celery import Celery, signals
from kombu import Exchange, Queue
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared import logs
from shared.client import QUEUES
from shared.config import Settings
from shared.db import make_engine, make_sessions
from shared.stripe_gateway import StripeGateway


ROUTES = {
    "payments.pay": {"queue": "payments"},
    "payments.transfer": {"queue": "payments"},
    "payments.settle": {"queue": "payments"},
    "payments.dispatch_outbox": {"queue": "outbox"},
    "payments.relay_outbox": {"queue": "outbox"},
    "payments.redrive_requests": {"queue": "payments"},
    "payments.redrive_inbox": {"queue": "webhooks"},
    "payments.prune_event_payloads": {"queue": "webhooks"},
    "payments.sweep_auto_topups": {"queue": "topups"},
    "payments.reconcile": {"queue": "topups"},
    "payments.expire_checkouts": {"queue": "topups"},
    "payments.topup": {"queue": "topups"},
    "payments.refund": {"queue": "payments"},
    "payments.auto_topup": {"queue": "topups"},
    "payments.process_stripe_event": {"queue": "webhooks"},
}


def create_celery(config: Settings | None = None) -> Celery:
    config = config or Settings.from_env()
    app = Celery("payments", broker=config.broker_url, include=["worker.tasks", "scheduler.jobs"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # One direct exchange per queue, so a message lands in exactly the queue it names.
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue="celery",
        task_default_exchange="celery",
        task_default_routing_key="celery",
        task_routes=ROUTES,
        task_soft_time_limit=60,
        task_time_limit=90,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if config.broker_url.startswith(("redis://", "rediss://")):
        # Longer than any retry countdown, so Redis never redelivers a task still waiting.
        app.conf.broker_transport_options = {"visibility_timeout": 3600}
    app.conf.payments_settings = config
    logs.add_secrets(config.api_token, config.stripe_api_key, *config.webhook_secrets)
    return app


@signals.setup_logging.connect
def _json_logs(**_: object) -> None:
    logs.configure()


@signals.task_prerun.connect
def _log_task(task_id: str | None = None, task: object = None, kwargs: dict | None = None, **_: object) -> None:
    fields = {"task_id": task_id or "", "task": getattr(task, "name", "")}
    for key in ("request_id", "event_id", "member_id"):
        if kwargs and isinstance(kwargs.get(key), str):
            fields[key] = kwargs[key]
    logs.context.set(fields)


app = create_celery()


def settings() -> Settings:
    return app.conf.payments_settings


@cache
def engine() -> Engine:
    """One engine per worker process, made on first use (after the prefork).

    No pre-ping (a round trip per task): a connection lost with the database fails the task
    with OperationalError, which retries with backoff on a fresh connection.
    """
    return make_engine(settings().database_url, pool_size=2, pool_pre_ping=False)


@cache
def sessions() -> sessionmaker[Session]:
    return make_sessions(engine())


@cache
def gateway() -> StripeGateway:
    return StripeGateway(settings())
