"""Settlements (SPEC 5): paying an organisation's money out to its bank, per organisation for a
reference date (default: the last day of last month, local time).

gross = the balance at the end of the reference date, less what settlements booked after that
date have already paid out of it; net = gross - the organisation's minimum balance after
settlement, or the admin's override amount, which may not exceed that net; only net > 0 is
settled; bank amount = round(net * (1 - fee/100), 2), half up; booking: organisation -net,
`bank` +bank amount, `fees` +(net - bank amount). Example: 1000.00, minimum 100.00, 2 % ->
net 900.00, bank 882.00, fee 18.00.

Money is settled once whatever the order of the dates: one organisation and reference date
settle once, whatever the request id (the entry's idempotency key is
`settlement:{org}:{date}`), and a reference date on or before the organisation's latest
settled date, or one that has not ended, is refused in that organisation's result. Every check
is made under the organisation's account lock, so two settlements of one organisation (for any
dates) are decided one after the other, the second seeing the first's booking.

The arithmetic lives in `assess`, fed by `positions` (every organisation's ledger figures for a
date, in one statement): `candidates` (ORIGINAL 2.9's list) and `settle` both use it, so what
the list shows is what a settlement books. `"organisations": "all"` settles every candidate at
the reference date, resolved when the request is settled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, ConfigDict, Field, ValidationInfo, WithJsonSchema, model_validator
from sqlalchemy import case, func, literal_column, select
from sqlalchemy.orm import Session

from shared import bodies, fields, ledger, profiles, requests, statements
from shared.config import Settings
from shared.errors import Conflict, InsufficientFunds, InvalidInput
from shared.ledger import Entry, Line
from shared.models import (
    AccountBalance,
    EntryType,
    JournalEntry,
    Organisation,
    Posting,
    RequestKind,
    RequestStatus,
    SystemAccount,
    utcnow,
)
from shared.money import format_cents, parse_cents

MAX_ORGANISATIONS = 1000
# A literal, not a bound parameter, so the planner matches the partial index of Settlement
# entries (migration 0015) even in a generic (prepared) plan.
IS_SETTLEMENT = JournalEntry.type == literal_column(f"'{EntryType.SETTLEMENT.value}'")


ALL = "all"  # `"organisations": "all"`: every candidate at the reference date, found when settled


@dataclass(frozen=True)
class SettlementOrder:
    request_id: str
    reference_date: date
    organisations: tuple[tuple[str, int | None], ...]  # (org id, override amount in cents)
    all_candidates: bool = False  # `"all"`: `organisations` is empty, resolved by `settle`

    def payload(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "reference_date": self.reference_date.isoformat(),
            "organisations": ALL if self.all_candidates else [
                {"organisation_id": org, "override_amount": None if o is None else format_cents(o)}
                for org, o in self.organisations
            ],
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SettlementOrder:
        """The order again from its stored normal form, without today's limits."""
        if payload["organisations"] == ALL:
            return cls(payload["request_id"], date.fromisoformat(payload["reference_date"]), (), all_candidates=True)
        return cls(
            request_id=payload["request_id"],
            reference_date=date.fromisoformat(payload["reference_date"]),
            organisations=tuple(
                (item["organisation_id"], None if item["override_amount"] is None else parse_cents(item["override_amount"]))
                for item in payload["organisations"]
            ),
        )


def default_reference_date(today: date) -> date:
    """The last day of last month."""
    return today.replace(day=1) - timedelta(days=1)


