"""Opening balances from a CSV file (`payments import balances FILE.csv [--dry-run]`; CONTRACT,
ORIGINAL section 0): how a federation's members and clubs move their pre-paid balances in.

The file has the header `kind,id,amount,description`; `kind` is `member` or `organisation`,
`amount` a signed amount such as `120.50` (negative: an opening debt). Each line is booked as a
Manual Adjustment against the `adjustments` account, under a request id made from the line's
content (`import:{kind}:{id}:{digest}`), so importing the same file again, or again after lines
were added or reordered, books each line once. Every line is checked before anything is booked:
an error names its line, and a file with any error books nothing (no half import).
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import fields
from shared.adjustments import Adjustment, book_adjustment
from shared.errors import InvalidInput, PaymentsError
from shared.models import JournalEntry, Member, Organisation
from shared.money import format_cents, parse_cents

HEADER = ["kind", "id", "amount", "description"]
KINDS = ("member", "organisation")
# Who the entries are recorded as made by (journal_entries.client), and the admin note.
IMPORTER = "payments-import"


@dataclass(frozen=True)
class Line:
    number: int  # in the file, the header being line 1
    kind: str
    id: str
    amount: int
    description: str

    @property
    def request_id(self) -> str:
        content = f"{self.kind}\n{self.id}\n{self.amount}\n{self.description}".encode()
        return f"import:{self.kind}:{self.id}:{hashlib.sha256(content).hexdigest()[:16]}"

    def adjustment(self) -> Adjustment:
        member = self.id if self.kind == "member" else None
        organisation = self.id if self.kind == "organisation" else None
        return Adjustment(request_id=self.request_id, amount=self.amount, description=self.description,
                          admin_id=IMPORTER, member_id=member, organisation_id=organisation,
                          allow_negative=self.amount < 0)

    def shown(self) -> str:
        return f"line {self.number}: {self.kind} {self.id} {format_cents(self.amount)} {self.description!r}"


@dataclass(frozen=True)
class Outcome:
    line: Line
    status: str  # "booked", "would book" or "already booked"
    entry_id: int | None = None


class ImportErrors(PaymentsError):
    """Every line that cannot be booked, each named by its number; nothing was booked."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse(text: str, *, max_amount: int) -> list[Line]:
    """The file's lines, or `ImportErrors` naming every bad one."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or [cell.strip().lower() for cell in header] != HEADER:
        raise ImportErrors([f"line 1: the header must be {','.join(HEADER)}, not {','.join(header or []) or 'empty'}"])
    lines: list[Line] = []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        try:
            line = _line(number, row, max_amount)
        except InvalidInput as exc:
            problems.append(f"line {number}: {exc.message}")
            continue
        if line.request_id in first_seen:
            problems.append(f"line {number}: the same as line {first_seen[line.request_id]} "
                            "(it would be booked once; remove one, or tell them apart in the description)")
            continue
        first_seen[line.request_id] = number
        lines.append(line)
    if problems:
        raise ImportErrors(problems)
    if not lines:
        raise ImportErrors(["the file has no lines after its header"])
    return lines


def _line(number: int, row: list[str], max_amount: int) -> Line:
    if len(row) != len(HEADER):
        raise InvalidInput(f"expected {len(HEADER)} fields ({','.join(HEADER)}), got {len(row)}")
    kind, raw_id, raw_amount, raw_description = (cell.strip() for cell in row)
    if kind not in KINDS:
        raise InvalidInput(f"kind: {kind!r} is not member or organisation", field="kind")
    amount = parse_cents(raw_amount, "amount", minimum=-max_amount, maximum=max_amount)
    if amount == 0:
        raise InvalidInput("amount: 0.00 books nothing", field="amount")
    return Line(number, kind, fields.identifier(raw_id, "id"),
                amount, fields.text(raw_description, "description", max_length=200))


def book(session: Session, lines: list[Line], *, dry_run: bool) -> list[Outcome]:
    """Book each line not booked before (or, in a dry run, say which would be), in the caller's
    transaction. An unknown member or organisation is an `ImportErrors` for its line (checked for
    every line before anything is booked)."""
    known = _known(session, lines)
    missing = [f"line {line.number}: {line.kind} {line.id}: not known" for line in lines
               if (line.kind, line.id) not in known]
    if missing:
        raise ImportErrors(missing)
    booked_before = _booked(session, [line.request_id for line in lines])
    outcomes: list[Outcome] = []
    for line in lines:
        if line.request_id in booked_before:
            outcomes.append(Outcome(line, "already booked", booked_before[line.request_id]))
        elif dry_run:
            outcomes.append(Outcome(line, "would book"))
        else:
            booking = book_adjustment(session, line.adjustment(), client=IMPORTER)
            outcomes.append(Outcome(line, "booked", booking.entry_id))
    return outcomes


def _known(session: Session, lines: list[Line]) -> set[tuple[str, str]]:
    """Which of the file's members and organisations exist: two queries, however long the file."""
    members = {line.id for line in lines if line.kind == "member"}
    organisations = {line.id for line in lines if line.kind == "organisation"}
    found = {("member", m) for m in session.scalars(select(Member.member_id).where(Member.member_id.in_(members)))}
    found |= {("organisation", o) for o in session.scalars(
        select(Organisation.org_id).where(Organisation.org_id.in_(organisations)))}
    return found


def _booked(session: Session, request_ids: list[str]) -> dict[str, int]:
    keys = {f"adjustment:{request_id}": request_id for request_id in request_ids}
    found = session.execute(select(JournalEntry.idempotency_key, JournalEntry.id)
                            .where(JournalEntry.idempotency_key.in_(list(keys))))
    return {keys[key]: entry_id for key, entry_id in found}
