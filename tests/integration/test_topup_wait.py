"""SPEC 3 with SPEC 4.3 (issue 13 item 3): a payment short of funds while another auto top-up of
its member is in flight waits for that top-up's outcome instead of being declined at once; it is
decided when the top-up succeeds or fails, or when PAYMENTS_TOPUP_WAIT_SECONDS pass.

The top-ups here are real charges at localstripe, made by `shared.charges` as the worker does."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import stripe
from freezegun import freeze_time
from pydantic import ConfigDict
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from shared import charges, payments, profiles, requests, topups, transfers
from shared.config import Settings
from shared.models import CardPayment, Member, OutboxMessage
from shared.stripe_gateway import StripeGateway
from tests.integration.helpers import add_member, add_organisation, balance_of, top_up
from tests.stripe_fixture import STRIPE_TEST_KEY, customer_with_card
from webhook import schemas

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
DECLINED_AT_CHARGE = "4000000000000341"


@pytest.fixture
def settings(settings: Settings, stripe_api: str) -> Settings:
    return replace(settings, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api)


@pytest.fixture
def gateway(settings: Settings) -> StripeGateway:
    return StripeGateway(settings)


def ann_with_auto_top_up(sessions: sessionmaker[Session], gateway: StripeGateway, browser: stripe.StripeClient,
                         card: str = "4242424242424242") -> dict[str, int]:
    """Ann: 10.00, auto top-up `on` for 100.00 with `card` saved; a club to pay."""
    customer = customer_with_card(gateway, browser, "ann", number=card)
    with sessions.begin() as session:
        ids = {"ann": add_member(session, "ann"), "club": add_organisation(session, "club")}
        top_up(session, ids["ann"], 10_00, "fund-ann")
        member = session.get(Member, "ann")
        assert member is not None
        member.auto_topup_status, member.stripe_customer_id = "on", customer
    return ids


def sweep_top_up(sessions: sessionmaker[Session], settings: Settings) -> int:
    """The sweep's auto top-up of ann (below the low limit), committed and not yet charged."""
    with sessions.begin() as session:
        attempt_id = topups.open_auto_topup(session, "ann", "sweep:ann:1", settings)
    assert attempt_id is not None
    return attempt_id


def pay(sessions: sessionmaker[Session], settings: Settings, request_id: str = "r1", amount: str = "30.00",
        **extra: object) -> tuple[requests.Request, charges.Effects]:
    """Decide a payment as the worker does (the one-statement case first); its effects."""
    order = payments.parse({"request_id": request_id, "member_id": "ann", "amount": amount, "description": "Entry",
                            "organisation_id": "club", "route_code": "EVT", **extra}, settings)
    assert payments.pay_at_once(sessions.kw["bind"], order, settings) is None  # short of funds
    effects = charges.Effects()
    with sessions.begin() as session:
        row = payments.pay(session, order, settings)
        effects.collect(session)
    return row, effects


def account_of_ann(sessions: sessionmaker[Session]) -> int:
    with sessions.begin() as session:
        return profiles.get_member(session, "ann").account_id


def request(sessions: sessionmaker[Session], request_id: str = "r1") -> requests.Request:
    with sessions.begin() as session:
        return requests.get(session, request_id)


def attempts(sessions: sessionmaker[Session]) -> list[tuple[str, str, int]]:
    with sessions.begin() as session:
        return [(a.attempt_key, a.status, a.amount)
                for a in session.scalars(select(CardPayment).order_by(CardPayment.id))]


def entries(sessions: sessionmaker[Session]) -> list[tuple[str, str, int]]:
    """Every journal entry's key, type and what it moved to or from ann."""
    with sessions.begin() as session:
        return [tuple(r) for r in session.execute(text(
            "SELECT e.idempotency_key, e.type, p.amount FROM journal_entries e JOIN postings p ON p.entry_id = e.id"
            " JOIN members m ON m.account_id = p.account_id AND m.member_id = 'ann' ORDER BY e.id"))]


