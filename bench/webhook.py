"""Webhook receiver: accepted Stripe deliveries per second against the bare HTTP stack.

What it measures, in one run against one real gunicorn server (the app of `payments webhook`,
`webhook:create_app()`, with its settings: bind, access log to stdout), its own PostgreSQL
database and Redis database 8 as the broker, with a real `payments worker` (its default
concurrency, every queue) processing the events as they arrive, as in production, on the same
machine: its cost is the webhook's cost too.

* **bare**: `GET /healthz` (a tiny JSON 200: Flask, gunicorn and the HTTP round trip, nothing
  else), the ceiling of this server on this machine;
* **webhook**: `POST /stripe/webhook` with distinct, validly signed events (a small
  `payment_intent.succeeded`), i.e. the whole production path: HMAC check, JSON parse, INSERT
  ... ON CONFLICT DO NOTHING into `stripe_events` (with its NOTIFY, on PostgreSQL), COMMIT,
  answer; the worker's inbox consumer takes the events (`worker/inbox.py`; a tree without it
  publishes `payments.process_stripe_event` instead, and the worker's pool runs the tasks).
  Every answer must be 200 with `{"duplicate": false, "received": true}`. Each row starts
  with nothing left to process (the backlog of the row before is waited for, and reported).

Both rows use the same senders: 32 concurrent connections (by default 2 processes x 16 threads,
"spawn"), each a keep-alive HTTP/1.1 connection over a plain socket that sends a pre-built
request and reads the answer (it reconnects when the server says `Connection: close`, which
gunicorn's sync workers do after every request). Each sender loops for a fixed time after a
barrier (closed loop: the next request goes when the answer is in); the rate is all answers
divided by first start to last answer, latency is per request (send to full answer).

Webhook bodies and their `Stripe-Signature` headers (`shared.stripe_gateway.sign_webhook`) are
made before the barrier, stamped with the current time (the server accepts 300 s), enough for
three times the rate the warm-up saw. A 2 s warm-up of each route comes first (it forks nothing
new but opens each worker's database and broker connections and fills SQLAlchemy's caches).

Besides the rate it reports CPU per request (utime + stime from /proc) of the gunicorn master
and workers, of their PostgreSQL backends, of redis-server and of the senders, and how busy the
two cores were: on a 2-core machine the senders compete with the server, and this shows by how
much. If `wrk` is on PATH (Debian package `wrk`) it runs both rows again with `wrk -t2 -c32
--latency` as the sender (the webhook row through bench/webhook_wrk.lua, with its own pre-signed
events), to show what a sender written in C measures against what the Python senders measure.

At the end it checks that `stripe_events` holds one row per webhook answered (warm-up included;
wrk stops with up to one uncounted request per connection in flight), that the worker processed
every one (`ignored`: no attempt of ours matches them) and that the Redis list `webhooks` is
empty; exit status 1 if not, or if any answer was not the expected 200. It also reports how
long after each webhook row the worker still had events to process, and the arrival-to-
processed delay (updated_at - received_at) over all events.

Run it from the project root (PostgreSQL and Redis must be up, e.g. `make services`):

    .venv/bin/python bench/webhook.py                        # 4 sync workers, 10 s per row
    .venv/bin/python bench/webhook.py --workers 2 --threads 8 --seconds 5

`--threads N` > 1 runs gunicorn's gthread workers through the gunicorn CLI (`payments webhook`
has no such option); otherwise the server is `payments webhook --workers W` itself. It drops
and recreates the database `payments_bench_webhook` on PAYMENTS_BENCH_PG_URL (default
postgresql://postgres@127.0.0.1:5432/postgres) and flushes Redis database 8 on
PAYMENTS_BENCH_REDIS (default redis://127.0.0.1:6379/8), refusing if another client is
connected to it. The server's log goes to var/bench-webhook-server.log, the worker's to
var/bench-webhook-worker.log. To measure another tree's code with this script, put that tree
first on PYTHONPATH (the server and the worker inherit it).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import resource
import shutil
import tempfile
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis

from shared import schema
from shared.stripe_gateway import sign_webhook
from common import backend_pids, cpu_seconds, recreate_database, url_for  # bench/common.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("PAYMENTS_BENCH_REDIS", "redis://127.0.0.1:6379/8")
BENCH_DB = "payments_bench_webhook"
SECRET = "whsec_bench_0123456789abcdef"
QUEUE = "webhooks"
HOST = "127.0.0.1"
SERVER_LOG = ROOT / "var" / "bench-webhook-server.log"
WORKER_LOG = ROOT / "var" / "bench-webhook-worker.log"
API_TOKEN = "bench-api-token-0123456789abcdef"  # the service key signs and checks internal tasks
DRAIN_SECONDS = 180.0  # for the worker to finish what the rows left, after the last row
WARMUP_SECONDS = 2.0
TARGET_RATIO = 0.35  # webhook rate / bare rate (issue 16)
TARGET_P99_MS = 30.0  # webhook p99 at 32 senders, with wrk as the sender (issue 16)
EXPECTED = {"duplicate": False, "received": True}


# --- setup ------------------------------------------------------------------------------


def other_clients(broker: redis.Redis, db: int) -> list[dict[str, Any]]:
    return [c for c in broker.client_list() if int(c.get("db", -1)) == db and c["id"] != str(broker.client_id())]


def check_broker(broker: redis.Redis, db: int) -> None:
    if other_clients(broker, db):
        sys.exit(f"another client is connected to Redis database {db}; pick another with PAYMENTS_BENCH_REDIS")
    broker.flushdb()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def server_command(port: int, workers: int, threads: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if threads <= 1:
        return [str(bin_dir / "payments"), "webhook", "--host", HOST, "--port", str(port), "--workers", str(workers)]
    # What `payments webhook` does, plus gthread workers (the same bind and access log).
    return [str(bin_dir / "gunicorn"), "--bind", f"{HOST}:{port}", "--workers", str(workers),
            "--worker-class", "gthread", "--threads", str(threads), "--access-logfile", "-",
            "webhook:create_app()"]


def service_env(database_url: str) -> dict[str, str]:
    """The server's and the worker's environment: one database, one broker, one service key."""
    return {
        **os.environ,
        "PAYMENTS_DATABASE_URL": database_url,
        "PAYMENTS_BROKER_URL": BROKER_URL,
        "PAYMENTS_STRIPE_WEBHOOK_SECRET": SECRET,
        "PAYMENTS_API_TOKEN": API_TOKEN,
        "PYTHONUNBUFFERED": "1",
    }


def start_server(command: list[str], database_url: str) -> subprocess.Popen:
    SERVER_LOG.parent.mkdir(exist_ok=True)
    with open(SERVER_LOG, "wb") as out:
        return subprocess.Popen(command, env=service_env(database_url), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def start_worker(database_url: str) -> subprocess.Popen:
    """`payments worker` as in production (every queue, its default concurrency)."""
    WORKER_LOG.parent.mkdir(exist_ok=True)
    env = {key: value for key, value in service_env(database_url).items()
           if key != "PAYMENTS_WORKER_METRICS_ADDRESS"}
    with open(WORKER_LOG, "wb") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "payments"), "worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def wait_for_worker(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until Celery says the worker is ready (it consumes its queues)."""
    deadline = time.monotonic() + timeout
    while b" ready." not in WORKER_LOG.read_bytes():
        if process.poll() is not None:
            sys.exit(f"the worker exited ({process.returncode}); see {WORKER_LOG}")
        if time.monotonic() > deadline:
            sys.exit(f"the worker was not ready within {timeout:.0f}s; see {WORKER_LOG}")
        time.sleep(0.1)


