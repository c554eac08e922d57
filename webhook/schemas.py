"""The `/api/*` bodies and answers as pydantic v2 models: declared once, they make the OpenAPI
description (`webhook.openapi`), and the bodies' models are what validates them.

The request bodies the Celery tasks share (payments, transfers, settlements, refunds, top-ups,
IOUs) are declared next to their parsers in shared/, the one entry for HTTP and tasks; the
others here. Both are built from `shared.bodies`: each field runs the check `shared.fields` or
`shared.money` has always made, and says in JSON Schema what it accepts. Money in is a string
with two decimals (`"12.34"`) or an integer of whole units, never a JSON number with a fraction
(SPEC; `shared.money.parse_cents` refuses a float); money out is always such a string. Request
models allow extra fields (the parsers ignore them), answers may grow (CONTRACT: "add freely"),
so every model allows properties it does not name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from shared import fields, ious, payments, refunds, settlements, topups, transfers
from shared.bodies import (CheckedEmail, CheckedFlag, CheckedId, CheckedName, CheckedOptionalAccount,
                           CheckedOptionalBsb, CheckedOptionalFlag, CheckedOptionalId, CheckedOptionalMinimum,
                           CheckedOptionalPercent, CheckedSignedAmount, CheckedText80, CheckedText200, Validating,
                           required, validated)

__all__ = ["validated"]  # the routes' entry, from shared.bodies

MONEY_PATTERN = r"^-?[0-9]+\.[0-9]{2}$"

# Out: always a string with two decimals.
Money = Annotated[str, Field(pattern=MONEY_PATTERN, description='money, a string such as "12.34"')]
Time = Annotated[str, Field(description="ISO 8601 with offset", json_schema_extra={"format": "date-time"})]
# A local calendar day in an answer.
Day = Annotated[str, Field(description="YYYY-MM-DD, local", json_schema_extra={"format": "date"})]


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")


# Errors -----------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    message: str
    field: str | None = Field(default=None, description="the request field at fault, when there is one")


class Error(BaseModel):
    """CONTRACT's error shape, for every 4xx and 503."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


# Requests ---------------------------------------------------------------------------------


class MemberIn(Validating):
    """`PUT /api/members/{member_id}` (validated by this model)."""

    model_config = ConfigDict(json_schema_extra=required("email", "first_name", "last_name"))
    email: CheckedEmail = None  # type: ignore[assignment]
    first_name: CheckedName = None  # type: ignore[assignment]
    last_name: CheckedName = None  # type: ignore[assignment]
    low_balance_emails: CheckedOptionalFlag = None


class OrganisationIn(Validating):
    """`PUT /api/organisations/{org_id}` (validated by this model): an optional field absent
    keeps the stored value, null sets the default (see `model_fields_set`)."""

    model_config = ConfigDict(json_schema_extra=required("name"))
    name: CheckedText200 = None  # type: ignore[assignment]
    settlement_fee_percent: CheckedOptionalPercent = None
    minimum_balance_after_settlement: CheckedOptionalMinimum = None
    bank_bsb: CheckedOptionalBsb = None
    bank_account: CheckedOptionalAccount = None


class AdjustmentIn(Validating):
    """`POST /api/adjustments` (validated by this model; `max_amount` in the context)."""

    model_config = ConfigDict(json_schema_extra=required("request_id", "amount", "description", "admin_id"))
    request_id: CheckedId = None  # type: ignore[assignment]
    amount: CheckedSignedAmount = None  # type: ignore[assignment]
    description: CheckedText80 = None  # type: ignore[assignment]
    admin_id: CheckedId = None  # type: ignore[assignment]
    allow_negative: CheckedFlag = False
    # Checked after the fields above, as the hand-written parser did.
    member_id: CheckedOptionalId = Field(default=None, description="exactly one of member_id and organisation_id")
    organisation_id: CheckedOptionalId = None

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, body: Any) -> Any:
        fields.only_one(body, "member_id", "organisation_id")  # first, as it always was
        return body


# Validated by the parsers in shared/ (the Celery tasks' entry too), described from the same models.
PaymentIn = payments.PaymentIn
TransferIn = transfers.TransferIn
SettlementIn = settlements.SettlementIn
RefundIn = refunds.RefundIn
TopupIn = topups.TopupIn
AutoTopupAmountIn = topups.AutoTopupAmountIn
IouIn = ious.IouIn


class IouPayIn(Validating):
    """`POST /api/ious/{iou_id}/pay` (validated by this model)."""

    model_config = ConfigDict(json_schema_extra=required("request_id"))
    request_id: CheckedId = None  # type: ignore[assignment]
    allow_checkout: CheckedFlag = False


# Answers ----------------------------------------------------------------------------------


class AutoTopup(Model):
    status: str
    amount: Money | None = None


class Member(Model):
    member_id: str
    email: str
    first_name: str
    last_name: str
    low_balance_emails: bool
    auto_topup: AutoTopup


class Organisation(Model):
    organisation_id: str
    name: str
    settlement_fee_percent: str | None
    minimum_balance_after_settlement: Money
    bank_bsb: str | None
    bank_account: str | None


