"""The `payments` command (CONTRACT): starts the edges, importing each one only when asked."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="payments", description="cobalt-payments")
    verbs = parser.add_subparsers(dest="verb", required=True)

    db = verbs.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])

    web = verbs.add_parser("webhook", help="serve the HTTP API and the Stripe webhook")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8000)
    web.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    web.add_argument("--metrics-port", type=int,
                     help="serve /metrics on this internal port only (default: PAYMENTS_METRICS_ADDRESS; unset: not served)")
    web.add_argument("--metrics-host", default=None, help="the metrics listener's address (default 127.0.0.1)")

    verbs.add_parser("worker", help="a Celery worker on every queue, or on those of --queues or PAYMENTS_WORKER_QUEUES "
                     "(its /metrics on PAYMENTS_WORKER_METRICS_ADDRESS)", add_help=False)
    verbs.add_parser("beat", help="the scheduler; on Redis any number may run, one sending (PAYMENTS_BEAT_LOCK_SECONDS)",
                     add_help=False)

    flower = verbs.add_parser("flower", help="Flower, the Celery console, on the configured broker (Redis), with basic "
                              "auth: user admin, password PAYMENTS_FLOWER_PASSWORD")
    flower.add_argument("--address", default="127.0.0.1")
    flower.add_argument("--port", type=int, default=5555)

    box = verbs.add_parser("outbox", help="callbacks and e-mails waiting to be sent")
    box_verbs = box.add_subparsers(dest="action", required=True)
    replay = box_verbs.add_parser("replay", help="send a message again now (e.g. after fixing a route)")
    replay.add_argument("id", type=int)

    events = verbs.add_parser("events", help="Stripe events in the inbox")
    events_verbs = events.add_subparsers(dest="action", required=True)
    replay_event = events_verbs.add_parser("replay", help="process a stored event again now")
    replay_event.add_argument("event_id")

    verbs.add_parser("reconcile", help="send booked card refunds and finish open card payments from Stripe's state now")

    clients = verbs.add_parser("clients", help="who may call the API, with which scopes and bindings")
    client_verbs = clients.add_subparsers(dest="action", required=True)
    add = client_verbs.add_parser("add", help="store a client; prints its token and callback key once")
    add.add_argument("name")
    add.add_argument("--scopes", required=True, help="comma-separated: payments,profiles,clubs,reports,admin,ops")
    add.add_argument("--route-codes", help="comma-separated route codes it may use")
    add.add_argument("--request-prefix", help="the prefix its request ids must start with")
    add.add_argument("--organisations", help="comma-separated organisations it may act on")
    client_verbs.add_parser("list", help="every client (never a token)")
    rotate = client_verbs.add_parser("rotate", help="a new token; the old ones work for --grace seconds")
    rotate.add_argument("name")
    rotate.add_argument("--grace", type=int, default=86400, help="seconds the old tokens keep working")
    revoke = client_verbs.add_parser("revoke", help="refuse every token of the client from now on")
    revoke.add_argument("name")

    imports = verbs.add_parser("import", help="opening balances from a file")
    import_verbs = imports.add_subparsers(dest="action", required=True)
    balances = import_verbs.add_parser("balances", help="book a CSV of kind,id,amount,description; each line once")
    balances.add_argument("file", type=Path)
    balances.add_argument("--dry-run", action="store_true", help="say what would be booked; book nothing")

    run = verbs.add_parser("run", help="the whole stack locally; Ctrl-C stops it")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--flower-port", type=int, default=5555,
                     help="Flower's port on 127.0.0.1 when the broker is Redis (taken: any free one)")

    demo = verbs.add_parser("demo", help="a scripted end-to-end story against `payments run`")
    demo.add_argument("--url", help="the API address (default: var/run.json's)")

    args, rest = parser.parse_known_args(argv)
    if args.verb == "db":
        return _db_upgrade()
    if args.verb == "webhook":
        return _webhook(args.host, args.port, args.workers, args.metrics_host, args.metrics_port)
    if args.verb == "worker":
        return _worker(rest)
    if args.verb == "beat":
        return _beat(rest)
    if args.verb == "flower":
        return _flower(args.address, args.port)
    if args.verb == "events":
        return _events_replay(args.event_id)
    if args.verb == "reconcile":
        return _reconcile()
    if args.verb == "outbox":
        return _outbox_replay(args.id)
    if args.verb == "clients":
        return _clients(args)
    if args.verb == "import":
        return _import_balances(args.file, args.dry_run)
    if args.verb == "run":
        return _run(args.host, args.port, args.flower_port)
    if args.verb == "demo":
        from payments_demo import main as demo_main

        return demo_main(["--url", args.url] if args.url else [])
    parser.error(f"unknown verb {args.verb}")
    return 2


def _db_upgrade() -> int:
    from shared.config import Settings
    from shared.schema import upgrade

    settings = Settings.from_env()
    # As the schema's owner; the service itself may run as a runtime role (migration 0010).
    upgrade(settings.owner_database_url, runtime_role=settings.database_runtime_role)
    granted = f", privileges of {settings.database_runtime_role} granted" if settings.database_runtime_role else ""
    print(f"database schema is up to date{granted}", flush=True)
    return 0


def _webhook(host: str, port: int, workers: int, metrics_host: str | None = None,
             metrics_port: int | None = None) -> int:
    """gunicorn on the public address, and on the internal metrics address when one is set: the
    same workers serve both, each request going to the app of the socket it arrived on."""
    import dataclasses

    from gunicorn.app.base import BaseApplication

    from shared.config import Settings, parse_address

    settings = Settings.from_env()
    if metrics_port is not None or metrics_host is not None:
        default_host, default_port = (parse_address("PAYMENTS_METRICS_ADDRESS", settings.metrics_address)
                                      if settings.metrics_address else ("127.0.0.1", None))
        chosen_port = metrics_port if metrics_port is not None else default_port
        if chosen_port is None:
            raise SystemExit("--metrics-host needs --metrics-port (or PAYMENTS_METRICS_ADDRESS)")
        settings = dataclasses.replace(settings, metrics_address=f"{metrics_host or default_host}:{chosen_port}")
    binds = [_bind(host, port)]
    if settings.metrics_address:
        metrics = parse_address("PAYMENTS_METRICS_ADDRESS", settings.metrics_address)
        if metrics[1] == port:
            raise SystemExit(f"the metrics port {port} must differ from the public port")
        binds.append(_bind(*metrics))
        _multiprocess_metrics("webhook")  # the gunicorn workers' request timings, added up at scrape time
    from webhook import create_server

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", binds)
            self.cfg.set("workers", workers)
            self.cfg.set("accesslog", "-")
            self.cfg.set("logconfig_dict", {"version": 1, "disable_existing_loggers": False, "root": {"level": "INFO"}})

        def load(self) -> object:
            from shared import logs

            logs.configure()
            return create_server(settings)

    print(f"webhook and API listening on http://{host}:{port}", flush=True)
    if len(binds) > 1:
        print(f"metrics listening on http://{binds[1]}/metrics", flush=True)
    Server().run()
    return 0


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _worker(extra: Sequence[str]) -> int:
    from shared.config import parse_address
    from shared.errors import ConfigError

    address = os.environ.get("PAYMENTS_WORKER_METRICS_ADDRESS", "").strip()
    try:
        metrics_address = parse_address("PAYMENTS_WORKER_METRICS_ADDRESS", address) if address else None
    except ConfigError as exc:
        raise SystemExit(f"payments worker: {exc.message}") from None
    if metrics_address:
        # The pool processes run the tasks and time them; this process serves their sum.
        _multiprocess_metrics("worker")
    from worker.app import QUEUES, app

    _needs_service_key(app, "worker")
    if metrics_address:
        from shared import metrics

        try:
            metrics.serve(*metrics_address)
        except OSError as exc:
            raise SystemExit(f"payments worker: cannot serve metrics on {_bind(*metrics_address)}: {exc}") from None
        print(f"worker metrics listening on http://{_bind(*metrics_address)}/metrics", flush=True)
    # No mingle (it asks the other workers through remote control, which is off: worker/app.py).
    # Gossip stays: its subscription to the event channel is what tells the worker that Redis
    # went away. Without it (and without remote control) a worker whose Redis restarted sat on
    # dead connections and consumed nothing more (the broker-outage fault scenario, half of the runs).
    queues, extra = _worker_queues(extra, QUEUES)
    argv = ["worker", "--queues", ",".join(queues), "--loglevel", "INFO", "--without-mingle", *extra]
    app.worker_main(argv)
    return 0


def _worker_queues(extra: Sequence[str], known: Sequence[str]) -> tuple[list[str], list[str]]:
    """The queues a worker consumes (README "Scaling out"): Celery's `--queues`/`-Q` when given,
    else PAYMENTS_WORKER_QUEUES, else every queue (CONTRACT). Each is comma-separated and must
    name the service's queues; returns them and the other options, passed on to Celery."""
    options = argparse.ArgumentParser(prog="payments worker", add_help=False, allow_abbrev=False)
    options.add_argument("-Q", "--queues")
    given, rest = options.parse_known_args(list(extra))
    source, value = ("--queues", given.queues) if given.queues is not None else (
        "PAYMENTS_WORKER_QUEUES", os.environ.get("PAYMENTS_WORKER_QUEUES", ""))
    if given.queues is None and not value.strip():
        return list(known), rest
    queues = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in queues if name not in known]
    if unknown or not queues:
        named = f"unknown queue {unknown[0]!r}" if unknown else "no queue named"
        raise SystemExit(f"payments worker: {source}: {named}; the queues are {', '.join(known)}")
    return list(dict.fromkeys(queues)), rest


