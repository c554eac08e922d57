"""Transfers (SPEC 5, ORIGINAL 2.7 and 2.8): money from a member to another member, from an
organisation to a member, and from an organisation to another organisation. A member paying
an organisation is a payment, not a transfer.

- Member to member: 0 < amount <= the transfer maximum, not to oneself, type Member Transfer.
  It is decided as a payment to the other member is (`payments.decide_claimed`): short of
  funds, the sender's auto top-up first, then a card checkout if `allow_checkout`, else
  declined; both members are e-mailed.
- Organisation to member: Org Transfer (the default), Club Top Up, Refund, Club Membership or
  Miscellaneous; no more than the organisation holds, except an event's refund with
  `allow_negative` (ORIGINAL 2.7 books event refunds with no check of the organisation's
  balance; the client needs the `clubs` scope for the organisation, as for any transfer from
  it). The member is e-mailed ("Transfer from {organisation}", ORIGINAL 6.9).
- Organisation to organisation: Org Transfer, no more than the paying organisation holds.

A type in the wrong direction is refused naming `payment_type`. Event and session ids are
kept on the journal entry, so both sides' statements show them. A transfer with a route code
ends with one callback, as a payment does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator, model_validator
from sqlalchemy.orm import Session

from shared import bodies, fields, ledger, notifications, payments, profiles, requests
from shared.config import Settings
from shared.errors import InsufficientFunds, InvalidInput, NotFound
from shared.ledger import Entry, Line
from shared.models import EntryType, RequestKind, RequestStatus
from shared.money import format_cents, parse_cents

# The types each direction may carry; the first is the default (ORIGINAL 2.7).
TYPES: dict[tuple[str, str], tuple[EntryType, ...]] = {
    ("member", "member"): (EntryType.MEMBER_TRANSFER,),
    ("organisation", "member"): (
        EntryType.ORG_TRANSFER, EntryType.CLUB_TOP_UP, EntryType.REFUND, EntryType.CLUB_MEMBERSHIP,
        EntryType.MISCELLANEOUS,
    ),
    ("organisation", "organisation"): (EntryType.ORG_TRANSFER,),
}
# Fields added after the first transfers were stored: left out of the stored form while unset,
# so a transfer stored before them still has the same payload (and hash).
_OPTIONAL = {"payment_type": None, "event_id": None, "session_id": None, "allow_checkout": False,
             "allow_negative": False, "route_code": None, "route_payload": None}


@dataclass(frozen=True)
class TransferOrder:
    request_id: str
    amount: int
    description: str
    from_member_id: str | None = None
    from_organisation_id: str | None = None
    to_member_id: str | None = None
    to_organisation_id: str | None = None
    payment_type: str | None = None  # None: the direction's default
    event_id: str | None = None
    session_id: str | None = None
    allow_checkout: bool = False
    allow_negative: bool = False
    route_code: str | None = None  # a callback when it ends, as for a payment
    route_payload: Any = None

    def payload(self) -> dict[str, Any]:
        stored = {**asdict(self), "amount": format_cents(self.amount)}
        return {name: value for name, value in stored.items() if _OPTIONAL.get(name, object()) != value}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> TransferOrder:
        """The order again from its stored normal form, without today's limits."""
        return cls(**{**payload, "amount": parse_cents(payload["amount"], "amount")})

    @property
    def direction(self) -> tuple[str, str]:
        return ("member" if self.from_member_id else "organisation", "member" if self.to_member_id else "organisation")

    @property
    def entry_type(self) -> EntryType:
        return EntryType(self.payment_type) if self.payment_type else TYPES[self.direction][0]

    def as_payment(self) -> payments.PaymentOrder:
        """A transfer between members, as the payment to the other member it is decided as."""
        assert self.from_member_id and self.to_member_id
        return payments.PaymentOrder(
            request_id=self.request_id, member_id=self.from_member_id, amount=self.amount,
            description=self.description, payment_type=EntryType.MEMBER_TRANSFER.value,
            other_member_id=self.to_member_id, allow_checkout=self.allow_checkout, event_id=self.event_id,
            session_id=self.session_id,
        )


_TYPES_SCHEMA = {
    "type": ["string", "null"], "enum": [*dict.fromkeys(t.value for types in TYPES.values() for t in types), None],
    "description": "by direction (the first is the default): " + "; ".join(
        f"{source} to {target}: {', '.join(t.value for t in types)}" for (source, target), types in TYPES.items())}


