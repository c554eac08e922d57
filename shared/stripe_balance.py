"""The live Stripe available balance of the admin summary (ORIGINAL 6.4), which must never make
the summary fail or hang.

Per process, the last value read and when. A value younger than `fresh_for` is answered as
it is. Otherwise one caller asks Stripe (with the gateway's short timeout); when that fails,
or while another caller is asking, the answer is the last value marked stale (or None, when
Stripe never answered), at once. After a failure Stripe is not asked again for `retry_after`,
so a Stripe that hangs costs one caller one timeout per `retry_after`, not every caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from shared.errors import PaymentsError
from shared.models import utcnow
from shared.money import format_cents

log = logging.getLogger(__name__)


class LiveBalance:
    def __init__(self, read: Callable[[], int], *, fresh_for: float = 60.0, retry_after: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._fresh_for = fresh_for
        self._retry_after = retry_after
        self._clock = clock
        self._lock = threading.Lock()
        self._value: tuple[int, datetime, float] | None = None  # cents, when (UTC), clock then
        self._failed_at: float | None = None

    def answer(self, zone: ZoneInfo) -> dict[str, object] | None:
        """`{"available", "fetched_at", "stale"}`, or None when Stripe never answered."""
        now = self._clock()
        if not self._fresh(now) and not self._resting(now) and self._lock.acquire(blocking=False):
            try:
                self._refresh()
            finally:
                self._lock.release()
        value = self._value
        if value is None:
            return None
        cents, fetched_at, at = value
        return {
            "available": format_cents(cents),
            "fetched_at": fetched_at.astimezone(zone).isoformat(timespec="seconds"),
            "stale": self._clock() - at >= self._fresh_for,
        }

    def _fresh(self, now: float) -> bool:
        return self._value is not None and now - self._value[2] < self._fresh_for

    def _resting(self, now: float) -> bool:
        return self._failed_at is not None and now - self._failed_at < self._retry_after

    def _refresh(self) -> None:
        try:
            cents = self._read()
        except PaymentsError as exc:  # Stripe down, slow, refusing or not configured
            log.warning("Stripe balance not read: %s", exc.message)
            self._failed_at = self._clock()
            return
        except Exception:  # an answer not understood: still never the summary's failure
            log.exception("Stripe balance not read")
            self._failed_at = self._clock()
            return
        self._value = (cents, utcnow(), self._clock())
        self._failed_at = None
