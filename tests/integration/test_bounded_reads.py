"""DESIGN invariant 11: every read is bounded. A page holds at most its limit; a download of an
account's whole history streams it, holding one batch, never the history, in memory.

Each download's Python allocations are traced while 14,000 lines stream through the Flask test
client. Streamed, a download holds a few batches of 1,000 rows at its peak (about 3.5 MiB,
whatever the history's length); the same lines built into a list first would hold about 7.7 MiB
(12,000 statement lines measured 6.6 MiB), over the 5 MiB limit."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime

import psycopg
import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from tests.integration.helpers import add_member, add_organisation, top_up

LINES = 14_000
PEAK_LIMIT = 5 * 2**20


@pytest.fixture
def long_history(sessions: sessionmaker[Session], database_url: str) -> None:
    _book(sessions, database_url, LINES)


@pytest.fixture
def some_history(sessions: sessionmaker[Session], database_url: str) -> None:
    _book(sessions, database_url, 1_200)


def _book(sessions: sessionmaker[Session], database_url: str, lines: int) -> None:
    """ann tops up, then pays the club `lines` times in February 2026 (through ledger_post)."""
    with sessions.begin() as session:
        ann = add_member(session, "ann")
        club = add_organisation(session, "club")
        top_up(session, ann, lines * 100, "top-up")
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        booked = conn.execute(
            "SELECT count(*) FROM (SELECT ledger_post('pay-' || n, md5('pay-' || n), 'Club Payment',"
            " 'Table money ' || n, 'ref-' || n, %s::timestamptz + n * interval '1 minute', NULL, NULL, NULL,"
            " false, ARRAY[%s, %s]::bigint[], ARRAY[-100, 100]::bigint[], NULL) FROM generate_series(1, %s) n) b",
            (datetime(2026, 2, 1, tzinfo=UTC), ann, club, lines),
        ).fetchone()[0]
        conn.commit()
    assert booked == lines


def _streamed_peak(client: FlaskClient, auth: dict[str, str], path: str) -> tuple[int, int]:
    """The download's lines, and the peak of Python memory allocated while it streamed."""
    tracemalloc.start()
    try:
        response = client.get(path, headers=auth, buffered=False)
        assert response.status_code == 200, response.get_data()[:300]
        assert response.is_streamed
        lines = 0
        for chunk in response.response:
            lines += chunk.count(b"\n")
        response.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return lines, peak


def test_a_whole_history_download_streams_in_bounded_memory(
    client: FlaskClient, auth: dict[str, str], long_history: None
) -> None:
    for path, at_least in [
        ("/api/members/ann/statement?format=csv", LINES),
        ("/api/organisations/club/statement?format=csv", LINES),
        ("/api/reports/reconciliation?date=2026-02-28&format=csv&file=reconciliation", 2 * LINES),
    ]:
        lines, peak = _streamed_peak(client, auth, path)
        assert lines >= at_least, path
        assert peak < PEAK_LIMIT, f"{path}: {peak / 2**20:.1f} MiB held while streaming {lines} lines"


def test_a_page_holds_at_most_its_limit_and_refuses_more_than_1000(
    client: FlaskClient, auth: dict[str, str], some_history: None
) -> None:
    for path in ["/api/members/ann/statement?", "/api/organisations/club/statement?",
                 "/api/organisations/club/report?view=transactions&period=all&"]:
        assert len(client.get(path, headers=auth).get_json()["rows"]) == 100, path
        assert len(client.get(f"{path}limit=1000", headers=auth).get_json()["rows"]) == 1000, path
        refused = client.get(f"{path}limit=1001", headers=auth)
        assert refused.status_code == 400 and refused.get_json()["error"]["field"] == "limit", path