class TransferIn(bodies.Validating):
    """`POST /api/transfers` and the `payments.transfer` task (`max_amount` and `transfer_max`
    in the context)."""

    model_config = ConfigDict(json_schema_extra=bodies.required("request_id", "amount", "description"))
    request_id: bodies.CheckedId = None  # type: ignore[assignment]
    amount: bodies.CheckedAmount = None  # type: ignore[assignment]  # a member's: at most transfer_max
    description: bodies.CheckedText80 = None  # type: ignore[assignment]
    payment_type: Annotated[str | None, WithJsonSchema(_TYPES_SCHEMA)] = None
    event_id: bodies.CheckedOptionalId = None
    session_id: bodies.CheckedOptionalId = None
    allow_checkout: bodies.CheckedFlag = False
    allow_negative: bodies.CheckedFlag = False
    route_code: bodies.CheckedOptionalId = None
    route_payload: bodies.CheckedRoutePayload = None
    # Checked last, as they always were (that exactly one of each pair is given, first).
    from_member_id: bodies.CheckedOptionalId = Field(
        default=None, description="exactly one of from_member_id, from_organisation_id")
    from_organisation_id: bodies.CheckedOptionalId = None
    to_member_id: bodies.CheckedOptionalId = Field(
        default=None, description="exactly one of to_member_id, to_organisation_id")
    to_organisation_id: bodies.CheckedOptionalId = None

    @model_validator(mode="before")
    @classmethod
    def _direction(cls, body: Any, info: ValidationInfo) -> Any:
        """First: exactly one source and one target, not a member paying an organisation. The
        direction sets the amount's maximum and the types allowed, checked in their turn: it is
        put in the validation context, a dict of this call's own (`validated`)."""
        if not isinstance(body, Mapping):
            return body  # pydantic refuses it
        source = fields.only_one(dict(body), "from_member_id", "from_organisation_id")
        target = fields.only_one(dict(body), "to_member_id", "to_organisation_id")
        if source == "from_member_id" and target == "to_organisation_id":
            raise InvalidInput(
                "to_organisation_id: a member pays an organisation with a payment, not a transfer",
                field="to_organisation_id",
            )
        if info.context is not None:
            info.context["direction"] = (source.removeprefix("from_").removesuffix("_id"),
                                         target.removeprefix("to_").removesuffix("_id"))
            if source == "from_member_id":
                info.context["max_amount"] = info.context["transfer_max"]
        return body

    @field_validator("payment_type", mode="before")
    @classmethod
    def _payment_type(cls, value: Any, info: ValidationInfo) -> str | None:
        return _payment_type(value, info.context["direction"]) if info.context else value

    @model_validator(mode="after")
    def _accounts_and_flags(self) -> TransferIn:
        for source, target, field in ((self.from_member_id, self.to_member_id, "to_member_id"),
                                      (self.from_organisation_id, self.to_organisation_id, "to_organisation_id")):
            if source is not None and source == target:  # checked ids: 5 and "5" are one account
                raise InvalidInput(f"{field}: cannot transfer to the same account", field=field)
        if self.allow_checkout and self.from_member_id is None:
            raise InvalidInput("allow_checkout: only a member's transfer can fall back to a card", field="allow_checkout")
        # The entry type is Refund only when named: no direction's default is.
        if self.allow_negative and not (self.payment_type == EntryType.REFUND.value and self.event_id):
            raise InvalidInput(
                "allow_negative: only an organisation's Refund of an event (with event_id) may take it below zero",
                field="allow_negative",
            )
        return self


def parse(body: Mapping[str, Any], settings: Settings) -> TransferOrder:
    given = bodies.validated(TransferIn, body, max_amount=settings.max_amount, transfer_max=settings.transfer_max)
    return TransferOrder(**bodies.declared(given))


def _payment_type(value: object, direction: tuple[str, str]) -> str | None:
    if value is None:
        return None
    allowed = TYPES[direction]
    if not isinstance(value, str) or value not in {t.value for t in allowed}:
        raise InvalidInput(
            f"payment_type: {value!r} is not a type from {direction[0]} to {direction[1]}; "
            f"one of {', '.join(t.value for t in allowed)}",
            field="payment_type",
        )
    return value


def record(session: Session, order: TransferOrder, *, client: str | None = None) -> tuple[requests.Request, bool]:
    return requests.record(
        session, RequestKind.TRANSFER, order.request_id, order.payload(), amount=order.amount,
        member_id=order.from_member_id, route_code=order.route_code, client=client,
    )


def transfer(session: Session, order: TransferOrder, settings: Settings) -> requests.Request:
    """Record and decide the transfer in the caller's transaction; `declined` if funds are short
    (a member's transfer first tries the member's cards, as a payment does)."""
    row = requests.claim(
        session, RequestKind.TRANSFER, order.request_id, order.payload(), amount=order.amount,
        member_id=order.from_member_id, route_code=order.route_code,
    )
    if not row.queued:
        return row
    if order.direction == ("member", "member"):
        return payments.decide_claimed(session, row, order.as_payment(), settings)
    try:
        organisation = profiles.get_organisation(session, order.from_organisation_id or "")
        recipient = profiles.get_member(session, order.to_member_id) if order.to_member_id else None
        target = recipient.account_id if recipient else profiles.get_organisation(session, order.to_organisation_id or "").account_id
    except NotFound as exc:
        requests.finish(session, row, RequestStatus.FAILED, reason=exc.message)
        return row

    entry = Entry(
        key=f"transfer:{order.request_id}",
        type=order.entry_type,
        description=order.description,
        reference=order.request_id,
        lines=(Line(organisation.account_id, -order.amount), Line(target, order.amount)),
        event_id=order.event_id,
        session_id=order.session_id,
        client=row.client,
        allow_negative=order.allow_negative,
    )
    try:
        ledger.post(session, entry)
    except InsufficientFunds as exc:  # nothing was written
        requests.finish(session, row, RequestStatus.DECLINED, reason=exc.message)
        return row
    requests.finish(session, row, RequestStatus.PAID)
    if recipient:
        notifications.organisation_transfer_email(
            session, order.request_id, organisation, recipient, order.amount, order.description, order.entry_type
        )
    return row
