"""Work that two processes could start at once on the same thing, found by the fault suite:
settlements naming several organisations in different orders (a lock-order deadlock), and an
open card attempt healed by two callers at once (a double charge)."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from shared import charges, db, ledger, outbox, profiles, settlements, topups
from shared.config import Settings, parse_routes
from shared.ledger import Entry, Line
from shared.models import EntryType, Member, SystemAccount, utcnow
from shared.profiles import OrganisationDetails
from shared.stripe_gateway import StripeGateway
from tests.conftest import API_TOKEN
from tests.integration.helpers import add_member, at_once, deadlocks
from tests.stripe_fixture import STRIPE_TEST_KEY, browser_for, customer_with_card




def test_settlements_of_the_same_organisations_in_opposite_orders_never_deadlock(
    sessions: sessionmaker[Session], database_url: str
) -> None:
    config = Settings(database_url=database_url)
    with sessions.begin() as session:
        adjustments = profiles.system_account(session, SystemAccount.ADJUSTMENTS)
        for org_id in ("a", "b"):
            org, _ = profiles.put_organisation(session, org_id, OrganisationDetails(name=org_id))
            lines = (Line(org.account_id, 1000_00), Line(adjustments, -1000_00))
            ledger.post(session, Entry(f"seed:{org_id}", EntryType.MANUAL_ADJUSTMENT, "Seed", lines, admin_id="admin"),
                        now=utcnow() - timedelta(days=40))
    today = utcnow().astimezone(config.time_zone).date()
    before = deadlocks(database_url)

    def settle(request_id: str, org_ids: list[str], day: str):
        order = settlements.parse({"request_id": request_id, "reference_date": day, "organisations": [
            {"organisation_id": org_id, "override_amount": "1.00"} for org_id in org_ids]}, config)

        def run() -> None:
            with sessions.begin() as session:
                settlements.settle(session, order, config)
        return run

    errors = []
    for n in range(5, 25):
        day = (today - timedelta(days=n)).isoformat()
        errors += at_once(settle(f"s{n}-ab", ["a", "b"], day), settle(f"s{n}-ba", ["b", "a"], day))
    assert errors == [] and deadlocks(database_url) == before


def test_an_open_card_attempt_healed_by_two_callers_at_once_is_charged_once(
    sessions: sessionmaker[Session], database_url: str, stripe_api: str
) -> None:
    config = Settings(database_url=database_url, stripe_api_key=STRIPE_TEST_KEY, stripe_api_base=stripe_api)
    gateway = StripeGateway(config)
    browser = browser_for(stripe_api)
    keys = []
    for n in range(8):
        member_id, request_id = f"heal-{n}", f"heal-{n}-{utcnow():%H%M%S%f}"
        customer = customer_with_card(gateway, browser, member_id)
        with sessions.begin() as session:
            add_member(session, member_id)
            session.get(Member, member_id).stripe_customer_id = customer
            # What a worker killed after committing a saved-card top-up's attempt, before Stripe
            # answered, leaves.
            order = topups.parse_topup({"request_id": request_id, "member_id": member_id, "amount": "60.00",
                                        "use_saved_card": True}, config)
            topups.topup(session, order, config)
            [attempt_id] = session.info.pop("charges")
            attempt = topups.lock_attempt(session, attempt_id)
            attempt.tries = 1
            key = attempt.attempt_key
        heal = lambda attempt_id=attempt_id: charges.charge(sessions, gateway, config, attempt_id)  # noqa: E731
        assert at_once(heal, heal) == []
        keys.append(key)

    charged = [intent.metadata.to_dict().get("attempt_key")
               for intent in browser.v1.payment_intents.list({"limit": 100}).auto_paging_iter()
               if intent.status == "succeeded"]
    assert {key: charged.count(key) for key in keys} == {key: 1 for key in keys}


def test_exclusive_is_held_by_one_process_at_a_time_and_released_after(sessions: sessionmaker[Session]) -> None:
    with db.exclusive(sessions, "thing-1") as first:
        with db.exclusive(sessions, "thing-1") as second, db.exclusive(sessions, "thing-2") as other:
            assert (first, second, other) == (True, False, True)
    with db.exclusive(sessions, "thing-1") as again:
        assert again


def test_one_outbox_row_delivered_by_two_processes_at_once_is_sent_once(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        outbox_id = outbox.add_callback(session, request_id="r1", kwargs={"request_id": "r1", "route_code": "EVT"})
    sent: list[str] = []
    outcomes: list[str] = []

    def slow_send(name: str, kwargs: dict, queue: str) -> None:
        """The broker, answering only once the other process has given up (or after 10 s)."""
        sent.append(kwargs["request_id"])
        deadline = time.monotonic() + 10
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.01)

    config = Settings(callback_routes=parse_routes("EVT=events.done@events"), api_token=API_TOKEN)
    deliver = lambda: outcomes.append(outbox.deliver(sessions, outbox_id, config, slow_send)[0])  # noqa: E731
    assert at_once(deliver, deliver) == []
    assert sorted(outcomes) == ["sent", "skipped"] and sent == ["r1"]


def test_a_row_whose_sender_died_after_claiming_it_is_due_again_at_once(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        outbox_id = outbox.add_callback(session, request_id="r1", kwargs={"request_id": "r1"})
    with sessions.begin() as session:
        assert outbox.claim(session, outbox_id) is not None  # ... and the sender dies here
    with sessions.begin() as session:
        assert outbox.due(session) == [outbox_id]