def callbacks(sessions: sessionmaker[Session]) -> list[tuple[str, str, str | None]]:
    with sessions.begin() as session:
        return [(m.payload["request_id"], m.payload["status"], m.payload["reason"])
                for m in session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "callback"))]


def waiting(sessions: sessionmaker[Session], settings: Settings, gateway: StripeGateway, browser: stripe.StripeClient,
            card: str = "4242424242424242", **extra: object) -> int:
    """Ann's payment r1 of 30.00 waiting for the sweep's top-up; the top-up's id."""
    ann_with_auto_top_up(sessions, gateway, browser, card)
    attempt_id = sweep_top_up(sessions, settings)
    row, effects = pay(sessions, settings, **extra)
    assert (row.status, row.result) == ("queued", {requests.WAITING: attempt_id})
    assert effects.charges == effects.checkouts == []  # no top-up of its own, no checkout
    return attempt_id


def test_a_payment_short_of_funds_waits_for_the_top_up_in_flight_and_opens_no_second(
    sessions, settings, gateway, browser
) -> None:
    attempt_id = waiting(sessions, settings, gateway, browser)
    assert attempts(sessions) == [("sweep:ann:1", "pending", 100_00)]
    assert entries(sessions) == [("fund-ann", "Manual Top Up", 10_00)]  # nothing booked
    assert callbacks(sessions) == []
    document = requests.status_document(request(sessions))
    assert (document["status"], document["waiting_for_top_up"]) == ("queued", attempt_id)
    # As the API's description says it (no field it does not describe).
    described = type("Described", (schemas.RequestStatus,), {"model_config": ConfigDict(extra="forbid")})
    assert described.model_validate(document).waiting_for_top_up == attempt_id


def test_when_the_top_up_succeeds_the_waiting_payment_is_paid_from_the_topped_up_balance(
    sessions, settings, gateway, browser
) -> None:
    attempt_id = waiting(sessions, settings, gateway, browser)
    charges.charge(sessions, gateway, settings, attempt_id)
    row = request(sessions)
    assert (row.status, row.reason, row.result) == ("paid", None, {})
    assert entries(sessions)[1:] == [("card:sweep:ann:1", "Auto Top Up", 100_00),
                                     ("payment:r1", "Miscellaneous", -30_00)]
    assert balance_of(sessions, account_of_ann(sessions)) == 80_00
    with sessions.begin() as session:
        assert session.scalar(text("SELECT sum(p.amount) FROM postings p JOIN organisations o"
                                   " ON o.account_id = p.account_id WHERE o.org_id = 'club'")) == 30_00
    assert callbacks(sessions) == [("r1", "success", None)]
    assert [a[:2] for a in attempts(sessions)] == [("sweep:ann:1", "succeeded")]


def test_when_the_top_up_fails_the_waiting_payment_is_declined_naming_it(sessions, settings, gateway, browser) -> None:
    attempt_id = waiting(sessions, settings, gateway, browser, card=DECLINED_AT_CHARGE)
    effects = charges.charge(sessions, gateway, settings, attempt_id)
    row = request(sessions)
    assert row.status == "declined"
    assert row.reason is not None and row.reason.startswith(f"auto top-up {attempt_id} failed: ")
    assert row.reason.endswith("; balance 10.00, needs 30.00")
    assert len(entries(sessions)) == 1  # only the opening 10.00
    assert callbacks(sessions) == [("r1", "failure", row.reason)]
    assert effects.checkouts == [] and [a[:2] for a in attempts(sessions)] == [("sweep:ann:1", "failed")]


def test_when_the_top_up_fails_a_payment_allowing_checkout_goes_on_to_a_checkout_for_the_shortfall(
    sessions, settings, gateway, browser
) -> None:
    attempt_id = waiting(sessions, settings, gateway, browser, card=DECLINED_AT_CHARGE, allow_checkout=True)
    effects = charges.charge(sessions, gateway, settings, attempt_id)
    assert attempts(sessions) == [("sweep:ann:1", "failed", 100_00), ("checkout:r1", "pending", 20_00)]
    assert request(sessions).result == {}  # no longer waiting for the top-up
    [checkout] = effects.checkouts
    charges.start_checkout(sessions, gateway, settings, checkout)
    document = requests.status_document(request(sessions))
    assert document["status"] == "awaiting_card" and document["checkout"]["amount"] == "20.00"
    assert "waiting_for_top_up" not in document and callbacks(sessions) == []


