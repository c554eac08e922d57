"""The Celery app, configured as DESIGN.md asks: late acks, re-delivery of tasks whose worker
died, one task prefetched at a time, JSON only, explicit queues and time limits.

Trust (DESIGN invariant 10; `shared.messages`): every message this app publishes (the worker's,
and beat's periodic ones) is signed as the service's; every task is a `PaymentsTask`, which
runs an internal task only for a message the service signed, and lets a money task decide who
sent it (`worker.tasks`). Remote control is off: anyone who can write to the broker could
otherwise shut workers down or revoke tasks; Flower follows workers and tasks through their
events (README "Security model")."""

from __future__ import annotations

import logging
import time
from functools import cache
from typing import Any

from celery import Celery, Task, signals
from kombu import Exchange, Queue
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared import logs, messages, metrics
from shared.client import QUEUES
from shared.config import Settings, is_redis
from shared.db import make_engine, make_sessions
from shared.stripe_gateway import StripeGateway


log = logging.getLogger(__name__)

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
    "payments.auto_topups": {"queue": "topups"},
    "payments.process_stripe_event": {"queue": "webhooks"},
}


# What a message may ask to be sent after it: nothing the service sends uses them, and the worker
# would publish them, signed, as its own.
LINKS = ("callbacks", "errbacks", "chain", "chord")


class PaymentsTask(Task):  # type: ignore[misc]
    """Every task of the service. A message asking for linked tasks is dropped; an internal task
    (the default, so a new task is closed until it says otherwise) runs only for a message
    signed by the service; a money task (`clients = True`) checks its sender itself, as the
    request it records depends on who that is. A refused message is logged and dropped: no
    money moves, and it is not retried."""

    clients = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:  # a function call in this process, not a message
            return super().__call__(*args, **kwargs)
        linked = [name for name in LINKS if getattr(request, name, None)]
        for name in linked:
            setattr(request, name, None)
        if linked:
            log.error("%s: message refused: it asks for linked tasks (%s)", self.name, ", ".join(linked))
            return "refused"
        if not self.clients and not messages.from_service(
            self.app.conf.payments_service_key, self.name, args, kwargs, headers_of(request)
        ):
            log.error("%s: message refused: not signed by the service", self.name)
            return "refused"
        # The tracer has pushed this message's request; Task.__call__ would push a bare one.
        return self.run(*args, **kwargs)


def headers_of(request: Any) -> dict[str, Any]:
    """The trust headers of a task's message (Celery puts custom headers on its request)."""
    return {name: request.get(name) for name in messages.HEADERS}


def create_celery(config: Settings | None = None) -> Celery:
    config = config or Settings.from_env()
    app = Celery("payments", broker=config.broker_url, include=["worker.tasks", "scheduler.jobs", "worker.inbox"],
                 task_cls=PaymentsTask, amqp="shared.messages:SigningAMQP")
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
        # No remote control (shutdown, revoke, rate limits... for anyone on the broker). Workers
        # still send heartbeat events, so Flower sees them; `-E` adds task events (compose).
        worker_enable_remote_control=False,
        payments_service_key=messages.service_key(config.api_token),
    )
    if is_redis(config.broker_url):
        # Longer than any retry countdown, so Redis never redelivers a task still waiting.
        app.conf.broker_transport_options = {"visibility_timeout": 3600}
    app.conf.payments_settings = config
    logs.add_secrets(config.api_token, config.stripe_api_key, *config.webhook_secrets)
    return app


@signals.setup_logging.connect
def _json_logs(**_: object) -> None:
    logs.configure()


@signals.task_prerun.connect
def log_as_task(task_id: str | None = None, task: object = None, kwargs: dict | None = None, **_: object) -> None:
    """A task's log context (its id, name and request); also set for each payment of a batch."""
    fields = {"task_id": task_id or "", "task": getattr(task, "name", "")}
    for key in ("request_id", "event_id", "member_id"):
        if kwargs and isinstance(kwargs.get(key), str):
            fields[key] = kwargs[key]
    logs.context.set(fields)


# Task timings, for `payments_task_duration_seconds` (the worker's /metrics). Both signals run in
# the pool process that runs the task; a task killed at its hard time limit never reaches
# postrun, so it is not observed here (its FAILURE shows in Flower).
_started: dict[str, float] = {}


@signals.task_prerun.connect
def _start_timer(task_id: str | None = None, **_: object) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _observe_task(task_id: str | None = None, task: object = None, state: str | None = None, **_: object) -> None:
    started = _started.pop(task_id or "", None)
    if started is not None:
        metrics.TASK_SECONDS.labels(getattr(task, "name", "") or "unknown", state or "UNKNOWN").observe(
            time.perf_counter() - started)


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