def _beat(extra: Sequence[str]) -> int:
    """On Redis, beats share a lock (any number may run; one sends, the others stand by:
    scheduler/redis_lock.py); on the embedded SQLite broker, Celery's file scheduler (one beat)."""
    from scheduler.schedule import beat_schedule, lock_seconds, uses_lock
    from shared.errors import ConfigError
    from worker.app import app, settings

    _needs_service_key(app, "beat")
    try:
        app.conf.beat_schedule = beat_schedule()
        if uses_lock(settings().broker_url):
            from scheduler import redis_lock

            redis_lock.configure(app, settings().broker_url, lock_seconds())
    except ConfigError as exc:
        raise SystemExit(f"payments beat: {exc.message}") from None
    app.start(["beat", "--loglevel", "INFO", *extra])
    return 0


def _needs_service_key(app: Any, verb: str) -> None:
    """The worker and beat sign and check the service's own task messages with a key derived
    from PAYMENTS_API_TOKEN (shared.messages): without it every internal task would be refused."""
    if app.conf.payments_service_key is None:
        raise SystemExit(f"payments {verb}: PAYMENTS_API_TOKEN is required (it signs the service's own task messages)")


def _multiprocess_metrics(role: str) -> None:
    """prometheus-client's multiprocess mode for this process and the ones it forks (gunicorn
    workers, the Celery pool): each writes its histograms to a file of its own in one directory,
    and a scrape adds them up. Chosen before prometheus-client is imported (it decides at
    import). The operator's PROMETHEUS_MULTIPROC_DIR is used and emptied of the last run's
    files; without one, a new directory of this process's own, removed when it exits. One
    directory per server (a webhook, a worker): the files are named by pid, so two containers
    sharing one would write over each other's."""
    import atexit
    import shutil

    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess mode was chosen")
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        for stale in Path(path).glob("*.db"):
            stale.unlink()
    else:
        path = tempfile.mkdtemp(prefix=f"payments-{role}-metrics-")
        owner = os.getpid()
        # Forked children inherit atexit handlers (a gunicorn worker exits through them): only
        # the process that made the directory removes it.
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


