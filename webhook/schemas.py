"""The `/api/*` bodies and answers as pydantic v2 models: declared once, they make the OpenAPI
description (`webhook.openapi`), and they validate where a route has been moved to them.

The fields' own rules (ids, money, text) stay in `shared.fields` and `shared.money`, which the
routes still call: the models say what the rules accept, in JSON Schema. Money is a string with
two decimals (`"12.34"`) or an integer of whole units, never a JSON number with a fraction (SPEC;
`shared.money.parse_cents` refuses a float), so `Money` is `StrictInt | str`, never `float`.
Request models allow extra fields (the parsers ignore them), answers may grow (CONTRACT: "add
freely"), so every model allows properties it does not name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
MONEY_PATTERN = r"^-?[0-9]+\.[0-9]{2}$"

Id = Annotated[str, Field(pattern=ID_PATTERN, description="1 to 64 letters, digits or _.:-")]
# In: "12.34" or whole units as an integer; a float is refused with 400.
MoneyIn = Annotated[StrictInt | Annotated[str, Field(pattern=r"^\s*-?[0-9]+(\.[0-9]{1,2})?\s*$")],
                    Field(description='money: a string such as "12.34", or an integer of whole units; never a float')]
# Out: always a string with two decimals.
Money = Annotated[str, Field(pattern=MONEY_PATTERN, description='money, a string such as "12.34"')]
Text80 = Annotated[str, Field(max_length=80)]
Time = Annotated[str, Field(description="ISO 8601 with offset")]


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


class MemberIn(Model):
    email: Annotated[str, Field(max_length=254)]
    first_name: Annotated[str, Field(max_length=100)]
    last_name: Annotated[str, Field(max_length=100)]
    low_balance_emails: StrictBool | None = None


class OrganisationIn(Model):
    name: Annotated[str, Field(max_length=200)]
    settlement_fee_percent: StrictInt | str | None = Field(default=None, description='0 to 100, e.g. "2.50" (admin)')
    minimum_balance_after_settlement: MoneyIn | None = None
    bank_bsb: str | None = None
    bank_account: str | None = None


class AdjustmentIn(Model):
    request_id: Id
    amount: MoneyIn
    description: Text80
    admin_id: Id
    member_id: Id | None = Field(default=None, description="exactly one of member_id and organisation_id")
    organisation_id: Id | None = None
    allow_negative: StrictBool = False


class _Routed(Model):
    route_code: Id | None = None
    route_payload: Any = Field(default=None, description="handed back in the callback, as sent (at most 2000 characters)")
    event_id: Id | None = None
    session_id: Id | None = None


class PaymentIn(_Routed):
    request_id: Id
    member_id: Id
    amount: MoneyIn
    description: Text80
    payment_type: str | None = None
    organisation_id: Id | None = None
    other_member_id: Id | None = None
    book_internals: StrictBool = True
    allow_checkout: StrictBool = False
    iou_id: StrictInt | str | None = None


class TransferIn(_Routed):
    request_id: Id
    amount: MoneyIn
    description: Text80
    payment_type: str | None = None
    from_member_id: Id | None = Field(default=None, description="exactly one of from_member_id, from_organisation_id")
    from_organisation_id: Id | None = None
    to_member_id: Id | None = Field(default=None, description="exactly one of to_member_id, to_organisation_id")
    to_organisation_id: Id | None = None
    allow_checkout: StrictBool = False
    allow_negative: StrictBool = False


class SettlementItem(Model):
    organisation_id: Id
    override_amount: MoneyIn | None = None


class SettlementIn(Model):
    request_id: Id
    reference_date: str | None = Field(default=None, description="YYYY-MM-DD")
    organisations: Literal["all"] | list[SettlementItem]


class RefundIn(Model):
    request_id: Id
    by: Literal["member", "admin"]
    payment_intent_id: Annotated[str, Field(max_length=255)]
    amount: MoneyIn | None = Field(default=None, description="admin only; a member refunds the whole remainder")
    admin_id: Id | None = Field(default=None, description="required when by is admin")


class TopupIn(Model):
    request_id: Id
    amount: MoneyIn
    use_saved_card: StrictBool = False


class AutoTopupAmountIn(Model):
    amount: MoneyIn


class IouIn(_Routed):
    request_id: Id
    organisation_id: Id
    member_id: Id
    amount: MoneyIn
    description: Text80


class IouPayIn(Model):
    request_id: Id
    allow_checkout: StrictBool = False


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
    date: str | None = None


class RequestStatus(Model):
    """`GET /api/payments/{request_id}`: any request's status document."""

    request_id: str
    kind: str
    status: str
    amount: Money
    client: str | None
    reason: str | None = None


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


class Rows(Model):
    """A page of a report or list: its rows, and where it goes on."""

    rows: list[dict[str, Any]]
    next_cursor: str | None = None


class Document(Model):
    """A report read as JSON (CONTRACT gives its fields)."""
