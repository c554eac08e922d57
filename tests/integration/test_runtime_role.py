"""The database holds the ledger's guarantees even against the service's own runtime role
(DESIGN invariant 10; migration 0010). Each test runs as a LOGIN role of its own, granted as
`payments db upgrade` grants it (`runtime_sessions`), unless it says it runs as the owner."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from shared import ledger, payments, profiles
from shared.config import Settings
from shared.ledger import Entry, Line
from shared.models import EntryType, SystemAccount
from shared.schema import grant_runtime
from tests.integration.helpers import add_member, add_organisation, balance_of, pay, top_up


@pytest.fixture
def accounts(runtime_sessions: sessionmaker[Session]) -> dict[str, int]:
    """Made by the runtime role itself, as the API makes them."""
    with runtime_sessions.begin() as session:
        ids = {
            "ann": add_member(session, "ann"),
            "club": add_organisation(session, "club"),
            "stripe": profiles.system_account(session, SystemAccount.STRIPE),
        }
        top_up(session, ids["ann"], 100_00, "fund-ann")
    return ids


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE journal_entries SET description = 'changed'",
        "DELETE FROM journal_entries",
        "TRUNCATE journal_entries CASCADE",
        "UPDATE postings SET amount = amount * 2",
        "DELETE FROM postings",
        "TRUNCATE postings",
        "TRUNCATE accounts CASCADE",
        "UPDATE members SET account_id = account_id",
        "DELETE FROM payment_requests",
        "UPDATE account_balances SET balance = balance + 100",
        "DELETE FROM account_balances",
        "INSERT INTO account_balances (account_id, stripe, balance) SELECT id, 99, 100 FROM accounts",
    ],
)
def test_the_runtime_role_may_not_update_delete_or_truncate_the_ledger(runtime_sessions, accounts, statement) -> None:
    with pytest.raises(ProgrammingError, match="permission denied"), runtime_sessions.begin() as session:
        session.execute(text(statement))
    assert balance_of(runtime_sessions, accounts["ann"]) == 100_00


def test_the_runtime_role_may_not_write_entries_or_postings_but_through_ledger_post(runtime_sessions, accounts) -> None:
    with runtime_sessions.begin() as session:
        entry = session.scalar(text("SELECT id FROM journal_entries WHERE idempotency_key = 'fund-ann'"))
    for statement in [
        "INSERT INTO postings (entry_id, account_id, amount) VALUES (:entry, :ann, 500)",
        "INSERT INTO journal_entries (idempotency_key, payload_hash, type, description, reference, created_at)"
        " VALUES ('mine', 'x', 'Miscellaneous', 'd', 'r', now())",
    ]:
        with pytest.raises(ProgrammingError, match="permission denied"), runtime_sessions.begin() as session:
            # Even with 0004's mark forged.
            session.execute(text("SELECT set_config('ledger.entry', CAST(:entry AS text), true)"), {"entry": entry})
            session.execute(text(statement), {"entry": entry, "ann": accounts["ann"]})
    assert balance_of(runtime_sessions, accounts["ann"]) == 100_00


def test_a_posting_for_an_entry_of_an_earlier_transaction_is_refused_even_to_the_owner(sessions, accounts) -> None:
    """The owner may insert postings, and any session can forge 0004's `ledger.entry` mark:
    the entry must still have been created in the inserting transaction."""
    with sessions.begin() as session:
        entry = session.scalar(text("SELECT id FROM journal_entries WHERE idempotency_key = 'fund-ann'"))
    with pytest.raises(DBAPIError, match=f"journal entry {entry} was not created in this transaction"):
        with sessions.begin() as session:
            session.execute(text("SELECT set_config('ledger.entry', CAST(:entry AS text), true)"), {"entry": entry})
            session.execute(
                text("INSERT INTO postings (entry_id, account_id, amount) VALUES (:entry, :ann, 500)"),
                {"entry": entry, "ann": accounts["ann"]},
            )
    assert balance_of(sessions, accounts["ann"]) == 100_00


def test_an_entry_booked_inside_a_savepoint_is_accepted(runtime_sessions, accounts) -> None:
    """Inside a SAVEPOINT the entry's xmin is the subtransaction's id, not the top level's."""
    with runtime_sessions.begin() as session:
        session.execute(text("SELECT txid_current()"))  # the top level has its id first
        with session.begin_nested():
            pay(session, accounts["ann"], accounts["club"], 30_00, "in-savepoint")
    assert balance_of(runtime_sessions, accounts["club"]) == 30_00


