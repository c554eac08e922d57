"""Concurrency (fault suite, scenario 6): 50 payers paying one club at once, while the club is
settled and card payments are refunded, all through real workers.

Fifty payer threads each send 10 payments to the club through the API; at the same time other
threads send 12 settlements of the club (6 duplicates for one reference date, which must settle
once, and 6 admin overrides for other dates) and 30 card refunds (20 cards, 10 of them asked
for twice; member refunds of the whole remainder with the 3 % fee, admin partial refunds).
Payments credit the club while settlements debit it; refunds and payments debit the same
members. The session's `payments worker` (2 processes) and a second worker (4 processes) on the
same broker take the tasks, so up to 6 transactions contend for the same rows.

It proves: no deadlock (every request terminal within the deadline, no "deadlock detected" in
the workers' logs, and PostgreSQL's deadlock counter for the database unchanged) and exact
balances: every member, the club and the system accounts equal what the outcomes say they
should (opening + card money - paid payments - refunds booked; club seed + payments -
settlements; fees, bank and stripe likewise), then the invariants of the suite.

Deterministic inputs: `random.Random(SEED)`; the interleaving is the machine's.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger, profiles
from shared.config import Settings
from shared.ledger import Entry, Line
from shared.models import EntryType, Member, SystemAccount, utcnow
from shared.money import parse_cents
from shared.stripe_gateway import StripeGateway
from tests.e2e.conftest import BROKER, REDIS_DB, worker_env
from tests.e2e.processes import readies, start, stop, wait_for
from tests.faults.invariants import check_invariants, succeeded_intents
from tests.integration.helpers import add_member, add_organisation
from tests.stripe_fixture import STRIPE_TEST_KEY, browser_for, customer_with_card, reset_stripe

SEED = 20260606
PAYERS = 50
PAYMENTS_EACH = 10
CARD_PAYERS = 20  # payers with a card payment of 100.00 that can be refunded
TWICE_REFUNDED = 10  # of those, asked for twice (a member's double click, or two admins)
CLUB_SEED = 2000_00  # takings booked before the reference dates, so settlements have a gross
DUPLICATE_SETTLEMENTS = 6
OVERRIDE_SETTLEMENTS = 6
TERMINAL = ("paid", "completed", "declined", "failed")
DEADLINE = 90


@dataclass(frozen=True)
class Sent:
    request_id: str
    kind: str  # payment, settlement, refund
    body: dict[str, Any]


@pytest.fixture
def settings(settings: Settings, stripe_api: str) -> Settings:
    """The in-process API sends to the session worker's broker, with localstripe."""
    return replace(settings, broker_url=BROKER, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api)


@pytest.fixture
def more_workers(worker: Path, database_url: str, tmp_path: Path) -> Iterator[Path]:
    """A second `payments worker` (4 processes) beside the session's, on the same broker and
    queues, so that more transactions contend at once; yields its log."""
    log = tmp_path / "worker-4.log"
    hostname = f"contend-{REDIS_DB}-{uuid.uuid4().hex[:6]}"
    process = start(["worker", "--concurrency", "4", "--hostname", f"{hostname}@%h"], worker_env(database_url), log)
    try:
        wait_for(lambda: readies(log) or process.poll() is not None, "the second worker", 60)
        assert process.poll() is None, log.read_text()[-3000:]
        yield log
    finally:
        stop(process)


# The world ------------------------------------------------------------------------------


def build_world(sessions: sessionmaker[Session], gateway: StripeGateway, stripe_base: str,
                rng: random.Random) -> dict[str, int]:
    """The club with takings from three days ago, and 50 payers with an opening balance; the
    first 20 get a saved card (auto top-up off: a payment short of funds is declined).
    Returns the opening balances."""
    browser = browser_for(stripe_base)
    opening = {f"payer{n:02d}": rng.randrange(30_00, 150_00, 5) for n in range(PAYERS)}
    customers = {}
    for member_id in sorted(opening)[:CARD_PAYERS]:
        customers[member_id] = customer_with_card(gateway, browser, member_id, name="Card Holder")
    with sessions.begin() as session:
        club = add_organisation(session, "club")
        adjustments = profiles.system_account(session, SystemAccount.ADJUSTMENTS)
        ledger.post(session, Entry("seed:club", EntryType.MANUAL_ADJUSTMENT, "Takings",
                                   (Line(club, CLUB_SEED), Line(adjustments, -CLUB_SEED)), admin_id="adm"),
                    now=utcnow() - timedelta(days=3))
        for member_id, cents in opening.items():
            account = add_member(session, member_id)
            ledger.post(session, Entry(f"opening:{member_id}", EntryType.MANUAL_ADJUSTMENT, "Opening balance",
                                       (Line(account, cents), Line(adjustments, -cents)), admin_id="adm"))
            if member_id in customers:
                member = session.get(Member, member_id)
                assert member is not None
                member.stripe_customer_id = customers[member_id]
    return opening


