"""The ledger: one write, `post`, and the balance reads (SPEC 1, DESIGN invariants 2 to 4).

`post` books a balanced journal entry inside the caller's transaction and never commits:

1. A key already used with the same payload returns the first booking and books nothing; with
   a different payload it raises `Conflict`.
2. It locks, in ascending account id (one fixed total order, so two bookings can never wait on
   each other in a cycle), only the member and organisation accounts the entry debits: those
   are the ones that could be overdrawn. Credits and system accounts take no lock, because a
   credit can never overdraw; so a hot club or the `stripe` account never serialises
   payments. There are no table locks.
3. Under those locks it reads each debited account's balance (the sum of its committed
   postings, kept as running sums in `account_balances` by a trigger in the posting's own
   transaction, so the read costs the same at any length of history: migration 0016; a
   concurrent uncommitted credit is not counted yet, which can only make the check stricter)
   and refuses, writing nothing, a debit that would take it below zero, unless the entry is an
   admin adjustment that explicitly allows it.
4. It claims the key (INSERT ... ON CONFLICT DO NOTHING, which waits for a concurrent holder
   of the same key) and inserts the postings. On PostgreSQL a deferred trigger checks again
   at commit that the entry sums to zero.

Keys are namespaced by the kind of booking (`payment:`, `transfer:`, `adjustment:`,
`settlement:`, `card:`, `refund:`, `refund-reversal:`; SPEC 5), each flow prefixing the id it
books under, so no caller-chosen id can take the key another booking needs.

On PostgreSQL these steps run inside the `ledger_post` function (migration 0003): one round
trip per booking. Since migration 0010 it runs as the schema's owner (SECURITY DEFINER) and
checks its arguments as `_validate` does, because the service's runtime role may write the
ledger only through it (DESIGN invariant 10). Since 0011 it also records the entry's `client`. Elsewhere (SQLite, the embedded default)
`_post_portable` runs the same steps from Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.db import dialect_insert, dialect_name
from shared.errors import Conflict, InsufficientFunds, InvalidInput, UnbalancedEntry
from shared.models import Account, AccountBalance, AccountKind, EntryType, JournalEntry, Posting, utcnow
from shared.money import format_cents


@dataclass(frozen=True)
class Line:
    """One posting of an entry: a signed amount in cents against an account."""

    account_id: int
    amount: int


@dataclass(frozen=True)
class Entry:
    """A journal entry to book. `key` is its idempotency key; `reference` defaults to it."""

    key: str
    type: EntryType
    description: str
    lines: tuple[Line, ...]
    reference: str | None = None
    event_id: str | None = None
    session_id: str | None = None
    admin_id: str | None = None
    # The client whose request made the booking (shared/access.py); None for the service's own
    # work (card money of the auto top-up sweep, a reconciled charge with no request). Not part
    # of the payload hash: it says who asked, not what was booked, and the request id already
    # belongs to one client (`requests.record`).
    client: str | None = None
    # Only an admin adjustment may take an account below zero, and only when asked to.
    allow_negative: bool = False

    def payload_hash(self) -> str:
        """SHA-256 of the entry's content (not its key): a key booked again with other content
        is a conflict. Each text field is length-prefixed, so the form is unambiguous and the
        database computes the same hash (`ledger_entry_hash`, migration 0006)."""
        ordered = sorted((line.account_id, line.amount) for line in self.lines)
        lines = ",".join(f"{account}:{amount}" for account, amount in ordered)
        canonical = "\n".join(
            [
                *(_hash_field(value) for value in (self.type.value, self.description, self.reference,
                                                   self.event_id, self.session_id, self.admin_id)),
                "t" if self.allow_negative else "f",
                lines,
            ]
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def _hash_field(value: str | None) -> str:
    return "null" if value is None else f"{len(value)}:{value}"


@dataclass(frozen=True)
class Booking:
    """What `post` returns: the entry's id and time, and whether it was booked before."""

    entry_id: int
    created_at: datetime
    replayed: bool = False
    # Balances after this entry of the debited accounts it checked (none when replayed).
    balances: dict[int, int] = field(default_factory=dict)