def drain(database_url: str, timeout: float = DRAIN_SECONDS) -> float:
    """Seconds until no stored event is left to process (received, processing or failed)."""
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM stripe_events WHERE status NOT IN ('processed', 'ignored')"
                           ).fetchone()[0]:
            if time.monotonic() - started > timeout:
                break
            time.sleep(0.2)
    return time.monotonic() - started


def wait_for_server(process: subprocess.Popen, port: int, workers: int, timeout: float = 60.0) -> None:
    """Until /healthz answers 200 and all workers have started."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            sys.exit(f"the server exited ({process.returncode}); see {SERVER_LOG}")
        try:
            conn = Connection(HOST, port)
            status, _ = conn.request(f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            conn.close()
            if status == 200 and len(server_pids(process.pid)) > workers:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"the server did not answer /healthz within {timeout:.0f}s; see {SERVER_LOG}")
        time.sleep(0.1)


def stop_server(process: subprocess.Popen, timeout: float = 30.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # graceful: workers finish their requests
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


# --- the HTTP client: one keep-alive connection over a plain socket ----------------------


class Connection:
    """Sends pre-built HTTP/1.1 requests and reads answers with a Content-Length. Reconnects
    when the server closed the connection after its previous answer."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.connects = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buffer = sock, b""
        self.connects += 1
        return sock

    def request(self, data: bytes) -> tuple[int, bytes]:
        reused = self.sock is not None
        try:
            return self._exchange(data)
        except (ConnectionError, EOFError):
            self.close()
            if not reused:
                raise
            # The server closed an idle keep-alive connection before reading the request (it
            # answered nothing, so nothing was processed): send it again on a new one.
            return self._exchange(data)

    def _exchange(self, data: bytes) -> tuple[int, bytes]:
        sock = self.sock or self._connect()
        sock.sendall(data)
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed before an answer")
            buffer += chunk
        lines = buffer[:end].split(b"\r\n")
        status = int(lines[0].split(None, 2)[1])
        length, close = 0, lines[0].startswith(b"HTTP/1.0")
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        body_end = end + 4 + length
        while len(buffer) < body_end:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed inside an answer")
            buffer += chunk
        body, self.buffer = buffer[end + 4:body_end], buffer[body_end:]
        if close:
            self.close()
        return status, body