FLOWER_USER = "admin"


def _flower(address: str, port: int) -> int:
    """Flower (CONTRACT) on the configured broker, behind basic auth. It follows workers and
    tasks through their events (remote control is off: worker/app.py), so it needs only the
    broker: no database, Stripe key or API token."""
    from celery import Celery
    from kombu import Queue

    from shared.client import QUEUES
    from shared.config import Settings, is_redis
    from shared.errors import PaymentsError

    password = os.environ.get("PAYMENTS_FLOWER_PASSWORD", "")
    if not password.strip():
        raise SystemExit(f"payments flower: PAYMENTS_FLOWER_PASSWORD is required (basic auth, user {FLOWER_USER})")
    if "," in password:  # Flower reads its basic-auth option as a comma-separated list
        raise SystemExit("payments flower: PAYMENTS_FLOWER_PASSWORD may not hold a comma")
    try:
        broker_url = Settings.from_env().broker_url
    except PaymentsError as exc:
        raise SystemExit(f"payments flower: {exc.message}") from None
    if not is_redis(broker_url):
        raise SystemExit("payments flower: needs a Redis broker (PAYMENTS_BROKER_URL); the embedded SQLite "
                         "transport carries no worker or task events")
    app = Celery("payments", broker=broker_url)
    # Its Broker page lists the lengths of these queues (it cannot ask the workers: no remote control).
    app.conf.task_queues = [Queue(name) for name in QUEUES]
    app.conf.broker_connection_retry_on_startup = True
    # Through the environment, not the command line: every user on the host can read a
    # process's arguments (ps), only its owner its environment.
    os.environ["FLOWER_BASIC_AUTH"] = f"{FLOWER_USER}:{password}"
    print(f"Flower on http://{_bind(address, port)} (user {FLOWER_USER}), broker {_safe(broker_url)}", flush=True)
    app.start(["flower", f"--address={address}", f"--port={port}"])
    return 0


