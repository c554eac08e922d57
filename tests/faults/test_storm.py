"""Webhook storm (fault suite, scenario 1): 2,000 real Stripe events, each delivered 3 times in
an order shuffled by a fixed seed, by 32 concurrent senders, to the real gunicorn webhook server
in front of a real `payments worker`. It proves that duplicates and reordering change nothing:
each event is stored once (exactly 2,000 first deliveries, 4,000 answered as duplicates), and
the ledger equals the one the events should book, member by member and entry by entry.

The events are real. Half are manual top-ups and half are payments short of funds that open a
card checkout, requested the way a calling module does (`shared.client`) and decided by the
worker, which creates their PaymentIntents at localstripe; the test then pays each one as the
member's browser would, and builds and signs the `payment_intent.succeeded` events itself. The
handler re-fetches every PaymentIntent from localstripe, so an event books only what Stripe says.

The workload (`Workload`) is reused by the outage scenarios in test_outages.py.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stripe
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared import client as payments_client
from shared.config import Settings
from shared.models import SystemAccount
from tests.conftest import API_TOKEN
from tests.e2e.conftest import BROKER, REDIS_DB, WEBHOOK_SECRET
from tests.e2e.processes import wait_for
from tests.faults.invariants import check_invariants
from tests.faults.scale import scaled
from tests.faults.services import Delivery, Stripe
from tests.integration.helpers import add_member, add_organisation
from tests.stripe_fixture import STRIPE_TEST_KEY, register_webhook, reset_stripe

SEED = 20260607
EVENTS = scaled(2_000, 200)
MEMBERS = 200
COPIES = 3
SENDERS = 32
CLUB = "club"
ROUTE_CODE = "EVT"  # the e2e stack's callback route (tests.e2e.conftest.ROUTES)
VISA = "4242424242424242"


# The workload --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """One request that ends in one card payment: a manual top-up with a new card, or a payment
    from an empty balance that opens a checkout for its whole amount."""

    request_id: str
    member_id: str
    amount: int  # cents
    topup: bool

    @property
    def attempt_key(self) -> str:
        return f"topup:{self.request_id}" if self.topup else f"checkout:{self.request_id}"

    def entry_keys(self) -> tuple[str, ...]:
        """The journal entries it must book: the card money, and for a payment the payment."""
        card = f"card:{self.attempt_key}"
        return (card,) if self.topup else (card, f"payment:{self.request_id}")


@dataclass(frozen=True)
class Ledger:
    balances: dict[str, int]  # member or organisation id -> balance in cents
    entry_keys: collections.Counter[str]


@dataclass
class Workload:
    """`len(orders)` card payments spread over members, each made real up to a succeeded
    PaymentIntent at localstripe, with the event that reports it.

    Every payment is decided while every balance is still zero, so each checkout is for the
    payment's whole amount and the payment is paid whatever order the events arrive in: the
    expected ledger does not depend on the shuffle."""

    orders: list[Order]
    members: list[str]
    route_code: str | None

    @classmethod
    def plan(cls, *, events: int, members: int, seed: int, prefix: str, route_code: str | None) -> Workload:
        rng = random.Random(seed)
        member_ids = [f"{prefix}-m{i:03d}" for i in range(members)]
        orders = []
        for i in range(events):
            topup = rng.random() < 0.5
            # Top-ups: 50.00 (the minimum) to 150.00, so ten of them stay under the 2,000.00 cap.
            amount = rng.randint(50_00, 150_00) if topup else rng.randint(1_00, 300_00)
            orders.append(Order(f"{prefix}-{i:05d}", member_ids[i % members], amount, topup))
        return cls(orders, member_ids, route_code)

    def add_parties(self, sessions: sessionmaker[Session]) -> None:
        with sessions.begin() as session:
            for member_id in self.members:
                add_member(session, member_id)
            add_organisation(session, CLUB)

    def request(self, settings: Settings) -> None:
        """Enqueue every request by task name, as a calling module does (`shared.client`)."""
        for order in self.orders:
            amount = f"{order.amount // 100}.{order.amount % 100:02d}"
            if order.topup:
                payments_client.topup(settings, token=API_TOKEN, request_id=order.request_id, member_id=order.member_id,
                                      amount=amount, use_saved_card=False)
            else:
                payments_client.pay(settings, token=API_TOKEN, request_id=order.request_id, member_id=order.member_id,
                                    amount=amount, description="Congress entry", organisation_id=CLUB,
                                    payment_type="Entry to an event", allow_checkout=True,
                                    route_code=self.route_code)

    def pay_checkouts(
        self, engine: Engine, stripe_base: str, *, timeout: float, browsers: int = 8
    ) -> list[dict[str, Any]]:
        """Pay every checkout as soon as the worker has made it, as the member's browser does
        (Stripe.js puts a card on the PaymentIntent and confirms it). Returns, in order, the
        `payment_intent.succeeded` events Stripe would send.

        One card serves every browser: localstripe allows it, and it saves a call a payment."""
        browser = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": stripe_base}, max_network_retries=0)
        card: Any = {"type": "card", "card": {"number": VISA, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
        method = browser.v1.payment_methods.create(card).id
        by_key = {order.attempt_key: order for order in self.orders}

        def pay_one(order: Order, intent_id: str) -> dict[str, Any]:
            browser.v1.payment_intents.update(intent_id, {"payment_method": method})
            intent = browser.v1.payment_intents.confirm(intent_id).to_dict()
            assert (intent["status"], intent["amount"]) == ("succeeded", order.amount), intent
            return {"id": f"evt_{order.request_id}", "object": "event", "type": "payment_intent.succeeded",
                    "api_version": "2020-08-27", "created": int(time.time()), "livemode": False,
                    "pending_webhooks": 1, "data": {"object": intent}}

        with ThreadPoolExecutor(browsers) as pool:
            paying: dict[str, Future[dict[str, Any]]] = {}

            def all_made() -> bool:
                with engine.connect() as conn:
                    rows = conn.execute(text("SELECT attempt_key, payment_intent_id FROM card_payments "
                                             "WHERE status = 'awaiting_card'")).all()
                for key, intent_id in rows:
                    if key not in paying:
                        paying[key] = pool.submit(pay_one, by_key[key], intent_id)
                return len(paying) == len(self.orders)

            try:
                wait_for(all_made, f"the worker to make {len(self.orders)} checkouts", timeout)
            except AssertionError:
                with engine.connect() as conn:
                    query = text("SELECT status, count(*) FROM payment_requests GROUP BY 1")
                    statuses: dict[str, int] = dict(conn.execute(query).all())
                made = f"checkouts made: {len(paying)} of {len(self.orders)}"
                raise AssertionError(f"{made}; requests: {statuses}") from None
            return [paying[order.attempt_key].result() for order in self.orders]

    def expected(self) -> Ledger:
        """Top-ups stay with the member; a payment's card money goes on to the club; the
        Stripe system account holds minus all the card money; no other account moves."""
        balances = dict.fromkeys([*self.members, CLUB, *(f"system:{name}" for name in SystemAccount)], 0)
        for order in self.orders:
            balances[order.member_id if order.topup else CLUB] += order.amount
            balances[f"system:{SystemAccount.STRIPE}"] -= order.amount
        return Ledger(balances, collections.Counter(key for order in self.orders for key in order.entry_keys()))


def read_ledger(engine: Engine) -> Ledger:
    with engine.connect() as conn:
        balances: dict[str, int] = dict(conn.execute(text(
            """SELECT owner_id, coalesce(sum(p.amount), 0) FROM (
                   SELECT member_id AS owner_id, account_id FROM members
                   UNION ALL SELECT org_id, account_id FROM organisations
                   UNION ALL SELECT 'system:' || owner, id FROM accounts WHERE kind = 'system') o
               LEFT JOIN postings p ON p.account_id = o.account_id GROUP BY owner_id""")).all())
        keys = collections.Counter(conn.execute(text("SELECT idempotency_key FROM journal_entries")).scalars())
    return Ledger(balances, keys)


def compare(expected: Ledger, actual: Ledger) -> tuple[int, int, dict[str, tuple[int, int | None]]]:
    """(lost, double, differing balances): bookings missing, bookings beyond the expected
    ones (an extra key, or a key twice), and each balance that is not the expected one."""
    lost = sum((expected.entry_keys - actual.entry_keys).values())
    double = sum((actual.entry_keys - expected.entry_keys).values())
    differ = {owner: (cents, actual.balances.get(owner)) for owner, cents in expected.balances.items()
              if actual.balances.get(owner) != cents}
    differ.update({owner: (0, cents) for owner, cents in actual.balances.items() if owner not in expected.balances})
    return lost, double, differ


def settled(engine: Engine, events: int) -> Callable[[], bool]:
    """True once every event is processed, every request decided and every callback sent."""
    def check() -> bool:
        with engine.connect() as conn:
            row = conn.execute(text(
                """SELECT (SELECT count(*) FROM stripe_events WHERE status = 'processed') AS processed,
                          (SELECT count(*) FROM payment_requests WHERE status IN ('queued', 'awaiting_card')) AS open,
                          (SELECT count(*) FROM outbox WHERE status = 'pending') AS unsent""")).one()
        return row.processed == events and row.open == 0 and row.unsent == 0
    return check


def mute_localstripe(stripe_base: str, url: str) -> None:
    """localstripe posts its own payment_intent.succeeded to the e2e registration (the
    `webhook_url` fixture's, or a stopped server's from an earlier module) a second after each
    confirm. Only the scenario's own deliveries may book, so that registration is narrowed to
    an event type nothing sends; the next module's `webhook_url` registers it afresh."""
    register_webhook(stripe_base, f"e2e-{REDIS_DB}", url=url, secret=WEBHOOK_SECRET, events=["fault.suite.muted"])


