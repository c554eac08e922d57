"""SPEC 5 settlements on PostgreSQL: money is settled once whatever the order of the reference
dates, an override is at most the net, and two settlements of one organisation at once are
decided one after the other."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger, profiles, settlements
from shared.config import Settings
from shared.ledger import Entry, Line
from shared.models import EntryType, SystemAccount
from shared.profiles import OrganisationDetails

SEPTEMBER, OCTOBER = "2025-09-30", "2025-10-31"


@pytest.fixture
def club(sessions: sessionmaker[Session]) -> int:
    """Takings of 1000.00 in September, 500.00 in October and 2000.00 in November 2025 (after both
    reference dates); the club keeps a minimum of 100.00."""
    with sessions.begin() as session:
        org, _ = profiles.put_organisation(
            session, "club", OrganisationDetails(name="North Shore", minimum_balance_after_settlement=100_00)
        )
        members = profiles.system_account(session, SystemAccount.STRIPE)
        for key, cents, day in (("sep", 1000_00, 15), ("oct", 500_00, 15), ("nov", 2000_00, 15)):
            month = {"sep": 9, "oct": 10, "nov": 11}[key]
            ledger.post(
                session,
                Entry(f"takings:{key}", EntryType.CLUB_PAYMENT, "Table money",
                      (Line(org.account_id, cents), Line(members, -cents))),
                now=datetime(2025, month, day, 2, 0, tzinfo=UTC),
            )
        return org.account_id


def settle(sessions: sessionmaker[Session], request_id: str, day: str, override: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"organisation_id": "club"}
    if override is not None:
        item["override_amount"] = override
    order = settlements.parse({"request_id": request_id, "reference_date": day, "organisations": [item]}, Settings())
    with sessions.begin() as session:
        row = settlements.settle(session, order, Settings())
        assert row.result is not None
        result: dict[str, Any] = row.result["organisations"][0]
        return result


def settled_to_bank(sessions: sessionmaker[Session]) -> int:
    """The nets paid out: what the bank and the fees received."""
    with sessions.begin() as session:
        return sum(ledger.balance(session, profiles.system_account(session, a)) for a in (SystemAccount.BANK, SystemAccount.FEES))


def test_september_then_october_on_one_day_settles_the_takings_less_the_minimum_once(sessions, club) -> None:
    september = settle(sessions, "s-sep", SEPTEMBER)
    october = settle(sessions, "s-oct", OCTOBER)
    assert (september["status"], september["gross"], september["net"]) == ("settled", "1000.00", "900.00")
    # October's gross is its balance (1500.00) less the 900.00 September's settlement took today.
    assert (october["status"], october["gross"], october["net"]) == ("settled", "600.00", "500.00")
    assert settled_to_bank(sessions) == 1500_00 - 100_00
    assert ledger_balance(sessions, club) == 100_00 + 2000_00  # the minimum and November's takings


def test_october_then_september_refuses_september_in_its_organisation_result(sessions, club) -> None:
    october = settle(sessions, "s-oct", OCTOBER)
    september = settle(sessions, "s-sep", SEPTEMBER)
    assert (october["status"], october["net"]) == ("settled", "1400.00")
    assert september["status"] == "failed"
    assert september["reason"] == (
        "reference_date: organisation club is settled to 2025-10-31; 2025-09-30 is not after it"
    )
    assert settled_to_bank(sessions) == 1400_00


def test_the_same_date_again_is_already_settled_not_refused(sessions, club) -> None:
    first = settle(sessions, "s-1", OCTOBER)
    again = settle(sessions, "s-2", OCTOBER)
    assert again == {"organisation_id": "club", "status": "already_settled", "entry_id": first["entry_id"]}
    assert settled_to_bank(sessions) == 1400_00


@pytest.mark.parametrize("override", ["900.01", "1000.00", "3600.00"])
def test_an_override_above_the_net_is_refused_and_books_nothing(sessions, club, override) -> None:
    result = settle(sessions, "s-sep", SEPTEMBER, override=override)
    assert result == {
        "organisation_id": "club",
        "status": "failed",
        "reason": f"override_amount: {override} is more than the net 900.00",
    }
    assert settled_to_bank(sessions) == 0


def test_an_override_up_to_the_net_is_settled(sessions, club) -> None:
    assert settle(sessions, "s-sep", SEPTEMBER, override="900.00")["status"] == "settled"
    assert settle(sessions, "s-oct", OCTOBER, override="200.00")["net"] == "200.00"
    assert settled_to_bank(sessions) == 1100_00


def test_a_stored_order_for_a_date_that_has_not_ended_is_refused_when_settled(sessions, club) -> None:
    tomorrow = datetime.now(UTC).astimezone(Settings().time_zone).date().toordinal() + 1
    order = settlements.SettlementOrder("s-future", datetime.fromordinal(tomorrow).date(), (("club", None),))
    with sessions.begin() as session:
        row = settlements.settle(session, order, Settings())
    assert row.result is not None
    assert row.result["organisations"][0]["status"] == "failed"
    assert "has not ended yet" in row.result["organisations"][0]["reason"]
    assert settled_to_bank(sessions) == 0


@pytest.mark.parametrize("rounds", range(3))
def test_two_dates_of_one_organisation_settled_at_once_settle_the_money_once(sessions, club, rounds) -> None:
    barrier = threading.Barrier(2)
    results: dict[str, dict[str, Any]] = {}

    def run(request_id: str, day: str) -> None:
        barrier.wait(timeout=10)
        results[day] = settle(sessions, request_id, day)

    threads = [threading.Thread(target=run, args=(f"s-{day}", day)) for day in (SEPTEMBER, OCTOBER)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 2
    # Whichever went first, the takings to October less the minimum are settled exactly once.
    assert settled_to_bank(sessions) == 1500_00 - 100_00
    assert results[OCTOBER]["status"] == "settled"
    assert results[SEPTEMBER]["status"] in ("settled", "failed")


def ledger_balance(sessions: sessionmaker[Session], account_id: int) -> int:
    with sessions.begin() as session:
        return ledger.balance(session, account_id)
