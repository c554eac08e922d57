"""Every journal entry records the client whose request booked it (CONTRACT "Clients and
scopes"; migration 0011): requests made over HTTP by a stored client or by the bootstrap client
`admin`, decided as the worker decides them; the one-statement `pay_request` path too. Migration
0011 goes down to 0010 and up again with a runtime role still able to book."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared import access, ledger, payments, profiles, refunds, requests, settlements, topups, transfers
from shared.config import Settings
from shared.ledger import Entry, Line
from shared.models import CardPaymentKind, EntryType, SystemAccount, utcnow
from shared.schema import alembic_config, grant_runtime, upgrade
from tests.conftest import API_TOKEN, PG_ADMIN_URL

ADMIN = {"Authorization": f"Bearer {API_TOKEN}"}


def client_of(sessions: sessionmaker[Session], key: str) -> str | None:
    with sessions.begin() as session:
        found = session.execute(text("SELECT client FROM journal_entries WHERE idempotency_key = :key"),
                                {"key": key}).one()
    return found.client


@pytest.fixture
def tokens(client: FlaskClient, sessions: sessionmaker[Session]) -> dict[str, str]:
    """Members ann and bob with money, organisation club with money booked three days ago; the
    stored clients portal (payments) and staff (admin)."""
    for member in ("ann", "bob"):
        body = {"email": f"{member}@example.org", "first_name": member.title(), "last_name": "Lee"}
        assert client.put(f"/api/members/{member}", json=body, headers=ADMIN).status_code == 201
    assert client.put("/api/organisations/club", json={"name": "Club"}, headers=ADMIN).status_code == 201
    with sessions.begin() as session:
        ann = profiles.get_member(session, "ann").account_id
        club = profiles.get_organisation(session, "club").account_id
        stripe = profiles.system_account(session, SystemAccount.STRIPE)
        ledger.post(session, Entry("seed-ann", EntryType.MANUAL_TOP_UP, "Seed", (Line(ann, 100_00), Line(stripe, -100_00))))
        ledger.post(session, Entry("seed-club", EntryType.MISCELLANEOUS, "Seed", (Line(club, 50_00), Line(stripe, -50_00))),
                    now=utcnow() - timedelta(days=3))
        return {"portal": access.add(session, "portal", ["payments"]).token,
                "staff": access.add(session, "staff", ["admin"]).token}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_each_booking_made_over_http_records_the_client_that_asked(client, sessions, engine, tokens) -> None:
    settings = Settings()
    adjustment = {"member_id": "bob", "amount": "5.00", "description": "Goodwill", "admin_id": "someone-else"}
    for request_id, headers in (("adj-staff", bearer(tokens["staff"])), ("adj-admin", ADMIN)):
        assert client.post("/api/adjustments", json={"request_id": request_id, **adjustment},
                           headers=headers).status_code == 201
    payment = {"member_id": "ann", "amount": "10.00", "description": "Entry", "organisation_id": "club"}
    for request_id in ("pay-general", "pay-at-once"):
        assert client.post("/api/payments", json={"request_id": request_id, **payment},
                           headers=bearer(tokens["portal"])).status_code == 202
    transfer = {"request_id": "tr-1", "from_member_id": "ann", "to_member_id": "bob", "amount": "1.00",
                "description": "Lunch"}
    assert client.post("/api/transfers", json=transfer, headers=bearer(tokens["portal"])).status_code == 202
    day = (utcnow() - timedelta(days=2)).date().isoformat()
    settlement = {"request_id": "set-1", "reference_date": day, "organisations": [{"organisation_id": "club"}]}
    assert client.post("/api/settlements", json=settlement, headers=bearer(tokens["staff"])).status_code == 202

    # Decided as the worker decides them, from the stored requests.
    with sessions.begin() as session:
        order = payments.PaymentOrder.from_payload(requests.get(session, "pay-at-once").payload)
    assert payments.pay_at_once(engine, order, settings) == []
    with sessions.begin() as session:
        payments.pay(session, payments.PaymentOrder.from_payload(requests.get(session, "pay-general").payload), settings)
        transfers.transfer(session, transfers.TransferOrder.from_payload(requests.get(session, "tr-1").payload), settings)
        row = settlements.settle(session, settlements.SettlementOrder.from_payload(
            requests.get(session, "set-1").payload), settings)
    assert row.result["organisations"][0]["status"] == "settled"

    assert client_of(sessions, "adjustment:adj-staff") == "staff"  # the token's client, not the admin_id
    assert client_of(sessions, "adjustment:adj-admin") == "admin"
    assert client_of(sessions, "payment:pay-general") == "portal"
    assert client_of(sessions, "payment:pay-at-once") == "portal"
    assert client_of(sessions, "transfer:tr-1") == "portal"
    assert client_of(sessions, f"settlement:club:{day}") == "staff"
    assert client_of(sessions, "seed-ann") is None  # booked with no requesting client


def test_pay_at_once_records_the_client_of_a_new_request_and_leaves_another_clients_request_to_pay(
    client, sessions, engine, tokens
) -> None:
    settings = Settings()
    body = {"member_id": "ann", "amount": "2.00", "description": "Tea", "organisation_id": "club"}
    assert payments.pay_at_once(engine, payments.parse({"request_id": "new-1", **body}, settings), settings,
                                client="portal") == []
    assert payments.pay_at_once(engine, payments.parse({"request_id": "new-2", **body}, settings), settings) == []
    with sessions.begin() as session:
        assert (requests.get(session, "new-1").client, requests.get(session, "new-2").client) == ("portal", None)
    assert (client_of(sessions, "payment:new-1"), client_of(sessions, "payment:new-2")) == ("portal", None)

    assert client.post("/api/payments", json={"request_id": "mine", **body}, headers=bearer(tokens["portal"])).status_code == 202
    order = payments.parse({"request_id": "mine", **body}, settings)
    assert payments.pay_at_once(engine, order, settings, client="staff") is None  # not the plain case: untouched
    with sessions.begin() as session:
        assert requests.get(session, "mine").status == "queued"


def test_card_money_records_the_client_of_its_request_and_a_refund_the_client_of_its_own(sessions, tokens) -> None:
    """No Stripe call is needed: card money is booked as the webhook reports it, and a refund
    is booked before it is sent to the card."""
    settings = Settings()
    with sessions.begin() as session:
        order = topups.parse_topup({"request_id": "top-1", "member_id": "ann", "amount": "60.00"}, settings)
        topups.record_topup(session, order, client="portal")
        asked = topups.open_attempt(session, key="k-top", kind=CardPaymentKind.MANUAL_TOP_UP, member_id="ann",
                                    amount=60_00, request_id="top-1")
        swept = topups.open_attempt(session, key="k-sweep", kind=CardPaymentKind.AUTO_TOP_UP, member_id="bob",
                                    amount=20_00)
        assert asked is not None and swept is not None
        topups.book_card_money(session, asked, payment_intent_id="pi_top")
        topups.book_card_money(session, swept, payment_intent_id="pi_sweep")
        refund = refunds.parse({"request_id": "rf-1", "payment_intent_id": "pi_top", "by": "admin",
                                "admin_id": "a-1", "amount": "5.00"}, settings)
        refunds.record(session, refund, client="staff")
        refunds.book(session, refund, settings)
    assert client_of(sessions, "card:k-top") == "portal"
    assert client_of(sessions, "card:k-sweep") is None  # the sweep's: no client asked for it
    assert client_of(sessions, "refund:rf-1") == "staff"


@pytest.fixture
def scratch_database() -> Iterator[str]:
    name = f"payments_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _book_as(url: str, key: str, *, with_client: bool) -> str:
    """Book 1.00 from stripe to fees through ledger_post, as `url`'s role; the outcome."""
    client_argument = ", 'portal'" if with_client else ""
    with psycopg.connect(url, autocommit=True) as conn:
        stripe, fees = (conn.execute("SELECT id FROM accounts WHERE kind = 'system' AND owner = %s", [owner]).fetchone()[0]
                        for owner in ("stripe", "fees"))
        return conn.execute(
            "SELECT outcome FROM ledger_post(%s, 'h', 'Miscellaneous', 'd', 'r', now(), NULL, NULL, NULL, false,"
            f" ARRAY[%s, %s]::bigint[], ARRAY[-100, 100]::bigint[]{client_argument})", [key, stripe, fees]
        ).fetchone()[0]


