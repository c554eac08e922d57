"""The beat schedule (`payments beat`). Every job is also safe to send by hand at any time, and
to run twice at once. Intervals are configurable: PAYMENTS_<JOB>_SECONDS.

On a Redis broker any number of beats may run, one sending (`scheduler.redis_lock`, its lock
held for PAYMENTS_BEAT_LOCK_SECONDS); on the embedded SQLite broker one beat runs with Celery's
file scheduler (`payments run`)."""

from __future__ import annotations

import os
from typing import Any

from shared.config import is_redis
from shared.errors import ConfigError


def _every(job: str, default: float) -> float:
    name = f"PAYMENTS_{job.upper()}_SECONDS"
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a number of seconds", field=name) from None
    if seconds <= 0:
        raise ConfigError(f"{name}: must be more than 0", field=name)
    return seconds


def lock_seconds() -> float:
    """How long a beat's lock lasts unrenewed: a standby takes over at most this long (plus one
    tick, a fifth of it) after the beat sending the schedule dies."""
    return _every("beat_lock", 25)


def uses_lock(broker_url: str) -> bool:
    """Whether beats on this broker share one lock (Redis) or run alone (the embedded SQLite)."""
    return is_redis(broker_url)


def beat_schedule() -> dict[str, dict[str, Any]]:
    return {
        "sweep-auto-topups": {"task": "payments.sweep_auto_topups", "schedule": _every("sweep_auto_topups", 300)},
        "redrive-inbox": {"task": "payments.redrive_inbox", "schedule": _every("redrive_inbox", 60)},
        "relay-outbox": {"task": "payments.relay_outbox", "schedule": _every("relay_outbox", 30)},
        "redrive-requests": {"task": "payments.redrive_requests", "schedule": _every("redrive_requests", 60)},
        "reconcile": {"task": "payments.reconcile", "schedule": _every("reconcile", 300)},
        "expire-checkouts": {"task": "payments.expire_checkouts", "schedule": _every("expire_checkouts", 3600)},
        "prune-event-payloads": {"task": "payments.prune_event_payloads",
                                 "schedule": _every("prune_event_payloads", 86400)},
    }
