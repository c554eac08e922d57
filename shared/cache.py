"""A value computed at most once per period, per process (ISSUE 12, item 5).

`/metrics` and `/readyz` ask the database and the broker; anyone who can reach them could
otherwise make every call cost queries. Each app keeps one `Recent` per answer, so a burst of
calls to one gunicorn worker costs one check per period (a few workers: a few checks). The lock
makes callers that arrive while the answer is being computed wait for it instead of computing
it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Recent(Generic[T]):
    """The last value of `compute`, reused for `seconds` after it was computed (0: never reused)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._expires = float("-inf")

    def get(self, compute: Callable[[], T]) -> T:
        with self._lock:
            if self._value is None or self._clock() >= self._expires:
                self._value = compute()
                self._expires = self._clock() + self.seconds
            return self._value