def test_the_top_up_for_another_payment_pays_that_payment_first_then_the_one_waiting(
    sessions, settings, gateway, browser
) -> None:
    ids = ann_with_auto_top_up(sessions, gateway, browser)
    first, effects = pay(sessions, settings, "r0", "150.00")
    [attempt_id] = effects.charges  # SPEC 4.2: 200.00 for 150.00 from 10.00
    row, _ = pay(sessions, settings)
    assert (row.status, row.result) == ("queued", {requests.WAITING: attempt_id})
    charges.charge(sessions, gateway, settings, attempt_id)
    assert (request(sessions, "r0").status, request(sessions).status) == ("paid", "paid")
    assert balance_of(sessions, ids["ann"]) == 10_00 + 200_00 - 150_00 - 30_00


def test_a_redelivered_payment_task_leaves_the_wait_as_it_is_and_the_redrive_leaves_it_alone(
    sessions, settings, gateway, browser
) -> None:
    with freeze_time(T0):
        attempt_id = waiting(sessions, settings, gateway, browser)
        before = request(sessions)
    with freeze_time(T0 + timedelta(seconds=90)):
        again, effects = pay(sessions, settings)
        assert (again.status, again.result, again.updated_at) == ("queued", {requests.WAITING: attempt_id},
                                                                  before.updated_at)
        assert effects.charges == effects.checkouts == [] and len(attempts(sessions)) == 1
        with sessions.begin() as session:  # stale for the redrive, which has one try only
            assert requests.take_stale(session, replace(settings, heal_max_tries=1), timedelta(seconds=60)) == []
        assert request(sessions).status == "queued" and callbacks(sessions) == []
    charges.charge(sessions, gateway, settings, attempt_id)  # and the outcome still decides it
    assert request(sessions).status == "paid"


def test_a_payment_waiting_past_the_deadline_is_decided_without_the_top_up(
    sessions, settings, gateway, browser
) -> None:
    with freeze_time(T0):
        attempt_id = waiting(sessions, settings, gateway, browser)
    with freeze_time(T0 + timedelta(seconds=119)):
        charges.end_waits(sessions, gateway, settings)
        assert request(sessions).status == "queued"
    with freeze_time(T0 + timedelta(seconds=121)):
        charges.end_waits(sessions, gateway, settings)
    row = request(sessions)
    assert (row.status, row.result) == ("declined", {})
    assert row.reason == f"auto top-up {attempt_id} did not finish within 120 s; balance 10.00, needs 30.00"
    assert callbacks(sessions) == [("r1", "failure", row.reason)]
    charges.charge(sessions, gateway, settings, attempt_id)  # the late top-up changes nothing for it
    assert request(sessions).status == "declined" and len(callbacks(sessions)) == 1


def test_the_deadline_is_a_setting_and_a_checkout_follows_it_when_allowed(sessions, settings, gateway, browser) -> None:
    assert Settings.from_env({"PAYMENTS_TOPUP_WAIT_SECONDS": "30"}).topup_wait_seconds == 30
    assert Settings.from_env({}).topup_wait_seconds == 120
    short = replace(settings, topup_wait_seconds=30)
    with freeze_time(T0):
        waiting(sessions, short, gateway, browser, allow_checkout=True)
    with freeze_time(T0 + timedelta(seconds=31)):
        effects = charges.end_waits(sessions, gateway, short)
    assert effects.outbox == []
    document = requests.status_document(request(sessions))
    assert (document["status"], document["checkout"]["amount"]) == ("awaiting_card", "20.00")


