"""The invariants every fault scenario ends by checking (issue 7, DESIGN's invariants).

`check_invariants(engine, stripe_base=...)` raises AssertionError naming every broken rule, and
returns a small tally (entries, postings, requests, callbacks, charges) for the scenario's
summary line in README.md.
"""

from __future__ import annotations

import collections
from typing import Any

import stripe
from sqlalchemy import Engine, text

from shared.models import TERMINAL_STATUSES
from tests.stripe_fixture import STRIPE_TEST_KEY

TERMINAL = tuple(status.value for status in TERMINAL_STATUSES)

# Each query returns the rows that break its rule: an empty result is a pass.
BROKEN_RULES = {
    "an entry does not sum to zero or has fewer than two postings": """
        SELECT e.id, e.idempotency_key, coalesce(sum(p.amount), 0) AS total, count(p.id) AS lines
        FROM journal_entries e LEFT JOIN postings p ON p.entry_id = e.id
        GROUP BY e.id HAVING coalesce(sum(p.amount), 0) <> 0 OR count(p.id) < 2""",
    "a posting names no account": """
        SELECT p.id, p.account_id FROM postings p LEFT JOIN accounts a ON a.id = p.account_id
        WHERE a.id IS NULL""",
    "a member's balance is negative": """
        SELECT m.member_id, sum(p.amount) AS balance FROM members m JOIN postings p ON p.account_id = m.account_id
        GROUP BY m.member_id HAVING sum(p.amount) < 0""",
    "an account's running sum is not the sum of its postings": """
        SELECT coalesce(b.account_id, p.account_id) AS account_id, b.total AS running, p.total AS postings
        FROM (SELECT account_id, sum(balance) AS total FROM account_balances GROUP BY account_id) b
        FULL JOIN (SELECT account_id, sum(amount) AS total FROM postings GROUP BY account_id) p
          ON p.account_id = b.account_id
        WHERE coalesce(b.total, 0) <> coalesce(p.total, 0)""",
    "a request is not in a terminal state": f"""
        SELECT request_id, kind, status FROM payment_requests WHERE status NOT IN {TERMINAL!r}""",
    "a card attempt is still in flight": """
        SELECT attempt_key, status FROM card_payments WHERE status = 'pending'""",
    "a Stripe event is not finished": """
        SELECT event_id, type, status, last_error FROM stripe_events
        WHERE status NOT IN ('processed', 'ignored')""",
    "a request with a route code has no callback row, or more than one": """
        SELECT r.request_id, count(o.id) AS callbacks FROM payment_requests r
        LEFT JOIN outbox o ON o.kind = 'callback' AND o.request_id = r.request_id
        WHERE r.route_code IS NOT NULL GROUP BY r.request_id HAVING count(o.id) <> 1""",
    "a callback or notification was not sent": """
        SELECT id, kind, request_id, status, last_error FROM outbox WHERE status <> 'sent'""",
    "a succeeded card attempt is not booked exactly once": """
        SELECT c.attempt_key, count(e.id) AS entries FROM card_payments c
        LEFT JOIN journal_entries e ON e.idempotency_key = 'card:' || c.attempt_key
        WHERE c.status = 'succeeded' GROUP BY c.attempt_key HAVING count(e.id) <> 1""",
}


def check_invariants(engine: Engine, *, stripe_base: str | None = None, allow_waiting: bool = False) -> dict[str, int]:
    """Assert the ledger, request, outbox and card invariants; with `stripe_base`, also that
    localstripe's succeeded PaymentIntents match our succeeded card attempts one to one.

    `allow_waiting` lets requests stay `awaiting_card` (a checkout nobody completed)."""
    broken: list[str] = []
    with engine.connect() as conn:
        for rule, query in BROKEN_RULES.items():
            if allow_waiting and "terminal" in rule:
                query = query + " AND status <> 'awaiting_card'"
            rows = conn.execute(text(query)).all()
            if rows:
                broken.append(f"{rule}: {len(rows)} rows, e.g. {[tuple(r) for r in rows[:5]]}")
        tally = dict(
            conn.execute(
                text(
                    """SELECT (SELECT count(*) FROM journal_entries) AS entries,
                              (SELECT count(*) FROM postings) AS postings,
                              (SELECT count(*) FROM payment_requests) AS requests,
                              (SELECT count(*) FROM outbox WHERE kind = 'callback') AS callbacks,
                              (SELECT count(*) FROM stripe_events) AS events,
                              (SELECT count(*) FROM card_payments WHERE status = 'succeeded') AS charges"""
                )
            ).one()._mapping
        )
        if stripe_base is not None:
            ours = {
                row.payment_intent_id: (row.attempt_key, row.amount)
                for row in conn.execute(
                    text("SELECT payment_intent_id, attempt_key, amount FROM card_payments WHERE status = 'succeeded'")
                )
            }
            broken.extend(_compare_with_stripe(stripe_base, ours))
    if broken:
        raise AssertionError("invariants broken:\n  " + "\n  ".join(broken))
    return tally


def succeeded_intents(stripe_base: str) -> list[Any]:
    """Every succeeded PaymentIntent localstripe holds."""
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": stripe_base})
    page = client.v1.payment_intents.list({"limit": 100})
    return [intent for intent in page.auto_paging_iter() if intent.status == "succeeded"]


def attempt_key_of(intent: Any) -> str | None:
    """The attempt key in a PaymentIntent's metadata (SDK 16 objects are not dicts: no `.get`)."""
    metadata = intent.metadata.to_dict() if intent.metadata is not None else {}
    return metadata.get("attempt_key")


def _compare_with_stripe(stripe_base: str, ours: dict[str | None, tuple[str, int]]) -> list[str]:
    broken = []
    intents = succeeded_intents(stripe_base)
    per_attempt = collections.Counter(attempt_key_of(intent) for intent in intents)
    doubles = {key: n for key, n in per_attempt.items() if n > 1}
    if doubles:
        broken.append(f"a card attempt was charged more than once at Stripe: {list(doubles.items())[:5]}")
    theirs = {intent.id: (attempt_key_of(intent), intent.amount) for intent in intents}
    unbooked = {pi: v for pi, v in theirs.items() if pi not in ours}
    if unbooked:
        broken.append(f"Stripe charged with no succeeded attempt here: {list(unbooked.items())[:5]}")
    missing = {pi: v for pi, v in ours.items() if pi not in theirs}
    if missing:
        broken.append(f"a succeeded attempt has no succeeded charge at Stripe: {list(missing.items())[:5]}")
    differ = {pi: (v, theirs[pi]) for pi, v in ours.items() if pi in theirs and theirs[pi] != v}
    if differ:
        broken.append(f"attempt and charge differ (key, amount): {list(differ.items())[:5]}")
    return broken
