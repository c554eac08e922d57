"""CSV and XLSX answers, streamed. A view checks its arguments first (errors are still JSON),
then hands over a function that yields the rows from a session of its own: the session lives
while the answer streams, after the view has returned."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from flask import Response, send_file, stream_with_context
from sqlalchemy.orm import Session

from shared import exports
from webhook import context

XLSX_MIMETYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
Rows = Callable[[Session], Iterable[exports.Row]]


def csv_download(filename: str, rows: Rows) -> Response:
    """The rows as CSV, read and sent as the client takes them."""

    def lines() -> Iterator[str]:
        with context.transaction() as session:
            yield from exports.csv_lines(rows(session))

    return Response(
        stream_with_context(lines()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def xlsx_download(filename: str, sheets: Callable[[Session], Iterable[tuple[str, Iterable[exports.Row]]]]) -> Response:
    """The sheets as one workbook. A zip cannot be sent before it is finished, so the workbook is
    written to a temporary file (row by row, not held in memory) and that file is sent."""
    with context.transaction() as session:
        workbook = exports.xlsx_file(sheets(session))
    return send_file(workbook, mimetype=XLSX_MIMETYPE, as_attachment=True, download_name=filename)
