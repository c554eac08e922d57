"""The schema as typed SQLAlchemy models (SPEC 1, DESIGN invariants 1 to 3).

Accounts hold no balance column: a balance is the sum of the account's postings, so it can
never drift from them, and crediting a busy club needs no write to (and no lock on) a shared
row. Entries and postings are immutable; the migration adds the triggers that enforce it and,
on PostgreSQL, a deferred check that every entry sums to zero.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    JSON,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Cents = Annotated[int, mapped_column(BigInteger)]
Timestamp = Annotated[datetime, mapped_column(UTCDateTime())]


class AccountKind(enum.StrEnum):
    MEMBER = "member"
    ORGANISATION = "organisation"
    SYSTEM = "system"


class SystemAccount(enum.StrEnum):
    """The federation's own accounts (SPEC 1)."""

    STRIPE = "stripe"  # card money received, refunds paid out
    FEES = "fees"  # the federation's fee income
    BANK = "bank"  # settlements paid to clubs
    ADJUSTMENTS = "adjustments"  # manual corrections


class EntryType(enum.StrEnum):
    """Transaction types shown on statements (SPEC 1)."""

    AUTO_TOP_UP = "Auto Top Up"
    MANUAL_TOP_UP = "Manual Top Up"
    CC_PAYMENT = "CC Payment"
    CLUB_PAYMENT = "Club Payment"
    CLUB_MEMBERSHIP = "Club Membership"
    CLUB_TOP_UP = "Club Top Up"
    CLUB_TOP_UP_REV = "Club Top Up Rev"
    EVENT_ENTRY = "Entry to an event"
    MEMBER_TRANSFER = "Member Transfer"
    ORG_TRANSFER = "Org Transfer"
    MISCELLANEOUS = "Miscellaneous"
    SETTLEMENT = "Settlement"
    MANUAL_ADJUSTMENT = "Manual Adjustment"
    REFUND = "Refund"
    CARD_REFUND = "Card Refund"


TOP_UP_TYPES = (EntryType.AUTO_TOP_UP, EntryType.MANUAL_TOP_UP, EntryType.CC_PAYMENT)


class AutoTopUpStatus(enum.StrEnum):
    """SPEC 4.1."""

    OFF = "off"
    PENDING = "pending"
    ON = "on"
    ACTION_REQUIRED = "action_required"
    FAILED = "failed"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("kind", "owner"),
        CheckConstraint(_in("kind", AccountKind), name="kind"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # member_id, org_id, or the system account's name.
    owner: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[Timestamp]


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (CheckConstraint(_in("auto_topup_status", AutoTopUpStatus), name="auto_topup_status"),)

    member_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), unique=True)
    email: Mapped[str] = mapped_column(String(254))
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    low_balance_emails: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_topup_status: Mapped[str] = mapped_column(String(16), default=AutoTopUpStatus.OFF.value)
    auto_topup_amount: Mapped[Cents]
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    # When the last low-balance warning was queued: at most one per 7 days (SPEC 3).
    low_balance_warned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp]


BSB_RULE = "bank_bsb IS NULL OR (length(bank_bsb) = 6 AND ltrim(bank_bsb, '0123456789') = '')"
ACCOUNT_RULE = "bank_account IS NULL OR (length(bank_account) BETWEEN 5 AND 9 AND ltrim(bank_account, '0123456789') = '')"


class Organisation(Base):
    __tablename__ = "organisations"
    __table_args__ = (
        CheckConstraint(
            "settlement_fee_percent IS NULL OR settlement_fee_percent BETWEEN 0 AND 100",
            name="settlement_fee_percent",
        ),
        CheckConstraint("minimum_balance_after_settlement >= 0", name="minimum_balance"),
        # Digits only, written so that PostgreSQL and SQLite both read it (ltrim with a set).
        CheckConstraint(BSB_RULE, name="bank_bsb"),
        CheckConstraint(ACCOUNT_RULE, name="bank_account"),
    )

    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # NULL: the default of SPEC 2 applies.
    settlement_fee_percent: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))
    minimum_balance_after_settlement: Mapped[Cents] = mapped_column(default=0)
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp]
    # Where settlements are paid (migration 0015), set by `admin` only: a BSB of 6 digits and an
    # account number of 5 to 9, digits only; NULL: not given yet (no bank file for it).
    bank_bsb: Mapped[str | None] = mapped_column(String(6))
    bank_account: Mapped[str | None] = mapped_column(String(9))


