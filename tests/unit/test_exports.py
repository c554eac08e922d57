"""The download writers: formula guard, CSV lines, an XLSX read back with openpyxl."""

from __future__ import annotations

from decimal import Decimal

import pytest
from openpyxl import load_workbook

from shared import exports


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"),
        ("+1+2", "'+1+2"),
        ("-1+cmd", "'-1+cmd"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("-20.00", "-20.00"),
        ("+5", "+5"),
        ("Annual subscription", "Annual subscription"),
        ("", ""),
    ],
)
def test_a_cell_that_would_run_is_guarded_and_a_number_is_not(cell: str, shown: str) -> None:
    assert exports.safe_cell(cell) == shown


def test_csv_lines_end_in_crlf_and_come_in_pieces_of_whole_lines() -> None:
    rows = [("Date", "Amount"), ("2026-02-01", "-20.00"), ("=1+1", None)]
    assert list(exports.csv_lines(rows)) == ["Date,Amount\r\n2026-02-01,-20.00\r\n'=1+1,\r\n"]
    assert list(exports.csv_lines(rows, chunk=1)) == ["Date,Amount\r\n", "2026-02-01,-20.00\r\n", "'=1+1,\r\n"]
    assert list(exports.csv_lines([])) == []


def test_an_xlsx_reads_back_with_its_sheets_in_order() -> None:
    with exports.xlsx_file([("Summary", [("Total", Decimal("12.34"))]), ("Rows", [("=2", 1), ("b", 2)])]) as workbook:
        book = load_workbook(workbook, read_only=True)
        assert book.sheetnames == ["Summary", "Rows"]
        assert [list(r) for r in book["Summary"].iter_rows(values_only=True)] == [["Total", 12.34]]
        assert [list(r) for r in book["Rows"].iter_rows(values_only=True)] == [["'=2", 1], ["b", 2]]
        book.close()