@pytest.mark.parametrize("table", ["journal_entries", "postings", "accounts", "account_balances"])
def test_truncating_a_ledger_table_is_refused_even_to_the_owner(engine: Engine, accounts, table) -> None:
    with pytest.raises(DBAPIError, match=f"{table} is append-only: TRUNCATE refused"), engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {table} CASCADE"))
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM postings")) == 2


def test_a_running_sum_written_around_the_trigger_is_found(sessions, accounts) -> None:
    """`ledger.disagreeing_balances` (invariant 2's check, also run by the fault suite) names
    an account whose running sum was changed by the owner outside `ledger_post`."""
    with sessions.begin() as session:
        assert ledger.disagreeing_balances(session) == []
        session.execute(text("UPDATE account_balances SET balance = balance + 5 WHERE account_id = :ann"),
                        {"ann": accounts["ann"]})
        assert ledger.disagreeing_balances(session) == [(accounts["ann"], 100_05, 100_00)]


def test_the_runtime_role_cannot_turn_the_triggers_off(runtime_sessions, accounts) -> None:
    for statement, refusal in [
        ("SET session_replication_role = replica", "permission denied to set parameter"),
        ("ALTER TABLE postings DISABLE TRIGGER USER", "must be owner"),
        ("DROP TRIGGER postings_no_truncate ON postings", "must be owner"),
    ]:
        with pytest.raises(DBAPIError, match=refusal), runtime_sessions.begin() as session:
            session.execute(text(statement))


def _ledger_post(session: Session | Connection, accounts: list[int], amounts: list[int | None], **fields: object) -> str:
    """Call the database's ledger_post directly, past every check in shared.ledger."""
    values = {"key": "raw", "hash": "h", "type": "Miscellaneous", "description": "d", "admin_id": None,
              "allow_negative": False, "accounts": accounts, "amounts": amounts, "client": None} | fields
    return str(
        session.execute(
            text(
                "SELECT outcome FROM ledger_post(:key, :hash, :type, :description, 'r', now(), NULL, NULL, :admin_id,"
                " :allow_negative, CAST(:accounts AS bigint[]), CAST(:amounts AS bigint[]), :client)"
            ),
            values,
        ).scalar_one()
    )


@pytest.mark.parametrize(
    ("lines", "fields", "refusal"),
    [
        pytest.param({"ann": 600, "stripe": -500}, {}, "unbalanced: 2 postings summing to 100", id="unbalanced"),
        pytest.param({"stripe": -500}, {}, "unbalanced: 1 postings summing to -500", id="one posting"),
        pytest.param({"ann": 0, "stripe": 0}, {}, "amount_not_zero", id="zero amounts"),
        pytest.param({"ann": 500, "stripe": -500, "dup": -500}, {}, "unbalanced", id="unbalanced with a third"),
        pytest.param({"ann": 500, "stripe": None}, {}, "none NULL", id="a NULL amount"),
        pytest.param({"ann": 500, "stripe": -500}, {"key": "k" * 201}, "key must be 1 to 200", id="long key"),
        pytest.param({"ann": 500, "stripe": -500}, {"description": " "}, "description must be", id="blank description"),
        pytest.param({"ann": 500, "stripe": -500}, {"description": "d" * 201}, "description must be",
                     id="long description"),
        pytest.param({"ann": 500, "stripe": -500}, {"allow_negative": None}, "allow_negative are required",
                     id="NULL allow_negative"),
        pytest.param({"ann": 500, "stripe": -500}, {"client": ""}, "client must be 1 to 64", id="empty client"),
        pytest.param({"ann": 500, "stripe": -500}, {"client": "c" * 65}, "client must be 1 to 64", id="long client"),
    ],
)
def test_ledger_post_called_directly_refuses_a_bad_entry_before_writing(
    runtime_engine, runtime_sessions, accounts, lines, fields, refusal
) -> None:
    ids = {"ann": accounts["ann"], "stripe": accounts["stripe"], "dup": accounts["club"]}
    with runtime_engine.connect() as conn:
        # Refused by the call itself, not only by the deferred check at commit.
        with pytest.raises(DBAPIError, match=refusal):
            _ledger_post(conn, [ids[name] for name in lines], list(lines.values()), **fields)
    with runtime_sessions.begin() as session:
        assert session.scalar(text("SELECT count(*) FROM journal_entries")) == 1