def webhook_requests(port: int, prefix: str, count: int) -> list[bytes]:
    """`count` distinct signed deliveries, as Stripe sends them (the signature made now)."""
    now = int(time.time())
    requests = []
    for i in range(count):
        n = f"{prefix}_{i}"
        event = {"id": f"evt_bench_{n}", "object": "event", "api_version": "2024-06-20",
                 "type": "payment_intent.succeeded", "created": now, "livemode": False,
                 "data": {"object": {"id": f"pi_{n}", "object": "payment_intent"}}}
        body = json.dumps(event, separators=(",", ":")).encode()
        head = (f"POST /stripe/webhook HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                f"Content-Type: application/json; charset=utf-8\r\n"
                f"Stripe-Signature: {sign_webhook(body, SECRET, timestamp=now)}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        requests.append(head.encode() + body)
    return requests


def sender_process(
    index: int, threads: int, port: int, route: str, phase: str, seconds: float, per_thread: int,
    barrier: Any, results: Any,
) -> None:
    """`threads` senders in this process; reports counts, latencies, errors and CPU time."""
    try:
        if route == "webhook":
            pools = [webhook_requests(port, f"{phase}_{index}_{t}", per_thread) for t in range(threads)]
        else:
            bare = f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
            pools = [[bare] for _ in range(threads)]
        go = threading.Event()
        start_at: list[float] = []
        outcomes: list[dict[str, Any]] = [{} for _ in range(threads)]

        def send(t: int) -> None:
            pool, conn = pools[t], Connection(HOST, port)
            latencies: list[float] = []
            errors: list[str] = []
            exhausted = False
            go.wait()
            deadline = start_at[0] + seconds
            now = start_at[0]
            i = 0
            while now < deadline:
                if route == "webhook":
                    if i == len(pool):
                        exhausted = True
                        break
                    data = pool[i]
                else:
                    data = pool[0]
                i += 1
                try:
                    status, body = conn.request(data)
                    if status != 200 or (route == "webhook" and json.loads(body) != EXPECTED):
                        errors.append(f"{status} {body[:200]!r}")
                except (OSError, EOFError, ValueError) as exc:
                    errors.append(repr(exc))
                    conn.close()
                done = time.perf_counter()
                latencies.append(done - now)
                now = done
            conn.close()
            outcomes[t] = {"latencies": latencies, "errors": errors, "end": now, "exhausted": exhausted,
                           "connects": conn.connects}

        workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        barrier.wait(timeout=120)
        cpu = os.times()
        start_at.append(time.perf_counter())
        go.set()
        for w in workers:
            w.join()
        after = os.times()
        results.put({
            "start": start_at[0],
            "end": max(o["end"] for o in outcomes),
            "latencies": [lat for o in outcomes for lat in o["latencies"]],
            "errors": [e for o in outcomes for e in o["errors"]],
            "exhausted": sum(o["exhausted"] for o in outcomes),
            "connects": sum(o["connects"] for o in outcomes),
            "cpu": (after.user - cpu.user) + (after.system - cpu.system),
        })
    except BaseException as exc:  # report, so the parent does not wait forever
        results.put(exc)
        raise


# --- CPU accounting (Linux /proc) -------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def server_pids(master: int) -> list[int]:
    children = []
    try:
        for task in Path(f"/proc/{master}/task").iterdir():
            children += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return [master, *children]


def all_cpu_seconds() -> float:
    """Busy time of the whole machine (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


# --- running a row ----------------------------------------------------------------------


@dataclass
class Row:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    errors: list[str]
    exhausted: int = 0
    connects: int = 0
    server_cpu: float = 0.0
    postgres_cpu: float = 0.0
    redis_cpu: float = 0.0
    worker_cpu: float = 0.0
    sender_cpu: float = 0.0
    machine_cpu: float = 0.0
    reported_ms: dict[float, float] | None = None  # percentiles measured elsewhere (wrk)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        if self.reported_ms is not None:
            return self.reported_ms[q]
        ordered = sorted(self.latencies)
        return 1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")

    def cpu_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.requests if self.requests else float("nan")

    @property
    def other_cores(self) -> float:
        """Busy cores not accounted to the server, the worker, their backends, Redis or the senders."""
        ours = self.server_cpu + self.postgres_cpu + self.redis_cpu + self.worker_cpu + self.sender_cpu
        return (self.machine_cpu - ours) / self.seconds


def run_row(name: str, route: str, phase: str, args: argparse.Namespace, port: int, per_thread: int,
            server: subprocess.Popen, database_url: str, redis_pid: int, worker: subprocess.Popen) -> Row:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(args.sender_procs + 1)
    results = ctx.Queue()
    threads = args.senders // args.sender_procs
    procs = [ctx.Process(target=sender_process,
                         args=(i, threads, port, route, phase, args.seconds if phase != "warm" else WARMUP_SECONDS,
                               per_thread, barrier, results))
             for i in range(args.sender_procs)]
    for p in procs:
        p.start()
    servers, backends, workers = server_pids(server.pid), backend_pids(database_url), server_pids(worker.pid)
    barrier.wait(timeout=300)
    before = (cpu_seconds(servers), cpu_seconds(backends), cpu_seconds([redis_pid]), all_cpu_seconds(),
              cpu_seconds(workers))
    reports = [results.get(timeout=args.seconds + 300) for _ in procs]
    # gthread workers open pool connections as their threads need them: backends that appeared
    # during the row count from zero.
    after = (cpu_seconds(servers), cpu_seconds(sorted({*backends, *backend_pids(database_url)})),
             cpu_seconds([redis_pid]), all_cpu_seconds(), cpu_seconds(workers))
    for p in procs:
        p.join()
    failed = [r for r in reports if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{name}: a sender failed: {failed[0]!r}")
    latencies = [lat for r in reports for lat in r["latencies"]]
    errors = [e for r in reports for e in r["errors"]]
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return Row(
        name=name, requests=len(latencies) - len(errors), seconds=seconds, latencies=latencies, errors=errors,
        exhausted=sum(r["exhausted"] for r in reports), connects=sum(r["connects"] for r in reports),
        server_cpu=after[0] - before[0], postgres_cpu=after[1] - before[1], redis_cpu=after[2] - before[2],
        worker_cpu=after[4] - before[4], sender_cpu=sum(r["cpu"] for r in reports), machine_cpu=after[3] - before[3],
    )


def write_wrk_requests(directory: Path, port: int, per_thread: int) -> None:
    """Signed deliveries for the two wrk threads, one file each (see bench/webhook_wrk.lua)."""
    for thread in range(2):
        lines = []
        for data in webhook_requests(port, f"wrk_{thread}", per_thread):
            head, _, body = data.partition(b"\r\n\r\n")
            signature = re.search(rb"Stripe-Signature: (\S+)", head).group(1)  # type: ignore[union-attr]
            lines.append(signature + b"\t" + body)
        (directory / f"{thread}.tsv").write_bytes(b"\n".join(lines) + b"\n")


def run_wrk(name: str, port: int, seconds: float, connections: int, *, webhooks: Path | None = None,
            server: subprocess.Popen | None = None, database_url: str = "", redis_pid: int = 0,
            worker: subprocess.Popen | None = None) -> Row | None:
    """`wrk -t2` with `connections` connections, if installed: /healthz, or with `webhooks` (a
    directory from `write_wrk_requests`) the webhook route through bench/webhook_wrk.lua. A
    sender written in C, to show what the Python senders' own latency adds."""
    if shutil.which("wrk") is None:
        return None
    command = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if webhooks is None:
        command.append(f"http://{HOST}:{port}/healthz")
    else:
        command += ["-s", str(ROOT / "bench" / "webhook_wrk.lua"), f"http://{HOST}:{port}/stripe/webhook",
                    "--", str(webhooks)]
    servers = server_pids(server.pid) if server else []
    backends = backend_pids(database_url) if database_url else []
    pids = [servers, backends, [redis_pid] if redis_pid else [], server_pids(worker.pid) if worker else []]
    before = [cpu_seconds(p) for p in pids] + [all_cpu_seconds(), _children_cpu()]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    after = [cpu_seconds(p) for p in pids] + [all_cpu_seconds(), _children_cpu()]

    def ms(label: str) -> float:
        found = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if not found:
            raise RuntimeError(f"could not parse wrk output:\n{out}")
        return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]

    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s)", out)
    if not total:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    errors = [f"{found.group(0)}" for found in re.finditer(r"(Non-2xx or 3xx responses|Socket errors): .*", out)]
    bad = re.search(r"bad answers: (\d+)", out)
    if bad and int(bad.group(1)):
        errors.append(f"{bad.group(1)} answers not 200 with duplicate false")
    ran_out = re.search(r"ran out: (\d+)", out)
    elapsed = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    delta = [a - b for a, b in zip(after, before)]
    return Row(name, int(total.group(1)), elapsed, [], errors, exhausted=int(ran_out.group(1)) if ran_out else 0,
               server_cpu=delta[0], postgres_cpu=delta[1], redis_cpu=delta[2], worker_cpu=delta[3],
               machine_cpu=delta[4], sender_cpu=delta[5], reported_ms={0.5: ms("50"), 0.99: ms("99")})


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- checks and report ------------------------------------------------------------------