def _events_replay(event_id: str) -> int:
    """Process a stored Stripe event again, here and now (handlers are idempotent)."""
    from shared import inbox, stripe_events
    from shared.errors import NotFound
    from worker.app import gateway, sessions, settings
    from worker.tasks import carry_out

    try:
        # Made processable and claimed in one transaction (the row locked throughout), so a
        # worker's inbox consumer, which takes `received` events, cannot take it in between.
        with sessions().begin() as session:
            inbox.replay(session, event_id)
            event = inbox.claim(session, event_id)
            assert event is not None
            payload, received_at = event.payload, event.received_at
    except NotFound as exc:
        print(exc.message, file=sys.stderr)
        return 1
    outcome, effects = stripe_events.handle(sessions(), gateway(), settings(), event_id, payload, received_at)
    carry_out(effects)
    print(f"event {event_id}: {outcome}")
    return 0


def _reconcile() -> int:
    from scheduler.jobs import reconcile

    print(f"reconcile: {reconcile()}")
    return 0


def _outbox_replay(outbox_id: int) -> int:
    """Make the message pending again and send it from here, with this shell's settings."""
    from shared import outbox
    from shared.client import celery_for
    from shared.config import Settings
    from shared.db import make_engine, make_sessions
    from shared.errors import NotFound

    settings = Settings.from_env()
    sessions = make_sessions(make_engine(settings.database_url))
    try:
        with sessions.begin() as session:
            outbox.replay(session, outbox_id)
    except NotFound as exc:
        print(exc.message, file=sys.stderr)
        return 1
    sender = celery_for(settings.broker_url)
    outcome, delay = outbox.deliver(
        sessions, outbox_id, settings, lambda task, kwargs, queue: sender.send_task(task, kwargs=kwargs, queue=queue)
    )
    with sessions.begin() as session:
        error = session.get(outbox.OutboxMessage, outbox_id).last_error
    if outcome == "sent":
        print(f"outbox {outbox_id}: sent")
        return 0
    then = "it is dead again" if outcome == "dead" else "it stays pending and the relay retries it"
    print(f"outbox {outbox_id}: not sent ({error}); {then}", file=sys.stderr)
    return 1


def _clients(args: argparse.Namespace) -> int:
    """`payments clients add|list|rotate|revoke` (CONTRACT): add and rotate print, as their last
    line, one JSON object with the name, the token and the callback key (shown once)."""
    from datetime import timedelta

    from shared import access
    from shared.config import Settings
    from shared.db import make_engine, make_sessions
    from shared.errors import PaymentsError

    def listed(value: str | None) -> list[str] | None:
        return None if value is None else [item.strip() for item in value.split(",") if item.strip()]

    try:
        settings = Settings.from_env()
    except PaymentsError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    # The owner's URL when one is given: the runtime role may only read clients (migration 0010).
    engine = make_engine(settings.owner_database_url)
    try:
        with make_sessions(engine).begin() as session:
            if args.action == "add":
                issued = access.add(session, args.name, listed(args.scopes) or [],
                                    route_codes=listed(args.route_codes), request_prefix=args.request_prefix,
                                    organisations=listed(args.organisations))
            elif args.action == "rotate":
                issued = access.rotate(session, args.name, timedelta(seconds=args.grace))
            elif args.action == "revoke":
                access.revoke(session, args.name)
                print(f"client {args.name}: revoked")
                return 0
            else:
                for row in access.listing(session):
                    print(json.dumps(row))
                return 0
    except PaymentsError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if args.action == "add":
        print(f"client {issued.name} added; keep the token and callback key: they are not shown again")
    else:
        print(f"client {issued.name}: new token; the old ones work for {args.grace} more seconds")
    print(json.dumps(issued.as_json()), flush=True)
    return 0