def card_payments(client: FlaskClient, auth: dict[str, str], engine: Engine) -> dict[str, str]:
    """A 100.00 manual top-up with the saved card for each card payer, through the worker;
    returns each payer's PaymentIntent id."""
    for n in range(CARD_PAYERS):
        answer = client.post(f"/api/members/payer{n:02d}/topups", headers=auth,
                             json={"request_id": f"card-{n:02d}", "amount": "100.00", "use_saved_card": True})
        assert answer.status_code == 202, answer.get_json()

    def charged() -> dict[str, str] | None:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT member_id, payment_intent_id FROM card_payments WHERE status = 'succeeded'")).all()
        return dict(rows) if len(rows) == CARD_PAYERS else None

    return wait_for(charged, "the card payments to be taken", 60)


def plan(rng: random.Random, intents: dict[str, str]) -> tuple[list[list[Sent]], list[Sent]]:
    """Each payer's payments (one list per payer thread), and the admin's settlements and
    refunds in a shuffled order."""
    payers = [[Sent(f"pay-{p:02d}-{i:02d}", "payment", {
        "request_id": f"pay-{p:02d}-{i:02d}", "member_id": f"payer{p:02d}", "amount": f"{rng.randrange(5_00, 25_00, 5) / 100:.2f}",
        "description": "Table money", "organisation_id": "club", "payment_type": "Club Payment",
        "route_code": "EVT"}) for i in range(PAYMENTS_EACH)] for p in range(PAYERS)]
    today = utcnow().astimezone(Settings().time_zone).date()
    admin = [Sent(f"settle-dup-{n}", "settlement", {
        "request_id": f"settle-dup-{n}", "reference_date": (today - timedelta(days=2)).isoformat(),
        "organisations": [{"organisation_id": "club"}]}) for n in range(DUPLICATE_SETTLEMENTS)]
    admin += [Sent(f"settle-override-{n}", "settlement", {
        "request_id": f"settle-override-{n}", "reference_date": (today - timedelta(days=3 + n)).isoformat(),
        "organisations": [{"organisation_id": "club", "override_amount": "50.00"}]}) for n in range(OVERRIDE_SETTLEMENTS)]
    for n, (member_id, intent) in enumerate(sorted(intents.items())):
        asks = 2 if n < TWICE_REFUNDED else 1
        for k in range(asks):
            if n % 2:
                body = {"request_id": f"refund-{n:02d}-{k}", "payment_intent_id": intent, "by": "member"}
            else:
                body = {"request_id": f"refund-{n:02d}-{k}", "payment_intent_id": intent, "by": "admin",
                        "admin_id": "adm", "amount": f"{rng.randrange(10_00, 60_00, 5) / 100:.2f}"}
            admin.append(Sent(body["request_id"], "refund", body))
    rng.shuffle(admin)
    return payers, admin


PATHS = {"payment": "/api/payments", "settlement": "/api/settlements", "refund": "/api/refunds"}


def post_all(client: FlaskClient, auth: dict[str, str], batches: list[list[Sent]]) -> None:
    """Each batch in a thread of its own, all released at once."""
    gate = threading.Barrier(len(batches))

    def run(batch: list[Sent]) -> None:
        gate.wait()
        for sent in batch:
            answer = client.post(PATHS[sent.kind], headers=auth, json=sent.body)
            assert answer.status_code == 202, (sent, answer.get_json())

    with ThreadPoolExecutor(len(batches)) as pool:
        for future in [pool.submit(run, batch) for batch in batches]:
            future.result()


