"""Downloads written row by row (CSV and XLSX): a report's rows come from a server-side cursor
and leave as they are read, so a download of any size holds one batch of rows in memory.

Text cells are guarded against formula injection: a spreadsheet runs a cell that starts with
`=`, `+`, `-` or `@` as a formula, so such a cell gets a leading `'`, unless it is a plain
number ("-20.00"), which no spreadsheet runs.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import IO

from openpyxl import Workbook

_PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

Row = Sequence[object]


def safe_cell(cell: str) -> str:
    """The cell as a spreadsheet shows it as text, never runs it (CSV injection)."""
    if cell[:1] in _FORMULA_START and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def csv_lines(rows: Iterable[Row]) -> Iterator[str]:
    """Each row as one CSV line (CRLF line ends), text cells guarded; None is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in rows:
        writer.writerow([safe_cell(cell) if isinstance(cell, str) else cell for cell in row])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def xlsx_file(sheets: Iterable[tuple[str, Iterable[Row]]]) -> IO[bytes]:
    """A workbook of these sheets, in order, written in openpyxl's write-only mode (rows go to
    disk as they come), as a temporary file positioned at its start. Give money as Decimal so a
    spreadsheet can sum it."""
    book = Workbook(write_only=True)
    for title, rows in sheets:
        sheet = book.create_sheet(title[:31])  # Excel's limit on a sheet name
        for row in rows:
            sheet.append([safe_cell(cell) if isinstance(cell, str) else cell for cell in row])
    out = tempfile.TemporaryFile()
    book.save(out)
    out.seek(0)
    return out
