"""`payments.pay_at_once` and the database function `pay_request` (migration 0006): the plain
payment in one statement must leave exactly what the general path leaves, and anything that is
not the plain case must come back unwritten (the rules themselves run twice, through both paths,
in test_payments.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared import payments
from shared.config import Settings
from shared.db import make_engine
from shared.ledger import Entry, Line
from shared.models import EntryType
from tests.integration.helpers import add_member, add_organisation, top_up

COUNTS = text(
    "SELECT (SELECT count(*) FROM payment_requests), (SELECT count(*) FROM journal_entries),"
    " (SELECT count(*) FROM postings), (SELECT count(*) FROM outbox), (SELECT sum(attempts) FROM payment_requests)"
)


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions.begin() as session:
        ids = {"ann": add_member(session, "ann"), "club": add_organisation(session, "club")}
        top_up(session, ids["ann"], 100_00, "fund-ann")
    return ids


def order(**overrides: object) -> payments.PaymentOrder:
    body = {"request_id": "r1", "member_id": "ann", "amount": "30.00", "description": "Table money",
            "organisation_id": "club", "payment_type": "Club Payment", "route_code": "EVT",
            "route_payload": {"entry": 7}, "event_id": "ev-1", "session_id": "s-2", **overrides}
    return payments.parse({k: v for k, v in body.items() if v is not None}, Settings())


def snapshot(engine: Engine, request_id: str) -> dict[str, Any]:
    """What a decided payment left behind, without ids and times."""
    with engine.connect() as conn:
        request = conn.execute(
            text("SELECT kind, payload_hash, payload::jsonb AS payload, status, member_id, amount, reason, route_code,"
                 " result::text AS result, attempts FROM payment_requests WHERE request_id = :id"),
            {"id": request_id},
        ).one()._asdict()
        entry = conn.execute(
            text("SELECT e.idempotency_key, e.payload_hash, e.type, e.description, e.reference, e.event_id,"
                 " e.session_id, e.admin_id, array_agg(p.account_id || ':' || p.amount ORDER BY p.account_id) AS lines"
                 " FROM journal_entries e JOIN postings p ON p.entry_id = e.id"
                 " WHERE e.idempotency_key = :key GROUP BY e.id"),
            {"key": f"payment:{request_id}"},
        ).one()._asdict()
        outbox = conn.execute(
            text("SELECT dedup_key, kind, request_id, payload::jsonb AS payload, status, attempts FROM outbox"
                 " WHERE request_id = :id"),
            {"id": request_id},
        ).all()
    return {"request": request, "entry": entry, "outbox": [row._asdict() for row in outbox]}


def test_a_plain_payment_in_one_statement_leaves_what_the_general_path_leaves(engine, sessions, world) -> None:
    assert payments.pay_at_once(engine, order(), Settings()) is not None
    with sessions.begin() as session:
        payments.pay(session, order(request_id="r2"), Settings())  # the general path
    fast, general = snapshot(engine, "r1"), snapshot(engine, "r2")
    # Only the request id differs (and, through it, the hashes and keys that include it).
    assert fast["request"]["status"] == "paid" and fast["request"]["attempts"] == 1
    renamed = {k: v for k, v in fast["request"].items() if k not in ("payload_hash", "payload")}
    assert renamed == {k: v for k, v in general["request"].items() if k not in ("payload_hash", "payload")}
    assert fast["request"]["payload"] | {"request_id": "r2"} == general["request"]["payload"]
    expected = Entry("payment:r1", EntryType.CLUB_PAYMENT, "Table money",
                     (Line(world["ann"], -30_00), Line(world["club"], 30_00)), reference="r1",
                     event_id="ev-1", session_id="s-2")
    assert fast["entry"]["payload_hash"] == expected.payload_hash()  # the hash the Python path computes
    assert fast["entry"]["lines"] == general["entry"]["lines"] == [f"{world['ann']}:-3000", f"{world['club']}:3000"]
    for row in (fast, general):
        del row["entry"]["idempotency_key"], row["entry"]["payload_hash"], row["entry"]["reference"]
    assert fast["entry"] == general["entry"]
    [fast_callback], [general_callback] = fast["outbox"], general["outbox"]
    assert fast_callback.pop("payload") | {"request_id": "r2"} == general_callback.pop("payload")
    assert fast_callback | {"dedup_key": "", "request_id": ""} == general_callback | {"dedup_key": "", "request_id": ""}


def test_a_request_recorded_by_the_http_edge_is_paid_and_its_attempt_counted(engine, sessions, world) -> None:
    with sessions.begin() as session:
        payments.record(session, order())
    assert payments.pay_at_once(engine, order(), Settings()) is not None
    row = snapshot(engine, "r1")["request"]
    assert (row["status"], row["attempts"]) == ("paid", 1)


def decided_before(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        payments.pay(session, order(), Settings())


def recorded_with_another_payload(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        payments.record(session, order(amount="31.00"))


@pytest.mark.parametrize(
    ("before", "overrides"),
    [
        pytest.param(decided_before, {}, id="already decided"),
        pytest.param(recorded_with_another_payload, {}, id="another payload"),
        pytest.param(None, {"member_id": "zed"}, id="unknown member"),
        pytest.param(None, {"organisation_id": "nowhere"}, id="unknown organisation"),
        pytest.param(None, {"amount": "100.01"}, id="insufficient funds"),
        pytest.param(None, {"amount": "80.01"}, id="below the low limit after paying"),
        pytest.param(None, {"book_internals": False}, id="book_internals false"),
    ],
)
def test_anything_but_the_plain_case_comes_back_unwritten(engine, sessions, world, before, overrides) -> None:
    if before is not None:
        before(sessions)
    with engine.connect() as conn:
        counts = conn.execute(COUNTS).one()
    assert payments.pay_at_once(engine, order(**overrides), Settings()) is None
    with engine.connect() as conn:
        assert conn.execute(COUNTS).one() == counts


def test_many_in_one_statement_pay_the_plain_ones_and_leave_the_rest_unwritten(engine, sessions, world) -> None:
    """`pay_many_at_once` (`pay_requests`, migration 0017), the batch's one statement: each
    answer in the order sent; one not plain (short of funds, an unknown member, the second of
    a request id sent twice) is rolled back alone, and the plain ones around it are paid, each
    leaving what `pay_at_once` leaves."""
    with sessions.begin() as session:
        add_member(session, "bob")  # no money
    batch = [order(request_id="b1", amount="10.00"), order(request_id="b2", member_id="bob"),
             order(request_id="b3", amount="20.00"), order(request_id="b4", member_id="zed"),
             order(request_id="b1", amount="10.00"), order(request_id="b5", amount="5.00", route_code=None)]
    answers = payments.pay_many_at_once(engine, [(o, "events") for o in batch], Settings())
    assert [None if a is None else len(a) for a in answers] == [1, None, 1, None, None, 0]
    with engine.connect() as conn:
        paid = conn.execute(text("SELECT request_id, status, attempts, amount FROM payment_requests"
                                 " ORDER BY request_id")).all()
        clients = conn.execute(text("SELECT DISTINCT client FROM journal_entries WHERE idempotency_key LIKE"
                                    " 'payment:b%'")).scalars().all()
    assert [tuple(row) for row in paid] == [("b1", "paid", 1, 10_00), ("b3", "paid", 1, 20_00),
                                            ("b5", "paid", 1, 5_00)]
    assert clients == ["events"]
    assert snapshot(engine, "b3")["entry"]["lines"] == [f"{world['ann']}:-2000", f"{world['club']}:2000"]


def test_on_sqlite_there_is_no_one_statement_path(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'payments.db'}")
    try:
        assert payments.pay_at_once(engine, order(), Settings()) is None
    finally:
        engine.dispose()


texts = st.none() | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


@hypothesis_settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    description=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
    reference=texts, event_id=texts, session_id=texts, admin_id=texts, allow_negative=st.booleans(),
    lines=st.lists(st.tuples(st.integers(1, 10**6), st.integers(-10**12, 10**12).filter(bool)), min_size=1, max_size=4),
)
def test_the_entry_hash_is_the_same_in_python_and_in_the_database(
    engine, description, reference, event_id, session_id, admin_id, allow_negative, lines
) -> None:
    entry = Entry("k", EntryType.MISCELLANEOUS, description, tuple(Line(a, m) for a, m in lines), reference=reference,
                  event_id=event_id, session_id=session_id, admin_id=admin_id, allow_negative=allow_negative)
    with engine.connect() as conn:
        in_database = conn.execute(
            text("SELECT ledger_entry_hash(:type, :description, :reference, :event_id, :session_id, :admin_id,"
                 " :allow_negative, CAST(:accounts AS bigint[]), CAST(:amounts AS bigint[]))"),
            {"type": entry.type.value, "description": description, "reference": reference, "event_id": event_id,
             "session_id": session_id, "admin_id": admin_id, "allow_negative": allow_negative,
             "accounts": [a for a, _ in lines], "amounts": [m for _, m in lines]},
        ).scalar_one()
    assert in_database == entry.payload_hash()
