"""A request accepted and stored is carried on from its stored normal form: lowering a limit
afterwards (PAYMENTS_MAX_AMOUNT, the transfer maximum, ...) does not strand it, while new input
is still checked against the limit of the day. The tasks run in this process, on PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared import payments, requests, transfers
from shared.config import Settings
from tests.integration.helpers import add_member, add_organisation, balance_of, top_up


@pytest.fixture
def tasks(sessions: sessionmaker[Session], engine: Engine, settings: Settings, monkeypatch) -> Iterator[object]:
    """worker.tasks on the test database, with the limits lowered after the requests were stored."""
    from worker import tasks as worker_tasks

    lowered = dataclasses.replace(settings, max_amount=10_00, transfer_max=10_00)
    monkeypatch.setattr(worker_tasks, "settings", lambda: lowered)
    monkeypatch.setattr(worker_tasks, "sessions", lambda: sessions)
    monkeypatch.setattr(worker_tasks, "engine", lambda: engine)
    yield worker_tasks


@pytest.fixture
def world(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions.begin() as session:
        ids = {"ann": add_member(session, "ann"), "bob": add_member(session, "bob"),
               "club": add_organisation(session, "club")}
        top_up(session, ids["ann"], 100_00, "fund-ann")
    return ids


def payment(request_id: str, amount: str) -> payments.PaymentOrder:
    return payments.parse({"request_id": request_id, "member_id": "ann", "amount": amount,
                           "description": "Congress entry", "organisation_id": "club"}, Settings())


def status(sessions: sessionmaker[Session], request_id: str) -> requests.Request:
    with sessions.begin() as session:
        return requests.get(session, request_id)


@pytest.mark.parametrize("redrives", [1, 2])
def test_a_stored_payment_redriven_after_the_maximum_was_lowered_is_paid_once(sessions, world, tasks, redrives) -> None:
    stored = payment("r1", "50.00")
    with sessions.begin() as session:
        payments.record(session, stored)
    for _ in range(redrives):  # what payments.redrive_requests sends: the stored payload
        assert tasks.pay(**status(sessions, "r1").payload) == "paid"
    assert status(sessions, "r1").status == "paid"
    assert balance_of(sessions, world["ann"]) == 50_00


def test_a_new_payment_above_the_lowered_maximum_is_still_refused(sessions, world, tasks) -> None:
    assert tasks.pay(**payment("r2", "50.00").payload()) == "failed"
    row = status(sessions, "r2")
    assert row.status == "failed" and row.reason is not None and row.reason.startswith("amount:")
    assert balance_of(sessions, world["ann"]) == 100_00


def test_a_payment_sent_again_with_a_changed_payload_is_checked_as_new_input(sessions, world, tasks) -> None:
    with sessions.begin() as session:
        payments.record(session, payment("r3", "50.00"))
    changed = {**payment("r3", "50.00").payload(), "description": "Something else"}
    assert tasks.pay(**changed) in ("failed", "invalid")
    assert status(sessions, "r3").status == "queued"  # the stored request is untouched
    assert balance_of(sessions, world["ann"]) == 100_00


def test_a_stored_transfer_redriven_after_the_transfer_maximum_was_lowered_is_paid(sessions, world, tasks) -> None:
    order = transfers.parse({"request_id": "t1", "from_member_id": "ann", "to_member_id": "bob", "amount": "40.00",
                             "description": "Half the entry"}, Settings())
    with sessions.begin() as session:
        transfers.record(session, order)
    assert tasks.transfer(**status(sessions, "t1").payload) == "paid"
    assert balance_of(sessions, world["bob"]) == 40_00