class JournalEntry(Base):
    __tablename__ = "journal_entries"
    __table_args__ = (
        CheckConstraint(_in("type", EntryType), name="type"),
        # Settlements by time (the history, each organisation's settled date), without reading
        # every entry (migration 0015).
        Index("ix_journal_entries_settlement_created_at", "created_at",
              postgresql_where=text("type = 'Settlement'"), sqlite_where=text("type = 'Settlement'")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    # sha256 of the entry's canonical payload: a reused key must carry the same one.
    payload_hash: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(200))
    reference: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[Timestamp] = mapped_column(index=True)
    event_id: Mapped[str | None] = mapped_column(String(64))
    session_id: Mapped[str | None] = mapped_column(String(64))
    admin_id: Mapped[str | None] = mapped_column(String(64))
    # The client whose request booked it (CONTRACT "Clients and scopes"); None: the service's own.
    client: Mapped[str | None] = mapped_column(String(64))


class Posting(Base):
    __tablename__ = "postings"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_not_zero"),
        UniqueConstraint("entry_id", "account_id"),
        # Balances and statements read one account's postings in id order.
        Index("ix_postings_account_id_id", "account_id", "id", postgresql_include=["amount"]),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[Cents]


class AccountBalance(Base):
    """An account's running sum of postings, kept by a trigger on `postings` in the same
    transaction (migration 0016): the account's balance is the sum of its rows, at most 16, one
    per database connection's stripe, so concurrent credits to a hot account do not queue on
    one row. Only that trigger writes it."""

    __tablename__ = "account_balances"

    # No foreign key (migration 0016): the rows come only from postings.
    account_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    balance: Mapped[Cents]


def utcnow() -> datetime:
    return datetime.now(UTC)


class RequestKind(enum.StrEnum):
    PAYMENT = "payment"
    TRANSFER = "transfer"
    SETTLEMENT = "settlement"
    TOPUP = "topup"
    REFUND = "refund"


class RequestStatus(enum.StrEnum):
    """CONTRACT statuses; `completed` is a settlement whose per-organisation results are in."""

    QUEUED = "queued"
    PAID = "paid"
    AWAITING_CARD = "awaiting_card"
    DECLINED = "declined"
    FAILED = "failed"
    COMPLETED = "completed"


TERMINAL_STATUSES = (RequestStatus.PAID, RequestStatus.DECLINED, RequestStatus.FAILED, RequestStatus.COMPLETED)


class PaymentRequest(Base):
    """One caller-chosen request id and its outcome: the one place a request's status lives."""

    __tablename__ = "payment_requests"
    __table_args__ = (
        CheckConstraint(_in("kind", RequestKind), name="kind"),
        CheckConstraint(_in("status", RequestStatus), name="status"),
        Index("ix_payment_requests_status_updated_at", "status", "updated_at"),
    )

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    payload_hash: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    member_id: Mapped[str | None] = mapped_column(String(64))
    amount: Mapped[Cents]
    reason: Mapped[str | None] = mapped_column(String(300))
    route_code: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The client (shared/access.py) that made the request; None for a task sent by name.
    client: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp]
    # Healing jobs (DESIGN invariant 12): tries so far, and not before this time (None: due).
    heal_tries: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_heal_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class OutboxKind(enum.StrEnum):
    CALLBACK = "callback"
    NOTIFICATION = "notification"


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"


