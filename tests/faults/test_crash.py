"""Worker crash (fault suite, scenario 2): `kill -9` of the whole worker while 1,000 requests
are in flight, then a restart.

1,000 requests are accepted through the API (so each is stored `queued` before its task is
sent): 900 payments to one club from 100 members, 40 of whom have a saved card with auto
top-up `on` and start below the low limit (so many payments charge the card off-session first,
and paid ones trigger after-payment top-ups), and 100 manual top-ups with the saved card. A
real `payments worker` (main process and prefork children, in a process group of its own)
works through them on localstripe, and is killed with SIGKILL, group and all, while requests
are still queued and a card attempt is open. A new worker then works off the backlog; the
tasks the dead worker held stay unacked in Redis (until the hour-long visibility timeout), so
`payments beat` (short intervals) heals the rest, all its jobs at once as in service: it
redrives the requests still `queued`, whose open card attempts the redriven tasks finish
(looking the charge up at Stripe before making it again); the reconciler finishes the attempts
no request waits for (after-payment top-ups), racing those tasks for the same attempts; and
the outbox relay sends the callbacks and e-mails the dead worker had not sent.

It proves: nothing is lost (every request terminal), nothing is booked twice (each paid
request has one booking, and every balance equals opening + card money - payments), and no
card is charged twice (localstripe, which ignores idempotency keys, holds one succeeded
PaymentIntent per succeeded attempt and nothing else), then the invariants of the suite.

The broker is a private `redis-server`, so no other worker of this run (or of a run side by
side) can take these tasks. Deterministic inputs: `random.Random(SEED)`; the kill lands
wherever the worker has got to, which is the point.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.ledger import Entry, Line
from shared import ledger, profiles
from shared.models import EntryType, Member, SystemAccount
from shared.stripe_gateway import StripeGateway
from tests.e2e.conftest import worker_env
from tests.e2e.processes import PAYMENTS, readies, start, stop, wait_for
from tests.e2e.processes import private_redis as private_redis_server  # the fixture below is `private_redis`
from tests.faults.invariants import attempt_key_of, check_invariants, succeeded_intents
from tests.faults.scale import scaled
from tests.integration.helpers import add_member, add_organisation
from tests.stripe_fixture import STRIPE_TEST_KEY, browser_for, customer_with_card, reset_stripe

SEED = 20260602
CARD_MEMBERS = 40
PLAIN_MEMBERS = 60
PAYMENT_COUNT = scaled(900, 200)
TOPUP_COUNT = scaled(100, 25)
# Kill once this many requests are decided (and a card attempt is open), so most are in flight.
KILL_AFTER_DECIDED = scaled(250, 60)
TERMINAL = ("paid", "completed", "declined", "failed")
QUEUES = ("webhooks", "payments", "topups", "outbox", "celery")

# Healing, once the restarted worker has worked off the backlog and is idle: beat's jobs, every
# few seconds. A redriven request and the reconciler may take the same open card attempt at the
# same moment: only one of them may charge it (this scenario found that both could, once).
BEAT_SECONDS = {"REDRIVE_REQUESTS": 3, "RECONCILE": 2, "RELAY_OUTBOX": 2}


@dataclass(frozen=True)
class Request:
    request_id: str
    kind: str  # "payment" or "topup"
    member_id: str
    cents: int


@pytest.fixture
def private_redis() -> Iterator[str]:
    """A `redis-server` of this test's own: its broker URL."""
    with private_redis_server() as broker:
        yield broker.url


@pytest.fixture
def settings(settings: Settings, stripe_api: str, private_redis: str) -> Settings:
    """The Flask app (the `client` fixture) sends its tasks to the private broker."""
    return replace(settings, broker_url=private_redis, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api)


class Group:
    """A `payments` command in a process group of its own, so that SIGKILL reaches the Celery
    main process and every pool child at once (processes.start keeps pytest's group)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [PAYMENTS, *args], env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.log = log

    def members(self) -> list[int]:
        """The pids still in the group (zombies excepted)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.process.pid and fields[0] != "Z":
                    found.append(int(entry))
        return found

    def kill(self) -> int:
        """SIGKILL to the whole group; returns how many processes it held."""
        held = len(self.members())
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        wait_for(lambda: not self.members(), "every process of the killed worker to be gone", 10)
        return held

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        if self.members():  # orphaned pool children, or a main process that would not stop
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_worker(broker: str, env: dict[str, str], log: Path) -> Group:
    worker = Group(["worker", "--concurrency", "3", "--hostname", f"crash-{uuid.uuid4().hex[:8]}@%h"], env, log)
    wait_for(lambda: readies(log) or worker.process.poll() is not None, "the worker", 60)
    assert worker.process.poll() is None, log.read_text()[-3000:]
    return worker


# The world ------------------------------------------------------------------------------