def post(session: Session, entry: Entry, *, now: datetime | None = None) -> Booking:
    """Book `entry` in the caller's transaction; see the module docstring for the rules.

    Raises `InsufficientFunds` or `Conflict` having written nothing.
    """
    _validate(entry)
    created_at = now or utcnow()
    if dialect_name(session) == "postgresql":
        return _post_postgresql(session, entry, created_at)
    return _post_portable(session, entry, created_at)


_LEDGER_POST = (
    "SELECT outcome, entry_id, created_at, short_account, short_balance, checked_accounts,"
    " balances_after FROM ledger_post("
    "%(key)s, %(hash)s, %(type)s, %(description)s, %(reference)s, %(created_at)s, %(event_id)s,"
    " %(session_id)s, %(admin_id)s, %(allow_negative)s, %(accounts)s::bigint[], %(amounts)s::bigint[],"
    " %(client)s)"
)


def _post_postgresql(session: Session, entry: Entry, created_at: datetime) -> Booking:
    row = (
        session.connection()
        .exec_driver_sql(
            _LEDGER_POST,
            {
                "key": entry.key,
                "hash": entry.payload_hash(),
                "type": entry.type.value,
                "description": entry.description,
                "reference": entry.reference or entry.key,
                "created_at": created_at,
                "event_id": entry.event_id,
                "session_id": entry.session_id,
                "admin_id": entry.admin_id,
                "allow_negative": entry.allow_negative,
                "accounts": [line.account_id for line in entry.lines],
                "amounts": [line.amount for line in entry.lines],
                "client": entry.client,
            },
        )
        .one()
    )
    if row.outcome == "booked":
        balances_after = dict(zip(row.checked_accounts or [], row.balances_after or [], strict=True))
        return Booking(entry_id=row.entry_id, created_at=row.created_at, balances=balances_after)
    if row.outcome == "replayed":
        return Booking(entry_id=row.entry_id, created_at=row.created_at, replayed=True)
    if row.outcome == "conflict":
        raise _conflict(entry, row.entry_id)
    debit = next(line.amount for line in entry.lines if line.account_id == row.short_account)
    raise _insufficient(session, row.short_account, int(row.short_balance), debit)


def _post_portable(session: Session, entry: Entry, created_at: datetime) -> Booking:
    digest = entry.payload_hash()
    debits = {line.account_id: line.amount for line in entry.lines if line.amount < 0}
    first = _first_booking(session, entry, digest)
    if first is not None:
        return first
    held = lock_accounts(session, debits)
    after: dict[int, int] = {}
    if held:
        first = _first_booking(session, entry, digest)
        if first is not None:
            return first
        if entry.allow_negative and entry.type is EntryType.REFUND:
            _refuse_member_overdraft(session, entry, held)
        if not entry.allow_negative:
            before = balances(session, held)
            for account_id in held:
                if before[account_id] + debits[account_id] < 0:
                    raise _insufficient(session, account_id, before[account_id], debits[account_id])
                after[account_id] = before[account_id] + debits[account_id]

    entry_id = session.execute(
        _insert_new_key(session)
        .values(
            idempotency_key=entry.key,
            payload_hash=digest,
            type=entry.type.value,
            description=entry.description,
            reference=entry.reference or entry.key,
            created_at=created_at,
            event_id=entry.event_id,
            session_id=entry.session_id,
            admin_id=entry.admin_id,
            client=entry.client,
        )
        .returning(JournalEntry.id)
    ).scalar_one_or_none()
    if entry_id is None:
        first = _first_booking(session, entry, digest)
        assert first is not None
        return first
    session.execute(
        insert(Posting),
        [{"entry_id": entry_id, "account_id": l.account_id, "amount": l.amount} for l in entry.lines],
    )
    return Booking(entry_id=entry_id, created_at=created_at, balances=after)


def _refuse_member_overdraft(session: Session, entry: Entry, debited: list[int]) -> None:
    kinds = set(session.scalars(select(Account.kind).where(Account.id.in_(debited))))
    if AccountKind.MEMBER.value in kinds:
        raise InvalidInput(f"entry {entry.key}: a refund may never take a member below zero",
                           field="allow_negative")