def deadlocks(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")).scalar_one())


# The scenario ---------------------------------------------------------------------------


def test_fifty_payers_one_club_settlements_and_refunds_at_once_end_without_deadlock_and_with_exact_balances(
    client, auth, engine, sessions, settings, stripe_api, worker, more_workers, received, capsys
) -> None:
    began = time.monotonic()
    reset_stripe(stripe_api)
    rng = random.Random(SEED)
    opening = build_world(sessions, StripeGateway(settings), stripe_api, rng)
    intents = card_payments(client, auth, engine)
    payers, admin = plan(rng, intents)
    logs = [worker, more_workers]
    log_start = {log: log.stat().st_size for log in logs}
    deadlocks_before = deadlocks(engine)

    # Payers and the admin start together: 50 payer threads, and 6 admin threads.
    sending = time.monotonic()
    post_all(client, auth, payers + [admin[n::6] for n in range(6)])
    sent = [s for batch in payers for s in batch] + admin

    def all_terminal() -> bool:
        with engine.connect() as conn:
            left = conn.execute(text(
                f"SELECT count(*) FROM payment_requests WHERE status NOT IN {TERMINAL!r}")).scalar_one()
        return left == 0

    wait_for(all_terminal, "every request to be terminal (a deadlock would hold them)", DEADLINE)
    worked = time.monotonic() - sending
    # One callback per payment reaches the calling module (a consumer may see one twice).
    wanted_callbacks = {s.request_id for batch in payers for s in batch}
    wait_for(lambda: {c["request_id"] for c in received()} >= wanted_callbacks, "every payment's callback", 60)

    with engine.connect() as conn:
        rows = {r.request_id: r for r in conn.execute(text(
            "SELECT request_id, kind, status, member_id, amount, result FROM payment_requests"))}
        balances = dict(conn.execute(text(
            "SELECT a.owner, coalesce(sum(p.amount), 0) FROM accounts a"
            " LEFT JOIN postings p ON p.account_id = a.id GROUP BY a.owner")).all())
    assert {s.request_id for s in sent} <= set(rows)
    statuses = Counter((s.kind, rows[s.request_id].status) for s in sent)

    # The balances the outcomes call for.
    expected: Counter[str] = Counter(opening)
    expected["club"] = CLUB_SEED
    expected["adjustments"] = -CLUB_SEED - sum(opening.values())
    for n in range(CARD_PAYERS):
        expected[f"payer{n:02d}"] += 100_00
        expected["stripe"] -= 100_00
    for s in sent:
        row = rows[s.request_id]
        if s.kind == "payment" and row.status == "paid":
            expected[s.body["member_id"]] -= row.amount
            expected["club"] += row.amount
        elif s.kind == "refund" and row.status == "paid":
            to_card, fee = parse_cents(row.result["to_card"]), parse_cents(row.result["fee"])
            expected[row.result["member_id"]] -= to_card + fee
            expected["stripe"] += to_card
            expected["fees"] += fee
        elif s.kind == "settlement":
            for org in row.result["organisations"]:
                if org["status"] == "settled":
                    net, bank = parse_cents(org["net"]), parse_cents(org["bank_amount"])
                    expected["club"] -= net
                    expected["bank"] += bank
                    expected["fees"] += net - bank
    wrong = {owner: (balances.get(owner, 0), cents) for owner, cents in expected.items()
             if balances.get(owner, 0) != cents}
    assert wrong == {}, f"balances (ledger, expected) that differ: {wrong}"
    assert set(balances) <= set(expected) | {o for o, b in balances.items() if b == 0}

    # Settling one club for one date books once, whichever request gets there first.
    duplicate = [rows[s.request_id].result["organisations"][0]["status"]
                 for s in admin if s.request_id.startswith("settle-dup-")]
    assert sorted(duplicate) == ["already_settled"] * (DUPLICATE_SETTLEMENTS - 1) + ["settled"], duplicate
    # A card is never refunded beyond what it was charged.
    with engine.connect() as conn:
        over = conn.execute(text("SELECT attempt_key FROM card_payments WHERE refunded > amount OR refunded < 0")).all()
    assert over == []

    # No deadlock: none reported to the workers, and none counted by PostgreSQL.
    reported = [log.name for log in logs if "deadlock detected" in _read_from(log, log_start[log]).lower()]
    counted = deadlocks(engine) - deadlocks_before
    assert reported == [] and counted == 0, (reported, counted)
    tally = check_invariants(engine, stripe_base=stripe_api)
    charges = len(succeeded_intents(stripe_api))
    refunds = sum(s.kind == "refund" for s in sent)

    with capsys.disabled():
        print(f"\nconcurrency: {len(sent)} requests sent ({PAYERS * PAYMENTS_EACH} payments by {PAYERS} payers to one "
              f"club, {DUPLICATE_SETTLEMENTS + OVERRIDE_SETTLEMENTS} settlements, {refunds} "
              f"refunds) through 6 worker processes; payments paid {statuses['payment', 'paid']}, declined "
              f"{statuses['payment', 'declined']}; settlements settled {duplicate.count('settled') + _settled_overrides(rows, admin)}"
              f" of {DUPLICATE_SETTLEMENTS + OVERRIDE_SETTLEMENTS}; refunds paid {statuses['refund', 'paid']}, declined {statuses['refund', 'declined']}, failed "
              f"{statuses['refund', 'failed']}; lost 0, double 0; deadlocks 0; balances exact for {len(expected)} accounts; "
              f"callbacks {tally['callbacks']}; Stripe charges {charges} vs succeeded attempts {tally['charges']}; all terminal {worked:.0f} s after "
              f"sending began; {time.monotonic() - began:.0f} s")


def _settled_overrides(rows: dict[str, Any], admin: list[Sent]) -> int:
    return sum(rows[s.request_id].result["organisations"][0]["status"] == "settled"
               for s in admin if s.request_id.startswith("settle-override-"))


def _scalar(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _read_from(log: Path, offset: int) -> str:
    with open(log, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")