def test_a_top_up_that_ended_without_deciding_its_waiting_payment_is_found_by_the_redrive_job(
    sessions, settings, gateway, browser
) -> None:
    """The outcome skips a waiting payment another process holds; the job decides it at once."""
    attempt_id = waiting(sessions, settings, gateway, browser)
    with sessions.begin() as session:
        topups.fail_attempt(session, topups.lock_attempt(session, attempt_id), "card declined")
    charges.end_waits(sessions, gateway, settings)
    row = request(sessions)
    assert row.status == "declined" and row.reason is not None
    assert row.reason.startswith(f"auto top-up {attempt_id} failed: card declined")



def test_a_redelivered_payment_task_after_the_top_up_ended_unseen_ends_the_wait_and_opens_no_top_up(
    sessions, settings, gateway, browser
) -> None:
    attempt_id = waiting(sessions, settings, gateway, browser)
    with sessions.begin() as session:  # its outcome skipped the payment (held by another process)
        topups.fail_attempt(session, topups.lock_attempt(session, attempt_id), "card declined")
        session.get(Member, "ann").auto_topup_status = "on"  # and a new card saved since
    row, effects = pay(sessions, settings)
    assert row.status == "declined" and effects.charges == []
    assert row.reason == f"auto top-up {attempt_id} failed: card declined; balance 10.00, needs 30.00"
    assert [a[0] for a in attempts(sessions)] == ["sweep:ann:1"]


def test_a_redelivered_payment_task_pays_a_waiting_payment_the_balance_now_covers_in_one_statement(
    sessions, settings, gateway, browser
) -> None:
    waiting(sessions, settings, gateway, browser)
    with sessions.begin() as session:
        top_up(session, account_of_ann(sessions), 50_00, "more")
    order = payments.parse({"request_id": "r1", "member_id": "ann", "amount": "30.00", "description": "Entry",
                            "organisation_id": "club", "route_code": "EVT"}, settings)
    assert payments.pay_at_once(sessions.kw["bind"], order, settings) is not None
    row = request(sessions)
    assert (row.status, row.result) == ("paid", None)
    assert "waiting_for_top_up" not in requests.status_document(row)


def test_a_wait_the_job_cannot_end_is_backed_off_and_fails_with_its_callback_after_the_last_try(
    sessions, settings, gateway, browser, monkeypatch
) -> None:
    once = replace(settings, heal_max_tries=1, topup_wait_seconds=1)
    with freeze_time(T0):
        waiting(sessions, once, gateway, browser)

    def broken(*args: object) -> None:
        raise RuntimeError("boom")
    monkeypatch.setattr(payments, "end_wait", broken)
    with freeze_time(T0 + timedelta(seconds=5)):
        effects = charges.end_waits(sessions, gateway, once)
    row = request(sessions)
    assert (row.status, row.reason) == ("failed", "not decided after 1 tries (RuntimeError: boom)")
    assert callbacks(sessions) == [("r1", "failure", row.reason)] and len(effects.outbox) == 1


def test_a_transfer_to_another_member_short_of_funds_waits_too_and_is_paid_when_the_top_up_lands(
    sessions, settings, gateway, browser
) -> None:
    """A transfer between members is decided as a payment to the other member (ORIGINAL 2.8),
    so it waits for the sender's top-up in flight as a payment does."""
    ann_with_auto_top_up(sessions, gateway, browser)
    with sessions.begin() as session:
        add_member(session, "bob", "Bob", "Ray")
    attempt_id = sweep_top_up(sessions, settings)
    order = transfers.parse({"request_id": "t1", "from_member_id": "ann", "to_member_id": "bob", "amount": "30.00",
                             "description": "Half the taxi"}, settings)
    with sessions.begin() as session:
        row = transfers.transfer(session, order, settings)
    assert (row.status, row.result) == ("queued", {requests.WAITING: attempt_id})
    with sessions.begin() as session:  # a redelivered task leaves it waiting and opens nothing
        assert transfers.transfer(session, order, settings).result == {requests.WAITING: attempt_id}
    charges.charge(sessions, gateway, settings, attempt_id)
    assert (request(sessions, "t1").status, request(sessions, "t1").result) == ("paid", {})
    assert entries(sessions)[1:] == [("card:sweep:ann:1", "Auto Top Up", 100_00),
                                     ("transfer:t1", "Member Transfer", -30_00)]
