"""`payments.pay` in batches (issue 16): Celery's cost per task, paid once per payment, was
the ceiling of the payment path. The worker's consumer now gathers `payments.pay` messages for
a few milliseconds (or until `BATCH_MOST` have come) and hands them to one pool process as one
job, `pay_batch`, which decides each payment as `payments.pay` does.

The guarantees of the single-task path hold:

- **Acknowledged after commit.** A message is acknowledged when the batch job has returned,
  after every payment of the batch was decided and committed. A pool process that dies puts
  every message of its batch back on the queue (as `task_reject_on_worker_lost` does); the
  request ids make deciding them again a no-op. A batch past its time limit hands each of its
  payments to Celery's own path.
- **One bad payment never fails its neighbours.** Only the plain payments are paid together,
  by `pay_request` for each in one statement and one transaction (`pay_requests`, migration
  0017), each in a subtransaction of its own: one that is not the plain case is rolled back
  alone. Every other payment (card work, a payment to another member or of an IOU, one that
  met an error) is handed back, having written nothing, and runs as a task of its own on
  Celery's path, with its own time limits and retries (`worker.tasks.pay_batch`).
- **The same decisions and rows**: each payment is admitted (sender, fields) as `payments.pay`
  does, with its message's own trust headers, and paid by the same `pay_request`.

At low load a payment waits at most `FLUSH_SECONDS` and goes alone. A message with an ETA (a
retry's countdown), an expiry or linked tasks takes Celery's own path. While messages wait in
the buffer or in a batch the consumer's prefetch is raised by one for each (as Celery does for
ETA tasks), up to `BUFFER_MOST`, so the next batch gathers while one is being paid.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from billiard.exceptions import WorkerLostError
from celery.utils.imports import symbol_by_name
from celery.worker import state
from celery.worker.request import create_request_cls
from celery.worker.strategy import default, hybrid_to_proto2, proto1_to_proto2

from shared import messages
from worker import tasks
from worker.app import LINKS

log = logging.getLogger(__name__)

# At most 64 subtransactions per transaction stay in PostgreSQL's per-backend cache (more slow
# down every snapshot of the server): each plain payment of a batch is one.
BATCH_MOST = 50
FLUSH_SECONDS = 0.002
BUFFER_MOST = 4 * BATCH_MOST


def strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """The consumer's handler of `payments.pay` messages (Celery's `Task.Strategy`)."""
    single = default(task, app, consumer, **options)
    eventer = consumer.event_dispatcher
    events = bool(eventer and eventer.enabled and task.send_events)
    Request = create_request_cls(symbol_by_name(task.Request), task, consumer.pool, consumer.hostname, eventer,
                                 app=app)
    buffer: list[Any] = []
    raised = 0  # prefetch raised for messages buffered or in a batch
    flush_timer: Any = None

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> Any:
        nonlocal raised, flush_timer
        # As Celery's default strategy reads a message (protocol 2, or older ones converted).
        if body is None and "args" not in message.payload:
            payload, headers, decoded, utc = message.body, message.headers, False, app.uses_utc_timezone()
        elif "args" in message.payload:
            payload, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            payload, headers, decoded, utc = proto1_to_proto2(message, body)
        request = Request(message, on_ack=ack, on_reject=reject, app=app, hostname=consumer.hostname,
                          eventer=eventer, task=task, connection_errors=consumer.connection_errors,
                          body=payload, headers=headers, decoded=decoded, utc=utc)
        if request.eta or request.expires or any(request._payload[2].get(name) for name in LINKS):
            # Celery's own path: a retry's countdown, or a message asking for linked tasks, which
            # `PaymentsTask` refuses there.
            return single(message, body, ack, reject, callbacks, **kwargs)
        state.task_reserved(request)
        if events:
            request.send_event("task-received", name=request.name, args=request.argsrepr,
                               kwargs=request.kwargsrepr, retries=request.request_dict.get("retries", 0))
        request.raised = raised < BUFFER_MOST
        if request.raised:
            raised += 1
            consumer.qos.increment_eventually()
        buffer.append(request)
        if len(buffer) >= BATCH_MOST:
            flush()
        elif flush_timer is None:
            flush_timer = consumer.timer.call_after(FLUSH_SECONDS, flush)
        return None

    def flush() -> None:
        nonlocal flush_timer
        if flush_timer is not None:
            flush_timer.cancel()
            flush_timer = None
        batch = buffer[:]
        del buffer[:]
        if not batch:
            return
        items = [_item(request) for request in batch]
        started = time.monotonic()
        consumer.pool.apply_async(
            pay_batch, args=(items,),
            accept_callback=lambda pid, accepted: _started(batch, pid, events),
            callback=lambda outcomes: _done(batch, outcomes, time.monotonic() - started),
            error_callback=lambda info: _lost(batch, info),
            soft_timeout=task.soft_time_limit, timeout=task.time_limit,
        )

    def _done(batch: list[Any], outcomes: list[str], runtime: float) -> None:
        for request, outcome in zip(batch, outcomes, strict=True):
            _release(request)
            if outcome == tasks.SINGLE:  # Celery's own path, which acknowledges it when done
                request.execute_using_pool(consumer.pool)
                continue
            request.acknowledge()
            state.task_ready(request)
            if events:
                request.send_event("task-succeeded", result=outcome, runtime=runtime)

    def _lost(batch: list[Any], info: Any) -> None:
        exc = getattr(info, "exception", info)
        for request in batch:
            _release(request)
        if isinstance(exc, WorkerLostError):  # killed: all go back on the queue, as one task's would
            log.error("a batch of %d payments was lost with its pool process (%s): all go back on the queue",
                      len(batch), exc)
            for request in batch:
                request.reject(requeue=True)
                state.task_ready(request)
            return
        # Past its time limit (a stalled database?): each runs on its own, with its own limits.
        log.error("a batch of %d payments failed (%r): each runs on its own", len(batch), exc)
        for request in batch:
            request.execute_using_pool(consumer.pool)

    def _release(request: Any) -> None:
        nonlocal raised
        if request.raised:
            request.raised = False
            raised -= 1
            consumer.qos.decrement_eventually()

    return handle


def _started(batch: list[Any], pid: int, events: bool) -> None:
    for request in batch:
        request.worker_pid = pid
        if events:
            request.send_event("task-started")


def _item(request: Any) -> dict[str, Any]:
    """What the pool process needs of a message: picklable, no Celery objects."""
    _, kwargs, _ = request._payload
    return {"id": request.id, "kwargs": kwargs,
            "headers": {name: request.request_dict.get(name) for name in messages.HEADERS}}


def pay_batch(items: list[dict[str, Any]]) -> list[str]:
    """In a pool process: the batch decided by `worker.tasks.pay_batch`."""
    return tasks.pay_batch(items)