class Balance(Model):
    """A balance now (a member's also shows its last top-up and auto top-up), or at the end of
    `date`."""

    balance: Money
    member_id: str | None = None
    organisation_id: str | None = None
    date: Day | None = Field(default=None, description="only when asked for a date")
    last_top_up: Time | None = Field(default=None, description="a member's, now: its last top-up's time")
    auto_topup: AutoTopup | None = Field(default=None, description="a member's, now")


class Checkout(Model):
    """What a browser needs to pay by card (`awaiting_card`); `url` is the hosted page."""

    payment_intent_id: str
    client_secret: str
    amount: Money
    publishable_key: str | None
    url: str | None = None


class SettlementOutcome(Model):
    """One organisation in a settlement request's outcome (`shared.settlements.settle`): the
    amounts once assessed; `entry_id` once booked (or found booked); `reason` when it failed."""

    organisation_id: str
    status: Literal["settled", "already_settled", "nothing_to_settle", "failed"]
    gross: Money | None = None
    net: Money | None = None
    fee: Money | None = None
    bank_amount: Money | None = None
    fee_percent: str | None = None
    entry_id: int | None = None
    reason: str | None = None


class RequestStatus(Model):
    """`GET /api/payments/{request_id}`: any request's status document, with its kind's outcome
    once decided (a settlement's organisations, a refund's booking)."""

    request_id: str
    kind: str
    status: str
    amount: Money
    client: str | None
    reason: str | None = None
    checkout: Checkout | None = None
    reference_date: Day | None = Field(default=None, description="a settlement's")
    organisations: list[SettlementOutcome] | None = Field(default=None, description="a settlement's, once completed")
    booked: bool | None = Field(default=None, description="a refund's, once booked")
    entry_id: int | None = Field(default=None, description="a refund's booking")
    member_id: str | None = Field(default=None, description="a refund's: the member the card money came from")
    to_card: Money | None = Field(default=None, description="a refund's: what goes back to the card")
    fee: Money | None = Field(default=None, description="a refund's: the fee kept (a member's refund)")
    stripe_refund_id: str | None = Field(default=None, description="a refund's, once Stripe took it")
    waiting_for_top_up: int | None = Field(
        default=None, description="a queued payment's: the card top-up (its attempt id) it waits for")


class Adjustment(Model):
    request_id: str
    status: Literal["booked"]
    entry_id: int
    amount: Money
    created_at: Time
    replayed: bool


class Iou(Model):
    iou_id: int
    request_id: str
    status: str
    organisation_id: str
    member_id: str
    amount: Money
    description: str
    route_code: str | None
    route_payload: Any = Field(description="as sent when it was raised")
    session_id: str | None
    event_id: str | None
    payment_request_id: str | None = Field(description="the payment that paid it, once paid")
    client: str | None
    created_at: Time
    updated_at: Time


class IouList(Model):
    ious: list[Iou]


class AutoTopupSetup(Model):
    setup_intent_id: str
    client_secret: str
    publishable_key: str | None


class AutoTopupState(Model):
    member_id: str
    auto_topup: AutoTopup


class StatementLine(Model):
    date: Time
    counterparty: str | None
    reference: str | None
    type: str
    description: str | None
    amount: Money
    balance: Money
    event_id: str | None
    session_id: str | None


class Statement(Model):
    """A statement page (`format=json`): its lines, where it goes on, its balances and dates."""

    member_id: str | None = None
    organisation_id: str | None = None
    rows: list[StatementLine]
    next_cursor: str | None
    opening_balance: Money
    closing_balance: Money
    from_: Day = Field(alias="from")
    to: Day


class TypeTotal(Model):
    type: str
    amount: Money
    count: int


class Summary(Model):
    organisation_id: str
    days: int | Literal["all"]
    by_type: list[TypeTotal]
    total: Money


class SettlementCandidate(Model):
    organisation_id: str
    name: str
    gross: Money
    net: Money
    fee: Money
    bank_amount: Money
    fee_percent: Annotated[str, Field(description='e.g. "2.50"')]


class SettlementCandidates(Model):
    reference_date: Day
    organisations: list[SettlementCandidate]
    count: int
    total_gross: Money
    total_net: Money
    total_fee: Money
    total_bank: Money


class BalanceRow(Model):
    id: str
    name: str
    balance: Money


class BalancesPage(Model):
    """`GET /api/reports/balances` (JSON): a page of non-zero balances on `date`."""

    date: Day
    kind: Literal["member", "organisation"]
    rows: list[BalanceRow]
    count: int
    total: Money
    next_cursor: str | None


class MovementTotals(Model):
    """An organisation's movement over a period (`shared.org_movements.REPORT_COLUMNS`)."""

    opening_balance: Money
    event_entries: Money
    club_sessions: Money
    club_memberships: Money
    other: Money
    manual_adjustments: Money
    settlements: Money
    closing_balance: Money


class MovementRow(MovementTotals):
    organisation_id: str
    name: str


class MovementReport(Model):
    """`GET /api/reports/movement` (JSON): a row per organisation, money as strings."""

    from_: Day = Field(alias="from")
    to: Day
    rows: list[MovementRow]
    totals: MovementTotals