def bank_amount(net: int, fee_percent: Decimal) -> int:
    """round(net * (1 - fee/100), 2), half up, in cents."""
    return int((Decimal(net) * (100 - fee_percent) / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def reference_date(raw: object, today: date) -> date:
    """A settlement's (or its candidates') reference date: given, or the last day of last
    month; one that has not ended yet (local `today` or later) is refused."""
    reference = default_reference_date(today) if raw is None else fields.local_date(raw, "reference_date")
    if reference >= today:
        raise InvalidInput(
            f"reference_date: {reference} has not ended yet (today is {today})", field="reference_date"
        )
    return reference


class SettlementItem(bodies.Validating):
    model_config = ConfigDict(json_schema_extra=bodies.required("organisation_id"))
    organisation_id: bodies.CheckedId = None  # type: ignore[assignment]
    override_amount: bodies.CheckedOptionalAmount = None


def _organisations(value: Any, info: ValidationInfo) -> Any:
    """`"all"`, or 1 to `MAX_ORGANISATIONS` objects, each checked in turn."""
    if value == ALL:
        return value
    if not isinstance(value, list) or not value or len(value) > MAX_ORGANISATIONS:
        raise InvalidInput(
            f"organisations: expected \"all\" or a list of 1 to {MAX_ORGANISATIONS} organisations",
            field="organisations",
        )
    items = []
    for item in value:
        if not isinstance(item, dict):
            raise InvalidInput("organisations: each item must be an object", field="organisations")
        items.append(SettlementItem.model_validate(item, context=info.context))
    return items


def _reference_date(value: Any, info: ValidationInfo) -> date:
    return reference_date(value, info.context["today"]) if info.context else value


class SettlementIn(bodies.Validating):
    """`POST /api/settlements` and the `payments.settle` task (`today`, local, and `max_amount`
    in the context)."""

    model_config = ConfigDict(json_schema_extra=bodies.required("request_id", "organisations"))
    reference_date: Annotated[date, BeforeValidator(_reference_date), WithJsonSchema({
        "type": ["string", "null"], "format": "date",
        "description": "YYYY-MM-DD, a day that has ended; absent or null: the last day of last month"})] = None  # type: ignore[assignment]
    request_id: bodies.CheckedId = None  # type: ignore[assignment]
    organisations: Annotated[Literal["all"] | list[SettlementItem], BeforeValidator(_organisations), Field(
        description=f'"all" (the candidates when it is settled), or 1 to {MAX_ORGANISATIONS} organisations')
    ] = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _each_once(self) -> SettlementIn:
        if isinstance(self.organisations, list):
            if len({item.organisation_id for item in self.organisations}) != len(self.organisations):
                raise InvalidInput("organisations: an organisation is listed twice", field="organisations")
        return self


def parse(body: Mapping[str, Any], settings: Settings, *, now: datetime | None = None) -> SettlementOrder:
    today = (now or utcnow()).astimezone(settings.time_zone).date()
    given = bodies.validated(SettlementIn, body, today=today, max_amount=settings.max_amount)
    if not isinstance(given.organisations, list):  # "all"
        return SettlementOrder(given.request_id, given.reference_date, (), all_candidates=True)
    return SettlementOrder(
        request_id=given.request_id,
        reference_date=given.reference_date,
        organisations=tuple((item.organisation_id, item.override_amount) for item in given.organisations),
    )


def record(session: Session, order: SettlementOrder, *, client: str | None = None) -> tuple[requests.Request, bool]:
    # The amount is only known once settled.
    return requests.record(session, RequestKind.SETTLEMENT, order.request_id, order.payload(), amount=0,
                           client=client)


def settle(session: Session, order: SettlementOrder, settings: Settings) -> requests.Request:
    """Settle each organisation in turn; the request lists every result.

    `"all"` is resolved here, not when the request was accepted: the candidates at the
    reference date, read once, then locked. The set can only shrink between that read and the
    locks (a balance at an ended date is fixed; a settlement only takes money out and moves an
    organisation's settled date forward), so no organisation that is a candidate under the locks
    is missed; one that stopped being one while waiting is assessed again below and reported."""
    row = requests.claim(session, RequestKind.SETTLEMENT, order.request_id, order.payload(), amount=0)
    if not row.queued:
        return row
    zone = settings.time_zone
    chosen: list[tuple[str, int | None]]
    if order.all_candidates:
        chosen = [(p.org_id, None) for p in candidates(session, order.reference_date, settings)]
    else:
        chosen = list(order.organisations)
    listed = [org_id for org_id, _ in chosen]
    # Every organisation's account locked first, in ascending id (DESIGN's one lock order):
    # locked one by one in the order asked, [a, b] and [b, a] at once would deadlock.
    ledger.lock_accounts(session, session.scalars(select(Organisation.account_id).where(Organisation.org_id.in_(listed))))
    # Read again under the locks, in one statement for all of them.
    found = {p.org_id: p for p in positions(session, order.reference_date, zone, listed)} if listed else {}
    earlier = _settled_already(session, order.reference_date, listed)
    accounts = {name: profiles.system_account(session, name) for name in (SystemAccount.BANK, SystemAccount.FEES)}
    results = []
    for org_id, override in chosen:
        if org_id in earlier:
            results.append({"organisation_id": org_id, "status": "already_settled", "entry_id": earlier[org_id]})
        elif org_id not in found:
            results.append(_refused(org_id, f"organisation {org_id}: not known to payments"))
        else:
            results.append(_settle_one(session, order, found[org_id], override, settings, accounts, client=row.client))
    requests.finish(
        session,
        row,
        RequestStatus.COMPLETED,
        result={"reference_date": order.reference_date.isoformat(), "organisations": results},
        amount=sum(parse_cents(r["net"]) for r in results if r["status"] == "settled"),
    )
    return row


@dataclass(frozen=True)
class Position:
    """What the ledger says of one organisation for a reference date: the inputs of `assess`."""

    org_id: str
    name: str
    account_id: int
    minimum: int  # the minimum balance after settlement, cents
    fee_percent: Decimal | None  # the organisation's own fee; None: the default
    at_end: int  # the balance at the end of the reference date (local time), cents
    settled_since: int  # what settlements booked since that end took out, cents (>= 0)
    latest_settled: date | None  # the latest reference date it was settled to
    bank_bsb: str | None = None  # where it is paid (for the candidates' export)
    bank_account: str | None = None


@dataclass(frozen=True)
class Assessment:
    """SPEC 5's arithmetic for one organisation: what a settlement would book, or why not."""

    gross: int
    net: int  # what would be settled (the override, when given); <= 0: nothing to settle
    fee_percent: Decimal
    bank: int
    refusal: str | None = None

    @property
    def fee(self) -> int:
        return self.net - self.bank

    @property
    def settles(self) -> bool:
        return self.refusal is None and self.net > 0


def assess(position: Position, reference_date: date, default_fee_percent: Decimal,
           override: int | None = None) -> Assessment:
    """The one place the settlement's arithmetic lives: the candidates list and the settlement
    itself both call it, so what is listed is what is booked."""
    fee_percent = position.fee_percent if position.fee_percent is not None else default_fee_percent
    gross = position.at_end - position.settled_since
    net = gross - position.minimum
    if position.latest_settled is not None and reference_date <= position.latest_settled:
        return Assessment(gross, max(net, 0), fee_percent, 0, refusal=(
            f"reference_date: organisation {position.org_id} is settled to {position.latest_settled.isoformat()}; "
            f"{reference_date.isoformat()} is not after it"))
    if override is not None:
        if override > net:
            return Assessment(gross, max(net, 0), fee_percent, 0, refusal=(
                f"override_amount: {format_cents(override)} is more than the net {format_cents(max(net, 0))}"))
        net = override
    return Assessment(gross, net, fee_percent, bank_amount(net, fee_percent) if net > 0 else 0)


def positions(session: Session, reference_date: date, zone: ZoneInfo,
              org_ids: Sequence[str] | None = None) -> list[Position]:
    """Every organisation's position (or those of `org_ids`), by org id, in ONE statement, so
    all of it is read from one snapshot (a credit committed between two reads cannot be
    counted in one and not the other).

    Set-based for 2,000 organisations: the balance at the end of the date is the balance now
    (the accounts' running sums, `ledger.current_balance`) less what entries booked since that end moved
    (entries by `created_at`, indexed: usually a month of them); settlements are read through
    their partial index (migration 0015)."""
    end = statements.end_of_local_day(reference_date, zone)
    # Plain subqueries over the tables (no materialised CTE), so the planner knows an account
    # is one organisation's and estimates 2,000 rows, not millions (which cost a second of JIT).
    accounts = select(Organisation.account_id)
    if org_ids is not None:
        accounts = accounts.where(Organisation.org_id.in_(list(org_ids)))
    totals = (
        select(AccountBalance.account_id, func.sum(AccountBalance.balance).label("total"))
        .where(AccountBalance.account_id.in_(accounts)).group_by(AccountBalance.account_id).subquery("totals")
    )
    since = (
        select(Posting.account_id, func.sum(Posting.amount).label("moved"),
               func.sum(case((IS_SETTLEMENT, -Posting.amount), else_=0)).label("settled"))
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(JournalEntry.created_at >= end, Posting.account_id.in_(accounts))
        .group_by(Posting.account_id).subquery("since")
    )
    # The organisation and date are in a settlement's key, `settlement:{org}:{YYYY-MM-DD}`:
    # read from the partial index's rows alone, without their postings.
    key = JournalEntry.idempotency_key
    settled_org = func.substr(key, len("settlement:") + 1, func.length(key) - len("settlement:") - 11)
    latest = (
        select(settled_org.label("org_id"), func.max(func.substr(key, func.length(key) - 9)).label("latest"))
        .where(IS_SETTLEMENT).group_by(settled_org).subquery("latest")
    )
    chosen = select(
        Organisation.org_id, Organisation.name, Organisation.account_id, Organisation.minimum_balance_after_settlement,
        Organisation.settlement_fee_percent, Organisation.bank_bsb, Organisation.bank_account,
        totals.c.total, since.c.moved, since.c.settled, latest.c.latest,
    ).outerjoin(totals, totals.c.account_id == Organisation.account_id
    ).outerjoin(since, since.c.account_id == Organisation.account_id
    ).outerjoin(latest, latest.c.org_id == Organisation.org_id)
    if org_ids is not None:
        chosen = chosen.where(Organisation.org_id.in_(list(org_ids)))
    rows = session.execute(chosen.order_by(Organisation.org_id))
    return [
        Position(
            org_id=r.org_id, name=r.name, account_id=r.account_id, minimum=r.minimum_balance_after_settlement,
            fee_percent=r.settlement_fee_percent, at_end=int(r.total or 0) - int(r.moved or 0),
            settled_since=int(r.settled or 0), latest_settled=None if r.latest is None else date.fromisoformat(r.latest),
            bank_bsb=r.bank_bsb, bank_account=r.bank_account,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Candidate:
    position: Position
    assessment: Assessment

    @property
    def org_id(self) -> str:
        return self.position.org_id

    def as_json(self) -> dict[str, str]:
        a = self.assessment
        return {"organisation_id": self.org_id, "name": self.position.name, "gross": format_cents(a.gross),
                "net": format_cents(a.net), "fee": format_cents(a.fee), "bank_amount": format_cents(a.bank),
                "fee_percent": f"{a.fee_percent:.2f}"}

    def as_csv_row(self) -> tuple[object, ...]:
        """ORIGINAL 2.9's export row (CANDIDATES_CSV_HEADER)."""
        a, p = self.assessment, self.position
        return (p.org_id, p.name, profiles.show_bsb(p.bank_bsb), p.bank_account, format_cents(a.gross),
                format_cents(p.minimum), format_cents(a.net), f"{a.fee_percent:.2f}", format_cents(a.bank))


# ORIGINAL 2.9's `settlements.csv` columns (its "CLub" spelling mended); Settlement Amount is
# the bank amount.
CANDIDATES_CSV_HEADER = ("Club Number", "Club Name", "BSB", "Account Number", "Gross Amount", "Minimum Balance",
                         "Net Amount", "Fees %", "Settlement Amount")


def candidates(session: Session, reference_date: date, settings: Settings) -> list[Candidate]:
    """The organisations a settlement for `reference_date` would settle now, by org id: net > 0
    and not settled to that date or later (ORIGINAL 2.9's list, SPEC 5's rules)."""
    found = []
    for position in positions(session, reference_date, settings.time_zone):
        assessment = assess(position, reference_date, settings.settlement_fee_percent)
        if assessment.settles:
            found.append(Candidate(position, assessment))
    return found


def _settled_already(session: Session, reference_date: date, org_ids: Sequence[str]) -> dict[str, int]:
    """The entries that already settled these organisations for this date, in one look-up."""
    if not org_ids:
        return {}
    keys = {_key(org_id, reference_date): org_id for org_id in org_ids}
    found = session.execute(select(JournalEntry.idempotency_key, JournalEntry.id)
                            .where(JournalEntry.idempotency_key.in_(list(keys))))
    return {keys[k]: entry_id for k, entry_id in found}


def _key(org_id: str, reference_date: date) -> str:
    return f"settlement:{org_id}:{reference_date.isoformat()}"


def _settle_one(
    session: Session, order: SettlementOrder, position: Position, override: int | None, settings: Settings,
    accounts: Mapping[SystemAccount, int], *, client: str | None,
) -> dict[str, Any]:
    """One organisation, under its account lock (taken by `settle`)."""
    org_id = position.org_id
    key = _key(org_id, order.reference_date)
    end = statements.end_of_local_day(order.reference_date, settings.time_zone)
    if end > utcnow():
        return _refused(org_id, f"reference_date: {order.reference_date} has not ended yet")
    assessment = assess(position, order.reference_date, settings.settlement_fee_percent, override)
    if assessment.refusal is not None:
        return _refused(org_id, assessment.refusal)
    result: dict[str, Any] = {"organisation_id": org_id, "gross": format_cents(assessment.gross),
                              "net": format_cents(max(assessment.net, 0))}
    if assessment.net <= 0:
        return {**result, "status": "nothing_to_settle"}
    net, bank = assessment.net, assessment.bank
    lines = [Line(position.account_id, -net)]
    if bank:
        lines.append(Line(accounts[SystemAccount.BANK], bank))
    if net - bank:
        lines.append(Line(accounts[SystemAccount.FEES], net - bank))
    try:
        booking = ledger.post(
            session,
            Entry(
                key=key,
                type=EntryType.SETTLEMENT,
                description=f"Settlement to {order.reference_date.isoformat()}",
                reference=order.request_id,
                lines=tuple(lines),
                client=client,
            ),
        )
    except Conflict:  # a concurrent request settled it first
        earlier = session.scalar(select(JournalEntry.id).where(JournalEntry.idempotency_key == key))
        return {"organisation_id": org_id, "status": "already_settled", "entry_id": earlier}
    except InsufficientFunds as exc:
        return _refused(org_id, exc.message)
    status = "already_settled" if booking.replayed else "settled"
    return {
        **result,
        "status": status,
        "fee_percent": f"{assessment.fee_percent:.2f}",
        "bank_amount": format_cents(bank),
        "fee": format_cents(assessment.fee),
        "entry_id": booking.entry_id,
    }


def _refused(org_id: str, reason: str) -> dict[str, Any]:
    return {"organisation_id": org_id, "status": "failed", "reason": reason}
