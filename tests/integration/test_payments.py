"""SPEC 3, the payment request, decided by shared.payments on PostgreSQL (no worker needed)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from shared import payments, profiles, requests, topups
from shared.config import Settings
from shared.errors import Conflict, InvalidInput
from shared.models import CardPayment, CardPaymentKind, Member, OutboxMessage, SystemAccount
from tests.integration.helpers import add_member, add_organisation, balance_of, top_up


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions.begin() as session:
        ids = {
            "ann": add_member(session, "ann"),
            "bob": add_member(session, "bob", "Bob", "Ray"),
            "club": add_organisation(session, "club"),
            "fees": profiles.system_account(session, SystemAccount.FEES),
        }
        top_up(session, ids["ann"], 100_00, "fund-ann")
    return ids


def order(**overrides: object) -> payments.PaymentOrder:
    body = {"request_id": "r1", "member_id": "ann", "amount": "30.00", "description": "Table money",
            "organisation_id": "club", "payment_type": "Club Payment", **overrides}
    return payments.parse({k: v for k, v in body.items() if v is not None}, Settings())


# Every test here runs twice: deciding with `payments.pay` alone, and as the worker does, trying
# `pay_at_once` (one statement, the plain case) first. The rules must not tell the two apart.
AT_ONCE: dict = {"try": False, "paid": []}


@pytest.fixture(autouse=True, params=[False, True], ids=["general", "at-once-first"])
def at_once(request: pytest.FixtureRequest) -> None:
    AT_ONCE.update({"try": request.param, "paid": []})


def pay(sessions: sessionmaker[Session], o: payments.PaymentOrder) -> requests.Request:
    if AT_ONCE["try"] and payments.pay_at_once(sessions.kw["bind"], o, Settings()) is not None:
        AT_ONCE["paid"].append(o.request_id)
        with sessions.begin() as session:
            return requests.get(session, o.request_id)
    with sessions.begin() as session:
        return payments.pay(session, o, Settings())


def callbacks(sessions: sessionmaker[Session]) -> list[dict]:
    with sessions.begin() as session:
        return [m.payload for m in session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "callback"))]


def test_enough_money_books_the_payment_and_calls_back_success(sessions, world) -> None:
    row = pay(sessions, order(route_code="EVT", route_payload={"entry": 7}))
    assert (row.status, row.reason) == ("paid", None)
    assert balance_of(sessions, world["ann"]) == 70_00
    assert balance_of(sessions, world["club"]) == 30_00
    assert callbacks(sessions) == [
        {"request_id": "r1", "route_code": "EVT", "route_payload": {"entry": 7},
         "status": "success", "amount": "30.00", "reason": None, "member_id": "ann", "organisation_id": "club"}
    ]
    assert AT_ONCE["paid"] == (["r1"] if AT_ONCE["try"] else [])


def test_too_little_money_declines_books_nothing_and_calls_back_failure(sessions, world) -> None:
    row = pay(sessions, order(amount="100.01", route_code="EVT"))
    assert row.status == "declined"
    assert row.reason == "insufficient funds: balance 100.00, needs 100.01"
    assert balance_of(sessions, world["ann"]) == 100_00
    assert balance_of(sessions, world["club"]) == 0
    assert [c["status"] for c in callbacks(sessions)] == ["failure"]
    assert callbacks(sessions)[0]["reason"] == row.reason


def test_short_of_funds_with_checkout_allowed_opens_a_checkout_for_the_shortfall(sessions, world) -> None:
    with sessions.begin() as session:
        session.get(Member, "ann").auto_topup_status = "on"  # but no saved card: no top-up
        row = payments.pay(session, order(amount="150.00", allow_checkout=True), Settings())
        assert session.info["checkouts"] and "charges" not in session.info
    assert row.status == "queued"  # until the PaymentIntent exists (shared.charges)
    with sessions.begin() as session:
        [attempt] = session.scalars(select(CardPayment)).all()
        assert (attempt.kind, attempt.amount, attempt.request_id) == ("checkout", 50_00, "r1")
    assert balance_of(sessions, world["ann"]) == 100_00


def test_book_internals_false_decides_but_books_nothing(sessions, world) -> None:
    assert pay(sessions, order(book_internals=False)).status == "paid"
    assert balance_of(sessions, world["ann"]) == 100_00
    assert balance_of(sessions, world["club"]) == 0


def test_a_payment_to_another_member_or_to_no_one_is_booked_to_them_or_the_federation(sessions, world) -> None:
    pay(sessions, order(request_id="to-bob", organisation_id=None, other_member_id="bob", payment_type=None, amount="5.00"))
    pay(sessions, order(request_id="to-fed", organisation_id=None, amount="7.00"))
    assert balance_of(sessions, world["bob"]) == 5_00
    assert balance_of(sessions, world["fees"]) == 7_00
    assert balance_of(sessions, world["ann"]) == 88_00


def test_a_payment_to_another_member_e_mails_both_of_them_once(sessions, world) -> None:
    """ORIGINAL 6.9 (issue 13 item 6): both sides of a payment to another member, on both paths."""
    first = pay(sessions, order(request_id="to-bob", organisation_id=None, other_member_id="bob", payment_type=None, amount="5.00",
                                description="Half the taxi"))
    pay(sessions, order(request_id="to-bob", organisation_id=None, other_member_id="bob", payment_type=None, amount="5.00",
                        description="Half the taxi"))  # replayed: no more e-mails
    assert first.status == "paid" and AT_ONCE["paid"] == []  # never the one-statement path
    with sessions.begin() as session:
        sent = [m.payload for m in session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "notification")
                                                   .order_by(OutboxMessage.id))]
    assert [(m["to"], m["subject"]) for m in sent] == [("ann@example.org", "Transfer to Bob Ray"),
                                                      ("bob@example.org", "Transfer from Ann Lee")]
    assert "Half the taxi" in sent[1]["body"]


def test_an_unknown_member_or_organisation_fails_the_request(sessions, world) -> None:
    assert pay(sessions, order(request_id="x1", member_id="zed", route_code="EVT")).reason == (
        "member zed: not known to payments"
    )
    assert pay(sessions, order(request_id="x2", organisation_id="nowhere")).status == "failed"
    assert [c["status"] for c in callbacks(sessions)] == ["failure"]
    assert balance_of(sessions, world["ann"]) == 100_00


def test_the_same_request_again_returns_the_first_outcome_and_books_once(sessions, world) -> None:
    first = pay(sessions, order())
    again = pay(sessions, order(amount="30"))  # the same amount, written differently
    assert (first.status, again.status) == ("paid", "paid")
    assert balance_of(sessions, world["ann"]) == 70_00
    assert len(callbacks(sessions)) == 0  # no route code: no callback
    with pytest.raises(Conflict, match="request r1: already used"):
        pay(sessions, order(amount="31.00"))


def test_twenty_concurrent_payments_of_ten_from_a_hundred_give_ten_paid_and_ten_declined(sessions, world) -> None:
    orders = [order(request_id=f"c{i}", amount="10.00") for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda o: pay(sessions, o).status, orders))
    assert sorted(statuses) == ["declined"] * 10 + ["paid"] * 10
    # In one statement: the payments leaving at least the low limit; the rest fell back to `pay`.
    plain = sum(1 for k in range(1, 11) if 100_00 - k * 10_00 >= Settings().auto_topup_low_limit)
    assert len(AT_ONCE["paid"]) == (plain if AT_ONCE["try"] else 0)
    assert balance_of(sessions, world["ann"]) == 0
    assert balance_of(sessions, world["club"]) == 100_00


def test_the_same_request_id_sent_five_times_at_once_books_once(sessions, world) -> None:
    with ThreadPoolExecutor(5) as pool:
        statuses = list(pool.map(lambda _: pay(sessions, order(route_code="EVT")).status, range(5)))
    assert statuses == ["paid"] * 5
    assert balance_of(sessions, world["ann"]) == 70_00
    assert len(callbacks(sessions)) == 1
    with sessions.begin() as session:
        assert session.scalar(text("SELECT attempts FROM payment_requests WHERE request_id = 'r1'")) == 5


def test_a_low_balance_warns_opted_in_members_at_most_once_a_week(sessions, world) -> None:
    with sessions.begin() as session:
        session.get(Member, "ann").low_balance_emails = True

    def warnings() -> list[dict]:
        with sessions.begin() as session:
            return [m.payload for m in session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "notification"))]

    with freeze_time("2026-03-01 10:00:00") as clock:
        pay(sessions, order(request_id="p1", amount="75.00"))  # 25.00 left: above the limit
        assert warnings() == []
        pay(sessions, order(request_id="p2", amount="10.00"))  # 15.00 left
        assert len(warnings()) == 1
        clock.tick(timedelta(days=6))
        pay(sessions, order(request_id="p3", amount="1.00"))
        assert len(warnings()) == 1
        clock.tick(timedelta(days=1, seconds=1))
        pay(sessions, order(request_id="p4", amount="1.00"))
    sent = warnings()
    assert len(sent) == 2
    assert sent[0]["to"] == "ann@example.org"
    assert "Your balance is 15.00." in sent[0]["body"]
    assert sent[0]["body"].count("Club Payment") == 2 and "Manual Top Up" in sent[0]["body"]


def test_members_who_did_not_opt_in_get_no_low_balance_email(sessions, world) -> None:
    pay(sessions, order(amount="95.00"))
    with sessions.begin() as session:
        assert session.scalar(text("SELECT count(*) FROM outbox")) == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"request_id": None}, "request_id"),
        ({"member_id": ""}, "member_id"),
        ({"amount": "0.00"}, "amount"),
        ({"amount": "-5.00"}, "amount"),
        ({"amount": 5.5}, "amount"),
        ({"amount": "1.001"}, "amount"),
        ({"description": ""}, "description"),
        ({"description": "x" * 81}, "description"),
        ({"payment_type": "Settlement"}, "payment_type"),
        # Organisation -> member types: a payment debits the member.
        ({"payment_type": "Refund"}, "payment_type"),
        ({"payment_type": "Club Top Up"}, "payment_type"),
        ({"payment_type": "Member Transfer"}, "payment_type"),  # to another member only
        ({"organisation_id": None, "other_member_id": "bob"}, "payment_type"),  # Club Payment, to a member
        ({"payment_type": "Manual Adjustment"}, "payment_type"),
        ({"other_member_id": "bob"}, "organisation_id"),
        ({"organisation_id": None, "other_member_id": "ann", "payment_type": None}, "other_member_id"),
        # The transfer cap (2,000.00) on every way of paying another member (issue 13 item 2).
        ({"organisation_id": None, "other_member_id": "bob", "payment_type": None, "amount": "2000.01"}, "amount"),
        ({"book_internals": "yes"}, "book_internals"),
        ({"allow_checkout": 1}, "allow_checkout"),
        ({"route_code": "bad code"}, "route_code"),
        ({"route_payload": "x" * 3000}, "route_payload"),
    ],
)
def test_bad_payment_requests_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        order(**overrides) if overrides.get("request_id", 1) is not None else payments.parse(
            {"member_id": "ann", "amount": "1.00", "description": "x"}, Settings()
        )
    assert caught.value.field == field


# Payment types, stored requests and long reasons ------------------------------------------


@pytest.mark.parametrize(
    "payment_type", ["Club Payment", "Club Membership", "Entry to an event", "Miscellaneous", "Club Top Up Rev"]
)
def test_a_payment_is_booked_under_each_type_in_the_member_to_organisation_direction(
    sessions, world, payment_type
) -> None:
    assert pay(sessions, order(payment_type=payment_type)).status == "paid"
    with sessions.begin() as session:
        assert session.scalar(text("SELECT type FROM journal_entries WHERE idempotency_key = 'payment:r1'")) == payment_type


def test_a_payment_waiting_for_card_money_is_paid_after_the_amount_limit_was_lowered(sessions, world) -> None:
    accepted = order(amount="150.00", allow_checkout=True)
    with sessions.begin() as session:
        assert payments.pay(session, accepted, Settings()).status == "queued"
        [attempt] = session.scalars(select(CardPayment)).all()
        topups.book_card_money(session, attempt, payment_intent_id="pi_test_1")
    lowered = Settings(max_amount=100_00)
    with pytest.raises(InvalidInput):  # new input is still checked against the lowered limit
        payments.parse(accepted.payload(), lowered)
    with sessions.begin() as session:
        [attempt] = session.scalars(select(CardPayment)).all()
        payments.card_money_arrived(session, attempt, lowered)
        assert requests.get(session, "r1").status == "paid"
    assert balance_of(sessions, world["ann"]) == 0
    assert balance_of(sessions, world["club"]) == 150_00


def test_a_payment_whose_card_failed_is_declined_after_the_amount_limit_was_lowered(sessions, world) -> None:
    accepted = order(amount="150.00")
    with sessions.begin() as session:
        payments.record(session, accepted)
        attempt = topups.open_attempt(session, key="pay-topup:r1", kind=CardPaymentKind.AUTO_TOP_UP,
                                      member_id="ann", amount=100_00, request_id="r1")
        assert attempt is not None
        payments.card_failed(session, attempt, "card declined", Settings(max_amount=100_00))
        assert requests.get(session, "r1").status == "declined"


def test_a_reason_longer_than_its_column_is_shortened_and_the_request_still_ends(sessions, world) -> None:
    long_reason = "Your card was declined by the issuing bank: " + "do not honour; " * 40
    with sessions.begin() as session:
        payments.record(session, order(route_code="EVT"))
        attempt = topups.open_attempt(session, key="pay-topup:r1", kind=CardPaymentKind.AUTO_TOP_UP,
                                      member_id="ann", amount=100_00, request_id="r1")
        assert attempt is not None
        payments.card_failed(session, attempt, long_reason, Settings())
    with sessions.begin() as session:
        row = requests.get(session, "r1")
    assert row.status == "declined"
    assert row.reason is not None and len(row.reason) == requests.REASON_LENGTH
    assert row.reason.startswith("auto top-up failed: Your card was declined") and row.reason.endswith("\u2026")
    assert [c["reason"] for c in callbacks(sessions)] == [row.reason]
