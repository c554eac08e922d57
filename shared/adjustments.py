"""Manual adjustments by an admin (SPEC 5): a signed amount against a member or organisation,
with the `adjustments` account on the other side, the admin's id and the reason recorded.
Only an adjustment that says so explicitly may take an account below zero."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from shared import ledger, profiles
from shared.errors import InvalidInput
from shared.ledger import Booking, Entry, Line
from shared.models import EntryType, SystemAccount


@dataclass(frozen=True)
class Adjustment:
    request_id: str
    amount: int  # signed cents: positive credits the member or organisation
    description: str
    admin_id: str
    member_id: str | None = None
    organisation_id: str | None = None
    allow_negative: bool = False


def book_adjustment(session: Session, adjustment: Adjustment) -> Booking:
    if adjustment.amount == 0:
        raise InvalidInput("amount: an adjustment of 0.00 books nothing", field="amount")
    if adjustment.member_id is not None:
        account_id = profiles.get_member(session, adjustment.member_id).account_id
    elif adjustment.organisation_id is not None:
        account_id = profiles.get_organisation(session, adjustment.organisation_id).account_id
    else:
        raise InvalidInput("member_id or organisation_id is required", field="member_id")
    adjustments = profiles.system_account(session, SystemAccount.ADJUSTMENTS)
    return ledger.post(
        session,
        Entry(
            key=adjustment.request_id,
            type=EntryType.MANUAL_ADJUSTMENT,
            description=adjustment.description,
            lines=(Line(account_id, adjustment.amount), Line(adjustments, -adjustment.amount)),
            admin_id=adjustment.admin_id,
            allow_negative=adjustment.allow_negative,
        ),
    )
