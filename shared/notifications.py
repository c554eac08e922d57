"""The e-mails of SPEC 6 and ORIGINAL 6.9 (transfer sent and received, money from an
organisation, low balance, auto top-up, card refund, IOU raised), composed here and queued
in the outbox in the caller's transaction. The low-balance warning goes to members who opted
in, at most once per member per `low_balance_warning_days` (SPEC 3)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from shared import outbox, statements
from shared.models import EntryType, Iou, Member, Organisation, utcnow
from shared.money import format_cents


def transfer_emails(
    session: Session, request_id: str, sender: Member, recipient: Member, amount: int, description: str
) -> None:
    money = format_cents(amount)
    outbox.add_notification(
        session,
        f"transfer-sent:{request_id}",
        _email(
            sender,
            "transfer_sent",
            f"Transfer to {recipient.first_name} {recipient.last_name}",  # ORIGINAL 6.9's subjects
            f"You transferred {money} to {recipient.first_name} {recipient.last_name}: {description}.",
        ),
        request_id=request_id,
    )
    outbox.add_notification(
        session,
        f"transfer-received:{request_id}",
        _email(
            recipient,
            "transfer_received",
            f"Transfer from {sender.first_name} {sender.last_name}",
            f"{sender.first_name} {sender.last_name} transferred {money} to you: {description}.",
        ),
        request_id=request_id,
    )


# ORIGINAL 6.9: "Transfer from {org}" (payments app) and "Payment from {club}" (club admin);
# a club top-up and a refund say what they are.
_FROM_ORGANISATION = {
    EntryType.ORG_TRANSFER: ("Transfer from {org}", "{org} transferred {money} to you"),
    EntryType.CLUB_TOP_UP: ("Top up from {org}", "{org} topped up your Bridge Credits by {money}"),
    EntryType.REFUND: ("Refund from {org}", "{org} refunded {money} to you"),
    EntryType.CLUB_MEMBERSHIP: ("Payment from {org}", "{org} paid you {money}"),
    EntryType.MISCELLANEOUS: ("Payment from {org}", "{org} paid you {money}"),
}


def organisation_transfer_email(
    session: Session, request_id: str, organisation: Organisation, member: Member, amount: int, description: str,
    entry_type: EntryType,
) -> None:
    """To the member an organisation paid: who, how much, what for, and the ids it named."""
    subject, text = _FROM_ORGANISATION[entry_type]
    body = text.format(org=organisation.name, money=format_cents(amount)) + f": {description}."
    outbox.add_notification(
        session, f"transfer-from-organisation:{request_id}",
        _email(member, "transfer_from_organisation", subject.format(org=organisation.name), body),
        request_id=request_id,
    )


def maybe_warn_low_balance(
    session: Session, member: Member, balance: int, *, zone: ZoneInfo, throttle_days: int
) -> bool:
    """Queue a low-balance e-mail unless the member opted out or had one recently."""
    now = utcnow()
    if not member.low_balance_emails:
        return False
    if member.low_balance_warned_at and now - member.low_balance_warned_at < timedelta(days=throttle_days):
        return False
    member.low_balance_warned_at = now
    recent = statements.statement(session, member.account_id, zone, limit=5)
    lines = "\n".join(
        f"  {row.date:%Y-%m-%d %H:%M}  {row.type:<18} {format_cents(row.amount):>10}  {row.description}"
        for row in recent
    )
    outbox.add_notification(
        session,
        f"low-balance:{member.member_id}:{now.isoformat()}",
        _email(
            member,
            "low_balance",
            "Your Bridge Credits balance is low",
            f"Your balance is {format_cents(balance)}.\n\nYour last transactions:\n{lines}\n",
        ),
    )
    return True


def card_refund_email(
    session: Session, request_id: str, member: Member, *, to_card: str, debited: int, admin_id: str | None
) -> None:
    """ORIGINAL 6.9 "Card Refund", once the refund has reached Stripe: what the card gets, that
    it takes up to two weeks, and what left the balance; who refunded it when an admin did."""
    who = f"{admin_id} refunded" if admin_id else "We are refunding"
    body = (f"{who} {to_card} to your card. It can take up to two weeks to appear on your statement. "
            f"Your Bridge Credits balance was reduced by {format_cents(debited)}.")
    outbox.add_notification(session, f"card-refund:{request_id}", _email(member, "card_refund", "Card Refund", body),
                            request_id=request_id)


def iou_email(session: Session, iou: Iou, member: Member, club: str) -> None:
    """ORIGINAL 6.9 "Pending Payment to {club}", when a club raises an IOU: what is owed, for
    what, and that it can be paid later (nothing has been taken from the balance)."""
    body = (f"{club} has recorded that you owe {format_cents(iou.amount)} for: {iou.description}.\n\n"
            "Nothing has been taken from your Bridge Credits. You can pay it later, when you next "
            "log in; it stays listed as a pending payment until you do.")
    outbox.add_notification(session, f"iou-raised:{iou.id}",
                            _email(member, "iou_raised", f"Pending Payment to {club}", body),
                            request_id=iou.request_id)


def _email(member: Member, kind: str, subject: str, body: str) -> dict[str, str]:
    return {
        "kind": kind,
        "member_id": member.member_id,
        "to": member.email,
        "subject": subject,
        "body": f"Dear {member.first_name},\n\n{body}\n",
    }


_AUTO_TOPUP_EMAILS = {
    "success": ("Auto top up successful", "We topped up your Bridge Credits by {amount} from your saved card."),
    "failure": (
        "Auto Top Up Failure",
        "Your card was declined for an auto top up of {amount}. Auto top up is off until you save a card again.",
    ),
    "action_required": (
        "Your bank needs you to confirm an auto top up",
        "Your bank asked you to authenticate an auto top up of {amount}. Please confirm it{link}",
    ),
}


def auto_topup_email(session: Session, member: Member, attempt: Any, outcome: str, *, link: str | None = None) -> None:
    """SPEC 4.3: success, failure, or authentication needed (with the page's link,
    `shared.page_links`, when the service can make one)."""
    subject, text = _AUTO_TOPUP_EMAILS[outcome]
    body = text.format(amount=format_cents(attempt.amount), link=f": {link}" if link else " when you next log in.")
    outbox.add_notification(
        session, f"auto-topup-{outcome}:{attempt.attempt_key}", _email(member, f"auto_topup_{outcome}", subject, body)
    )