def _import_balances(path: Path, dry_run: bool) -> int:
    """`payments import balances FILE.csv [--dry-run]` (CONTRACT): one line per row checked and
    booked (or would be), then a total; an error names its line and nothing is booked."""
    from shared import imports
    from shared.config import Settings
    from shared.db import make_engine, make_sessions
    from shared.errors import PaymentsError
    from shared.money import format_cents

    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM, as spreadsheet programs write
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{path}: cannot read it: {exc}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        lines = imports.parse(text, max_amount=settings.max_amount)
        engine = make_engine(settings.database_url)
        try:
            with make_sessions(engine).begin() as session:
                outcomes = imports.book(session, lines, dry_run=dry_run)
        finally:
            engine.dispose()
    except PaymentsError as exc:
        print(f"{path}: nothing booked:\n{exc.message}", file=sys.stderr)
        return 2
    for outcome in outcomes:
        entry = f" (entry {outcome.entry_id})" if outcome.entry_id is not None else ""
        print(f"{outcome.line.shown()}: {outcome.status}{entry}")
    done = [o for o in outcomes if o.status != "already booked"]
    verb = "would book" if dry_run else "booked"
    print(f"{verb} {len(done)} lines, {format_cents(sum(o.line.amount for o in done))} in all; "
          f"{len(outcomes) - len(done)} already booked")
    return 0


RUN_FILE = Path("var/run.json")
LOCAL_STRIPE_KEY = "sk_test_localstripe"  # localstripe takes any sk_ key; not a secret


