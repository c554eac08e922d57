"""What the storm and outage scenarios start for themselves: a private `redis-server` and a
private PostgreSQL (`initdb` + `pg_ctl`), each on its own port and in its own directory, so a
scenario can stop them without touching the shared servers; the service's own processes
(`stack`: webhook, worker, beat) pointed at them; and Stripe's side of webhook delivery
(`Stripe`): sign, send concurrently, and retry a 503 the way Stripe does.

Each service is a context manager that removes everything it made, even when the test fails.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from shared.schema import upgrade
from shared.stripe_gateway import sign_webhook
from tests.e2e.conftest import worker_env
from tests.e2e.processes import free_port, readies, start, stop, wait_for

# PostgreSQL --------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary: $PAYMENTS_TEST_PG_BIN, else Debian's newest, else PATH."""
    if os.environ.get("PAYMENTS_TEST_PG_BIN"):
        return str(Path(os.environ["PAYMENTS_TEST_PG_BIN"]) / name)
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    path = found[-1] if found else shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} not found: install PostgreSQL or set PAYMENTS_TEST_PG_BIN")
    return path


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb, then pg_ctl on its own port and socket
    directory). initdb and the server refuse to run as root, so as root they run as `postgres`.
    Durability is off (fsync, synchronous commit): a fast stop still flushes, and speed matters."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/payments"

    def _run(self, *args: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-3000:]
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {output}")

    def initdb(self) -> None:
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                  "-E", "UTF8", "--locale", "C")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects every client and aborts their transactions, as a crash would."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started cluster with a `payments` database at the newest schema."""
    directory = Path(tempfile.mkdtemp(prefix="faults-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    server = PrivatePostgres(directory)
    try:
        server.initdb()
        server.start()
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE payments")
        upgrade(server.url)
        yield server
    finally:
        if server.running():
            try:
                server.stop("immediate")
            except AssertionError:
                pass  # already stopping; the directory goes anyway
        shutil.rmtree(directory, ignore_errors=True)


# Stripe's webhook delivery -----------------------------------------------------------------


@dataclass
class Delivery:
    """One delivery of one event, after its retries."""

    event_id: str
    status: int = 0  # the last answer; 0: no answer (connection refused, timeout)
    duplicate: bool | None = None
    tries: int = 0
    refused: int = 0  # tries answered 503 or not answered at all
    answered_at: float = 0.0  # time.monotonic() of the last answer


@dataclass
class Stripe:
    """Stripe delivering webhooks: each try is signed afresh (Stripe signs every attempt with a
    new timestamp) and sent by one of `senders` concurrent connections. A 503 or no answer is
    tried again after a backoff (Stripe waits up to hours between tries; here 0.2 s doubling to
    2 s), for up to `give_up_after` seconds; any other status is final."""

    url: str
    secret: str
    senders: int = 32
    give_up_after: float = 120.0
    timeout: float = 30.0
    answered: int = 0  # deliveries finished so far (for a scenario to time its fault)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)  # of every try
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def deliver_all(self, events: Sequence[dict[str, Any]], *, copies: int, seed: int) -> list[Delivery]:
        """Every event `copies` times, in an order shuffled by `seed`."""
        bodies = {event["id"]: json.dumps(event).encode() for event in events}
        order = [event["id"] for event in events for _ in range(copies)]
        random.Random(seed).shuffle(order)
        with ThreadPoolExecutor(self.senders, thread_name_prefix="stripe") as pool:
            return list(pool.map(lambda event_id: self.deliver(event_id, bodies[event_id]), order))

    def deliver(self, event_id: str, body: bytes) -> Delivery:
        delivery = Delivery(event_id)
        deadline = time.monotonic() + self.give_up_after
        backoff = 0.2
        while True:
            delivery.tries += 1
            delivery.status, answer = self._post(body)
            delivery.answered_at = time.monotonic()
            with self._lock:
                self.statuses[delivery.status] += 1
            if delivery.status not in (0, 503) or time.monotonic() > deadline:
                break
            delivery.refused += 1
            time.sleep(backoff)  # Stripe's retry schedule, compressed
            backoff = min(2.0, backoff * 2)
        if isinstance(answer, dict):
            delivery.duplicate = answer.get("duplicate")
        with self._lock:
            self.answered += 1
        return delivery

    def _post(self, body: bytes) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Stripe-Signature": sign_webhook(body, self.secret)}
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                return error.code, json.loads(error.read() or b"null")
            except ValueError:
                return error.code, None
        except OSError:  # refused, reset or timed out: Stripe counts it as a failed try
            return 0, None


# The service's own processes ---------------------------------------------------------------

# The jobs that heal an outage run every second here (production: a minute), and treat an event
# or request as lost after 5 s without progress.
HEALING = {
    "PAYMENTS_REDRIVE_INBOX_SECONDS": "1",
    "PAYMENTS_RELAY_OUTBOX_SECONDS": "1",
    "PAYMENTS_REDRIVE_REQUESTS_SECONDS": "2",
    "PAYMENTS_REDRIVE_AFTER_SECONDS": "5",
    "PAYMENTS_OUTBOX_MAX_ATTEMPTS": "8",
    "PAYMENTS_OUTBOX_BACKOFF_SECONDS": "0.5",
}


@dataclass
class Stack:
    """The running service: the webhook's URL, and how often a process had to be restarted."""

    url: str
    restarts: collections.Counter[str] = field(default_factory=collections.Counter)


@contextmanager
def stack(
    directory: Path, *, database_url: str, broker_url: str, stripe_api: str, beat: bool,
    webhook_workers: int = 4, concurrency: int = 2,
) -> Iterator[Stack]:
    """The webhook server (gunicorn), a worker and, with `beat`, the scheduler, on the given
    database and broker. A process that exits is started again at once, as the compose file's
    `restart: unless-stopped` does in service (a Celery worker can exit when its broker goes
    away: see README, "Operating it"); the restarts are counted. Every process is stopped on
    the way out; their logs stay in `directory`."""
    env = worker_env(database_url, PAYMENTS_BROKER_URL=broker_url, PAYMENTS_STRIPE_API_BASE=stripe_api, **HEALING)
    port = free_port()
    commands = {
        "webhook": (["webhook", "--port", str(port), "--workers", str(webhook_workers)], None),
        "worker": (["worker", "--concurrency", str(concurrency), "--hostname", f"faults-{port}@%h"], None),
    }
    if beat:
        commands["beat"] = (["beat", "--schedule", str(directory / "beat-schedule")], directory)
    running = Stack(f"http://127.0.0.1:{port}/stripe/webhook")
    processes: dict[str, subprocess.Popen] = {}
    stopping = threading.Event()

    def supervise() -> None:
        while not stopping.wait(0.2):
            for name, (args, cwd) in commands.items():
                if processes[name].poll() is not None and not stopping.is_set():
                    running.restarts[name] += 1
                    processes[name] = start(args, env, directory / f"{name}.log", cwd, append=True)

    supervisor = threading.Thread(target=supervise, daemon=True)
    try:
        for name, (args, cwd) in commands.items():
            processes[name] = start(args, env, directory / f"{name}.log", cwd)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            for process in processes.values():
                assert process.poll() is None, f"{process.args!r} exited; logs in {directory}"
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                return response.status == 200

        wait_for(up, "the webhook server", 30)
        wait_for(lambda: readies(directory / "worker.log"), "the worker to start", 60)
        supervisor.start()
        yield running
    finally:
        stopping.set()
        if supervisor.is_alive():
            supervisor.join()
        for process in reversed(list(processes.values())):
            stop(process)
