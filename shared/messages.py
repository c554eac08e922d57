"""Who sent a task message (CONTRACT "Celery"; DESIGN invariant 10): the broker's door, as
`webhook/auth.py` is the HTTP one, both deciding with `shared.access`.

- A calling module sends a money task by name with its client token in the message header
  `payments_token` (`shared.client` puts it there; a header, not a kwarg, so Flower, the task
  logs and the stored request never show it). The worker authenticates the token and
  authorises the kwargs with the action the HTTP route uses (`ACTIONS`).
- The service's own messages (the HTTP edge's after storing a request, redrives, the webhook's
  events, the scheduler's, the outbox's, beat's periodic tasks) carry no token: the admin
  token in Redis would hand it to anyone who reads the broker. They carry
  `payments_service_signature`, the hex HMAC-SHA256 of the task's name, args and kwargs as
  canonical JSON, under a key derived from PAYMENTS_API_TOKEN (`service_key`), which only the
  service's processes hold. `SigningAMQP` adds it to every message a service Celery app
  publishes, beat's included. Internal tasks run only for a valid signature.
- A replayed genuine message is harmless: every handler is idempotent (requests, attempts,
  events and outbox rows are keyed), and the signature covers the task's name and arguments,
  so it cannot be moved to another task or other kwargs.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from kombu import Connection, Exchange, Producer, Queue
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.orm import Session

from shared import access
from shared.access import Principal
from shared.client import TOKEN_HEADER, celery_for
from shared.config import Settings
from shared.errors import Unauthenticated

SIGNATURE_HEADER = "payments_service_signature"
HEADERS = (TOKEN_HEADER, SIGNATURE_HEADER)
# The money tasks a calling module may send, and the action of their HTTP route.
ACTIONS = {
    "payments.pay": access.PAYMENTS_CREATE,
    "payments.transfer": access.TRANSFERS_CREATE,
    "payments.settle": access.SETTLEMENTS_CREATE,
    "payments.topup": access.TOPUPS_CREATE,
    "payments.refund": access.REFUNDS_CREATE,
}
_PURPOSE = b"payments task messages"


def service_key(api_token: str | None) -> bytes | None:
    """The message-signing key: derived, so a signature reveals nothing of the token itself."""
    if not api_token:
        return None
    return hmac.new(api_token.encode(), _PURPOSE, hashlib.sha256).digest()


def signature(key: bytes, task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    canonical = json.dumps({"task": task, "args": list(args), "kwargs": dict(kwargs)}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def from_service(key: bytes | None, task: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                 headers: Mapping[str, Any]) -> bool:
    """Whether the message carries the service's valid signature of exactly this task and these
    arguments (False without a key: nothing is trusted then)."""
    given = headers.get(SIGNATURE_HEADER)
    if key is None or not isinstance(given, str):
        return False
    try:
        expected = signature(key, task, args, kwargs)
    except (TypeError, ValueError):
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def sender(session: Session, key: bytes | None, bootstrap_token: str | None, task: str, args: Sequence[Any],
           kwargs: Mapping[str, Any], headers: Mapping[str, Any]) -> Principal | None:
    """Who sent this money task: None for the service itself (a valid signature: the request was
    authorised when it was stored), else the client of its token; `Unauthenticated` when the
    token is missing, unknown, revoked or expired."""
    if from_service(key, task, args, kwargs, headers):
        return None
    token = headers.get(TOKEN_HEADER)
    if not isinstance(token, str) or not token:
        raise Unauthenticated(f"{task}: the message carries no client token (header {TOKEN_HEADER})")
    return access.authenticate(session, token, bootstrap_token)


def authorise(principal: Principal | None, task: str, kwargs: Mapping[str, Any]) -> None:
    """`Forbidden` unless the client may make this request: the HTTP route's action, on these
    kwargs as received (scopes, then route codes, request prefix and organisations)."""
    if principal is not None:
        access.authorise(principal, ACTIONS[task], kwargs)


def send(task: str, kwargs: dict[str, Any], *, queue: str, settings: Settings) -> None:
    """Enqueue `task` as the service itself (the webhook's sends), signed. Without
    PAYMENTS_API_TOKEN there is no key: the message goes unsigned and the worker refuses it.
    Through this process's (and thread's) `Publisher`; a broker that is down raises kombu's
    OperationalError at once."""
    app = celery_for(settings.broker_url, service_key(settings.api_token))
    publisher = getattr(_publishers, "current", None)
    if publisher is None or publisher.pid != os.getpid() or publisher.app is not app:
        publisher = _publishers.current = Publisher(app)
    publisher.send(task, kwargs, queue)


_publishers = threading.local()


class Publisher:
    """One broker connection and producer kept for the life of a process (and thread), for the
    webhook's one message per event: Celery's `send_task` took about 0.45 ms of CPU a message,
    most of it kombu making a new `redis.Redis` client for every publish and looking the queue's
    exchange binding up in Redis (SMEMBERS) before the LPUSH.

    The message is the one `send_task` makes (`app.amqp.as_task_v2`, signed by `SigningAMQP`),
    published to the default exchange with the queue's name as routing key, which every broker
    delivers to that queue (AMQP's rule; kombu's virtual transports, Redis and SQLAlchemy, alike),
    so no binding is read. On Redis the channel's own client, and its connection pool, is used
    for every publish. A failed publish drops the connection (the next message opens a new one)
    and raises kombu's OperationalError, as `send_task` does. Not shared across a fork: `send`
    makes a new one in a new process."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.pid = os.getpid()
        self.connection: Connection | None = None
        self.producer: Producer | None = None
        self.declared: set[str] = set()

    def _producer(self) -> Producer:
        if self.producer is None:
            connection = self.app.connection_for_write()
            try:
                producer = connection.Producer(auto_declare=False)
                _reuse_redis_client(producer.channel)
            except BaseException:
                connection.release()
                raise
            self.connection, self.producer = connection, producer
        return self.producer

    def send(self, task: str, kwargs: dict[str, Any], queue: str) -> None:
        producer = self._producer()  # kombu raises OperationalError when it cannot connect
        assert self.connection is not None
        # The transport's own errors (redis-py's, say) are "the broker is down" to the callers.
        broker_errors = (*self.connection.connection_errors, *self.connection.channel_errors)
        # What `send_task` gives `as_task_v2` besides the task and its kwargs.
        message = self.app.amqp.as_task_v2(str(uuid.uuid4()), task, (), kwargs, reply_to=self.app.thread_oid,
                                           ignore_result=None)
        try:
            if queue not in self.declared:  # as the worker declares it; once per connection
                producer.maybe_declare(Queue(queue, Exchange(queue, type="direct"), routing_key=queue))
                self.declared.add(queue)
            producer.publish(message.body, exchange="", routing_key=queue, serializer="json",
                             headers=message.headers, delivery_mode=2, retry=False, declare=[],
                             **message.properties)
        except broker_errors as exc:
            self.close()
            raise BrokerError(str(exc)) from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        connection, self.connection, self.producer = self.connection, None, None
        self.declared = set()
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.release()


def _reuse_redis_client(channel: Any) -> None:
    """kombu's Redis channel makes a `redis.Redis` for every publish (`conn_or_acquire`); its
    cached `client`, on the same connection pool, does the same work. Other transports: as is."""
    if type(channel).__module__ != "kombu.transport.redis":
        return

    @contextlib.contextmanager
    def conn_or_acquire(client: Any = None) -> Iterator[Any]:
        yield client or channel.client

    channel.conn_or_acquire = conn_or_acquire


class SigningAMQP(AMQP):  # type: ignore[misc]
    """The AMQP side of a service Celery app: signs every message it publishes with the key in
    `app.conf.payments_service_key`. A retry is not signed again: Celery copies the original
    message's headers into it (checked with a real worker), so a retried client message keeps its
    token and never becomes a service message."""

    def as_task_v2(self, task_id: str, name: str, args: Any = None, kwargs: Any = None, *rest: Any,
                   **options: Any) -> Any:
        message = super().as_task_v2(task_id, name, args, kwargs, *rest, **options)
        key = self.app.conf.get("payments_service_key")
        if key is not None and not message.headers.get("retries"):
            message.headers[SIGNATURE_HEADER] = signature(key, name, message.body[0], message.body[1])
        return message