class CountSum(Model):
    count: int
    sum: Money


class StripeBalance(Model):
    """Stripe's available balance as last read (cached; `stale` once older than its freshness)."""

    available: Money
    fetched_at: Time
    stale: bool


class AdminSummary(Model):
    """`GET /api/admin/summary`: counts and sums across the service (SPEC 6)."""

    members: int
    members_auto_topup_on: int
    members_with_balance: CountSum
    organisations: int
    organisations_with_balance: CountSum
    net_liability: Money
    card_money_last_30_days: Money
    stripe_balance: StripeBalance | None = Field(description="null when Stripe has never answered")


class ReconciliationAmounts(Model):
    """By account total (`shared.reconciliation.TOTALS`)."""

    members: Money
    organisations: Money
    stripe: Money
    fees: Money
    bank: Money
    adjustments: Money


class ReconciliationCounts(Model):
    members: int
    organisations: int
    stripe: int
    fees: int
    bank: int
    adjustments: int


class ReconciliationMovement(Model):
    account: str
    type: str
    count: int
    amount: Money


class Reconciliation(Model):
    """`GET /api/reports/reconciliation` (JSON): balances at the end of `date`, the window's
    movements by account total and entry type."""

    date: Day
    from_: Day = Field(alias="from")
    totals: ReconciliationAmounts
    counts: ReconciliationCounts = Field(description="accounts with a posting before the end, by total")
    sum: Money
    movements: list[ReconciliationMovement]


class _TransactionLine(Model):
    date: Time
    admin: str | None
    client: str | None
    type: str
    description: str
    amount: Money


class MemberTransaction(_TransactionLine):
    member_id: str
    name: str


class OrganisationTransaction(_TransactionLine):
    organisation_id: str
    organisation: str
    bank_amount: Money
    fee: Money
    gst: Money


class MemberTransactionTotals(Model):
    count: int
    amount: Money


class OrganisationTransactionTotals(MemberTransactionTotals):
    bank_amount: Money
    fee: Money


class TransactionTotals(Model):
    members: MemberTransactionTotals
    organisations: OrganisationTransactionTotals


class SpecificTransactions(Model):
    """`GET /api/reports/transactions` (JSON): a page of one type's lines, by section, and the
    whole period's totals."""

    type: str
    from_: Day = Field(alias="from")
    to: Day
    members: list[MemberTransaction]
    organisations: list[OrganisationTransaction]
    totals: TransactionTotals
    next_cursor: str | None


class _ClubReportHead(Model):
    organisation_id: str
    name: str
    from_: Day = Field(alias="from")
    to: Day


class ClubMovement(_ClubReportHead):
    """`view=movement`: opening and closing balance, and the movement by club category."""

    view: Literal["movement"]
    opening_balance: Money
    settlements: Money
    event_entries: Money
    club_sessions: Money
    club_memberships: Money
    other: Money
    closing_balance: Money


class _Group(Model):
    count: int
    total: Money
    first_payment: Time
    last_payment: Time


class SessionGroup(_Group):
    session_id: str | None


class EventGroup(_Group):
    event_id: str | None


class ClubSessions(_ClubReportHead):
    view: Literal["sessions"]
    rows: list[SessionGroup]
    count: int
    total: Money


class ClubEvents(_ClubReportHead):
    view: Literal["events"]
    rows: list[EventGroup]
    count: int
    total: Money


class ClubLine(Model):
    id: int = Field(description="the posting id (the listings' cursor)")
    date: Time
    counterparty: str
    reference: str
    type: str
    description: str
    session_id: str | None
    event_id: str | None
    amount: Money


class ClubListing(_ClubReportHead):
    """`view=membership`, `other` or `transactions`: a page of lines, with the whole listing's
    count and total."""

    view: Literal["membership", "other", "transactions"]
    search: str | None
    type: str | None
    count: int
    total: Money
    rows: list[ClubLine]
    next_cursor: str | None


class ClubReport(RootModel[Annotated[ClubMovement | ClubSessions | ClubEvents | ClubListing,
                                     Field(discriminator="view")]]):
    """`GET /api/organisations/{id}/report` (JSON), by `view`."""


class SettlementMade(Model):
    request_id: str
    organisation_id: str | None
    name: str | None
    reference_date: Day | None
    net: Money
    fee: Money
    bank_amount: Money
    entry_id: int
    created_at: Time


class Settlements(Model):
    """`GET /api/settlements`: booked settlements, newest first."""

    from_: Day = Field(alias="from")
    to: Day
    rows: list[SettlementMade]
    next_cursor: str | None


class Card(Model):
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None


class CardPaymentRow(Model):
    payment_intent_id: str | None
    kind: str
    member_id: str
    amount: Money
    refunded: Money
    refundable: Money
    status: Literal["succeeded", "refunded", "partially_refunded"]
    card: Card
    disputed: bool
    created_at: Time
    member_refund_until: Time
    request_id: str | None


class CardPayments(Model):
    """`GET /api/card-payments`: succeeded card payments, newest first."""

    rows: list[CardPaymentRow]
    next_cursor: str | None