def test_ledger_post_called_directly_refuses_one_account_posted_twice(runtime_engine, accounts) -> None:
    with runtime_engine.connect() as conn, pytest.raises(DBAPIError, match="an account appears twice"):
        _ledger_post(conn, [accounts["ann"], accounts["ann"], accounts["stripe"]], [300, 200, -500])


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"allow_negative": True}, id="not an adjustment"),
        pytest.param({"allow_negative": True, "type": "Manual Adjustment"}, id="an adjustment without admin_id"),
        pytest.param({"allow_negative": True, "type": "Manual Adjustment", "admin_id": " "}, id="a blank admin_id"),
    ],
)
def test_only_an_admin_adjustment_may_take_ledger_post_below_zero(runtime_sessions, accounts, fields) -> None:
    overdraw = ([accounts["ann"], accounts["stripe"]], [-150_00, 150_00])
    with pytest.raises(DBAPIError, match="only a Manual Adjustment with an admin_id"), runtime_sessions.begin() as session:
        _ledger_post(session, *overdraw, **fields)
    with runtime_sessions.begin() as session:
        assert _ledger_post(session, *overdraw, key="plain") == "insufficient"
        assert _ledger_post(session, *overdraw, key="admin", type="Manual Adjustment", admin_id="ops",
                            allow_negative=True) == "booked"
    assert balance_of(runtime_sessions, accounts["ann"]) == -50_00


def test_a_payment_through_ledger_post_and_pay_at_once_works_as_the_runtime_role(
    runtime_engine, runtime_sessions, accounts
) -> None:
    with runtime_sessions.begin() as session:
        booked = ledger.post(session, Entry("payment:p1", EntryType.CLUB_PAYMENT, "Table money",
                                            (Line(accounts["ann"], -20_00), Line(accounts["club"], 20_00))))
    assert booked.balances == {accounts["ann"]: 80_00}
    order = payments.parse({"request_id": "p2", "member_id": "ann", "amount": "30.00", "description": "Table money",
                            "organisation_id": "club", "payment_type": "Club Payment"}, Settings())
    assert payments.pay_at_once(runtime_engine, order, Settings()) is not None
    with runtime_sessions.begin() as session:
        payments.pay(session, payments.parse({"request_id": "p3", "member_id": "ann", "amount": "5.00",
                                              "description": "Tea", "organisation_id": "club"}, Settings()), Settings())
        assert session.scalar(text("SELECT status FROM payment_requests WHERE request_id = 'p2'")) == "paid"
    assert balance_of(runtime_sessions, accounts["ann"]) == 45_00
    assert balance_of(runtime_sessions, accounts["club"]) == 55_00


def test_granting_refuses_a_superuser_as_the_runtime_role(database_url) -> None:
    with pytest.raises(DBAPIError, match="runtime role postgres is a superuser or acts as the schema owner"):
        grant_runtime(database_url, "postgres")


def test_the_http_api_serves_as_the_runtime_role(app_with, runtime_database_url, auth) -> None:
    client = app_with(database_url=runtime_database_url).test_client()
    for path, body in [
        ("/api/members/ann", {"email": "ann@example.org", "first_name": "Ann", "last_name": "Lee"}),
        ("/api/organisations/club", {"name": "North Shore Bridge Club"}),
    ]:
        assert client.put(path, json=body, headers=auth).status_code in (200, 201)
    adjustment = {"request_id": "fund-ann", "member_id": "ann", "amount": "50.00",
                  "description": "Opening balance", "admin_id": "ops"}
    assert client.post("/api/adjustments", json=adjustment, headers=auth).status_code == 201
    payment = {"request_id": "pay-1", "member_id": "ann", "amount": "12.50", "description": "Table money",
               "organisation_id": "club"}
    assert client.post("/api/payments", json=payment, headers=auth).status_code == 202
    assert client.get("/api/payments/pay-1", headers=auth).get_json()["status"] == "queued"
    assert client.get("/api/members/ann/balance", headers=auth).get_json()["balance"] == "50.00"


def test_temporary_tables_named_like_the_ledger_do_not_fool_ledger_post(runtime_engine, accounts) -> None:
    """PostgreSQL searches a session's temporary tables first unless pg_temp is named: ledger_post
    names it last, so a caller's own `postings` cannot lend it a balance."""
    with runtime_engine.begin() as conn:
        conn.execute(text("CREATE TEMP TABLE postings (account_id bigint, amount bigint, entry_id bigint, id bigint)"
                          " ON COMMIT DROP"))
        conn.execute(text("INSERT INTO postings VALUES (:ann, 1000000, 0, 0)"), {"ann": accounts["ann"]})
        assert _ledger_post(conn, [accounts["ann"], accounts["club"]], [-500_00, 500_00]) == "insufficient"


def test_db_upgrade_refuses_a_runtime_role_on_sqlite_before_migrating(tmp_path) -> None:
    from shared.errors import ConfigError
    from shared.schema import upgrade

    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        upgrade(f"sqlite:///{tmp_path}/p.db", runtime_role="payments_runtime")
    assert not (tmp_path / "p.db").exists()