def build_world(sessions: sessionmaker[Session], gateway: StripeGateway, stripe_base: str,
                rng: random.Random) -> dict[str, int]:
    """The club and 100 members; card members get a saved card at localstripe and auto
    top-up `on` (50.00) below the low limit. Returns each member's opening balance."""
    browser = browser_for(stripe_base)
    opening: dict[str, int] = {}
    customers: dict[str, str] = {}
    for n in range(CARD_MEMBERS):
        member_id = f"card{n:03d}"
        customers[member_id] = customer_with_card(gateway, browser, member_id, name="Card Holder")
        opening[member_id] = rng.randrange(0, 15_00, 5)
    for n in range(PLAIN_MEMBERS):
        opening[f"plain{n:03d}"] = rng.randrange(20_00, 200_00, 5)
    with sessions.begin() as session:
        add_organisation(session, "club")
        adjustments = profiles.system_account(session, SystemAccount.ADJUSTMENTS)
        for member_id, cents in opening.items():
            account = add_member(session, member_id)
            if member_id in customers:
                member = session.get(Member, member_id)
                assert member is not None
                member.stripe_customer_id, member.auto_topup_status, member.auto_topup_amount = (
                    customers[member_id], "on", 50_00)
            if cents:
                ledger.post(session, Entry(f"opening:{member_id}", EntryType.MANUAL_ADJUSTMENT, "Opening balance",
                                           (Line(account, cents), Line(adjustments, -cents)), admin_id="adm"))
    return opening


def make_requests(rng: random.Random, members: list[str]) -> list[Request]:
    card_members = [m for m in members if m.startswith("card")]
    wanted = [Request(f"pay-{n:04d}", "payment", rng.choice(members), rng.randrange(5_00, 40_00, 5))
              for n in range(PAYMENT_COUNT)]
    wanted += [Request(f"top-{n:04d}", "topup", rng.choice(card_members), rng.randrange(50_00, 80_00, 5))
               for n in range(TOPUP_COUNT)]
    rng.shuffle(wanted)
    return wanted


def send(client: FlaskClient, auth: dict[str, str], request: Request, n: int) -> None:
    amount = f"{request.cents / 100:.2f}"
    if request.kind == "payment":
        body: dict[str, Any] = {"request_id": request.request_id, "member_id": request.member_id, "amount": amount,
                "description": "Table money", "organisation_id": "club", "payment_type": "Club Payment"}
        if n % 2:  # half of them call back, so the outbox is crossed by the crash too
            body |= {"route_code": "EVT", "route_payload": {"n": n}}
        answer = client.post("/api/payments", headers=auth, json=body)
    else:
        answer = client.post(f"/api/members/{request.member_id}/topups", headers=auth,
                             json={"request_id": request.request_id, "amount": amount, "use_saved_card": True})
    assert answer.status_code == 202, answer.get_json()


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(text("SELECT status, count(*) FROM payment_requests GROUP BY status")).all()))


def decided(engine: Engine) -> int:
    counts = statuses(engine)
    return sum(counts[s] for s in TERMINAL)


def idle(broker: redis.Redis, left_by_the_dead: set[bytes]) -> bool:
    """No task waiting in any queue, and none running in the worker: every message delivered
    and not yet acknowledged is one the killed worker held (they stay in `unacked` until the
    visibility timeout). Remote control is off, so the worker cannot be asked what it runs."""
    waiting = sum(broker.llen(queue) for queue in QUEUES)
    return waiting == 0 and set(broker.hkeys("unacked")) <= left_by_the_dead


