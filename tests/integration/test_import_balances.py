"""`payments import balances FILE.csv [--dry-run]` (CONTRACT; issue 13 item 7): opening balances
booked as Manual Adjustments, each line once however often the file is imported; errors name
their line and book nothing. The command runs as a real subprocess on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from shared import imports
from shared.models import JournalEntry
from tests.integration.helpers import add_member, add_organisation, balance_of

ROOT = Path(__file__).resolve().parents[2]
GOOD = """kind,id,amount,description
member,ann,120.50,Opening balance
member,bob,-15.00,Opening balance (owed)
organisation,club,2000.00,Opening balance
"""


@pytest.fixture
def accounts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions.begin() as session:
        return {"ann": add_member(session, "ann"), "bob": add_member(session, "bob", "Bob", "Ray"),
                "club": add_organisation(session, "club")}


def run_import(database_url: str, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMENTS_")}
    env["PAYMENTS_DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "payments_cli", "import", "balances", str(path), *extra], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def entries(sessions: sessionmaker[Session]) -> list[tuple[str, str | None, str | None]]:
    with sessions.begin() as session:
        rows = session.execute(select(JournalEntry.type, JournalEntry.admin_id, JournalEntry.client)
                               .order_by(JournalEntry.id)).all()
        return [tuple(row) for row in rows]


def test_a_file_is_booked_once_however_often_it_is_imported(sessions, accounts, database_url, tmp_path) -> None:
    path = tmp_path / "balances.csv"
    path.write_text(GOOD)

    first = run_import(database_url, path)
    assert first.returncode == 0, first.stderr
    assert "line 2: member ann 120.50 'Opening balance': booked" in first.stdout
    assert first.stdout.strip().splitlines()[-1] == "booked 3 lines, 2105.50 in all; 0 already booked"
    balances = {name: balance_of(sessions, account) for name, account in accounts.items()}
    assert balances == {"ann": 120_50, "bob": -15_00, "club": 2000_00}
    assert entries(sessions) == [("Manual Adjustment", imports.IMPORTER, imports.IMPORTER)] * 3

    # Again, with a line added and the old ones reordered: only the new line is booked.
    path.write_text("kind,id,amount,description\norganisation,club,2000.00,Opening balance\n"
                    "member,bob,-15.00,Opening balance (owed)\nmember,ann,120.50,Opening balance\n"
                    "member,ann,5.00,Voucher\n")
    again = run_import(database_url, path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already booked (entry") == 3
    assert again.stdout.strip().splitlines()[-1] == "booked 1 lines, 5.00 in all; 3 already booked"
    assert balance_of(sessions, accounts["ann"]) == 125_50


def test_a_dry_run_says_what_would_be_booked_and_books_nothing(sessions, accounts, database_url, tmp_path) -> None:
    path = tmp_path / "balances.csv"
    path.write_text(GOOD, encoding="utf-8-sig")  # with a BOM, as spreadsheet programs save CSV

    result = run_import(database_url, path, "--dry-run")

    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": would book") == 3
    assert result.stdout.strip().splitlines()[-1] == "would book 3 lines, 2105.50 in all; 0 already booked"
    assert entries(sessions) == []


def test_errors_name_their_lines_and_nothing_is_booked(sessions, accounts, database_url, tmp_path) -> None:
    path = tmp_path / "balances.csv"
    path.write_text("kind,id,amount,description\n"
                    "member,ann,10.00,Fine\n"
                    "club,club,5.00,Wrong kind\n"
                    "member,bob,12.345,Too precise\n"
                    "member,bob,0.00,Nothing\n"
                    "member,ann,10.00,Fine\n"
                    "member,bob,1.00\n"
                    "member,bad id,1.00,Spaces\n")

    result = run_import(database_url, path)

    assert result.returncode == 2
    problems = result.stderr.splitlines()
    assert problems[0] == f"{path}: nothing booked:"
    assert [p.split(":")[0] for p in problems[1:]] == ["line 3", "line 4", "line 5", "line 6", "line 7", "line 8"]
    assert "kind: 'club' is not member or organisation" in result.stderr
    assert "line 6: the same as line 2" in result.stderr
    assert "line 7: expected 4 fields" in result.stderr
    assert entries(sessions) == []


def test_an_unknown_member_or_organisation_is_named_by_its_line_and_nothing_is_booked(
    sessions, accounts, database_url, tmp_path
) -> None:
    path = tmp_path / "balances.csv"
    path.write_text("kind,id,amount,description\nmember,ann,10.00,Fine\norganisation,nowhere,5.00,Lost club\n")

    result = run_import(database_url, path)

    assert result.returncode == 2
    assert "line 3: " in result.stderr and "nowhere" in result.stderr
    assert entries(sessions) == []


def test_a_wrong_header_is_refused(sessions, accounts, database_url, tmp_path) -> None:
    path = tmp_path / "balances.csv"
    path.write_text("member,amount\nann,10.00\n")

    result = run_import(database_url, path)

    assert result.returncode == 2
    assert "line 1: the header must be kind,id,amount,description" in result.stderr


def test_blank_lines_are_skipped_and_the_longest_key_fits_the_ledger(engine) -> None:
    lines = imports.parse("kind,id,amount,description\n\nmember,ann,1.00,Opening\n", max_amount=10_000_00)
    assert [(line.number, line.id, line.amount) for line in lines] == [(3, "ann", 1_00)]
    with engine.connect() as conn:  # the request id fits the ledger's key column with its prefix
        width = conn.execute(text("SELECT character_maximum_length FROM information_schema.columns "
                                  "WHERE table_name = 'journal_entries' AND column_name = 'idempotency_key'")).scalar()
    longest = imports.Line(2, "organisation", "x" * 64, -1, "d").request_id
    assert len("adjustment:" + longest) <= width
