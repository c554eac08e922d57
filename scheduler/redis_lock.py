"""Beat on a Redis broker: celery-redbeat's scheduler, so any number of `payments beat` may run
and one sends. The schedule and each job's last run time live in Redis (keys `redbeat:*`), so a
beat that takes over goes on from the last send instead of sending every job again.

One lock, `redbeat::lock`, held for PAYMENTS_BEAT_LOCK_SECONDS and renewed at every tick (a
tick comes at least every fifth of that). A beat that cannot take it stands by and tries again
at each tick; when the holder dies (kill -9, a lost host) its lock expires and a standby takes
it within the lock's time plus one tick. A holder stopped cleanly releases it at once.

redbeat takes the lock in a `beat_init` handler that blocks a standby inside startup and ends
the process when Redis goes away. Here it is taken and renewed in `tick` instead: a broker
outage, or a lock lost while Redis was down or the holder paused, sends the beat back to
standing by, and it goes on when Redis answers again; the beat that takes the lock writes the
schedule again, which a Redis restarted empty has lost (tests/faults/test_outages.py)."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import LockError, RedisError
from redis.lock import Lock
from redbeat.schedulers import RedBeatScheduler, get_redis

log = logging.getLogger("celery.beat")

# How many ticks fit in one lock time: a holder renews it at every tick, so it survives up to
# four late or failed ticks before a standby may take over (redbeat's own ratio).
TICKS_PER_LOCK = 5
KEY_PREFIX = "redbeat:"  # deploy/redis/start.sh gives the beat user these keys


def configure(app: Any, broker_url: str, lock_seconds: float) -> None:
    """Make `app`'s beat this scheduler, on the broker's Redis."""
    app.conf.update(
        beat_scheduler=f"{__name__}:RedisLockScheduler",
        beat_max_loop_interval=lock_seconds / TICKS_PER_LOCK,
        redbeat_redis_url=broker_url,
        redbeat_key_prefix=KEY_PREFIX,
        redbeat_lock_timeout=lock_seconds,
        # Not the broker's transport options: a Redis that stops answering fails a call within
        # a tick or two, rather than hanging the beat past its lock.
        redbeat_redis_options={"socket_timeout": max(lock_seconds / TICKS_PER_LOCK, 1.0),
                               "socket_connect_timeout": max(lock_seconds / TICKS_PER_LOCK, 1.0)},
    )


class RedisLockScheduler(RedBeatScheduler):  # type: ignore[misc]
    """redbeat's scheduler (the schedule and last sends in Redis), sending only while this beat
    holds the lock."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        # redbeat's handler and tick take and renew the lock when `lock_key` is set; this class
        # does it itself (see the module's doc), so redbeat sees none.
        self.lease_key, self.lock_key = self.lock_key, None
        self.lock: Lock | None = None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if not self._hold_lock():
                return float(self.max_interval)
            return float(super().tick(*args, **kwargs))
        except RedisError as exc:
            log.warning("beat: Redis is unreachable (%s); trying again in %.1f s", exc, self.max_interval)
        return float(self.max_interval)

    def _hold_lock(self) -> bool:
        """Renew the lock this beat holds, or take it if it is free; False while another beat
        holds it."""
        if self.lock is not None:
            try:
                self.lock.reacquire()  # its time starts again
                return True
            except LockError:  # it expired (this beat paused, or Redis was away or lost it)
                log.warning("beat: Lost the lock %s; taking it again if it is free", self.lease_key)
                self.lock = None
        lock = get_redis(self.app).lock(self.lease_key, timeout=self.lock_timeout)
        if not lock.acquire(blocking=False):
            return False
        # The schedule as this beat has it, each job's last send kept: a Redis that came back
        # empty has lost it. (Should Redis fail here, the lock taken expires by itself.)
        super().setup_schedule()
        self.lock = lock
        log.info("beat: Acquired lock %s (%s s); sending the schedule", self.lease_key, self.lock_timeout)
        return True

    def setup_schedule(self) -> None:
        """At start: written again when this beat takes the lock, so Redis may be away now."""
        try:
            super().setup_schedule()
        except RedisError as exc:
            log.warning("beat: Redis is unreachable (%s); the schedule is written once it answers", exc)

    def close(self) -> None:
        """Release the lock, so a standby takes over at its next tick, not after the lock's time."""
        try:
            if self.lock is not None and self.lock.owned():
                self.lock.release()
                log.info("beat: Released lock %s", self.lease_key)
        except RedisError as exc:
            log.warning("beat: Could not release the lock %s (%s); it expires by itself", self.lease_key, exc)
        self.lock = None
        super(RedBeatScheduler, self).close()  # redbeat's close would release it again

    @property
    def info(self) -> str:
        return (f"       . redis -> {self.app.redbeat_conf.redis_url.split('@')[-1]}\n"
                f"       . lock -> {self.lease_key} ({self.lock_timeout} s, one beat sends)")
