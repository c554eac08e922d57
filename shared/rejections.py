"""Webhook deliveries refused, counted by reason (ISSUE 12, item 7), for `/metrics`.

A burst of refused deliveries is either an attack, a rotated secret Stripe does not use yet, or
a clock that drifted; the reason tells which. The count must add up across gunicorn's worker
processes, so it lives in Redis when the broker is Redis (one key per reason, INCR); with the
embedded SQLite broker (`payments run`, one webhook process) it is kept in the process.
Counting never fails a delivery: if Redis is away the refusal is logged, not counted.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

import redis

from shared.config import is_redis
from shared.errors import BadSignature, InvalidInput, PaymentsError

log = logging.getLogger(__name__)

KEY = "payments:webhook_rejected:"
# Every reason, so each shows in /metrics at 0 before its first refusal (an alert can say
# "rate over 5 minutes" without a missing series).
REASONS = ("missing_signature", "bad_signature", "stale_signature", "bad_payload", "too_large", "not_configured")


def reason_for(error: Exception) -> str:
    """The reason a delivery was refused with `error` (one of REASONS)."""
    if isinstance(error, BadSignature):
        message = error.message.lower()
        if "missing" in message:
            return "missing_signature"
        if "tolerance" in message or "future" in message:
            return "stale_signature"  # replayed, or our clock or Stripe's is off
        return "bad_signature"
    if isinstance(error, InvalidInput):
        return "bad_payload"
    if isinstance(error, PaymentsError) and error.status == 503:
        return "not_configured"
    return "too_large"


class Rejections:
    """The counters: in Redis at `broker_url` when it is a Redis URL, else in this process."""

    def __init__(self, broker_url: str) -> None:
        self._redis: redis.Redis | None = None
        if is_redis(broker_url):
            # Short timeouts: a refused delivery must be answered in milliseconds, Redis or not.
            self._redis = redis.Redis.from_url(broker_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._local: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, reason: str) -> None:
        if self._redis is None:
            with self._lock:
                self._local[reason] += 1
            return
        try:
            self._redis.incr(KEY + reason)
        except redis.RedisError as exc:
            log.warning("webhook delivery refused (%s) but not counted: %s", reason, type(exc).__name__)

    def totals(self) -> dict[str, int] | None:
        """Every reason's count; None when Redis cannot be read (the metric is left out rather
        than shown as 0)."""
        if self._redis is None:
            with self._lock:
                return {reason: self._local[reason] for reason in REASONS}
        try:
            values = self._redis.mget([KEY + reason for reason in REASONS])
        except redis.RedisError:
            return None
        return {reason: int(value or 0) for reason, value in zip(REASONS, values, strict=True)}

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
