"""Transfers as the original booked them (ORIGINAL 2.7 and 2.8; issue 13 items 1, 2 and 6),
decided by shared.transfers on PostgreSQL: each type in its direction, event and session ids
on the entry, an event's refund below zero only when asked, a transfer between members short
of funds going to the sender's cards, and who is e-mailed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger, outbox, payments, requests, topups, transfers
from shared.config import Settings
from shared.errors import InvalidInput
from shared.ledger import Entry, Line
from shared.schema import upgrade
from shared.models import CardPayment, EntryType, Member, OutboxMessage
from tests.integration.helpers import add_member, add_organisation, balance_of, top_up
from tests.integration.test_outbox import smtp_server  # noqa: F401 (a fixture: a real local SMTP server)


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions.begin() as session:
        ids = {
            "ann": add_member(session, "ann"),
            "bob": add_member(session, "bob", "Bob", "Ray"),
            "club": add_organisation(session, "club"),
            "other": add_organisation(session, "other", "South Club"),
        }
        top_up(session, ids["ann"], 100_00, "fund-ann")
        top_up(session, ids["club"], 50_00, "fund-club")
    return ids


def order(**overrides: object) -> transfers.TransferOrder:
    body = {"request_id": "t1", "from_organisation_id": "club", "to_member_id": "ann", "amount": "20.00",
            "description": "Congress refund", **overrides}
    return transfers.parse({k: v for k, v in body.items() if v is not None}, Settings())


def run(sessions: sessionmaker[Session], o: transfers.TransferOrder) -> requests.Request:
    with sessions.begin() as session:
        return transfers.transfer(session, o, Settings())


def booked(sessions: sessionmaker[Session], request_id: str) -> dict[str, object]:
    """The transfer's journal entry, with each side's posting by owner."""
    with sessions.begin() as session:
        entry = session.execute(text(
            "SELECT id, type, event_id, session_id FROM journal_entries WHERE idempotency_key = :key"
        ), {"key": f"transfer:{request_id}"}).one()
        sides = dict(session.execute(text(
            "SELECT a.owner, p.amount FROM postings p JOIN accounts a ON a.id = p.account_id WHERE p.entry_id = :id"
        ), {"id": entry.id}).all())
    return {"type": entry.type, "event_id": entry.event_id, "session_id": entry.session_id, "sides": sides}


def emails(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions.begin() as session:
        return [(m.payload["to"], m.payload["subject"]) for m in session.scalars(
            select(OutboxMessage).where(OutboxMessage.kind == "notification").order_by(OutboxMessage.id))]


# Types and directions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payment_type", "subject"),
    [
        (None, "Transfer from North Shore Bridge Club"),  # Org Transfer, the default
        ("Org Transfer", "Transfer from North Shore Bridge Club"),
        ("Club Top Up", "Top up from North Shore Bridge Club"),
        ("Refund", "Refund from North Shore Bridge Club"),
        ("Club Membership", "Payment from North Shore Bridge Club"),
        ("Miscellaneous", "Payment from North Shore Bridge Club"),
    ],
)
def test_an_organisation_pays_a_member_under_each_of_its_types_with_ids_on_the_entry_and_an_email(
    sessions, world, payment_type, subject
) -> None:
    row = run(sessions, order(payment_type=payment_type, event_id="EV-9", session_id="S-3"))
    assert row.status == "paid"
    assert booked(sessions, "t1") == {"type": payment_type or "Org Transfer", "event_id": "EV-9", "session_id": "S-3",
                                      "sides": {"club": -20_00, "ann": 20_00}}
    assert emails(sessions) == [("ann@example.org", subject)]
    with sessions.begin() as session:
        [message] = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "notification")).all()
    assert "20.00" in message.payload["body"] and "Congress refund" in message.payload["body"]


def test_the_members_e_mail_arrives_through_smtp_as_the_original_worded_it(sessions, world, smtp_server) -> None:
    controller, inbox = smtp_server
    run(sessions, order(description="Prize, Tuesday pairs"))
    with sessions.begin() as session:
        [outbox_id] = session.scalars(select(OutboxMessage.id).where(OutboxMessage.kind == "notification")).all()
    config = Settings(smtp_url=f"smtp://127.0.0.1:{controller.port}?from=payments@federation.example")
    assert outbox.deliver(sessions, outbox_id, config, lambda *args: None) == ("sent", None)
    [mail] = inbox.messages
    assert mail.rcpt_tos == ["ann@example.org"]
    text = mail.content.decode()
    assert "Subject: Transfer from North Shore Bridge Club" in text
    assert "North Shore Bridge Club transferred 20.00 to you: Prize, Tuesday pairs." in text


def test_an_organisation_pays_another_organisation_as_an_org_transfer_and_no_one_is_e_mailed(sessions, world) -> None:
    row = run(sessions, order(to_member_id=None, to_organisation_id="other", session_id="S-3"))
    assert row.status == "paid"
    assert booked(sessions, "t1") == {"type": "Org Transfer", "event_id": None, "session_id": "S-3",
                                      "sides": {"club": -20_00, "other": 20_00}}
    assert emails(sessions) == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"payment_type": "Member Transfer"}, "payment_type"),  # organisation -> member
        ({"payment_type": "Club Top Up Rev"}, "payment_type"),  # that is member -> organisation
        ({"payment_type": "Settlement"}, "payment_type"),
        ({"payment_type": ["Refund"]}, "payment_type"),
        ({"to_member_id": None, "to_organisation_id": "other", "payment_type": "Refund"}, "payment_type"),
        ({"from_organisation_id": None, "from_member_id": "bob", "payment_type": "Org Transfer"}, "payment_type"),
        ({"allow_negative": True}, "allow_negative"),  # not a refund
        ({"payment_type": "Refund", "session_id": "S-3", "allow_negative": True}, "allow_negative"),  # no event
        ({"payment_type": "Refund", "event_id": "EV-9", "allow_negative": "yes"}, "allow_negative"),
        ({"allow_checkout": True}, "allow_checkout"),  # an organisation has no card
        ({"event_id": "bad id"}, "event_id"),
    ],
)
def test_a_transfer_in_the_wrong_direction_or_with_a_flag_it_may_not_have_names_the_field(overrides, field) -> None:
    with pytest.raises(InvalidInput) as caught:
        order(**overrides)
    assert caught.value.field == field


def test_a_transfer_stored_before_types_were_added_keeps_its_payload_and_hash() -> None:
    """Unset new fields are left out of the stored form, so an older stored transfer replays."""
    plain = order(from_organisation_id=None, from_member_id="bob")
    assert plain.payload() == {"request_id": "t1", "amount": "20.00", "description": "Congress refund",
                               "from_member_id": "bob", "from_organisation_id": None, "to_member_id": "ann",
                               "to_organisation_id": None}
    assert transfers.TransferOrder.from_payload(plain.payload()) == plain


# An event's refund below zero ----------------------------------------------------------------


def test_an_event_refund_takes_the_organisation_below_zero_only_when_the_request_says_so(sessions, world) -> None:
    refund = {"payment_type": "Refund", "event_id": "EV-9", "amount": "80.00"}
    refused = run(sessions, order(**refund))
    assert (refused.status, refused.reason) == ("declined", "organisation club: balance 50.00, needs 80.00")
    row = run(sessions, order(request_id="t2", allow_negative=True, **refund))
    assert row.status == "paid"
    assert balance_of(sessions, world["club"]) == -30_00
    assert balance_of(sessions, world["ann"]) == 180_00
    assert booked(sessions, "t2")["event_id"] == "EV-9"


def test_a_session_refund_needs_the_organisations_money(sessions, world) -> None:
    row = run(sessions, order(payment_type="Refund", session_id="S-3", amount="50.01"))
    assert row.status == "declined"
    assert balance_of(sessions, world["club"]) == 50_00


def test_the_database_refuses_a_refund_below_zero_that_debits_a_member(sessions, world) -> None:
    """Defence in depth: even a caller past `ledger._validate`'s type check cannot overdraw a member."""
    entry = Entry("refund-x", EntryType.REFUND, "Not a refund", (Line(world["ann"], -500_00), Line(world["bob"], 500_00)),
                  event_id="EV-9", allow_negative=True)
    with pytest.raises(DBAPIError, match="debiting no member"), sessions.begin() as session:
        ledger.post(session, entry)
    assert balance_of(sessions, world["ann"]) == 100_00