def flush_count(broker: redis.Redis) -> int:
    return int(broker.info("commandstats").get("cmdstat_flushdb", {}).get("calls", 0))


def check(database_url: str, broker: redis.Redis, accepted: int, intruders: list[str], slack: int = 0) -> list[str]:
    """`slack`: wrk stops with up to one request per connection in flight, which the server
    stores but wrk does not count, so up to that many more rows are expected. Every stored
    event must have been processed by the worker (`ignored`: no attempt of ours matches it)
    and nothing be left in the queue."""
    problems = []
    queued = broker.llen(QUEUE)
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT count(*) FROM stripe_events").fetchone()[0]
        done = conn.execute("SELECT count(*) FROM stripe_events WHERE status IN ('processed', 'ignored')"
                            ).fetchone()[0]
    if intruders and (queued or done != stored):
        # The e2e tests pick a Redis database in 1..14 at random and flush it.
        problems.append(f"other clients used Redis database {broker.connection_pool.connection_kwargs.get('db')}"
                        f" during the run? ({'; '.join(intruders)}): a FLUSHDB or a worker there"
                        " changes the queue; rerun, or set PAYMENTS_BENCH_REDIS to a free database")
    if not accepted <= stored <= accepted + slack:
        problems.append(f"{stored} rows in stripe_events, expected {accepted} (webhook answers)"
                        + (f" to {accepted + slack}" if slack else ""))
    if done != stored:
        problems.append(f"{stored - done} stored events were not processed (see {WORKER_LOG.relative_to(ROOT)})")
    if queued:
        problems.append(f"{queued} messages left in the Redis list {QUEUE!r}")
    return problems


