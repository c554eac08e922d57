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
_FORMULA_START = frozenset("=+-@\t\r")

Row = Sequence[object]


def safe_cell(cell: str) -> str:
    """The cell as a spreadsheet shows it as text, never runs it (CSV injection)."""
    if cell and cell[0] in _FORMULA_START and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def csv_lines(rows: Iterable[Row], *, chunk: int = 64 * 1024) -> Iterator[str]:
    """The rows as CSV (CRLF line ends), text cells guarded, None an empty cell, given out in
    pieces of about `chunk` characters of whole lines: one piece per line would cost the web
    server a write per line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    starts, plain = _FORMULA_START, _PLAIN_NUMBER.fullmatch
    for row in rows:
        # safe_cell, inlined: this runs for every cell of a download of any size.
        writer.writerow([
            "'" + cell if isinstance(cell, str) and cell and cell[0] in starts and not plain(cell) else cell
            for cell in row
        ])
        if buffer.tell() >= chunk:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


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
