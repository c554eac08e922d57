"""Healing jobs row by row (DESIGN invariant 12; SPEC 5 "the reconciler and the redrives").

The request redrive, the inbox redrive, the reconciler and the checkout expiry each take the
rows that are due, at most `heal_batch` a run, the longest due first, and treat each on its
own. A row carries `heal_tries` and `next_heal_at`: every try (or every failed try, for the
card jobs) counts and puts the row back by an exponential backoff capped at
`heal_backoff_max_seconds`, behind the rows that became due meanwhile, so old rows cannot
starve new ones; after `heal_max_tries` the row ends `failed` with its callback (the job
decides how). A row that raises is logged and counted; the rows behind it are still healed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, func, or_

from shared.config import Settings
from shared.models import utcnow

log = logging.getLogger(__name__)

T = TypeVar("T")


def backoff(tries: int, settings: Settings) -> timedelta:
    """The wait after a row's `tries`-th try: the base, doubling, capped."""
    seconds = settings.heal_backoff_seconds * 2 ** min(max(0, tries - 1), 30)
    return timedelta(seconds=min(settings.heal_backoff_max_seconds, seconds))


def next_try(tries: int, settings: Settings, now: datetime | None = None) -> datetime:
    return (now or utcnow()) + backoff(tries, settings)


def is_due(next_heal_at: Any, now: datetime) -> ColumnElement[bool]:
    """A row with no next try set yet, or whose time has come."""
    return or_(next_heal_at.is_(None), next_heal_at <= now)


def due_order(next_heal_at: Any, since: Any) -> Any:
    """Longest due first: a row's next try, or (never tried) the time it got stuck."""
    return func.coalesce(next_heal_at, since)


def each(rows: Iterable[T], heal: Callable[[T], None], failed: Callable[[T, Exception], None], *,
         what: str, budget_seconds: float | None = None) -> int:
    """Heal each row on its own: a row that raises goes to `failed` (count it, back it off, end
    it); the next row is healed all the same. Stops starting rows once `budget_seconds` have
    passed (the job's time limit is near; the rest are first in line next run). Returns how
    many rows were started."""
    started = time.monotonic()
    done = 0
    for row in rows:
        if budget_seconds is not None and time.monotonic() - started > budget_seconds:
            log.warning("%s: time budget of %.0f s spent after %d rows; the rest wait for the next run",
                        what, budget_seconds, done)
            break
        done += 1
        try:
            heal(row)
        except Exception as exc:  # one bad row must not stop the others (DESIGN invariant 12)
            log.warning("%s: %s failed: %s: %s", what, row, type(exc).__name__, exc)
            failed(row, exc)
    return done
