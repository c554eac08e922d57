"""Property: for any history of top-ups, payments, transfers, adjustments and settlements booked
at random times, the reconciliation at any date sums to zero, and the balances list's total (and
each of its lines) agrees with the accounts' own balances at that date (`ledger.balance_at`).
On PostgreSQL and on SQLite (the embedded default), as the ledger's own property test."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from shared import balances_report, ledger, profiles, reconciliation, statements
from shared.balances_report import Kind
from shared.db import make_sessions
from shared.errors import InsufficientFunds
from shared.ledger import Entry, Line
from shared.models import EntryType, SystemAccount
from shared.settlements import bank_amount
from tests.integration.helpers import add_member, add_organisation
from tests.integration import test_properties

MEMBERS = ("ann", "bob", "cat")
CLUBS = ("north", "south")
ZONE = ZoneInfo("Australia/Sydney")
START = datetime(2026, 2, 1, tzinfo=UTC)

amounts = st.integers(min_value=1, max_value=500_00)
minutes = st.integers(min_value=0, max_value=60 * 24 * 60)  # two months, across DST's end on 5 April
operation = st.one_of(
    st.tuples(st.just("top_up"), minutes, st.sampled_from(MEMBERS), amounts),
    st.tuples(st.just("pay"), minutes, st.sampled_from(MEMBERS), st.sampled_from(CLUBS), amounts),
    st.tuples(st.just("transfer"), minutes, st.sampled_from(MEMBERS), st.sampled_from(MEMBERS), amounts),
    st.tuples(st.just("adjust"), minutes, st.sampled_from(MEMBERS + CLUBS), st.integers(-200_00, 200_00).filter(bool)),
    st.tuples(st.just("settle"), minutes, st.sampled_from(CLUBS), st.sampled_from([0, 2, 5])),
)
# The ledger property test's fixture: an empty ledger per example, on PostgreSQL and on SQLite.
fresh_engine = test_properties.fresh_engine
dates = st.dates(min_value=date(2026, 1, 31), max_value=date(2026, 4, 10))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=20), days=st.lists(dates, min_size=1, max_size=3))
def test_reconciliation_sums_to_zero_and_balances_lists_add_up(
    fresh_engine: Callable[[], Engine], operations: list, days: list
) -> None:
    sessions = make_sessions(fresh_engine())
    with sessions.begin() as session:
        account = {m: add_member(session, m) for m in MEMBERS}
        account.update({c: add_organisation(session, c) for c in CLUBS})
        system = {s: profiles.system_account(session, s) for s in SystemAccount}
    for number, (kind, at, *args) in enumerate(operations):
        moment = START + timedelta(minutes=at)
        with sessions.begin() as session:
            entry = _entry(session, f"op-{number}", kind, args, account, system)
            if entry is None:
                continue
            try:
                ledger.post(session, entry, now=moment)
            except InsufficientFunds:
                pass
    with sessions.begin() as session:
        for day in days:
            end = statements.end_of_local_day(day, ZONE)
            totals = reconciliation.totals_at(session, end)
            assert totals.sum == 0, (day, totals)
            for kind, names in ((Kind.MEMBER, MEMBERS), (Kind.ORGANISATION, CLUBS)):
                listed = balances_report.page(session, kind, day, ZONE, size=100, after=None)
                expected = {name: ledger.balance_at(session, account[name], end) for name in names}
                assert listed.total == sum(expected.values()), (day, kind)
                assert {row["id"]: row["balance"] for row in listed.rows} == {
                    name: f"{cents / 100:.2f}" for name, cents in expected.items() if cents
                }
                assert listed.total == totals.amounts["members" if kind is Kind.MEMBER else "organisations"]


def _entry(session, key: str, kind: str, args: list, account: dict, system: dict) -> Entry | None:  # type: ignore[no-untyped-def]
    if kind == "top_up":
        member, cents = args
        return Entry(key, EntryType.MANUAL_TOP_UP, "Top up",
                     (Line(account[member], cents), Line(system[SystemAccount.STRIPE], -cents)))
    if kind == "pay":
        member, club, cents = args
        return Entry(key, EntryType.CLUB_PAYMENT, "Table money", (Line(account[member], -cents), Line(account[club], cents)))
    if kind == "transfer":
        payer, payee, cents = args
        if payer == payee:
            return None
        return Entry(key, EntryType.MEMBER_TRANSFER, "Lunch", (Line(account[payer], -cents), Line(account[payee], cents)))
    if kind == "adjust":
        who, cents = args
        return Entry(key, EntryType.MANUAL_ADJUSTMENT, "Correction",
                     (Line(account[who], cents), Line(system[SystemAccount.ADJUSTMENTS], -cents)),
                     admin_id="admin", allow_negative=True)
    club, percent = args
    net = ledger.balance(session, account[club])
    if net <= 0:
        return None
    bank = bank_amount(net, percent)
    lines = [Line(account[club], -net), Line(system[SystemAccount.BANK], bank)]
    if net - bank:
        lines.append(Line(system[SystemAccount.FEES], net - bank))
    return Entry(key, EntryType.SETTLEMENT, "Settlement", tuple(lines))