def _run(host: str, port: int, flower_port: int = 5555) -> int:
    """Migrate, then run the webhook server, a worker and beat (and localstripe when no Stripe
    key is set; Flower when the broker is Redis) until Ctrl-C, which stops them all. What a
    local client or operator needs (the API address, localstripe's, the metrics listeners,
    Flower's, and the API token, webhook secret and Flower password made up for this run) goes
    to var/run.json, readable by its owner only; secrets are never printed."""
    from shared.config import Settings, is_redis

    settings = Settings.from_env()
    _db_upgrade()
    env = dict(os.environ)
    # Each server makes a multiprocess-metrics directory of its own (a shared one mixes pids).
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    api = f"http://{host}:{port}"
    env.setdefault("PAYMENTS_PUBLIC_URL", api)  # the pages' links point at this run
    run_info: dict[str, str] = {"api": api}
    children: list[subprocess.Popen[bytes]] = []
    if not settings.api_token:
        env["PAYMENTS_API_TOKEN"] = run_info["api_token"] = secrets.token_urlsafe(32)
    if not settings.stripe_api_key:
        stripe_url, process = _start_localstripe()
        children.append(process)
        secret = settings.stripe_webhook_secret or f"whsec_{secrets.token_urlsafe(24)}"
        env.update(PAYMENTS_STRIPE_API_KEY=LOCAL_STRIPE_KEY, PAYMENTS_STRIPE_API_BASE=stripe_url,
                   PAYMENTS_STRIPE_WEBHOOK_SECRET=secret, PAYMENTS_STRIPE_PUBLISHABLE_KEY="pk_test_localstripe",
                   PAYMENTS_STRIPE_JS_URL=f"{stripe_url}/js.stripe.com/v3/")  # the pages use its Stripe.js
        _register_webhook(stripe_url, f"{api}/stripe/webhook", secret)
        run_info.update(stripe=stripe_url, stripe_webhook_secret=secret)
    # The metrics listeners, internal: the operator's addresses, else free ports on loopback.
    env["PAYMENTS_METRICS_ADDRESS"] = settings.metrics_address or f"127.0.0.1:{_free_port()}"
    env["PAYMENTS_WORKER_METRICS_ADDRESS"] = (os.environ.get("PAYMENTS_WORKER_METRICS_ADDRESS", "").strip()
                                              or f"127.0.0.1:{_free_port()}")
    run_info.update(metrics=f"http://{env['PAYMENTS_METRICS_ADDRESS']}/metrics",
                    worker_metrics=f"http://{env['PAYMENTS_WORKER_METRICS_ADDRESS']}/metrics")
    flower_env = None
    if is_redis(settings.broker_url):
        # Flower gets the broker and its password only, as in compose.
        flower_env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMENTS_")}
        flower_env.update(PAYMENTS_BROKER_URL=settings.broker_url,
                          PAYMENTS_FLOWER_PASSWORD=os.environ.get("PAYMENTS_FLOWER_PASSWORD", "").strip()
                          or secrets.token_urlsafe(24))
        flower_port = flower_port if _port_is_free(flower_port) else _free_port()
        run_info.update(flower=f"http://127.0.0.1:{flower_port}", flower_user=FLOWER_USER)
        if not os.environ.get("PAYMENTS_FLOWER_PASSWORD", "").strip():
            run_info["flower_password"] = flower_env["PAYMENTS_FLOWER_PASSWORD"]
    write_private(RUN_FILE, json.dumps(run_info, indent=2))

    me = [sys.executable, "-m", "payments_cli"]
    # -E: task events, which Flower shows tasks from (remote control is off: worker/app.py).
    task_events = ["-E"] if flower_env is not None else []
    service = [
        subprocess.Popen([*me, "webhook", "--host", host, "--port", str(port), "--workers", "1"], env=env),
        subprocess.Popen([*me, "worker", "--concurrency", "1", *task_events], env=env),
        subprocess.Popen([*me, "beat", "--schedule", "var/celerybeat-schedule"], env=env),
    ]
    if flower_env is not None:
        service.append(subprocess.Popen([*me, "flower", "--address", "127.0.0.1", "--port", str(flower_port)],
                                        env=flower_env))
    children += service
    print(f"payments is running: API on {api}, worker and beat on {_safe(settings.broker_url)}")
    print(f"metrics on {run_info['metrics']} (webhook) and {run_info['worker_metrics']} (worker)")
    if "stripe" in run_info:
        print(f"no PAYMENTS_STRIPE_API_KEY: localstripe on {run_info['stripe']}, sending webhooks to {api}/stripe/webhook")
    if "api_token" in run_info:
        print(f"no PAYMENTS_API_TOKEN: a token for this run is in {RUN_FILE}")
    if "flower" in run_info:
        where = f"in {RUN_FILE}" if "flower_password" in run_info else "PAYMENTS_FLOWER_PASSWORD"
        print(f"Flower on {run_info['flower']} (user {FLOWER_USER}, password {where})")
    print("Ctrl-C stops everything", flush=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    # The service first (its last tasks may still call Stripe), localstripe last.
    for group in (service, [child for child in children if child not in service]):
        for child in group:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in group:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
    print("payments stopped", flush=True)
    return 0 if stopping else 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only (0600), in a directory only they can enter (0700),
    whatever modes they had: the run file holds the run's API token and webhook secret. The text
    goes to a new file made 0600 from the start and then replaces the old one, so there is no
    moment when it sits in a file others can read (an existing 0644 file is replaced, not
    reused)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)  # mkdir's mode is not applied to a directory that exists
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _start_localstripe() -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "localstripe_server", str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/js.stripe.com/v3/", timeout=1):
                return url, process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit("localstripe did not start") from None
            time.sleep(0.1)


def _register_webhook(stripe_url: str, url: str, secret: str) -> None:
    form = urllib.parse.urlencode({"url": url, "secret": secret}).encode()
    request = urllib.request.Request(f"{stripe_url}/_config/webhooks/payments", data=form, method="POST")
    with urllib.request.urlopen(request, timeout=5):
        pass


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url.removeprefix("sqla+")).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