def delays(database_url: str) -> dict[str, float]:
    """Arrival to processed (updated_at - received_at) over every event, in ms."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY d), max(d) FROM"
            " (SELECT 1000 * extract(epoch FROM updated_at - received_at) AS d FROM stripe_events) AS t"
        ).fetchone()
    return {"p50": float(row[0][0]), "p99": float(row[0][1]), "max": float(row[1])}


def print_table(rows: list[Row]) -> None:
    # "x bare": against the bare row of the same senders (Python, or wrk).
    bare = {r.name.endswith("(wrk)"): r.rate for r in rows if r.name.startswith("bare")}
    headers = ["row", "requests", "seconds", "rate/s", "p50 ms", "p99 ms", "x bare",
               "server CPU ms/req", "postgres ms/req", "redis ms/req", "worker ms/req", "sender ms/req", "cores busy", "other cores"]
    cells = []
    for r in rows:
        own = r.name != "bare (wrk)"  # the wrk webhook row has its CPU figures; wrk is the sender
        cells.append([
            r.name, str(r.requests), f"{r.seconds:.2f}", f"{r.rate:.0f}", f"{r.percentile(0.5):.1f}",
            f"{r.percentile(0.99):.1f}", f"{r.rate / bare[r.name.endswith('(wrk)')]:.2f}",
            *([f"{r.cpu_ms(r.server_cpu):.2f}", f"{r.cpu_ms(r.postgres_cpu):.2f}", f"{r.cpu_ms(r.redis_cpu):.2f}",
               f"{r.cpu_ms(r.worker_cpu):.2f}", f"{r.cpu_ms(r.sender_cpu):.2f}", f"{r.machine_cpu / r.seconds:.2f}", f"{r.other_cores:.2f}"]
              if own else ["-"] * 7),
        ])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(row, widths))) + " |"

    print(line(headers))
    print("|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|")
    for row in cells:
        print(line(row))
    print("(rate: answers / (first send -> last answer); latency: send -> full answer, per request."
          " CPU: utime + stime from /proc per request; server = gunicorn master and workers,"
          " postgres = their backends, worker = `payments worker` (main and pool processes), sender = the sending processes; cores busy = whole"
          " machine, of 2; other cores = busy but none of these: other work on the machine, the"
          " kernel, PostgreSQL's WAL writer.)")
    noisy = [r.name for r in rows if r.name != "bare (wrk)" and r.other_cores > 0.2]
    if noisy:
        print(f"WARNING: other work took more than 0.2 cores during {', '.join(noisy)}: the figures are low.")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each row (default 10)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per worker; > 1 runs gthread workers via the gunicorn CLI (default 1: sync)")
    parser.add_argument("--senders", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--sender-procs", type=int, default=2, help="processes the senders run in (default 2)")
    args = parser.parse_args()
    if args.senders % args.sender_procs:
        parser.error("--senders must be a multiple of --sender-procs")
    return args


def main() -> int:
    args = parse_args()
    database_url = url_for(BENCH_DB)
    broker = redis.Redis.from_url(BROKER_URL)
    check_broker(broker, int(broker.connection_pool.connection_kwargs.get("db", 0)))
    db = int(broker.connection_pool.connection_kwargs.get("db", 0))
    redis_pid = int(broker.info("server")["process_id"])
    flushes = flush_count(broker)
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    print(f"setting up {BENCH_DB} ...", flush=True)
    recreate_database(BENCH_DB)
    schema.upgrade(database_url)

    port = free_port()
    command = server_command(port, args.workers, args.threads)
    config = (f"{args.workers} sync workers" if args.threads <= 1
              else f"{args.workers} gthread workers x {args.threads} threads")
    print(f"starting the server: {config}, log {SERVER_LOG.relative_to(ROOT)}\n  {' '.join(command)}", flush=True)
    server = start_server(command, database_url)
    worker = start_worker(database_url)
    rows: list[Row] = []
    drained: list[float] = []
    accepted = 0
    wrk_rows: list[Row] = []
    try:
        wait_for_server(server, port, args.workers)
        wait_for_worker(worker)
        # Warm-up: each worker opens its database and broker connections, SQLAlchemy compiles.
        run_row("warm", "bare", "warm", args, port, 1, server, database_url, redis_pid, worker)
        per_thread = max(100, math.ceil(2000 * WARMUP_SECONDS / args.senders))
        warm = run_row("warm", "webhook", "warm", args, port, per_thread, server, database_url, redis_pid, worker)
        accepted += warm.requests
        if warm.errors:
            sys.exit(f"webhook warm-up: {len(warm.errors)} bad answers, e.g. {warm.errors[0]}")
        per_thread = max(200, math.ceil(3 * warm.rate * args.seconds / args.senders))
        for name in ("bare", "webhook"):
            # Each row starts with nothing left to process: a backlog is the row before's cost.
            drained.append(drain(database_url))
            row = run_row(name, name, "run", args, port, per_thread, server, database_url, redis_pid, worker)
            rows.append(row)
            if name == "webhook":
                accepted += row.requests
            print(f"  {name:7}: {row.requests} in {row.seconds:5.2f} s = {row.rate:6.0f}/s,"
                  f" p99 {row.percentile(0.99):5.1f} ms (load average {os.getloadavg()[0]:.2f})", flush=True)
        drained.append(drain(database_url))
        bare_wrk = run_wrk("bare (wrk)", port, args.seconds, args.senders)
        if bare_wrk is not None:
            with tempfile.TemporaryDirectory() as files:
                write_wrk_requests(Path(files), port, per_thread * args.senders // 2)
                webhook_wrk = run_wrk("webhook (wrk)", port, args.seconds, args.senders, webhooks=Path(files),
                                      server=server, database_url=database_url, redis_pid=redis_pid,
                                      worker=worker)
            assert webhook_wrk is not None
            wrk_rows = [bare_wrk, webhook_wrk]
            accepted += webhook_wrk.requests
            print(f"  webhook (wrk): {webhook_wrk.requests} in {webhook_wrk.seconds:5.2f} s ="
                  f" {webhook_wrk.rate:6.0f}/s, p99 {webhook_wrk.percentile(0.99):5.1f} ms", flush=True)
            drained.append(drain(database_url))
    finally:
        code = stop_server(server)
        print(f"server stopped (exit status {code})", flush=True)
        worker_code = stop_server(worker)
        print(f"worker stopped (exit status {worker_code})", flush=True)

    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (other work on the machine skews results)")
    print(f"server: {config} ({' '.join(command[1:] if args.threads <= 1 else command)});"
          f" senders: {args.senders} connections in {args.sender_procs} processes\n")
    print_table([*rows, *wrk_rows])
    delay = delays(database_url)
    print(f"worker: backlog left after the webhook row {drained[2]:.1f} s"
          + (f", after the webhook (wrk) row {drained[3]:.1f} s" if wrk_rows else "")
          + f"; arrival to processed over all events: p50 {delay['p50']:.0f} ms, p99 {delay['p99']:.0f} ms,"
          f" max {delay['max']:.0f} ms")

    bare, webhook = rows
    ratio, p99 = webhook.rate / bare.rate, webhook.percentile(0.99)
    verdict = "ok" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"\n  webhook / bare {ratio:.2f}x, webhook p99 {p99:.1f} ms"
          f"  (target >= {TARGET_RATIO}x, and p99 < {TARGET_P99_MS:.0f} ms with wrk: {verdict})")
    if wrk_rows:
        bare_wrk, webhook_wrk = wrk_rows
        ratio_wrk, p99_wrk = webhook_wrk.rate / bare_wrk.rate, webhook_wrk.percentile(0.99)
        verdict_wrk = "ok" if ratio_wrk >= TARGET_RATIO and p99_wrk < TARGET_P99_MS else "BELOW TARGET"
        print(f"  with wrk as the sender: webhook / bare {ratio_wrk:.2f}x, webhook p99 {p99_wrk:.1f} ms"
              f"  ({verdict_wrk})")

    # The server and the worker have stopped, so any other client of the database is someone else's; so is a FLUSHDB.
    intruders = [f"client {c.get('addr')} last ran {c.get('cmd')}" for c in other_clients(broker, db)]
    if flush_count(broker) > flushes:
        intruders.append(f"{flush_count(broker) - flushes} FLUSHDB on some database")
    problems = check(database_url, broker, accepted, intruders, slack=args.senders if wrk_rows else 0)
    for row in [*rows, *wrk_rows]:
        if row.errors:
            problems.append(f"{row.name}: {len(row.errors)} bad answers, e.g. {row.errors[0]}")
        if row.exhausted:
            problems.append(f"{row.name}: {row.exhausted} senders ran out of pre-signed events")
    broker.close()
    if problems:
        print("\nChecks FAILED: " + "; ".join(problems))
        return 1
    print(f"\nChecks hold: every answer was 200 (webhook: duplicate false); {accepted} webhooks answered"
          f" (with {warm.requests} warm-up; wrk may leave up to {args.senders} more in flight, uncounted),"
          f" as many rows in stripe_events, every one processed by the worker, and the Redis list {QUEUE!r}"
          " empty.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