def test_the_portable_ledger_refuses_a_refund_below_zero_that_debits_a_member(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lite.db'}"
    upgrade(url)  # the schema as `payments db upgrade` makes it (with the running sums' trigger)
    engine = create_engine(url)
    lite = sessionmaker(engine)
    with lite.begin() as session:
        ann, club = add_member(session, "ann"), add_organisation(session, "club")
    with pytest.raises(InvalidInput, match="never take a member below zero"), lite.begin() as session:
        ledger.post(session, Entry("r1", EntryType.REFUND, "x", (Line(ann, -5_00), Line(club, 5_00)), event_id="E",
                                   allow_negative=True))
    with lite.begin() as session:
        ledger.post(session, Entry("r2", EntryType.REFUND, "Event refund", (Line(club, -5_00), Line(ann, 5_00)),
                                   event_id="E", allow_negative=True))
        assert ledger.balance(session, club) == -5_00


# Between members: short of funds, the sender's cards (ORIGINAL 2.8) ---------------------------


def member_order(**overrides: object) -> transfers.TransferOrder:
    return order(from_organisation_id=None, from_member_id="ann", to_member_id="bob", description="Half the taxi",
                 **overrides)


def test_a_transfer_between_members_is_a_member_transfer_and_e_mails_both(sessions, world) -> None:
    assert run(sessions, member_order(session_id="S-3")).status == "paid"
    assert booked(sessions, "t1") == {"type": "Member Transfer", "event_id": None, "session_id": "S-3",
                                      "sides": {"ann": -20_00, "bob": 20_00}}
    assert emails(sessions) == [("ann@example.org", "Transfer to Bob Ray"), ("bob@example.org", "Transfer from Ann Lee")]


def test_a_transfer_short_of_funds_without_cards_is_declined_and_books_nothing(sessions, world) -> None:
    row = run(sessions, member_order(amount="150.00"))
    assert (row.status, row.reason) == ("declined", "insufficient funds: balance 100.00, needs 150.00")
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["bob"])) == (100_00, 0)
    assert emails(sessions) == []