class OutboxMessage(Base):
    """A side effect written in the same transaction as the change that causes it (DESIGN 6)."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(_in("kind", OutboxKind), name="kind"),
        CheckConstraint(_in("status", OutboxStatus), name="status"),
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # What makes this message unique, e.g. "callback:REQ-1": one callback per request.
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(8), default=OutboxStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[Timestamp]
    # Not before this time: a failed send backs off until then.
    next_attempt_at: Mapped[Timestamp]
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class EventStatus(enum.StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


class StripeEvent(Base):
    """The inbox: every Stripe event accepted by the webhook, kept and replayable (DESIGN 7, 8)."""

    __tablename__ = "stripe_events"
    __table_args__ = (
        CheckConstraint(_in("status", EventStatus), name="status"),
        Index("ix_stripe_events_status_updated_at", "status", "updated_at"),
    )

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    received_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp]
    # Healing jobs (DESIGN invariant 12): tries so far, and not before this time (None: due).
    heal_tries: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_heal_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class CardPaymentKind(enum.StrEnum):
    AUTO_TOP_UP = "auto_topup"  # off-session, saved card
    MANUAL_TOP_UP = "manual_topup"  # saved card at once, or a checkout with a new card
    CHECKOUT = "checkout"  # card money for a payment request short of funds


class CardPaymentStatus(enum.StrEnum):
    PENDING = "pending"  # committed before Stripe is called; the charge may or may not exist
    AWAITING_CARD = "awaiting_card"  # a checkout waiting for the browser
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ACTION_REQUIRED = "action_required"
    # Stripe took money that does not match the attempt (amount or currency): not booked, the
    # waiting request not paid; an admin decides (SPEC 5, `payments_card_payments_held`).
    HELD = "held"


IN_FLIGHT = (CardPaymentStatus.PENDING.value,)


class CardPayment(Base):
    """One attempt to take card money, committed before Stripe is called (DESIGN 5).

    Its `attempt_key` is the idempotency key of the Stripe call and the key of the booking, so
    no retry, redelivery or second scheduler can charge or book it twice; at most one auto
    top-up per member is in flight (a partial unique index).
    """

    __tablename__ = "card_payments"
    __table_args__ = (
        CheckConstraint(_in("kind", CardPaymentKind), name="kind"),
        CheckConstraint(_in("status", CardPaymentStatus), name="status"),
        CheckConstraint("amount > 0", name="amount_positive"),
        Index(
            "uq_card_payments_one_top_up_in_flight",
            "member_id",
            unique=True,
            postgresql_where="status = 'pending' AND kind = 'auto_topup'",
            sqlite_where=text("status = 'pending' AND kind = 'auto_topup'"),
        ),
        Index("ix_card_payments_status_updated_at", "status", "updated_at"),
        # The card payments list: one member's, or a period's (migration 0015).
        Index("ix_card_payments_member_id_created_at", "member_id", "created_at"),
        Index("ix_card_payments_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    attempt_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    member_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[Cents]
    # The payment request this card money is for (checkout, or a top-up inside a payment).
    request_id: Mapped[str | None] = mapped_column(String(64))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    client_secret: Mapped[str | None] = mapped_column(String(255))
    entry_id: Mapped[int | None] = mapped_column(BigInteger)
    # Times a Stripe call was started for it: after the first, look it up before charging again.
    tries: Mapped[int] = mapped_column(Integer, default=0)
    refunded: Mapped[Cents] = mapped_column(default=0)
    # What Stripe reported happening outside the service (refunds, disputes), for admins.
    stripe_notes: Mapped[list[Any] | None] = mapped_column(JSON)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp]
    # Healing jobs (DESIGN invariant 12): tries so far, and not before this time (None: due).
    heal_tries: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_heal_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The card that paid (migration 0012), as Stripe reported it when the money was booked.
    card_brand: Mapped[str | None] = mapped_column(String(20))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    card_exp_month: Mapped[int | None] = mapped_column(SmallInteger)
    card_exp_year: Mapped[int | None] = mapped_column(SmallInteger)
    receipt_url: Mapped[str | None] = mapped_column(String(500))


class Client(Base):
    """A calling module, portal, staff tool or monitor (CONTRACT "Clients and scopes"): its
    scopes and bindings, and the key its callbacks are signed with. Its tokens are kept only as
    SHA-256 hashes, in `client_tokens`. The bootstrap client `admin` (PAYMENTS_API_TOKEN) is not
    stored."""

    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    # Bindings; None: not bound.
    route_codes: Mapped[list[str] | None] = mapped_column(JSON)
    request_prefix: Mapped[str | None] = mapped_column(String(64))
    organisations: Mapped[list[str] | None] = mapped_column(JSON)
    callback_key: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[Timestamp]
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ClientToken(Base):
    """One token of a client, as the hex SHA-256 of the token; several live during a rotation,
    the old ones until `expires_at`."""

    __tablename__ = "client_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[Timestamp]
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IouStatus(enum.StrEnum):
    OPEN = "open"
    PAID = "paid"
    CANCELLED = "cancelled"


class Iou(Base):
    """What a member owes a club, raised by the club (ORIGINAL 1.7 and 2.11; migration 0013). It
    books nothing: the member pays it later with a payment to the club (`payment_request_id`,
    the payment that paid it or is paying it). `request_id` is the raiser's idempotency key and
    the request id of the IOU's own callback. Kept when paid or cancelled, never deleted."""

    __tablename__ = "ious"
    __table_args__ = (
        CheckConstraint(_in("status", IouStatus), name="status"),
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_ious_member_id_created_at", "member_id", "created_at"),
        Index("ix_ious_organisation_id_created_at", "organisation_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    organisation_id: Mapped[str] = mapped_column(ForeignKey("organisations.org_id"))
    member_id: Mapped[str] = mapped_column(ForeignKey("members.member_id"))
    amount: Mapped[Cents]
    description: Mapped[str] = mapped_column(String(80))
    route_code: Mapped[str | None] = mapped_column(String(64))
    route_payload: Mapped[Any] = mapped_column(JSON, nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(64))
    event_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=IouStatus.OPEN.value)
    payment_request_id: Mapped[str | None] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[Timestamp]
    updated_at: Mapped[Timestamp]