def lock_accounts(session: Session, account_ids: Iterable[int]) -> list[int]:
    """Lock the member and organisation accounts among `account_ids`, in ascending id order.

    Returns the ids locked. System accounts are never locked: nothing checks their balance.
    Locks are held until the caller's transaction ends; taking one twice is harmless.
    """
    ids = sorted(set(account_ids))
    if not ids:
        return []
    return list(
        session.scalars(
            select(Account.id)
            .where(Account.id.in_(ids), Account.kind != AccountKind.SYSTEM.value)
            .order_by(Account.id)
            # NO KEY UPDATE: enough to serialise debits, and it does not block the
            # foreign-key checks of concurrent postings to the same account.
            .with_for_update(key_share=True)
        )
    )


def current_balance(account_id: Any) -> ScalarSelect[Any]:
    """The balance now of `account_id` (a value or a column) as a scalar subquery: the sum of
    its running-sum rows (migration 0016), at most 16, however long its history."""
    return (
        select(func.coalesce(func.sum(AccountBalance.balance), 0))
        .where(AccountBalance.account_id == account_id)
        .scalar_subquery()
    )


def balance(session: Session, account_id: int) -> int:
    """The account's balance in cents: the sum of its committed (or own) postings."""
    # PostgreSQL's sum(bigint) is numeric (a Decimal in Python): return int cents.
    return int(session.scalar(select(current_balance(account_id))) or 0)


def balances(session: Session, account_ids: Iterable[int]) -> dict[int, int]:
    """Balances of several accounts in one query; accounts without postings are 0."""
    ids = list(set(account_ids))
    result = dict.fromkeys(ids, 0)
    if ids:
        rows = session.execute(
            select(AccountBalance.account_id, func.sum(AccountBalance.balance))
            .where(AccountBalance.account_id.in_(ids))
            .group_by(AccountBalance.account_id)
        )
        result.update({account_id: int(total) for account_id, total in rows})
    return result


def balance_through(account_id: int, posting_id: Any) -> ColumnElement[Any]:
    """The account's balance after its posting `posting_id` and those before it: the balance
    now less the postings after it, so it costs what came later, not the whole history."""
    later = (
        select(func.coalesce(func.sum(Posting.amount), 0))
        .where(Posting.account_id == account_id, Posting.id > posting_id)
        .scalar_subquery()
    )
    return current_balance(account_id) - later


def disagreeing_balances(session: Session, limit: int = 10) -> list[tuple[int, int, int]]:
    """Accounts whose running sum (`account_balances`) is not the sum of their postings, as
    (account, running sum, postings' sum): DESIGN invariant 2, which the trigger of migration
    0016 keeps; always empty unless the database was written around it."""
    kept = (select(AccountBalance.account_id, func.sum(AccountBalance.balance).label("total"))
            .group_by(AccountBalance.account_id).subquery())
    summed = (select(Posting.account_id, func.sum(Posting.amount).label("total"))
              .group_by(Posting.account_id).subquery())
    kept_total, summed_total = func.coalesce(kept.c.total, 0), func.coalesce(summed.c.total, 0)
    rows = session.execute(
        select(func.coalesce(kept.c.account_id, summed.c.account_id), kept_total, summed_total)
        .select_from(kept.join(summed, summed.c.account_id == kept.c.account_id, full=True))
        .where(kept_total != summed_total).limit(limit)
    )
    return [(account, int(kept_sum), int(summed_sum)) for account, kept_sum, summed_sum in rows]


def balance_at(session: Session, account_id: int, until: datetime) -> int:
    """The account's balance counting only entries booked before `until` (exclusive)."""
    total = session.scalar(
        select(func.coalesce(func.sum(Posting.amount), 0))
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(Posting.account_id == account_id, JournalEntry.created_at < until)
    )
    return int(total or 0)