def test_a_transfer_short_of_funds_with_auto_top_up_on_charges_the_senders_card_then_transfers(sessions, world) -> None:
    with sessions.begin() as session:
        member = session.get(Member, "ann")
        member.auto_topup_status, member.stripe_customer_id = "on", "cus_ann"
    with sessions.begin() as session:
        row = transfers.transfer(session, member_order(amount="150.00"), Settings())
        assert row.status == "queued" and session.info["charges"]  # the card is charged after commit
    with sessions.begin() as session:
        [attempt] = session.scalars(select(CardPayment)).all()
        assert (attempt.kind, attempt.amount, attempt.request_id) == ("auto_topup", 150_00, "t1")  # SPEC 4.2
        topups.book_card_money(session, attempt, payment_intent_id="pi_test_1")
        payments.card_money_arrived(session, attempt, Settings())
        assert requests.get(session, "t1").status == "paid"
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["bob"])) == (100_00, 150_00)
    assert booked(sessions, "t1")["type"] == "Member Transfer"
    assert ("bob@example.org", "Transfer from Ann Lee") in emails(sessions)


def test_a_transfer_short_of_funds_whose_top_up_fails_goes_to_a_checkout_when_allowed(sessions, world) -> None:
    with sessions.begin() as session:
        member = session.get(Member, "ann")
        member.auto_topup_status, member.stripe_customer_id = "on", "cus_ann"
    with sessions.begin() as session:
        transfers.transfer(session, member_order(amount="150.00", allow_checkout=True), Settings())
    with sessions.begin() as session:
        [attempt] = session.scalars(select(CardPayment)).all()
        payments.card_failed(session, attempt, "card declined", Settings())
        checkout = session.scalars(select(CardPayment).where(CardPayment.kind == "checkout")).one()
        assert (checkout.amount, checkout.request_id) == (50_00, "t1")
        topups.book_card_money(session, checkout, payment_intent_id="pi_test_2")
        payments.card_money_arrived(session, checkout, Settings())
        assert requests.get(session, "t1").status == "paid"
    assert (balance_of(sessions, world["ann"]), balance_of(sessions, world["bob"])) == (0, 150_00)


def test_a_transfer_short_of_funds_with_checkout_allowed_waits_for_the_card(sessions, world) -> None:
    with sessions.begin() as session:
        row = transfers.transfer(session, member_order(amount="150.00", allow_checkout=True), Settings())
        assert row.status == "queued" and session.info["checkouts"]
    with sessions.begin() as session:
        [attempt] = session.scalars(select(CardPayment)).all()
        assert (attempt.kind, attempt.amount) == ("checkout", 50_00)
    assert balance_of(sessions, world["bob"]) == 0


def test_a_transfer_between_members_above_the_cap_is_refused() -> None:
    with pytest.raises(InvalidInput, match="above the maximum 2000.00"):
        member_order(amount="2000.01")


@pytest.mark.parametrize("source, target", [("ann", "ann"), (5, "5")], ids=["same", "a number and its digits"])
def test_a_transfer_to_the_same_account_is_refused_naming_the_target(source: object, target: object) -> None:
    with pytest.raises(InvalidInput, match="cannot transfer to the same account") as refused:
        order(from_organisation_id=None, from_member_id=source, to_member_id=target)
    assert refused.value.field == "to_member_id"
