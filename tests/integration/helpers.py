"""Small builders for integration tests: members, organisations and bookings in one line."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger, profiles
from shared.ledger import Booking, Entry, Line
from shared.models import EntryType, SystemAccount
from shared.profiles import MemberDetails, OrganisationDetails


def add_member(session: Session, member_id: str, first: str = "Ann", last: str = "Lee") -> int:
    """Create a member; returns the member's account id."""
    member, _ = profiles.put_member(
        session,
        member_id,
        MemberDetails(email=f"{member_id}@example.org", first_name=first, last_name=last),
        default_topup_amount=100_00,
    )
    return member.account_id


def add_organisation(session: Session, org_id: str, name: str = "North Shore Bridge Club") -> int:
    org, _ = profiles.put_organisation(session, org_id, OrganisationDetails(name=name))
    return org.account_id


def top_up(session: Session, account_id: int, cents: int, key: str) -> Booking:
    """Card money in: `stripe` pays the account (the top-up shape)."""
    stripe = profiles.system_account(session, SystemAccount.STRIPE)
    return ledger.post(
        session,
        Entry(key, EntryType.MANUAL_TOP_UP, "Top up", (Line(account_id, cents), Line(stripe, -cents))),
    )


def pay(session: Session, payer: int, payee: int, cents: int, key: str, **extra: object) -> Booking:
    return ledger.post(
        session,
        Entry(key, EntryType.CLUB_PAYMENT, "Table money", (Line(payer, -cents), Line(payee, cents)), **extra),  # type: ignore[arg-type]
    )


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a client's token."""
    return {"Authorization": f"Bearer {token}"}


def balance_of(sessions: sessionmaker[Session], account_id: int) -> int:
    with sessions.begin() as session:
        return ledger.balance(session, account_id)


def at_once(*calls: Callable[[], Any]) -> list[BaseException]:
    """Run the calls in threads released together; the exceptions they raised."""
    gate, errors = threading.Barrier(len(calls)), []

    def run(call: Callable[[], Any]) -> None:
        gate.wait()
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def deadlocks(database_url: str) -> int:
    """PostgreSQL's count of deadlocks in the database so far."""
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]