def _validate(entry: Entry) -> None:
    if not isinstance(entry.type, EntryType):
        raise InvalidInput(f"entry {entry.key}: unknown type {entry.type!r}", field="type")
    if not entry.key or len(entry.key) > 200:
        raise InvalidInput("entry: idempotency key must be 1 to 200 characters", field="request_id")
    if not entry.description.strip() or len(entry.description) > 200:
        raise InvalidInput(
            f"entry {entry.key}: description must be 1 to 200 characters", field="description"
        )
    if len(entry.lines) < 2:
        raise UnbalancedEntry(f"entry {entry.key}: needs at least two postings")
    accounts = [line.account_id for line in entry.lines]
    if len(set(accounts)) != len(accounts):
        raise UnbalancedEntry(f"entry {entry.key}: an account appears twice")
    for line in entry.lines:
        if isinstance(line.amount, bool) or not isinstance(line.amount, int) or line.amount == 0:
            raise UnbalancedEntry(f"entry {entry.key}: posting amounts must be non-zero cents")
    total = sum(line.amount for line in entry.lines)
    if total != 0:
        raise UnbalancedEntry(f"entry {entry.key}: postings sum to {format_cents(total)}, not 0.00")
    if entry.client is not None and not 1 <= len(entry.client) <= 64:
        raise InvalidInput(f"entry {entry.key}: client must be 1 to 64 characters", field="client")
    if entry.allow_negative and not _may_overdraw(entry):
        raise InvalidInput(
            f"entry {entry.key}: only an admin adjustment or an event refund may allow a negative balance",
            field="allow_negative",
        )


def _may_overdraw(entry: Entry) -> bool:
    """An admin's adjustment, or an event's refund (ORIGINAL 2.7 books those with no check of
    the organisation's balance). A refund never overdraws a member: `_post_portable` and the
    database (migration 0014) refuse one that debits a member."""
    if entry.type is EntryType.MANUAL_ADJUSTMENT:
        return bool(entry.admin_id)
    return entry.type is EntryType.REFUND and bool(entry.event_id)


def _first_booking(session: Session, entry: Entry, digest: str) -> Booking | None:
    """The booking already made under the entry's key, if any; a different payload is a conflict."""
    first = session.execute(
        select(JournalEntry.id, JournalEntry.created_at, JournalEntry.payload_hash).where(
            JournalEntry.idempotency_key == entry.key
        )
    ).one_or_none()
    if first is None:
        return None
    if first.payload_hash != digest:
        raise _conflict(entry, first.id)
    return Booking(entry_id=first.id, created_at=first.created_at, replayed=True)


def _conflict(entry: Entry, first_entry_id: int) -> Conflict:
    return Conflict(
        f"request {entry.key}: already used for a different booking (entry {first_entry_id})",
        field="request_id",
    )


def _insufficient(session: Session, account_id: int, balance: int, debit: int) -> InsufficientFunds:
    kind, owner = _describe(session, account_id)
    return InsufficientFunds(
        f"{kind} {owner}: balance {format_cents(balance)}, needs {format_cents(-debit)}",
        account_id=account_id,
        balance=balance,
    )


def _describe(session: Session, account_id: int) -> tuple[str, str]:
    row = session.execute(select(Account.kind, Account.owner).where(Account.id == account_id)).one()
    return row.kind, row.owner


def _insert_new_key(session: Session) -> postgresql.Insert | sqlite.Insert:
    """An INSERT of a journal entry that does nothing if its idempotency key is taken.

    On PostgreSQL it waits for a concurrent transaction holding the same key to finish, so
    two concurrent bookings under one key can never both go ahead.
    """
    return dialect_insert(session)(JournalEntry).on_conflict_do_nothing(index_elements=["idempotency_key"])


def entry_lines(session: Session, key: str) -> list[tuple[int, int]]:
    """The (account, amount) postings of the entry booked under `key` (to reverse it)."""
    return [
        (row.account_id, row.amount)
        for row in session.execute(
            select(Posting.account_id, Posting.amount)
            .join(JournalEntry, JournalEntry.id == Posting.entry_id)
            .where(JournalEntry.idempotency_key == key)
            .order_by(Posting.id)
        )
    ]