def test_migration_0011_goes_down_and_up_again_and_the_runtime_role_keeps_booking(scratch_database) -> None:
    from alembic import command

    role, password = f"payments_runtime_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    runtime_url = make_url(scratch_database).set(username=role, password=password).render_as_string(hide_password=False)
    try:
        upgrade(scratch_database, runtime_role=role)
        assert _book_as(runtime_url, "up", with_client=True) == "booked"
        command.downgrade(alembic_config(scratch_database), "0010")
        assert _book_as(runtime_url, "down", with_client=False) == "booked"  # grants kept over the swap
        with pytest.raises(psycopg.errors.UndefinedFunction):
            _book_as(runtime_url, "down-2", with_client=True)
        grant_runtime(scratch_database, role)  # 0010's grant function, as it was
        command.upgrade(alembic_config(scratch_database), "head")
        assert _book_as(runtime_url, "up-again", with_client=True) == "booked"
        grant_runtime(scratch_database, role)
        assert _book_as(runtime_url, "granted-again", with_client=True) == "booked"
        with psycopg.connect(scratch_database) as conn:
            rows = conn.execute("SELECT idempotency_key, client FROM journal_entries ORDER BY id").fetchall()
            public = conn.execute(
                "SELECT has_function_privilege('public', 'ledger_post(text, text, text, text, text, timestamptz,"
                " text, text, text, boolean, bigint[], bigint[], text)', 'EXECUTE')").fetchone()[0]
        # The downgrade drops the column: the first entry keeps its row, not its client.
        assert rows == [("up", None), ("down", None), ("up-again", "portal"), ("granted-again", "portal")]
        assert public is False
    finally:
        with psycopg.connect(scratch_database, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


def test_migration_0011_goes_down_and_up_again_on_sqlite(tmp_path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path}/p.db"
    upgrade(url)
    command.downgrade(alembic_config(url), "0010")
    command.upgrade(alembic_config(url), "head")