def summary(name: str, workload: Workload, deliveries: Iterable[Delivery], lost: int, double: int,
            seconds: float, extra: str = "") -> str:
    deliveries = list(deliveries)
    firsts = sum(d.duplicate is False for d in deliveries)
    duplicates = sum(d.duplicate is True for d in deliveries)
    tries = sum(d.tries for d in deliveries)
    booked = len(workload.orders) - lost
    return (f"[{name}] {len(workload.orders)} events sent, {len(deliveries)} deliveries ({tries} tries), "
            f"{firsts} stored, {duplicates} duplicates, {booked} booked, lost {lost}, double {double}, "
            f"{seconds:.1f} s{extra}")


# The scenario --------------------------------------------------------------------------------


def test_a_storm_of_shuffled_triplicate_events_books_the_expected_ledger_exactly(
    worker: Path, webhook_url: str, stripe_api: str, engine: Engine, sessions: sessionmaker[Session],
    received: Callable[[], list[dict[str, Any]]],
) -> None:
    reset_stripe(stripe_api)
    mute_localstripe(stripe_api, webhook_url)
    workload = Workload.plan(events=EVENTS, members=MEMBERS, seed=SEED, prefix="storm", route_code=ROUTE_CODE)
    workload.add_parties(sessions)

    started = time.monotonic()
    workload.request(Settings(broker_url=BROKER))
    # Two worker processes make the 2,000 checkouts in about 60 s on an idle 2-core machine; the
    # deadline leaves room for a busy one (a CI run beside other work took over 120 s).
    events = workload.pay_checkouts(engine, stripe_api, timeout=300)
    ready = time.monotonic()

    stripe_sender = Stripe(webhook_url, WEBHOOK_SECRET, senders=SENDERS)
    deliveries = stripe_sender.deliver_all(events, copies=COPIES, seed=SEED)
    sent = time.monotonic()
    wait_for(settled(engine, EVENTS), "every event to be processed and every callback sent", 180)
    done = time.monotonic()

    lost, double, differ = compare(workload.expected(), read_ledger(engine))
    payments = [order.request_id for order in workload.orders if not order.topup]

    def called_back() -> list[dict[str, Any]] | None:
        found = received()
        return found if len(found) >= len(payments) else None

    calls = wait_for(called_back, "every callback to reach the events module", 60)
    print("\n" + summary("storm", workload, deliveries, lost, double, done - ready,
                         f" (setup {ready - started:.1f} s, sending {sent - ready:.1f} s); "
                         f"{len(calls)} callbacks received for {len(payments)} payments"))
    tally = check_invariants(engine, stripe_base=stripe_api)

    assert collections.Counter(d.status for d in deliveries) == {200: EVENTS * COPIES}
    assert all(d.tries == 1 for d in deliveries)  # nothing refused: Stripe never had to retry
    assert sum(d.duplicate is False for d in deliveries) == EVENTS  # each event stored once
    assert (lost, double, differ) == (0, 0, {})
    assert tally["entries"] == EVENTS + len(payments)
    assert tally["charges"] == EVENTS and tally["events"] == EVENTS
    assert sorted(call["request_id"] for call in calls) == sorted(payments)  # one callback each
    assert {call["status"] for call in calls} == {"success"}
