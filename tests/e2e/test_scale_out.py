"""Scale-out (README "Scaling out"), with real processes on a Redis started as compose starts it
(deploy/redis/start.sh, each process logging in as its own broker user): two `payments beat`
at once, on short intervals, and two workers split by queue. Each periodic job is sent once
per interval, by the beat holding the lock; each queue's jobs are run by the worker that
consumes it; and when the beat holding the lock is killed (kill -9, so it cannot release it),
the other takes over within the lock's time and goes on from the last sends: still once per
interval, with no job sent early."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import broker_user_url, worker_env
from tests.e2e.processes import readies, start, stop, wait_for

LOCK_SECONDS = 2.0
TICK = LOCK_SECONDS / 5  # scheduler.redis_lock.TICKS_PER_LOCK
# Job -> (interval in seconds, the queue it is routed to: worker/app.py ROUTES).
JOBS = {
    "relay-outbox": (1.0, "outbox"),
    "sweep-auto-topups": (1.5, "topups"),
    "redrive-inbox": (1.5, "webhooks"),
    "redrive-requests": (2.0, "payments"),
    # Longer than a takeover: the beat that takes over must wait out what is left of it.
    "reconcile": (5.0, "topups"),
}
NOT_SENT = ("expire-checkouts", "prune-event-payloads")  # an hour and a day: never within the test
SPLIT = {"a": "webhooks,payments,celery", "b": "topups,outbox"}


def beat_env(database_url: str, port: int) -> dict[str, str]:
    seconds = {f"PAYMENTS_{job.upper().replace('-', '_')}_SECONDS": str(every) for job, (every, _) in JOBS.items()}
    return worker_env(database_url, PAYMENTS_BROKER_URL=broker_user_url("beat", port),
                      PAYMENTS_BEAT_LOCK_SECONDS=str(LOCK_SECONDS), **seconds,
                      **{f"PAYMENTS_{job.upper().replace('-', '_')}_SECONDS": "3600" for job in NOT_SENT})


def log_lines(log: Path) -> list[dict]:
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def at(line: dict) -> float:
    return datetime.fromisoformat(line["time"]).timestamp()


@dataclass
class Beat:
    name: str
    log: Path
    process: subprocess.Popen = field(repr=False)

    def sends(self) -> list[tuple[float, str]]:
        """(when, job) of each periodic task this beat sent."""
        prefix = "Scheduler: Sending due task "
        return [(at(line), line["message"][len(prefix):].split(" ")[0])
                for line in log_lines(self.log) if line["message"].startswith(prefix)]

    def acquired(self) -> float | None:
        return next((at(line) for line in log_lines(self.log) if line["message"].startswith("beat: Acquired lock")),
                    None)


def received(log: Path) -> list[str]:
    """The task names a worker received, in order."""
    return [line["message"].split("[")[0].removeprefix("Task ") for line in log_lines(log)
            if line["message"].startswith("Task payments.") and line["message"].endswith(" received")]


@pytest.fixture
def workers(restricted_redis: int, runtime_database_url: str, clean_db: None, tmp_path: Path
            ) -> Iterator[dict[str, Path]]:
    """Worker a on webhooks, payments and celery (chosen with --queues), worker b on topups and
    outbox (chosen with PAYMENTS_WORKER_QUEUES), both as the `worker` broker user."""
    env = worker_env(runtime_database_url, PAYMENTS_BROKER_URL=broker_user_url("worker", restricted_redis))
    logs = {name: tmp_path / f"worker-{name}.log" for name in SPLIT}
    processes = {
        "a": start(["worker", "--queues", SPLIT["a"], "--concurrency", "1", "--hostname", "scale-a@%h"], env,
                   logs["a"]),
        "b": start(["worker", "--concurrency", "1", "--hostname", "scale-b@%h"],
                   {**env, "PAYMENTS_WORKER_QUEUES": SPLIT["b"]}, logs["b"]),
    }
    try:
        for name, process in processes.items():
            wait_for(lambda: readies(logs[name]) or process.poll() is not None, f"worker {name} to start", 60)
            assert process.poll() is None, logs[name].read_text()[-3000:]
        yield logs
    finally:
        for process in processes.values():
            stop(process)


def test_two_beats_send_each_job_once_per_interval_and_the_standby_takes_over_from_a_killed_holder(
    restricted_redis: int, runtime_database_url: str, workers: dict[str, Path], tmp_path: Path
) -> None:
    env = beat_env(runtime_database_url, restricted_redis)
    beats = [Beat(name, tmp_path / f"beat-{name}.log", start(["beat"], env, tmp_path / f"beat-{name}.log"))
             for name in ("1", "2")]
    try:
        holder = wait_for(lambda: next((b for b in beats if b.acquired()), None), "a beat to take the lock", 30)
        standby = next(b for b in beats if b is not holder)
        # Until the holder has sent every job, and reconcile (5 s) within the last second: it
        # dies with most of that interval still to run, which the standby must wait out.
        wait_for(lambda: {job for _, job in holder.sends()} >= set(JOBS)
                 and time.time() - max(when for when, job in holder.sends() if job == "reconcile") < 1.0,
                 "the holder to send every job, reconcile just now", 30)
        holder.process.kill()
        killed_at = time.time()
        holder.process.wait()
        assert standby.sends() == [] and standby.acquired() is None, "the standby sent while the holder held the lock"

        taken = wait_for(standby.acquired, "the standby to take the lock", 3 * LOCK_SECONDS + 5)
        takeover = taken - killed_at
        print(f"takeover {takeover:.2f} s after kill -9 (lock {LOCK_SECONDS} s, tick {TICK} s)")
        assert takeover <= LOCK_SECONDS + TICK + 2.0  # 2 s of slack for a loaded machine
        wait_for(lambda: {job for when, job in standby.sends() if when > taken} >= set(JOBS),
                 "the new holder to send every job", 30)
        assert standby.process.poll() is None and not any("NOPERM" in b.log.read_text() for b in beats)
    finally:
        for beat in beats:
            stop(beat.process)

    sends = sorted(holder.sends() + standby.sends())
    for job, (every, _) in JOBS.items():
        times = [when for when, sent in sends if sent == job]
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        # Twice in one interval (two beats sending, or the new holder sending at once what the
        # old one had just sent) shows as a gap shorter than the interval.
        assert min(gaps) >= every - 0.05, f"{job} (every {every} s) sent twice in one interval: {times}"
    assert not [job for _, job in sends if job in NOT_SENT]

    # Every send reached the worker of its queue, and only that worker, which ran it (signed). The
    # killed holder's last send may not have: it logs a send before it publishes it.
    def task(job: str) -> str:
        return f"payments.{job.replace('-', '_')}"

    expected = {name: Counter(task(job) for _, job in sends if job in JOBS and JOBS[job][1] in SPLIT[name].split(","))
                for name in SPLIT}
    cut_short = Counter([task(holder.sends()[-1][1])])
    try:
        wait_for(lambda: all(Counter(received(log)) in (expected[name], expected[name] - cut_short)
                             for name, log in workers.items()),
                 "each worker to receive its queues' jobs", 20)
    except AssertionError as exc:
        got = {name: Counter(received(log)) for name, log in workers.items()}
        raise AssertionError(f"{exc}: received {got}, sent {expected}") from None
    for log in workers.values():
        assert "message refused" not in log.read_text()

    # Only the worker that consumes `webhooks` runs the inbox consumer (worker/inbox.py): worker
    # b, up for as long as a, never started one.
    def consumer_started(log: Path) -> bool:
        return any(line["message"].startswith("inbox consumer started") for line in log_lines(log))

    wait_for(lambda: consumer_started(workers["a"]), "worker a's inbox consumer", 10)
    assert not consumer_started(workers["b"]), workers["b"].read_text()[-3000:]
