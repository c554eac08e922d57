"""What payments keeps of members and organisations, and their accounts (CONTRACT: members and
organisations). The other modules own people and clubs; they tell us names and e-mails with
PUT, which creates the profile and its ledger account on first use and updates it after.

An optional field left out of a PUT keeps its stored value (`KEEP`); an explicit null puts
back the default (the settlement fee: SPEC 2's default; the minimum balance: 0.00; low-balance
e-mails: off). So an update that does not mention a negotiated fee never resets it."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from shared.errors import InvalidInput, NotFound
from shared.models import Account, AccountKind, Member, Organisation, SystemAccount, utcnow


class Keep(enum.Enum):
    """An optional field that was left out: the stored value stays (a new profile: the default)."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True)
class MemberDetails:
    email: str
    first_name: str
    last_name: str
    low_balance_emails: bool | None | Keep = KEEP  # None: the default, off


@dataclass(frozen=True)
class OrganisationDetails:
    name: str
    settlement_fee_percent: Decimal | None | Keep = KEEP  # None: the default of SPEC 2 (stored NULL)
    minimum_balance_after_settlement: int | None | Keep = KEEP  # None: the default, 0
    bank_bsb: str | None | Keep = KEEP  # 6 digits; None: clear it
    bank_account: str | None | Keep = KEEP  # 5 to 9 digits; None: clear it


_BSB = re.compile(r"([0-9]{3})-?([0-9]{3})")  # ASCII digits only (\\d would take any script's digits)
_ACCOUNT = re.compile(r"[0-9]{5,9}")


def bank_bsb(value: object, field: str = "bank_bsb") -> str:
    """A BSB as stored: 6 digits, given as `123456` or `123-456` (a string: a number would lose
    a leading zero, and BSBs of NSW banks start with 0)."""
    found = _BSB.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise InvalidInput(f"{field}: a BSB is 6 digits, as \"123456\" or \"123-456\"", field=field)
    return found.group(1) + found.group(2)


def show_bsb(stored: str | None) -> str | None:
    """A stored BSB as people and banks write it: `123-456`."""
    return None if stored is None else f"{stored[:3]}-{stored[3:]}"


def bank_account(value: object, field: str = "bank_account") -> str:
    """An account number as stored: 5 to 9 digits, as a string (leading zeros kept)."""
    if not isinstance(value, str) or not _ACCOUNT.fullmatch(value):
        raise InvalidInput(f"{field}: an account number is 5 to 9 digits, as a string", field=field)
    return value


def put_member(
    session: Session, member_id: str, details: MemberDetails, *, default_topup_amount: int
) -> tuple[Member, bool]:
    """Create or update a member's profile; returns it and whether it was created."""
    now = utcnow()
    member = session.get(Member, member_id, with_for_update=True)
    created = member is None
    if member is None:
        account = _open_account(session, AccountKind.MEMBER, member_id)
        member = Member(
            member_id=member_id,
            account_id=account.id,
            low_balance_emails=False,
            auto_topup_amount=default_topup_amount,
            created_at=now,
        )
        session.add(member)
    member.email = details.email
    member.first_name = details.first_name
    member.last_name = details.last_name
    if details.low_balance_emails is not KEEP:
        member.low_balance_emails = bool(details.low_balance_emails)
    member.updated_at = now
    session.flush()
    return member, created


def put_organisation(
    session: Session, org_id: str, details: OrganisationDetails
) -> tuple[Organisation, bool]:
    """Create or update an organisation's profile; returns it and whether it was created."""
    now = utcnow()
    org = session.get(Organisation, org_id, with_for_update=True)
    created = org is None
    if org is None:
        account = _open_account(session, AccountKind.ORGANISATION, org_id)
        org = Organisation(
            org_id=org_id, account_id=account.id, minimum_balance_after_settlement=0, created_at=now
        )
        session.add(org)
    org.name = details.name
    if not isinstance(details.settlement_fee_percent, Keep):
        org.settlement_fee_percent = details.settlement_fee_percent
    if not isinstance(details.minimum_balance_after_settlement, Keep):
        org.minimum_balance_after_settlement = details.minimum_balance_after_settlement or 0
    if not isinstance(details.bank_bsb, Keep):
        org.bank_bsb = details.bank_bsb
    if not isinstance(details.bank_account, Keep):
        org.bank_account = details.bank_account
    org.updated_at = now
    session.flush()
    return org, created


def get_member(session: Session, member_id: str) -> Member:
    member = session.get(Member, member_id)
    if member is None:
        raise NotFound(f"member {member_id}: not known to payments", field="member_id")
    return member


def get_organisation(session: Session, org_id: str) -> Organisation:
    org = session.get(Organisation, org_id)
    if org is None:
        raise NotFound(f"organisation {org_id}: not known to payments", field="organisation_id")
    return org


@dataclass(frozen=True)
class Parties:
    """The accounts of a payment, found in one query: the paying member's and the payee's."""

    member_account: int
    auto_topup_status: str
    payee_account: int


_MEMBERS, _ORGS, _ACCOUNTS = Member.__table__, Organisation.__table__, Account.__table__
_PARTIES = select(
    _MEMBERS.c.account_id,
    _MEMBERS.c.auto_topup_status,
    select(_ORGS.c.account_id).where(_ORGS.c.org_id == bindparam("org")).scalar_subquery().label("org"),
    select(_MEMBERS.c.account_id)
    .where(_MEMBERS.c.member_id == bindparam("other"))
    .scalar_subquery()
    .label("other"),
    select(_ACCOUNTS.c.id)
    .where(_ACCOUNTS.c.kind == AccountKind.SYSTEM.value, _ACCOUNTS.c.owner == SystemAccount.FEES.value)
    .scalar_subquery()
    .label("fees"),
).where(_MEMBERS.c.member_id == bindparam("member"))


def payment_parties(
    session: Session, member_id: str, *, organisation_id: str | None, other_member_id: str | None
) -> Parties:
    """The payer and the payee (an organisation, another member, or else the federation's `fees`)."""
    found = session.connection().execute(
        _PARTIES, {"member": member_id, "org": organisation_id, "other": other_member_id}
    ).one_or_none()
    if found is None:
        raise NotFound(f"member {member_id}: not known to payments", field="member_id")
    if organisation_id is not None and found.org is None:
        raise NotFound(f"organisation {organisation_id}: not known to payments", field="organisation_id")
    if other_member_id is not None and found.other is None:
        raise NotFound(f"member {other_member_id}: not known to payments", field="other_member_id")
    payee = found.org if organisation_id else found.other if other_member_id else found.fees
    return Parties(member_account=found.account_id, auto_topup_status=found.auto_topup_status, payee_account=payee)


def system_account(session: Session, name: SystemAccount) -> int:
    """The id of one of the federation's own accounts (created by the first migration)."""
    return session.scalars(
        select(Account.id).where(Account.kind == AccountKind.SYSTEM.value, Account.owner == name.value)
    ).one()


def _open_account(session: Session, kind: AccountKind, owner: str) -> Account:
    account = Account(kind=kind.value, owner=owner, created_at=utcnow())
    session.add(account)
    session.flush()
    return account
