"""Manual adjustments by an admin (SPEC 5): a signed amount against a member or organisation,
with the `adjustments` account on the other side, the admin's id and the reason recorded.
Only an adjustment that says so explicitly may take an account below zero.

The entry's idempotency key is `adjustment:{request_id}` (SPEC 5: keys are namespaced by kind),
so an admin's request id such as `payment:X` or `settlement:ORG:DATE` cannot take the key of
another booking. Adjustments booked before keys were namespaced carry the bare request id as
their key; that key is looked up first, so replaying one still returns the first booking (or a
409 for a different payload)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import ledger, profiles
from shared.errors import Conflict, InvalidInput
from shared.ledger import Booking, Entry, Line
from shared.models import EntryType, JournalEntry, SystemAccount


@dataclass(frozen=True)
class Adjustment:
    request_id: str
    amount: int  # signed cents: positive credits the member or organisation
    description: str
    admin_id: str
    member_id: str | None = None
    organisation_id: str | None = None
    allow_negative: bool = False


def book_adjustment(session: Session, adjustment: Adjustment, *, client: str | None = None) -> Booking:
    """Book it for `client` (who is recorded on the entry; `admin_id` is only a note)."""
    if adjustment.amount == 0:
        raise InvalidInput("amount: an adjustment of 0.00 books nothing", field="amount")
    if adjustment.member_id is not None:
        account_id = profiles.get_member(session, adjustment.member_id).account_id
    elif adjustment.organisation_id is not None:
        account_id = profiles.get_organisation(session, adjustment.organisation_id).account_id
    else:
        raise InvalidInput("member_id or organisation_id is required", field="member_id")
    adjustments = profiles.system_account(session, SystemAccount.ADJUSTMENTS)
    entry = Entry(
        key=f"adjustment:{adjustment.request_id}",
        type=EntryType.MANUAL_ADJUSTMENT,
        description=adjustment.description,
        # What the bare key gave before: statements show the admin's request id.
        reference=adjustment.request_id,
        lines=(Line(account_id, adjustment.amount), Line(adjustments, -adjustment.amount)),
        admin_id=adjustment.admin_id,
        allow_negative=adjustment.allow_negative,
        client=client,
    )
    legacy = _legacy_booking(session, adjustment.request_id, entry)
    return legacy if legacy is not None else ledger.post(session, entry)


def _legacy_booking(session: Session, request_id: str, entry: Entry) -> Booking | None:
    """The adjustment booked under the bare `request_id` before keys were namespaced, if any.

    Only a Manual Adjustment counts: a payment or settlement under that key is another booking.
    No code books bare keys any more, so nothing can appear here between the look-up and `post`.
    """
    first = session.execute(
        select(JournalEntry.id, JournalEntry.created_at, JournalEntry.payload_hash).where(
            JournalEntry.idempotency_key == request_id,
            JournalEntry.type == EntryType.MANUAL_ADJUSTMENT.value,
        )
    ).one_or_none()
    if first is None:
        return None
    # Such an entry had no reference of its own (it showed its key), and its hash says so.
    if first.payload_hash != replace(entry, reference=None).payload_hash():
        raise Conflict(
            f"request {request_id}: already used for a different booking (entry {first.id})", field="request_id"
        )
    return Booking(entry_id=first.id, created_at=first.created_at, replayed=True)
