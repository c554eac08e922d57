"""`GET /api/card-payments` (issue 14 item 5): card money taken, for one member or a period,
with what refunds took and what they may still take. Card payments are stored rows (no Stripe
call is needed to list them); a partial refund is booked as the refund task books it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from freezegun import freeze_time
from sqlalchemy.orm import Session, sessionmaker

from shared import access, refunds
from shared.config import Settings
from shared.models import CardPayment, CardPaymentKind, CardPaymentStatus
from tests.integration.helpers import add_member, bearer, top_up
from tests.integration.test_api import assert_error

TODAY = "2025-12-05T01:00:00Z"  # 12:00 in Sydney


def _card(session: Session, intent: str | None, member: str, cents: int, moment: datetime, *,
          kind: CardPaymentKind = CardPaymentKind.MANUAL_TOP_UP,
          status: CardPaymentStatus = CardPaymentStatus.SUCCEEDED, request_id: str | None = None,
          notes: list | None = None) -> None:
    session.add(CardPayment(
        attempt_key=f"attempt:{intent or moment.isoformat()}", kind=kind.value, status=status.value, member_id=member,
        amount=cents, request_id=request_id, payment_intent_id=intent, tries=1, refunded=0, created_at=moment,
        updated_at=moment, heal_tries=0, card_brand="visa", card_last4="4242", card_exp_month=12, card_exp_year=2030,
        stripe_notes=notes,
    ))


@pytest.fixture
def cards(sessions: sessionmaker[Session]) -> None:
    """ann: pi_1 100.00 at 23:30 on 31 October in Sydney (12:30 UTC), of which an admin refunded
    30.00; pi_2 50.00 (auto top-up) at 00:30 on 1 November, refunded in full; a failed attempt.
    bob: pi_3 40.00 (checkout of request r-9) on 2 November, disputed at Stripe."""
    with sessions.begin() as session:
        top_up(session, add_member(session, "ann"), 200_00, "money")
        add_member(session, "bob", "Bob", "Ray")
        _card(session, "pi_1", "ann", 100_00, datetime(2025, 10, 31, 12, 30, tzinfo=UTC))
        _card(session, "pi_2", "ann", 50_00, datetime(2025, 10, 31, 13, 30, tzinfo=UTC), kind=CardPaymentKind.AUTO_TOP_UP)
        _card(session, "pi_x", "ann", 60_00, datetime(2025, 11, 1, tzinfo=UTC), status=CardPaymentStatus.FAILED)
        _card(session, "pi_3", "bob", 40_00, datetime(2025, 11, 2, tzinfo=UTC), kind=CardPaymentKind.CHECKOUT,
              request_id="r-9", notes=[{"type": "charge.refunded"}, {"type": "charge.dispute.created"}])
    with freeze_time("2025-11-10T00:00:00Z"):
        for request_id, intent, amount in (("rf-1", "pi_1", "30.00"), ("rf-2", "pi_2", None)):
            body = {"request_id": request_id, "payment_intent_id": intent, "by": "admin", "admin_id": "adm"}
            order = refunds.parse({**body, **({"amount": amount} if amount else {})}, Settings())
            with sessions.begin() as session:
                refunds.book(session, order, Settings())


CARD = {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}
PI_1 = {"payment_intent_id": "pi_1", "kind": "manual_topup", "member_id": "ann", "amount": "100.00", "refunded": "30.00",
        "refundable": "70.00", "status": "partially_refunded", "card": CARD, "disputed": False, "created_at": "2025-10-31T23:30:00+11:00",
        "member_refund_until": "2026-01-23T23:30:00+11:00", "request_id": None}
PI_2 = {"payment_intent_id": "pi_2", "kind": "auto_topup", "member_id": "ann", "amount": "50.00", "refunded": "50.00",
        "refundable": "0.00", "status": "refunded", "card": CARD, "disputed": False, "created_at": "2025-11-01T00:30:00+11:00",
        "member_refund_until": "2026-01-24T00:30:00+11:00", "request_id": None}
PI_3 = {"payment_intent_id": "pi_3", "kind": "checkout", "member_id": "bob", "amount": "40.00", "refunded": "0.00",
        "refundable": "40.00", "status": "succeeded", "card": CARD, "disputed": True, "created_at": "2025-11-02T11:00:00+11:00",
        "member_refund_until": "2026-01-25T11:00:00+11:00", "request_id": "r-9"}


def _rows(client, auth, query: str) -> list[dict]:  # type: ignore[no-untyped-def]
    with freeze_time(TODAY):
        response = client.get(f"/api/card-payments?{query}", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["rows"]  # type: ignore[no-any-return]


def test_a_members_card_payments_newest_first_with_refunded_and_refundable(client, auth, cards) -> None:
    assert _rows(client, auth, "member_id=ann") == [PI_2, PI_1]
    assert _rows(client, auth, "member_id=ann&refundable=true") == [PI_1]
    assert _rows(client, auth, "member_id=bob&refundable=false") == [PI_3]


def test_a_period_counts_local_days_across_midnight(client, auth, cards) -> None:
    assert _rows(client, auth, "from=2025-11-01&to=2025-11-30") == [PI_3, PI_2]
    assert _rows(client, auth, "period=last_month") == [PI_3, PI_2]
    assert _rows(client, auth, "from=2025-10-31&to=2025-10-31") == [PI_1]
    assert _rows(client, auth, "period=all&refundable=true") == [PI_3, PI_1]
    assert _rows(client, auth, "member_id=ann&from=2025-11-01") == [PI_2]


def test_pages_follow_the_cursor_without_loss_or_repeat(client, auth, cards) -> None:
    with freeze_time(TODAY):
        first = client.get("/api/card-payments?period=all&limit=2", headers=auth).get_json()
        second = client.get(f"/api/card-payments?period=all&limit=2&cursor={first['next_cursor']}", headers=auth).get_json()
    assert (first["rows"], second["rows"], second["next_cursor"]) == ([PI_3, PI_2], [PI_1], None)


BAD_ARGUMENTS = [
    ("", "member_id"), ("refundable=true", "member_id"), ("member_id=", "member_id"),
    ("member_id=ann&refundable=yes", "refundable"), ("member_id=ann&limit=0", "limit"),
    ("member_id=ann&limit=ten", "limit"), ("member_id=ann&cursor=x", "cursor"), ("from=2025-13-01", "from"),
    ("to=2025-01-01&from=2025-02-01", "from"), ("period=someday", "period"),
]


def test_bad_arguments_are_a_400_naming_the_field(client, auth, cards) -> None:
    for query, field in BAD_ARGUMENTS:
        assert_error(client.get(f"/api/card-payments?{query}", headers=auth), 400, "invalid_input", field)
    assert_error(client.get("/api/card-payments?member_id=nobody", headers=auth), 404, "not_found", "member_id")


def test_the_payments_scope_reads_one_members_and_reports_reads_any(client, sessions, cards) -> None:
    with sessions.begin() as session:
        portal = bearer(access.add(session, "portal", ["payments"]).token)
        reporter = bearer(access.add(session, "reporter", ["reports"]).token)
        people = bearer(access.add(session, "people", ["profiles"]).token)
        club = bearer(access.add(session, "club", ["clubs"], organisations=["c"]).token)
    assert _rows(client, portal, "member_id=ann&refundable=true") == [PI_1]
    assert _rows(client, reporter, "period=all") == [PI_3, PI_2, PI_1]
    assert_error(client.get("/api/card-payments?period=all", headers=portal), 403, "forbidden")
    assert_error(client.get("/api/card-payments", headers=portal), 403, "forbidden")  # refused before the 400
    for headers in (people, club):
        assert_error(client.get("/api/card-payments?member_id=ann", headers=headers), 403, "forbidden")