def scalar(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


# The scenario ---------------------------------------------------------------------------


def test_a_worker_killed_with_1000_requests_in_flight_loses_nothing_and_charges_no_card_twice(
    client, auth, engine, sessions, settings, database_url, stripe_api, private_redis, tmp_path: Path, capsys
) -> None:
    began = time.monotonic()
    reset_stripe(stripe_api)
    rng = random.Random(SEED)
    opening = build_world(sessions, StripeGateway(settings), stripe_api, rng)
    wanted = make_requests(rng, sorted(opening))
    for n, request in enumerate(wanted):
        send(client, auth, request, n)
    assert statuses(engine) == {"queued": len(wanted)}

    env = worker_env(database_url, PAYMENTS_BROKER_URL=private_redis, PAYMENTS_STRIPE_API_BASE=stripe_api,
                     PAYMENTS_REDRIVE_AFTER_SECONDS="1", PAYMENTS_RECONCILE_AFTER_SECONDS="1",
                     PAYMENTS_OUTBOX_MAX_ATTEMPTS="8")
    broker = redis.Redis.from_url(private_redis)
    processes: list[Group | subprocess.Popen] = []
    try:
        first = start_worker(private_redis, env, tmp_path / "worker-1.log")
        processes.append(first)

        def mid_flight() -> bool:
            open_attempt = scalar(engine, "SELECT count(*) FROM card_payments WHERE status = 'pending'") > 0
            return decided(engine) >= KILL_AFTER_DECIDED and open_attempt

        wait_for(mid_flight, "the worker to be mid-way with a card attempt open", 90)
        held = first.kill()
        killed_at = time.monotonic() - began
        unsent = scalar(engine, "SELECT count(*) FROM outbox WHERE status = 'pending'")
        at_kill = statuses(engine)
        in_flight = len(wanted) - sum(at_kill[s] for s in TERMINAL)
        held_by_the_dead = set(broker.hkeys("unacked"))
        unacked = len(held_by_the_dead)
        open_attempts = scalar(engine, "SELECT count(*) FROM card_payments WHERE status = 'pending'")
        assert held >= 2, "the group held the main process and its pool children"
        assert in_flight > 0 and unacked > 0, (at_kill, unacked)

        # The restart: a new worker works off the backlog; what the dead one held stays unacked.
        second = start_worker(private_redis, env, tmp_path / "worker-2.log")
        processes.append(second)
        wait_for(lambda: idle(broker, held_by_the_dead), "the backlog to be worked off", 90)
        drained = time.monotonic() - began
        stuck = statuses(engine)["queued"]
        stuck_attempts = scalar(engine, "SELECT count(*) FROM card_payments WHERE status = 'pending'")

        beat_env = {**env, **{f"PAYMENTS_{job}_SECONDS": str(every) for job, every in BEAT_SECONDS.items()}}
        processes.append(start(["beat", "--schedule", str(tmp_path / "beat-schedule")], beat_env, tmp_path / "beat.log"))
        wait_for(lambda: decided(engine) == len(wanted), "every request to be decided", 60)
        all_decided = time.monotonic() - began
        wait_for(lambda: scalar(engine, "SELECT count(*) FROM card_payments WHERE status = 'pending'") == 0,
                 "every card attempt to be finished", 60)
        attempts_done = time.monotonic() - began
        wait_for(lambda: scalar(engine, "SELECT count(*) FROM outbox WHERE status <> 'sent'") == 0,
                 "every callback and e-mail to be sent", 60)
        outbox_done = time.monotonic() - began
    finally:
        for process in reversed(processes):
            process.stop() if isinstance(process, Group) else stop(process)
        broker.close()

    # Nothing lost, nothing booked twice.
    final = statuses(engine)
    lost = len(wanted) - sum(final[s] for s in TERMINAL)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT request_id, kind, status, member_id, amount FROM payment_requests")).all()
        bookings = Counter(dict(conn.execute(text(
            "SELECT idempotency_key, count(*) FROM journal_entries GROUP BY idempotency_key")).all()))
        card_money = conn.execute(text(
            "SELECT member_id, attempt_key, amount FROM card_payments WHERE status = 'succeeded'")).all()
        balances = dict(conn.execute(text(
            "SELECT a.owner, coalesce(sum(p.amount), 0) FROM accounts a LEFT JOIN postings p ON p.account_id = a.id"
            " WHERE a.kind IN ('member', 'organisation') GROUP BY a.owner")).all())
    outcome = {row.request_id: row for row in rows}
    assert sorted(outcome) == sorted(r.request_id for r in wanted) and lost == 0, final
    for request in wanted:
        row = outcome[request.request_id]
        key = f"payment:{request.request_id}" if request.kind == "payment" else f"card:topup:{request.request_id}"
        assert bookings[key] == (1 if row.status == "paid" else 0), (request, row.status)
    paid_payments = [r for r in wanted if r.kind == "payment" and outcome[r.request_id].status == "paid"]
    expected = dict(opening)
    for member_id, _, cents in card_money:
        expected[member_id] += cents
    for request in paid_payments:
        expected[request.member_id] -= request.cents
    expected["club"] = sum(r.cents for r in paid_payments)
    wrong = {owner: (balances.get(owner), cents) for owner, cents in expected.items() if balances.get(owner) != cents}
    assert wrong == {}, f"balances (ledger, expected) that differ: {wrong}"

    # No card charged twice: one succeeded PaymentIntent per succeeded attempt, and no other.
    intents = succeeded_intents(stripe_api)
    per_attempt = Counter(attempt_key_of(intent) for intent in intents)
    charged_twice = sum(n - 1 for n in per_attempt.values() if n > 1)
    assert charged_twice == 0 and len(intents) == len(card_money), (len(intents), len(card_money), per_attempt)
    double = charged_twice + sum(n - 1 for n in bookings.values() if n > 1)  # the schema makes the 2nd term 0
    tally = check_invariants(engine, stripe_base=stripe_api)

    with capsys.disabled():
        print(f"\nworker crash: {len(wanted)} requests sent ({PAYMENT_COUNT} payments, {TOPUP_COUNT} top-ups), "
              f"in flight at the kill {in_flight} ({unacked} held by the {held} killed processes, "
              f"{open_attempts} card attempts open; left after the backlog: {stuck} requests queued, "
              f"{stuck_attempts} card attempts open); booked {final['paid']}, declined {final['declined']}, "
              f"failed {final['failed']}, lost {lost}, double {double}; Stripe charges {len(intents)} vs "
              f"succeeded attempts {len(card_money)} (charged twice {charged_twice}); callbacks {tally['callbacks']}; "
              f"{time.monotonic() - began:.0f} s (killed at {killed_at:.0f} s, "
              f"backlog drained {drained:.0f} s, all decided {all_decided:.0f} s, card attempts finished "
              f"{attempts_done:.0f} s, outbox sent {outbox_done:.0f} s; {unsent} outbox rows unsent at the kill)")
